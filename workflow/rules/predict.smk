# Using the models (config `predict:`): every saved fine-tuned classifier that predict.models selects
# scores every file of predict.inputs (`genemask predict`), and with predict.embed every input is
# embedded by the pretrained encoders of predict.embed.models (`genemask embed`). Without the section
# nothing here is a target. Selections, paths and options come from genemask.plan.

# name -> absolute path (checked at config time); each name is one folder name (schema pattern)
PREDICT_INPUTS = plan.predict_inputs(CFG)
DATASETS = (
    "|".join(re.escape(d) for d in PREDICT_INPUTS) or "[A-Za-z0-9][A-Za-z0-9_.-]*"
)
PREDICT = plan.section_resources(CFG, "predict")  # threads, gpus, runtime_min, mem_mb
EMBED_EXT = plan.embed_ext(CFG)
PREDICT_OUTPUTS = [
    f"{RESULTS}/predict/{d}/{r['task']}/{r['shot']}/{r['model']}/seed{r['seed']}.tsv"
    for d in PREDICT_INPUTS
    for r in plan.predict_runs(CFG)
] + [
    f"{RESULTS}/embed/{d}/{m}{EMBED_EXT}"
    for d in PREDICT_INPUTS
    for m in plan.embed_models(CFG)
]
# .npy embeddings keep their ids beside them (inference.ids_file: <stem>.ids.txt)
EMBED_IDS = (
    {"ids": f"{RESULTS}/embed/{{dataset}}/{{model}}.ids.txt"}
    if EMBED_EXT == ".npy"
    else {}
)


wildcard_constraints:
    dataset=DATASETS,


rule predict:
    input:
        model=SAVED_MODEL_PATH,
        data=lambda wc: PREDICT_INPUTS[wc.dataset],
    output:
        f"{RESULTS}/predict/{{dataset}}/{{task}}/{{shot}}/{{model}}/seed{{seed}}.tsv",
    log:
        f"{RESULTS}/logs/predict/{{dataset}}/{{task}}/{{shot}}/{{model}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/predict/{{dataset}}/{{task}}/{{shot}}/{{model}}/seed{{seed}}.tsv"
    conda:
        ENV
    threads: PREDICT["threads"]
    resources:
        **gpu_resources("predict"),
        mem_mb=PREDICT["mem_mb"],
        runtime=PREDICT["runtime_min"],
    params:
        opts=plan.apply_args(CFG, "predict"),
    shell:
        "GENEMASK_THREADS={threads} genemask predict --model {input.model:q} {input.data:q} "
        "{params.opts:q} -o {output:q} 2> {log:q}"


rule embed:
    input:
        model=model_input,
        data=lambda wc: PREDICT_INPUTS[wc.dataset],
    output:
        **EMBED_IDS,
        emb=f"{RESULTS}/embed/{{dataset}}/{{model}}{EMBED_EXT}",
    log:
        f"{RESULTS}/logs/embed/{{dataset}}/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed/{{dataset}}/{{model}}.tsv"
    conda:
        ENV
    threads: PREDICT["threads"]
    resources:
        **gpu_resources("predict"),
        mem_mb=PREDICT["mem_mb"],
        runtime=PREDICT["runtime_min"],
    params:
        folder=model_folder,
        opts=plan.apply_args(CFG, "embed"),
    shell:
        "GENEMASK_THREADS={threads} genemask embed --model {params.folder:q} {input.data:q} "
        "{params.opts:q} -o {output.emb:q} 2> {log:q}"
