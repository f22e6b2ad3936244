# Few-shot data per task x shot (cleaned, leakage removed), then fine-tuning per
# task x shot x scheme x seed, each scored once on the test set.


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
        mem_mb=1000,
        runtime=10,
    params:
        num_labels=lambda wc: CFG["tasks"][wc.task]["num_labels"],
        max_test=CFG["finetune"].get("max_test", 0),
        extra=lambda wc: plan.task_data_args(CFG, wc.task, int(wc.shot)),
    shell:
        "genemask task-data --task {wildcards.task} --train {input.train} --test {input.test} "
        "--exclude {input.exclude} --num-labels {params.num_labels} --max-test {params.max_test} {params.extra} "
        "--out-train {output.train} --out-test {output.test} --out-stats {output.stats} 2> {log}"


rule finetune:
    input:
        model=f"{RESULTS}/models/{{scheme}}",
        train=rules.task_data.output.train,
        test=rules.task_data.output.test,
    output:
        f"{RESULTS}/finetune/{{task}}/{{shot}}/{{scheme}}/seed{{seed}}.json",
    log:
        f"{RESULTS}/logs/finetune/{{task}}/{{shot}}/{{scheme}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/finetune/{{task}}/{{shot}}/{{scheme}}/seed{{seed}}.tsv"
    conda:
        ENV
    threads: 1
    resources:
        **gpu_resources("finetune"),
        mem_mb=CFG["finetune"].get("mem_mb", 4000),
        runtime=CFG["finetune"].get("runtime_min", 60),
    params:
        num_labels=lambda wc: CFG["tasks"][wc.task]["num_labels"],
        settings=json.dumps(CFG["finetune"].get("settings", {}), sort_keys=True),
    shell:
        "GENEMASK_THREADS={threads} genemask finetune --model {input.model} --train {input.train} "
        "--test {input.test} --task {wildcards.task} --shot {wildcards.shot} --seed {wildcards.seed} "
        "--scheme {wildcards.scheme} --num-labels {params.num_labels} --settings '{params.settings}' "
        "-o {output} 2> {log}"
