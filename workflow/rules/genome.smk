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
        args=lambda wc: fetch_args(SOURCE_BY_PATH[wc.path]),  # already shell-quoted, argument by argument
    shell:
        "genemask fetch {params.args} -o {output:q} 2> {log:q}"


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
        contigs=CONTIG_ARGS,
    shell:
        "genemask index {input:q} --contigs {params.contigs:q} -o {output.fa:q} 2> {log:q}"


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
        contigs=CONTIG_ARGS,
    shell:
        "genemask chunks {input:q} --size {params.size:q} --contigs {params.contigs:q} -o {output:q} 2> {log:q}"
