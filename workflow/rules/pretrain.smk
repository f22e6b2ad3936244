# One pretraining run per masking scheme x pretraining seed (GPU rule; torchrun when more than one
# GPU is given). Its folder holds a Hugging Face model folder step<N>/ per pretraining budget in
# pretrain.eval_steps (and the last step), fine-tuned like models of their own. Scheme `none` is
# the random-initialisation baseline: the same model saved after 0 steps. Checkpoints are kept
# beside the run (<run>.ckpt/), so a new eval step is exported or trained from the nearest one.


rule pretrain:
    input:
        corpus=expand(f"{RESULTS}/corpus/{{chunk}}", chunk=CHUNK_IDS),
        ranking=ranking_file(),
        model_config=MODEL_CONFIG,
    output:
        directory(f"{RESULTS}/models/{{scheme}}/seed{{pseed}}"),
    log:
        f"{RESULTS}/logs/pretrain/{{scheme}}/seed{{pseed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/pretrain/{{scheme}}/seed{{pseed}}.tsv"
    conda:
        ENV
    threads: CFG["pretrain"]["threads"]
    resources:
        **gpu_resources("pretrain"),
        mem_mb=CFG["pretrain"]["mem_mb"],
        runtime=CFG["pretrain"]["runtime_min"],
    params:
        launcher=(
            "genemask"
            if CFG["pretrain"]["gpus"] <= 1
            else f"torchrun --standalone --nproc_per_node={CFG['pretrain']['gpus']} -m genemask.cli"
        ),
        # the resolved settings (plan.fill_settings): a changed default reruns exactly the runs it changes
        settings=json.dumps(CFG["pretrain"]["settings"], sort_keys=True),
        steps=lambda wc: "--set steps=0" if wc.scheme == "none" else "",
        save_steps=lambda wc: " ".join(map(str, plan.eval_steps(CFG, wc.scheme))),
    shell:
        "{params.launcher} pretrain --corpus {input.corpus:q} --model-config {input.model_config:q} "
        "--scheme {wildcards.scheme} --ranking {input.ranking:q} --settings {params.settings:q} "
        "--set threads={threads} --set seed={wildcards.pseed} {params.steps} "
        "--save-steps {params.save_steps} -o {output:q} 2> {log:q}"
