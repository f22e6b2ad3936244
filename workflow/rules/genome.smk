# Fetch + verify a declared source, then bgzip + faidx the genome, then plan the chunks.
from genemask.sources import fetch_args


# A source verified by a published checksum list (no pinned sha256) leaves the sha256 it saw in
# <output>.sha256. That lock is deliberately not an output: Snakemake would delete it before a
# rerun, and it is what a rerun (or another node sharing results/) checks the file against.
rule fetch:
    output:
        f"{RESULTS}/sources/{{path}}",
    log:
        f"{RESULTS}/logs/fetch/{{path}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fetch/{{path}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=500,
        runtime=120,
    params:
        args=lambda wc: fetch_args(SOURCE_BY_PATH[wc.path]),
    shell:
        "genemask fetch {params.args} -o {output} 2> {log}"


rule index_genome:
    input:
        source(CFG["genome"]["source"]),
    output:
        fa=f"{RESULTS}/genome/genome.fa.gz",
        fai=f"{RESULTS}/genome/genome.fa.gz.fai",
        gzi=f"{RESULTS}/genome/genome.fa.gz.gzi",
    log:
        f"{RESULTS}/logs/index_genome.log",
    benchmark:
        f"{RESULTS}/benchmarks/index_genome.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        contigs=" ".join(f"{c}:{n}" for c, n in CFG["genome"]["contigs"].items()),
    shell:
        "genemask index {input} --contigs {params.contigs} -o {output.fa} 2> {log}"


rule chunks:
    input:
        rules.index_genome.output.fa,
    output:
        f"{RESULTS}/genome/chunks.tsv",
    log:
        f"{RESULTS}/logs/chunks.log",
    benchmark:
        f"{RESULTS}/benchmarks/chunks.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=500,
        runtime=10,
    params:
        size=CFG["genome"]["chunk_size"],
    shell:
        "genemask chunks {input} --size {params.size} -o {output} 2> {log}"
