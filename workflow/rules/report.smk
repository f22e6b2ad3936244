# Aggregation: one TSV row per run, mean +- sd, paired tests against dnabert, plots, HTML report.

METRICS = [
    f"{RESULTS}/finetune/{r['task']}/{r['shot']}/{r['scheme']}/seed{r['seed']}.json"
    for r in RUNS
]
REPORT = f"{RESULTS}/report"
REPORT_OUTPUTS = [
    f"{REPORT}/runs.tsv",
    f"{REPORT}/summary.tsv",
    f"{REPORT}/accuracy_vs_shots.png",
]


rule aggregate:
    input:
        METRICS,
    output:
        runs=report(
            f"{REPORT}/runs.tsv",
            caption="../report/summary.rst",
            category="Few-shot results",
        ),
        summary=report(
            f"{REPORT}/summary.tsv",
            caption="../report/summary.rst",
            category="Few-shot results",
        ),
        plot=report(
            f"{REPORT}/accuracy_vs_shots.png",
            caption="../report/accuracy.rst",
            category="Few-shot results",
        ),
    log:
        f"{RESULTS}/logs/aggregate.log",
    benchmark:
        f"{RESULTS}/benchmarks/aggregate.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        outdir=lambda wc, output: os.path.dirname(output.runs),
    shell:
        "genemask aggregate {input} --outdir {params.outdir} 2> {log}"
