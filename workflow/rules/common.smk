# Config validation and every input function / wildcard list; the logic is in genemask.plan.
import json
import os
import sys

from genemask import plan

try:
    CFG = plan.resolve(
        config, where=" + ".join(map(str, workflow.configfiles)) or "config"
    )
except plan.GeneMaskError as e:  # one line naming the config file and key, no traceback
    sys.exit(f"genemask: error: {e}")
plan.export_root()  # GENEMASK_ROOT, for envs/genemask.post-deploy.sh (--sdm conda)
RESULTS = "results"
ENV = "../../envs/genemask.yaml"
CHUNKS = plan.chunks(CFG)
CHUNK_IDS = [c["chunk"] for c in CHUNKS]
# Chunk ids are c0000, c0001, ...: safe tokens for wildcards and file names, whatever the contig names.
REGION = {c["chunk"]: c["region"] for c in CHUNKS}
# NAME:LENGTH per contig, for `genemask index` / `chunks` (the length is split off from the right)
CONTIG_ARGS = [f"{c}:{n}" for c, n in CFG["genome"]["contigs"].items()]
RUNS = plan.runs(CFG)
SCHEMES = CFG["pretrain"]["schemes"]
SOURCE_BY_PATH = {s["path"]: s for s in CFG["sources"].values()}
MODEL_CONFIG = str(
    plan.ROOT / "resources" / "models" / f"{CFG['pretrain']['model']}.json"
)


wildcard_constraints:
    chunk="|".join(CHUNK_IDS),
    scheme="[a-z]+",
    task="[A-Za-z0-9_-]+",
    shot="[0-9]+",
    seed="[0-9]+",


def source(name):
    """Path of a declared source once fetched (mirror layout under results/sources)."""
    return f"{RESULTS}/sources/{CFG['sources'][name]['path']}"


def ranking_file():
    if CFG["npmi"]["ranking"] == "published":
        return source("data_a")
    return f"{RESULTS}/npmi/npmi.tsv"


def shot_file(wildcards):
    return source(plan.shot_source(CFG, wildcards.task, int(wildcards.shot)))


def gpu_resources(section):
    n = CFG[section].get("gpus", 0)
    return {"gpu": n} if n else {}
