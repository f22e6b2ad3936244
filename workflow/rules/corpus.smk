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
        c=CFG["corpus"],
    shell:
        "genemask corpus {input.fa} --region {params.region} --k {params.c[k]} "
        "--max-bp {params.c[max_bp]} --min-bp {params.c[min_bp]} "
        "--valid-fraction {params.c[valid_fraction]} --seed {params.c[seed]} -o {output} 2> {log}"
