# What the classifiers learned (explain.enabled): per explained run (plan.explain_runs: every scheme x
# pretraining seed at its last step, the task's smallest shot, the first fine-tuning seed) the
# attributions of its first test rows of the target class (genemask explain), then per task x scheme
# seqlets, motifs and their JASPAR matches (genemask explain-motifs), then motif reliance compared
# between schemes (genemask explain-report) for the report.

EXPLAIN_RUNS = plan.explain_runs(CFG)
EXPLAIN_GROUPS = sorted({(r["task"], r["shot"], r["scheme"]) for r in EXPLAIN_RUNS})
EXPLAIN = f"{RESULTS}/explain/{{task}}/{{shot}}"
EXPLAIN_TABLES = (
    [f"{REPORT}/explain_motifs.tsv", f"{REPORT}/explain_reliance.tsv"]
    if EXPLAIN_RUNS
    else []
)
EXPLAIN_LOGOS = [
    f"{RESULTS}/explain/{t}/{s}/{sch}.motifs.png" for t, s, sch in EXPLAIN_GROUPS
]


rule explain_classifier:
    input:
        model=model_input,
        train=rules.task_data.output.train,
        test=rules.task_data.output.test,
    output:
        model=directory(f"{EXPLAIN}/{{model}}/seed{{seed}}.model"),
        json=f"{EXPLAIN}/{{model}}/seed{{seed}}.finetune.json",
    log:
        f"{RESULTS}/logs/explain_classifier/{{task}}/{{shot}}/{{model}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/explain_classifier/{{task}}/{{shot}}/{{model}}/seed{{seed}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=CFG["finetune"]["mem_mb"],
        runtime=CFG["finetune"]["runtime_min"],
    params:
        num_labels=lambda wc: CFG["tasks"][wc.task]["num_labels"],
        settings=json.dumps(CFG["finetune"]["settings"], sort_keys=True),
        worker=int(CFG["finetune"]["worker"]),
        folder=model_folder,
        scheme=lambda wc: MODELS[wc.model]["scheme"],
    shell:
        "GENEMASK_THREADS={threads} GENEMASK_WORKER={params.worker} genemask finetune --model {params.folder:q} "
        "--train {input.train:q} --test {input.test:q} --task {wildcards.task} --shot {wildcards.shot} "
        "--seed {wildcards.seed} --scheme {params.scheme} --num-labels {params.num_labels} "
        "--settings {params.settings:q} --save-model {output.model:q} -o {output.json:q} 2> {log:q}"


rule explain:
    input:
        classifier=explain_classifier,
        test=rules.task_data.output.test,
    output:
        f"{EXPLAIN}/{{model}}/seed{{seed}}.npz",
    log:
        f"{RESULTS}/logs/explain/{{task}}/{{shot}}/{{model}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/explain/{{task}}/{{shot}}/{{model}}/seed{{seed}}.tsv"
    conda:
        ENV
    threads: CFG["explain"]["threads"]
    resources:
        mem_mb=CFG["explain"]["mem_mb"],
        runtime=CFG["explain"]["runtime_min"],
    params:
        target=CFG["explain"]["target_class"],
        n=CFG["explain"]["n_sequences"],
    shell:
        "GENEMASK_THREADS={threads} genemask explain --model {input.classifier:q} {input.test:q} "
        "--label {params.target} --target-class {params.target} --max-seqs {params.n} -o {output:q} 2> {log:q}"


rule explain_motifs:
    input:
        explain_npzs,
    output:
        motifs=f"{EXPLAIN}/{{scheme}}.motifs.tsv",
        seqlets=f"{EXPLAIN}/{{scheme}}.seqlets.tsv",
        reliance=f"{EXPLAIN}/{{scheme}}.reliance.tsv",
        logos=f"{EXPLAIN}/{{scheme}}.motifs.png",
    log:
        f"{RESULTS}/logs/explain_motifs/{{task}}/{{shot}}/{{scheme}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/explain_motifs/{{task}}/{{shot}}/{{scheme}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=CFG["explain"]["mem_mb"],
        runtime=CFG["explain"]["runtime_min"],
    params:
        window=CFG["explain"]["window"],
        flank=CFG["explain"]["flank"],
        fdr=CFG["explain"]["fdr"],
        min_seqlets=CFG["explain"]["min_seqlets"],
        q=CFG["report"]["motif_q_threshold"],
    shell:
        "genemask explain-motifs {input:q} -o {output.motifs:q} --seqlets {output.seqlets:q} "
        "--reliance {output.reliance:q} --logos {output.logos:q} --window {params.window} "
        "--flank {params.flank} --fdr {params.fdr} --min-seqlets {params.min_seqlets} "
        "--q-threshold {params.q} 2> {log:q}"


rule explain_report:
    input:
        [
            f"{RESULTS}/explain/{t}/{s}/{sch}.{kind}.tsv"
            for t, s, sch in EXPLAIN_GROUPS
            for kind in ("motifs", "reliance")
        ],
    output:
        motifs=f"{REPORT}/explain_motifs.tsv",
        reliance=f"{REPORT}/explain_reliance.tsv",
    log:
        f"{RESULTS}/logs/explain_report.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        inputs=" ".join(
            "--input "
            + " ".join(
                shlex.quote(a)
                for a in (
                    t,
                    sch,
                    f"{RESULTS}/explain/{t}/{s}/{sch}.motifs.tsv",
                    f"{RESULTS}/explain/{t}/{s}/{sch}.reliance.tsv",
                )
            )
            for t, s, sch in EXPLAIN_GROUPS
        ),
    shell:
        "genemask explain-report {params.inputs} --motifs-out {output.motifs:q} "
        "--reliance-out {output.reliance:q} 2> {log:q}"
