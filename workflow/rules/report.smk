# Aggregation: one TSV row per run, mean +- sd, paired tests against dnabert, plots, motifs, and
# the HTML report (also `snakemake --report`, which collects the report() outputs below).

from genemask.figures import steps_plot_name

METRICS = [
    f"{RESULTS}/finetune/{r['task']}/{r['shot']}/{r['model']}/seed{r['seed']}.json"
    for r in RUNS
] + PROBE_JSONS
PRETRAINED = [
    s for s in SCHEMES if s != "none"
]  # loss and mask-rank plots: the first pretraining seed
# accuracy/MCC vs pretraining steps: one figure per task with runs (names: figures.steps_plot_name)
STEPS_PLOTS = [
    f"{REPORT}/{steps_plot_name(t)}" for t in sorted({r["task"] for r in RUNS})
]
REPORT_OUTPUTS = [
    f"{REPORT}/runs.tsv",
    f"{REPORT}/summary.tsv",
    f"{REPORT}/tests.tsv",
    f"{REPORT}/variance.tsv",
    f"{REPORT}/verdict.tsv",
    f"{REPORT}/verdict.md",
    f"{REPORT}/accuracy_vs_shots.png",
    *STEPS_PLOTS,
    f"{REPORT}/report.html",
]


rule missing_shots:
    output:
        f"{REPORT}/missing.tsv",
    log:
        f"{RESULTS}/logs/missing_shots.log",
    benchmark:
        f"{RESULTS}/benchmarks/missing_shots.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    params:
        entries=[f"{m['task']}:{m['shot']}" for m in plan.missing(CFG)],
    shell:
        "genemask write-missing {params.entries:q} -o {output:q} 2> {log:q}"


rule plot_loss:
    input:
        expand(f"{RESULTS}/models/{{scheme}}/seed{PSEEDS[0]}", scheme=PRETRAINED),
    output:
        report(
            f"{REPORT}/pretrain_loss.png",
            caption="../report/loss.rst",
            category="Pretraining",
        ),
    log:
        f"{RESULTS}/logs/plot_loss.log",
    benchmark:
        f"{RESULTS}/benchmarks/plot_loss.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        logs=lambda wc, input: [f"{m}/train_log.tsv" for m in input],
        labels=PRETRAINED,
    shell:
        "genemask plot-loss {params.logs:q} --labels {params.labels:q} -o {output:q} 2> {log:q}"


rule mask_ranks:
    input:
        models=expand(f"{RESULTS}/models/{{scheme}}/seed{PSEEDS[0]}", scheme=PRETRAINED),
        ranking=ranking_file(),
    output:
        report(
            f"{REPORT}/mask_ranks.png",
            caption="../report/mask_ranks.rst",
            category="Pretraining",
        ),
    log:
        f"{RESULTS}/logs/mask_ranks.log",
    benchmark:
        f"{RESULTS}/benchmarks/mask_ranks.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        stats=lambda wc, input: [f"{m}/mask_ranks.tsv" for m in input.models],
        labels=PRETRAINED,
        k=CFG["corpus"]["k"],
    shell:
        "genemask plot-mask-ranks --stats {params.stats:q} --labels {params.labels:q} "
        "--ranking {input.ranking:q} --k {params.k:q} -o {output:q} 2> {log:q}"


rule motifs:
    input:
        ranking_file(),
    output:
        tsv=report(
            f"{REPORT}/motifs.tsv", caption="../report/motifs.rst", category="Motifs"
        ),
        plot=report(
            f"{REPORT}/motifs.png", caption="../report/motifs.rst", category="Motifs"
        ),
    log:
        f"{RESULTS}/logs/motifs.log",
    benchmark:
        f"{RESULTS}/benchmarks/motifs.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        top=CFG["report"]["motifs_top"],
        method=CFG["report"]["motif_method"],
        k=CFG["corpus"]["k"],
        q=CFG["report"]["motif_q_threshold"],
        threshold=CFG["report"]["motif_rule_threshold"],
        min_ic=CFG["report"]["motif_rule_min_ic"],
        n_perm=CFG["report"]["motif_n_perm"],
    shell:
        "genemask motifs --ranking {input:q} --top {params.top:q} --k {params.k:q} --method {params.method:q} "
        "--q-threshold {params.q:q} --threshold {params.threshold:q} --min-ic {params.min_ic:q} "
        "--n-perm {params.n_perm:q} --plot {output.plot:q} -o {output.tsv:q} 2> {log:q}"


rule aggregate:
    input:
        metrics=METRICS,
        missing=rules.missing_shots.output,
        extra=[
            rules.plot_loss.output,
            rules.mask_ranks.output,
            rules.motifs.output.tsv,
            rules.motifs.output.plot,
            *EXPLAIN_TABLES,
            *EXPLAIN_LOGOS,
        ],
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
        tests=report(
            f"{REPORT}/tests.tsv",
            caption="../report/tests.rst",
            category="Few-shot results",
        ),
        plot=report(
            f"{REPORT}/accuracy_vs_shots.png",
            caption="../report/accuracy.rst",
            category="Few-shot results",
        ),
        variance=f"{REPORT}/variance.tsv",
        verdict=f"{REPORT}/verdict.tsv",
        verdict_md=f"{REPORT}/verdict.md",
        steps=STEPS_PLOTS,
        html=f"{REPORT}/report.html",
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
        margins=[f"{m}={v}" for m, v in plan.equivalence_margins(CFG).items()],
    shell:
        "genemask aggregate {input.metrics:q} --missing {input.missing:q} --include {input.extra:q} "
        "--equivalence-margin {params.margins:q} --outdir {params.outdir:q} 2> {log:q}"
