# Config validation and every input function / wildcard list; the logic is in genemask.plan.
import json
import re
import shlex
import os
import sys
from pathlib import Path

from genemask import plan
from snakemake.sourcecache import LocalSourceFile

try:
    # workflow/rules/ of this checkout (also as a module of another workflow); a remote module
    # (github(...)) has no local checkout to compare with.
    if isinstance(workflow.current_basedir, LocalSourceFile):
        plan.check_checkout(Path(str(workflow.current_basedir)).parent)
    CFG = plan.resolve(
        config, where=" + ".join(map(str, workflow.configfiles)) or "config"
    )
except plan.GeneMaskError as e:  # one line naming the config file and key, no traceback
    sys.exit(f"genemask: error: {e}")
plan.export_root()  # GENEMASK_ROOT, for envs/genemask.post-deploy.sh (--sdm conda)
plan.export_own_bin()  # jobs find this environment's `genemask` without an activated environment
RESULTS = "results"
REPORT = f"{RESULTS}/report"
ENV = "../../envs/genemask.yaml"
CHUNKS = plan.chunks(CFG)
CHUNK_IDS = [c["chunk"] for c in CHUNKS]
# Chunk ids are c0000, c0001, ...: safe tokens for wildcards and file names, whatever the contig names.
REGION = {c["chunk"]: c["region"] for c in CHUNKS}
# NAME:LENGTH per contig, for `genemask index` / `chunks` (the length is split off from the right)
CONTIG_ARGS = [f"{c}:{n}" for c, n in CFG["genome"]["contigs"].items()]
RUNS = plan.runs(CFG)
MODELS = {m["id"]: m for m in plan.models(CFG)}
PSEEDS = plan.pretrain_seeds(CFG)
# finetune.save: all -> each run also keeps its classifier as a Hugging Face folder beside its JSON
SAVED_MODEL_PATH = f"{RESULTS}/finetune/{{task}}/{{shot}}/{{model}}/seed{{seed}}.model"
SAVED_MODEL = (
    {"model": directory(SAVED_MODEL_PATH)} if CFG["finetune"]["save"] == "all" else {}
)
SCHEMES = CFG["pretrain"]["schemes"]
SOURCE_BY_PATH = {s["path"]: s for s in CFG["sources"].values()}
MODEL_CONFIG = str(
    plan.ROOT / "resources" / "models" / f"{CFG['pretrain']['model']}.json"
)


wildcard_constraints:
    chunk="|".join(CHUNK_IDS),
    scheme="[a-z_]+",
    task="[A-Za-z0-9_-]+",
    shot="[0-9]+",
    seed="[0-9]+",
    pseed="[0-9]+",
    model="|".join(re.escape(m) for m in MODELS),


def source(name):
    """Path of a declared source once fetched (mirror layout under results/sources)."""
    return f"{RESULTS}/sources/{CFG['sources'][name]['path']}"


def ranking_file():
    if CFG["npmi"]["ranking"] == "published":
        return source("data_a")
    return f"{RESULTS}/npmi/npmi.tsv"


def task_file(task, name):
    """A task's file: a local task's path as given, a catalogued task's source once fetched."""
    return name if plan.is_local(CFG, task) else source(name)


def shot_file(wildcards):
    return task_file(
        wildcards.task, plan.shot_source(CFG, wildcards.task, int(wildcards.shot))
    )


def model_input(wildcards):
    """The job that makes a fine-tuned model: its pretraining run, or the prepared baseline."""
    m = MODELS[wildcards.model]
    if "baseline" in m:
        return f"{RESULTS}/baselines/{m['baseline']}"
    return f"{RESULTS}/models/{m['run']}"


def model_folder(wildcards):
    """The Hugging Face folder fine-tuned: the run's step<N>/ folder, or the baseline's."""
    m = MODELS[wildcards.model]
    if "baseline" in m:
        return f"{RESULTS}/baselines/{m['baseline']}"
    return f"{RESULTS}/models/{m['run']}/step{m['pretrain_step']}"


def gpu_resources(section):
    n = plan.section_resources(CFG, section)["gpus"]
    return {"gpu": n} if n else {}


def probe_task_files(wildcards):
    return {
        f"{kind}{shot}": f"{RESULTS}/tasks/{wildcards.task}/{shot}/{kind}.tsv"
        for shot in plan.probe_shots(CFG, wildcards.task)
        for kind in ("train", "test")
    }


def probe_shot_args(wildcards):
    return [
        a
        for shot in plan.probe_shots(CFG, wildcards.task)
        for a in (
            str(shot),
            f"{RESULTS}/tasks/{wildcards.task}/{shot}/train.tsv",
            f"{RESULTS}/tasks/{wildcards.task}/{shot}/test.tsv",
        )
    ]


def explain_classifier(wildcards):
    """The run's saved classifier (finetune.save: all), else one fine-tuned again for explain."""
    if SAVED_MODEL:
        return SAVED_MODEL_PATH.format(**wildcards)
    return f"{RESULTS}/explain/{wildcards.task}/{wildcards.shot}/{wildcards.model}/seed{wildcards.seed}.model"


def explain_npzs(wildcards):
    return [
        f"{RESULTS}/explain/{r['task']}/{r['shot']}/{r['model']}/seed{r['seed']}.npz"
        for r in EXPLAIN_RUNS
        if (r["task"], str(r["shot"]), r["scheme"])
        == (wildcards.task, wildcards.shot, wildcards.scheme)
    ]
