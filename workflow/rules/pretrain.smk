# One pretrained model per masking scheme (GPU rule; torchrun when more than one GPU is given).
# Scheme `none` is the random-initialisation baseline: the same model saved after 0 steps.


rule pretrain:
    input:
        corpus=expand(f"{RESULTS}/corpus/{{chunk}}", chunk=CHUNK_IDS),
        ranking=ranking_file(),
        model_config=MODEL_CONFIG,
    output:
        directory(f"{RESULTS}/models/{{scheme}}"),
    log:
        f"{RESULTS}/logs/pretrain/{{scheme}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain/{{scheme}}.tsv"
    conda:
        ENV
    threads: 2
    resources:
        **gpu_resources("pretrain"),
        mem_mb=CFG["pretrain"].get("mem_mb", 8000),
        runtime=CFG["pretrain"].get("runtime_min", 60),
    params:
        launcher=(
            "genemask"
            if CFG["pretrain"].get("gpus", 0) <= 1
            else f"torchrun --standalone --nproc_per_node={CFG['pretrain']['gpus']} -m genemask.cli"
        ),
        settings=json.dumps(CFG["pretrain"]["settings"], sort_keys=True),
        steps=lambda wc: "--set steps=0" if wc.scheme == "none" else "",
    shell:
        "{params.launcher} pretrain --corpus {input.corpus} --model-config {input.model_config} "
        "--scheme {wildcards.scheme} --ranking {input.ranking} --settings '{params.settings}' "
        "--set threads={threads} {params.steps} -o {output} 2> {log}"
