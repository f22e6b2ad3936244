# Pretraining pieces per chunk: split at N runs, upper-case, 6-511 bp, 90/10 train/validation.


rule corpus:
    input:
        fa=rules.index_genome.output.fa,
        chunks=rules.chunks.output,
    output:
        directory(f"{RESULTS}/corpus/{{chunk}}"),
    log:
        f"{RESULTS}/logs/corpus/{{chunk}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/corpus/{{chunk}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        region=lambda wc: REGION[wc.chunk],
        k=CFG["corpus"]["k"],
        max_bp=CFG["corpus"]["max_bp"],
        min_bp=CFG["corpus"]["min_bp"],
        valid_fraction=CFG["corpus"]["valid_fraction"],
        seed=CFG["corpus"]["seed"],
    shell:
        "genemask corpus {input.fa:q} --region {params.region:q} --k {params.k:q} "
        "--max-bp {params.max_bp:q} --min-bp {params.min_bp:q} "
        "--valid-fraction {params.valid_fraction:q} --seed {params.seed:q} -o {output:q} 2> {log:q}"
