# Few-shot data per task x shot (cleaned, leakage removed), then fine-tuning per
# task x shot x scheme x seed, each scored once on the test set. Each run is its own job (its own
# JSON, log and rerun decision); with finetune.worker (default) the runs are children of one warm
# process that imported torch/transformers once (genemask.worker), and on SLURM the profile bundles
# them into group jobs (profiles/slurm: groups / group-components).


rule task_data:
    input:
        train=shot_file,
        test=lambda wc: task_file(wc.task, CFG["tasks"][wc.task]["test"]),
        exclude=lambda wc: [
            task_file(wc.task, e) for e in CFG["tasks"][wc.task].get("exclude", [])
        ],
    output:
        train=f"{RESULTS}/tasks/{{task}}/{{shot}}/train.tsv",
        test=f"{RESULTS}/tasks/{{task}}/{{shot}}/test.tsv",
        stats=f"{RESULTS}/tasks/{{task}}/{{shot}}/stats.json",
    log:
        f"{RESULTS}/logs/task_data/{{task}}/{{shot}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/task_data/{{task}}/{{shot}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=lambda wc, input: plan.task_data_mem_mb(CFG, input.size_mb),
        runtime=10,
    params:
        num_labels=lambda wc: CFG["tasks"][wc.task]["num_labels"],
        max_test=CFG["finetune"]["max_test"],
        extra=lambda wc: plan.task_data_args(CFG, wc.task, int(wc.shot)),
    shell:
        "genemask task-data --task {wildcards.task} --train {input.train:q} --test {input.test:q} "
        "--exclude {input.exclude:q} --num-labels {params.num_labels} --max-test {params.max_test} "
        "{params.extra:q} --out-train {output.train:q} --out-test {output.test:q} "
        "--out-stats {output.stats:q} 2> {log:q}"


rule baseline:
    output:
        directory(f"{RESULTS}/baselines/{{name}}"),
    log:
        f"{RESULTS}/logs/baselines/{{name}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/baseline/{{name}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        model=lambda wc: CFG["baselines"][wc.name]["model"],
        revision=lambda wc: CFG["baselines"][wc.name].get("revision") or "main",
    shell:
        "genemask baseline --name {wildcards.name} --model {params.model:q} "
        "--revision {params.revision:q} -o {output:q} 2> {log:q}"


rule finetune:
    input:
        model=model_input,
        train=rules.task_data.output.train,
        test=rules.task_data.output.test,
    output:
        **SAVED_MODEL,
        json=f"{RESULTS}/finetune/{{task}}/{{shot}}/{{model}}/seed{{seed}}.json",
    log:
        f"{RESULTS}/logs/finetune/{{task}}/{{shot}}/{{model}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/finetune/{{task}}/{{shot}}/{{model}}/seed{{seed}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **gpu_resources("finetune"),
        mem_mb=CFG["finetune"]["mem_mb"],
        runtime=CFG["finetune"]["runtime_min"],
        # one slot per run; profiles/slurm allows one per group job, so grouped runs go in series
        finetune_runs=1,
    params:
        num_labels=lambda wc: CFG["tasks"][wc.task]["num_labels"],
        # the resolved settings (plan.fill_settings): a changed default reruns exactly the runs it changes
        settings=json.dumps(CFG["finetune"]["settings"], sort_keys=True),
        worker=int(CFG["finetune"]["worker"]),
        folder=model_folder,
        scheme=lambda wc: MODELS[wc.model]["scheme"],
        save=lambda wc, output: (
            f"--save-model {shlex.quote(output.model)}" if SAVED_MODEL else ""
        ),
    shell:
        "GENEMASK_THREADS={threads} GENEMASK_WORKER={params.worker} genemask finetune --model {params.folder:q} "
        "--train {input.train:q} --test {input.test:q} --task {wildcards.task} --shot {wildcards.shot} "
        "--seed {wildcards.seed} --scheme {params.scheme} --num-labels {params.num_labels} "
        "--settings {params.settings:q} {params.save} -o {output.json:q} 2> {log:q}"
