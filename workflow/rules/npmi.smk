# n-gram counts per chunk -> merged counts -> NPMI table (the k-mer ranking that drives GeneMask).


rule ngrams:
    input:
        fa=rules.index_genome.output.fa,
        chunks=rules.chunks.output,
    output:
        f"{RESULTS}/ngrams/{{chunk}}.npz",
    log:
        f"{RESULTS}/logs/ngrams/{{chunk}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ngrams/{{chunk}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
    params:
        region=lambda wc: REGION[wc.chunk],
        max_order=CFG["ngrams"]["max_order"],
    shell:
        "genemask ngrams {input.fa:q} --region {params.region:q} --max-order {params.max_order:q} "
        "-o {output:q} 2> {log:q}"


rule merge_ngrams:
    input:
        expand(f"{RESULTS}/ngrams/{{chunk}}.npz", chunk=CHUNK_IDS),
    output:
        f"{RESULTS}/ngrams/all.npz",
    log:
        f"{RESULTS}/logs/merge_ngrams.log",
    benchmark:
        f"{RESULTS}/benchmarks/merge_ngrams.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "genemask merge {input:q} -o {output:q} 2> {log:q}"


rule npmi:
    input:
        rules.merge_ngrams.output,
    output:
        f"{RESULTS}/npmi/npmi.tsv",
    log:
        f"{RESULTS}/logs/npmi.log",
    benchmark:
        f"{RESULTS}/benchmarks/npmi.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        variant=CFG["npmi"]["variant"],
        min_count=CFG["npmi"]["min_count"],
    shell:
        "genemask npmi {input:q} --variant {params.variant:q} --min-count {params.min_count:q} "
        "-o {output:q} 2> {log:q}"
