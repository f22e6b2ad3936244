"""Assertions of `make test-slurm` (.ci/slurm/run.sh), run while the CI cluster is still up.

usage: python check.py WORKDIR SNAKEMAKE_OUTPUT CONFIG [CONFIG ...]

The shrunk DAG finished with every run in results/report/runs.tsv and every run's JSON; every job
except the local ones (`all`) went through SLURM: one sbatch job per job, except fine-tuning, whose
runs went N to a group job (profiles' `group-components`: ceil(runs / N) sbatch jobs, each asking
for ONE run's GPU, CPUs and memory and N runs' time); one SLURM log and one COMPLETED SLURM job per
sbatch job; the pretrain and fine-tuning jobs were allocated one GPU through GRES and the others
none; jobs saw GENEMASK_MIRROR; every fine-tuning run went through the warm worker.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

from genemask import plan

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ["profiles/slurm", "profiles/slurm-ci"]  # as run.sh passes them: a later one's keys win
GROUPED = "finetune"  # the rule that profiles/slurm puts into group jobs


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


def profile() -> dict:
    """The profiles' settings as snakemake combines several --profile (top-level keys replaced)."""
    out = {}
    for p in PROFILES:
        out.update(yaml.safe_load(open(ROOT / p / "config.yaml")))
    return out


def slurm_minutes(limit: str) -> int:
    """scontrol's TimeLimit ([D-]HH:MM:SS) in minutes."""
    days, _, hms = limit.rpartition("-")
    h, m, sec = (int(x) for x in hms.split(":"))
    return (int(days or 0) * 24 + h) * 60 + m + (sec > 0)


def group_members(out: str, group: str, field: str = "output") -> list[list[str]]:
    """One list per submitted group job: its members' `field` (output, benchmark, ...), from the main
    process's 'Group job G' blocks (members: job info indented by 8 spaces, other jobs by 4)."""
    blocks = out.split(f"Group job {group} (jobs in lexicogr. order):")[1:]
    return [re.findall(rf"^ {{8}}{field}: (\S+)$", b.split("has been submitted with SLURM jobid")[0], re.M)
            for b in blocks]


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

    prof = profile()
    group = prof["groups"][GROUPED]
    size = prof["group-components"][group]
    ft_gpus = cfg["finetune"].get("gpus", 0)
    assert ft_gpus == 1, "the SLURM test config must give fine-tuning one GPU (finetune.gpus: 1)"

    # 1. the report has every run, and every run its JSON
    expected = {(r["task"], r["shot"], r["scheme"], r["seed"]) for r in plan.runs(cfg)}
    runs = pd.read_csv(work / "results/report/runs.tsv", sep="\t")
    got = {(r.task, r.shot, r.scheme, r.seed) for r in runs.itertuples()}
    assert len(runs) == len(expected) and got == expected, (len(runs), got ^ expected)
    jsons = [work / f"results/finetune/{r['task']}/{r['shot']}/{r['model']}/seed{r['seed']}.json"
             for r in plan.runs(cfg)]  # model: <scheme>/seed<p>/step<N> (plan.models)
    absent = [str(p.relative_to(work)) for p in jsons if not p.is_file()]
    assert not absent, f"fine-tuning JSONs missing: {absent}"
    print(f"check: runs.tsv has all {len(runs)} runs, each with its JSON")

    # 2. every job but the local ones (`all`, and any rule a `localrules:` names) was submitted to
    #    SLURM: one sbatch job each, except fine-tuning: ceil(runs / group size) group jobs; one
    #    SLURM log per sbatch job (rule_<rule>/... or group_<group>_<rules>/...)
    stats = job_stats(out)
    local = Counter(re.findall(r"^localrule (\w+):$", out, re.M))
    remote = stats - local
    assert remote["pretrain"] and remote[GROUPED] == len(expected), remote
    n_groups = math.ceil(remote[GROUPED] / size)
    sbatch = Counter({**remote, GROUPED: n_groups})
    sizes = sorted(len(m) for m in group_members(out, group))
    assert sum(sizes) == remote[GROUPED] and len(sizes) == n_groups and max(sizes) <= size, sizes
    submitted = dict(re.findall(r"Job (\S+) has been submitted with SLURM jobid (\d+)", out))
    assert len(submitted) == sum(sbatch.values()), (len(submitted), dict(sbatch))
    logs = work / ".snakemake" / "slurm_logs"
    log_dir_rule = {f"rule_{r}": r for r in sbatch} | {f"group_{group}_{GROUPED}": GROUPED}
    per_rule = Counter()
    for d in logs.iterdir():
        assert d.name in log_dir_rule, f"unexpected SLURM log folder {d}"
        per_rule[log_dir_rule[d.name]] += len(list(d.rglob("*.log")))
    assert per_rule == sbatch, f"SLURM logs per rule {dict(per_rule)} != sbatch jobs per rule {dict(sbatch)}"
    assert not (logs / f"rule_{GROUPED}").exists(), f"{GROUPED} was submitted outside a group"
    print(f"check: {len(submitted)} sbatch jobs: {dict(sorted(sbatch.items()))}"
          + (f" (local: {dict(local)})" if local else ""))
    print(f"check: {remote[GROUPED]} {GROUPED} runs in {n_groups} group jobs of <= {size} (members {sizes}),"
          f" SLURM logs for {len(per_rule)} rules")

    # 3. slurmctld ran them all to completion; one GPU to each pretrain and fine-tuning group job and
    #    none to the others; a group job asks for one run's CPUs and memory and its members' time
    jobs = slurm_jobs()
    ids = set(submitted.values())
    missing = ids - set(jobs)
    assert not missing, f"SLURM does not know jobs {sorted(missing)}"
    states = Counter(jobs[i]["JobState"] for i in ids)
    assert states == {"COMPLETED": len(ids)}, states
    gpu_rules, group_minutes = Counter(), []
    for i in ids:
        j = jobs[i]
        m = re.search(r"/slurm_logs/((?:rule|group)_\w+)/", j.get("StdOut", ""))
        assert m and m.group(1) in log_dir_rule, (i, j.get("StdOut"))
        rule = log_dir_rule[m.group(1)]
        gpus = {"pretrain": cfg["pretrain"]["gpus"], GROUPED: ft_gpus}.get(rule, 0)
        if gpus:
            assert j.get("JOB_GRES") == f"gpu:{gpus}", (rule, j.get("JOB_GRES"))
            assert j.get("TresPerJob") == f"gres:gpu:{gpus}", (rule, j.get("TresPerJob"))
            gpu_rules[rule] += 1
        else:
            assert j.get("JOB_GRES", "(null)") in ("(null)", ""), (rule, j.get("JOB_GRES"))
        if rule == GROUPED:
            assert j["CPUs/Task"] == "1" and j["MinMemoryNode"] == f"{cfg['finetune']['mem_mb']}M", \
                (j["CPUs/Task"], j["MinMemoryNode"])
            group_minutes.append(slurm_minutes(j["TimeLimit"]))
    assert gpu_rules == {"pretrain": len(cfg["pretrain"]["schemes"]), GROUPED: n_groups}, gpu_rules
    assert sorted(group_minutes) == [k * cfg["finetune"]["runtime_min"] for k in sizes], (group_minutes, sizes)
    print(f"check: all {len(ids)} SLURM jobs COMPLETED; GPU (gres gpu:1) jobs: {dict(gpu_rules)};"
          f" {GROUPED} group jobs: 1 CPU, {cfg['finetune']['mem_mb']} MB, {sorted(group_minutes)} min")

    # 4. the environment reached the jobs: fetch read the mirror named by GENEMASK_MIRROR
    mirror = os.path.realpath(os.environ["GENEMASK_MIRROR"])
    fetch_logs = list((work / "results/logs/fetch").rglob("*.log"))
    assert fetch_logs and all(mirror in p.read_text() for p in fetch_logs), "jobs did not use GENEMASK_MIRROR"
    print(f"check: {len(fetch_logs)} fetch jobs read the mirror {mirror}")

    # 5. every fine-tuning run went through the warm worker (it is keyed by SLURM_JOB_ID, so the runs
    #    of one group job share one); wall times per group job: the server's start goes to one run
    ft_logs = list((work / "results/logs/finetune").rglob("*.log"))
    fallback = [str(p.relative_to(work)) for p in ft_logs if "warm worker" in p.read_text()]
    assert len(ft_logs) == len(expected) and not fallback, f"runs outside the warm worker: {fallback}"
    walls = [[round(float(pd.read_csv(work / f, sep="\t")["s"].iloc[0]), 1) for f in members]
             for members in group_members(out, group, "benchmark")]
    # one server per group job: one run pays its start (imports: ~10-25 s here), the others only
    # their training (~1 s); a server per run would make them all slow
    slow = [w for w in walls if len(w) > 1 and sorted(w)[-2] > max(w) / 2]
    assert not slow, f"more than one run per group job paid a worker start: {slow}"
    print(f"check: all {len(ft_logs)} fine-tuning runs used the warm worker, one per group job; wall s of"
          f" the runs per group job (the slowest one started it): {walls}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
