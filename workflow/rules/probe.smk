# Frozen-representation probes (probe.enabled), the second evaluation protocol: per model x task,
# one job embeds the task's sequences once with the pretrained model and fits a logistic regression
# per shot x seed on the same cleaned K-shot files fine-tuning uses (genemask probe; one JSON of runs).

PROBES = plan.probes(CFG)
PROBE_JSONS = [f"{RESULTS}/probe/{p['task']}/{p['model']}.json" for p in PROBES]


rule probe:
    input:
        unpack(probe_task_files),
        model=model_input,
    output:
        f"{RESULTS}/probe/{{task}}/{{model}}.json",
    log:
        f"{RESULTS}/logs/probe/{{task}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/probe/{{task}}/{{model}}.tsv"
    conda:
        ENV
    threads: CFG["probe"]["threads"]
    resources:
        mem_mb=CFG["probe"]["mem_mb"],
        runtime=CFG["probe"]["runtime_min"],
    params:
        folder=model_folder,
        scheme=lambda wc: MODELS[wc.model]["scheme"],
        num_labels=lambda wc: CFG["tasks"][wc.task]["num_labels"],
        shots=lambda wc: " ".join(
            f"--shot {shlex.quote(a)}" if i % 3 == 0 else shlex.quote(a)
            for i, a in enumerate(probe_shot_args(wc))
        ),
        seeds=CFG["finetune"]["seeds"],
        batch_size=CFG["probe"]["batch_size"],
        max_rows=CFG["probe"]["max_train_rows"],
        bf16=str(CFG["probe"]["bf16"]).lower(),
    shell:
        "GENEMASK_THREADS={threads} genemask probe --model {params.folder:q} --task {wildcards.task} "
        "--scheme {params.scheme:q} --num-labels {params.num_labels} {params.shots} --seeds {params.seeds:q} "
        "--batch-size {params.batch_size} --max-train-rows {params.max_rows} --bf16 {params.bf16:q} -o {output:q} "
        "2> {log:q}"
