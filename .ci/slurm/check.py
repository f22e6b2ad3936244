"""Assertions of `make test-slurm` (.ci/slurm/run.sh), run while the CI cluster is still up.

usage: python check.py WORKDIR SNAKEMAKE_OUTPUT CONFIG [CONFIG ...]

The shrunk DAG finished with every run in results/report/runs.tsv; every job except the local
ones (`all`) went through SLURM (one per-rule SLURM log each, one COMPLETED SLURM job each); the pretrain
jobs were allocated a GPU through GRES and the others none; jobs saw GENEMASK_MIRROR.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

from genemask import plan


def merged(paths):
    """Config files merged the way snakemake merges several --configfile (nested dicts update)."""
    def update(a, b):
        for k, v in b.items():
            if isinstance(v, dict) and isinstance(a.get(k), dict):
                update(a[k], v)
            else:
                a[k] = v
        return a
    cfg = {}
    for p in paths:
        update(cfg, yaml.safe_load(open(p)))
    return cfg


def job_stats(out: str) -> Counter:
    m = re.search(r"Job stats:\njob\s+count\n[-\s]+\n(.*?)\ntotal\s+(\d+)", out, re.S)
    assert m, "no 'Job stats' table in the snakemake output"
    return Counter({name: int(n) for name, n in (line.split() for line in m.group(1).splitlines())})


def slurm_jobs() -> dict[str, dict[str, str]]:
    """Every job slurmctld still knows (MinJobAge=600), as scontrol's key=value pairs."""
    text = subprocess.run(["scontrol", "show", "job", "-d", "-o"], capture_output=True, text=True,
                          check=True).stdout
    jobs = {}
    for line in text.splitlines():
        kv = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "JobId" in kv:
            jobs[kv["JobId"]] = kv
    return jobs


def main(work: Path, out_file: Path, configs: list[str]) -> None:
    out = out_file.read_text()
    cfg = plan.resolve(merged(configs))
    assert cfg["pretrain"]["gpus"] >= 1, "the SLURM test config must give pretraining a GPU"

    # 1. the report has every run
    expected = {(r["task"], r["shot"], r["scheme"], r["seed"]) for r in plan.runs(cfg)}
    runs = pd.read_csv(work / "results/report/runs.tsv", sep="\t")
    got = {(r.task, r.shot, r.scheme, r.seed) for r in runs.itertuples()}
    assert len(runs) == len(expected) and got == expected, (len(runs), got ^ expected)
    print(f"check: runs.tsv has all {len(runs)} runs")

    # 2. every job but the local ones (`all`, and any rule a `localrules:` names) was submitted to
    #    SLURM and left a per-rule SLURM log
    stats = job_stats(out)
    local = Counter(re.findall(r"^localrule (\w+):$", out, re.M))
    remote = stats - local
    assert remote["pretrain"] and remote["finetune"], remote
    submitted = dict(re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", out))
    assert len(submitted) == sum(remote.values()), (len(submitted), remote)
    logs = work / ".snakemake" / "slurm_logs"
    per_rule = Counter({d.name.removeprefix("rule_"): len(list(d.rglob("*.log")))
                        for d in logs.glob("rule_*")})
    assert per_rule == remote, f"SLURM logs per rule {dict(per_rule)} != jobs per rule {dict(remote)}"
    print(f"check: {len(submitted)} jobs submitted with sbatch, SLURM logs for {len(per_rule)} rules"
          + (f" (local: {dict(local)})" if local else ""))

    # 3. slurmctld ran them all to completion; GPUs went to the pretrain jobs only
    jobs = slurm_jobs()
    ids = set(submitted.values())
    missing = ids - set(jobs)
    assert not missing, f"SLURM does not know jobs {sorted(missing)}"
    states = Counter(jobs[i]["JobState"] for i in ids)
    assert states == {"COMPLETED": len(ids)}, states
    gpu_rules = Counter()
    for i in ids:
        j = jobs[i]
        m = re.match(r"rule_(\w+?)(_wildcards_|$)", j.get("Comment", ""))
        rule = m.group(1) if m else j.get("Comment", "?")
        if j.get("JOB_GRES", "(null)") not in ("(null)", ""):
            assert j["JOB_GRES"] == f"gpu:{cfg['pretrain']['gpus']}", j["JOB_GRES"]
            assert j.get("TresPerJob") == f"gres:gpu:{cfg['pretrain']['gpus']}", j.get("TresPerJob")
            gpu_rules[rule] += 1
    assert gpu_rules == {"pretrain": len(cfg["pretrain"]["schemes"])}, gpu_rules
    print(f"check: all {len(ids)} SLURM jobs COMPLETED; GPU (gres) jobs: {dict(gpu_rules)}")

    # 4. the environment reached the jobs: fetch read the mirror named by GENEMASK_MIRROR
    mirror = os.path.realpath(os.environ["GENEMASK_MIRROR"])
    fetch_logs = list((work / "results/logs/fetch").rglob("*.log"))
    assert fetch_logs and all(mirror in p.read_text() for p in fetch_logs), "jobs did not use GENEMASK_MIRROR"
    print(f"check: {len(fetch_logs)} fetch jobs read the mirror {mirror}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
