"""`genemask bench precision RESULTS -o precision.tsv`: fine-tuning in bf16 against float32, paired,
on the finished fine-tuning runs of a results folder.

Every selected run `RESULTS/finetune/<task>/<K>/<model>/seed<F>.json` (model `<scheme>/seed<P>/step<S>`
or `baseline/<name>`; a float32 run: no `precision` key, or `float32`) is fine-tuned again with
`bf16: true` (forced, so the comparison means the same on every CPU), with the same model folder
(`RESULTS/models/<model>`, `RESULTS/baselines/<name>`), the same cleaned task files
(`RESULTS/tasks/<task>/<K>/{train,test}.tsv`), the same seed, settings and thread count, and paired
with the stored float32 run. Nothing under RESULTS is written.

Settings: `--settings` (JSON or a JSON/YAML file, as `genemask finetune --settings`) if given; else
the run's own command line as Snakemake recorded it (`.snakemake/metadata/` of the folder holding
RESULTS: the `--settings` JSON and `GENEMASK_THREADS` of the job, i.e. the resolved config the study
ran with); else the schema's defaults. Either way the regime must give the epochs, batch size and lr
the stored JSON records, or the run is refused. Threads: `--threads`, else the stored JSON's.

`--fp32 rerun` fine-tunes each run in float32 too (just before its bf16 twin, same process): it checks
that the stored metrics are reproduced exactly (same code path, same machine: they should be; a
mismatch is counted and printed) and times float32 and bf16 under the same load. `--fp32 stored`
(the default) pairs with the stored JSONs and their times, measured under the study's load.

The new runs' JSONs go to `<output without .tsv>.runs/<task>/<K>/<model>/seed<F>.<precision>.json`
(and a .log of the progress lines beside each); a later call with the same output reuses them, so an
interrupted comparison resumes. `--jobs N` runs N processes (spawned; each run keeps its own thread
count).

Printed: per metric (accuracy, macro_f1, mcc, auroc) the paired differences bf16 - float32: n, mean,
sd, the 95% t-interval over the pairs, the 95% hierarchical bootstrap interval
(`stats.hierarchical_bootstrap`: cells = task x shot, pretrained models resampled, then fine-tuning
seeds within them; 10,000 replicates, seed 0), whether each interval holds 0 and whether
|mean| <= --margin (0.005); the mean accuracy difference per task; the median time per run (training
+ scoring) in float32 and bf16 per task. The last line is the verdict on accuracy. The TSV holds one
row per run: its keys, each metric in float32 and bf16 and their difference, both times, where the
settings came from.
"""
from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from ..util import GeneMaskError

METRICS = ("accuracy", "macro_f1", "mcc", "auroc")
RUN = re.compile(r"(?P<task>[^/]+)/(?P<shot>\d+)/(?P<model>.+)/seed(?P<seed>-?\d+)\.json")
MODEL = re.compile(r"(?P<scheme>[^/]+)/seed(?P<pseed>-?\d+)/step(?P<step>\d+)|baseline/(?P<baseline>[^/]+)")
N_BOOT = 10_000


# ---------------------------------------------------------------------------------------------
# the runs
# ---------------------------------------------------------------------------------------------
def find_runs(results: Path, tasks=None, shots=None, schemes=None, pretrain_seeds=None, steps=None,
              seeds=None) -> list[dict]:
    """The stored float32 fine-tuning runs of `results` that every given filter admits (a filter
    None or empty admits all), sorted by task, shot, model, seed."""
    root = results / "finetune"
    if not root.is_dir():
        raise GeneMaskError(f"{results}: no finetune/ folder (expected RESULTS/finetune/<task>/<K>/<model>/seed<F>.json)")
    runs = []
    for path in sorted(root.rglob("seed*.json")):
        m = RUN.fullmatch(path.relative_to(root).as_posix())
        mm = MODEL.fullmatch(m["model"]) if m else None
        if mm is None:
            continue
        scheme = mm["scheme"] or "baseline"
        pseed = int(mm["pseed"]) if mm["pseed"] is not None else None
        step = int(mm["step"]) if mm["step"] is not None else None
        run = {"task": m["task"], "shot": int(m["shot"]), "model": m["model"], "scheme": scheme,
               "pretrain_seed": pseed, "pretrain_step": step, "seed": int(m["seed"]), "json": path}
        if not all(not want or run[key] in want for key, want in (
                ("task", tasks), ("shot", shots), ("scheme", schemes), ("pretrain_seed", pretrain_seeds),
                ("pretrain_step", steps), ("seed", seeds))):
            continue
        run["folder"] = (results / "baselines" / mm["baseline"]) if mm["baseline"] else (results / "models" / m["model"])
        task_dir = results / "tasks" / run["task"] / str(run["shot"])
        run["train"], run["test"] = task_dir / "train.tsv", task_dir / "test.tsv"
        runs.append(run)
    return sorted(runs, key=lambda r: (r["task"], r["shot"], r["model"], r["seed"]))


def recorded_command(results: Path, json_path: Path) -> tuple[str | None, int | None]:
    """(the --settings JSON, GENEMASK_THREADS) of the job that wrote `json_path`, from Snakemake's
    record (`.snakemake/metadata/<urlsafe base64 of the output path>`, the path as the job named it:
    relative to the folder holding RESULTS, or absolute); (None, None) when there is none."""
    meta = results.resolve().parent / ".snakemake" / "metadata"
    if not meta.is_dir():
        return None, None
    names = {json_path.resolve().relative_to(results.resolve().parent).as_posix(), str(json_path.resolve())}
    for name in names:
        b64 = base64.urlsafe_b64encode(name.encode()).decode()
        record = meta.joinpath(*[b64[i : i + 255] for i in range(0, len(b64), 255)])  # Snakemake splits long names
        if not record.is_file():
            continue
        try:
            words = shlex.split(json.loads(record.read_text()).get("shellcmd") or "")
        except (OSError, ValueError):
            continue
        settings = words[words.index("--settings") + 1] if "--settings" in words[:-1] else None
        threads = next((int(w.split("=", 1)[1]) for w in words if re.fullmatch(r"GENEMASK_THREADS=\d+", w)), None)
        return settings, threads
    return None, None


def run_settings(run: dict, stored: dict, results: Path, explicit) -> tuple[dict, str, int]:
    """(settings, where they came from, threads) for one run (module docstring); GeneMaskError when
    the regime they give is not the one the stored JSON records."""
    from ..finetune import load_settings, select_regime

    recorded, rec_threads = recorded_command(results, run["json"])
    if explicit is not None:
        st, source = load_settings(explicit), "--settings"
    elif recorded is not None:
        st, source = load_settings(recorded), "snakemake record"
    else:
        st, source = load_settings(None), "defaults"
    regime = select_regime(st, run["shot"])
    want = {k: stored.get(k) for k in ("epochs", "batch_size", "lr")}
    got = {"epochs": int(regime["epochs"]), "batch_size": int(regime["batch_size"]), "lr": float(regime["lr"])}
    if any(want[k] is not None and want[k] != got[k] for k in got):
        raise GeneMaskError(f"{run['json']}: the run trained with {want}, the settings ({source}) give {got}; "
                            f"pass the study's fine-tuning settings with --settings")
    threads = int(stored.get("threads") or rec_threads or 1)
    return st, source, threads


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------
def _finetune_one(job: dict) -> dict:
    """Fine-tune one run in one precision (a worker's unit; reuses a finished JSON): its JSON."""
    out = Path(job["output"])
    if out.is_file():
        with contextlib.suppress(ValueError, OSError):
            r = json.loads(out.read_text())
            if r.get("precision") == job["precision"] and r.get("seed") == job["seed"]:
                return {**r, "reused": True}
    from ..finetune import finetune_cli

    out.parent.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("GENEMASK_THREADS")
    os.environ["GENEMASK_THREADS"] = str(job["threads"])  # the run's thread count (finetune's thread_scope)
    try:
        with open(out.with_suffix(".log"), "w") as log, contextlib.redirect_stderr(log):
                r = finetune_cli(model=job["folder"], train=job["train"], test=job["test"], task=job["task"],
                             shot=job["shot"], seed=job["seed"], scheme=job["scheme"], num_labels=job["num_labels"],
                             settings={**job["settings"], "bf16": job["precision"] == "bf16"}, output=str(out))
    finally:
        if old is None:
            os.environ.pop("GENEMASK_THREADS", None)
        else:
            os.environ["GENEMASK_THREADS"] = old
    return {**r, "reused": False}


def _finetune_pair(jobs: list[dict]) -> list[dict]:
    return [_finetune_one(j) for j in jobs]


def _execute(pairs: list[list[dict]], n_jobs: int, say) -> list[list[dict]]:
    """Each pair of jobs (float32 rerun, if any, then bf16) in order, in `n_jobs` spawned processes."""
    if n_jobs <= 1:
        out = []
        for i, p in enumerate(pairs):
            out.append(_finetune_pair(p))
            say(i + 1, len(pairs), out[-1])
        return out
    import concurrent.futures as cf
    import multiprocessing as mp

    out = [None] * len(pairs)
    with cf.ProcessPoolExecutor(n_jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_finetune_pair, p): i for i, p in enumerate(pairs)}
        for done, f in enumerate(cf.as_completed(futures), 1):
            out[futures[f]] = f.result()
            say(done, len(pairs), out[futures[f]])
    return out


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------
def _num(v) -> float:
    return math.nan if v is None else float(v)


def summarize(table, margin: float, n_boot: int = N_BOOT) -> list[dict]:
    """Per metric: n, mean, sd of d = bf16 - float32, the 95% t-interval over pairs, the 95%
    hierarchical bootstrap interval (cells task x shot, groups = pretrained models), the checks."""
    import pandas as pd
    from scipy import stats as sps

    from ..stats import hierarchical_bootstrap

    out = []
    for m in METRICS:
        d = table[f"{m}_bf16"] - table[f"{m}_float32"]
        ok = d.notna()
        x = d[ok].to_numpy(dtype=float)
        n = int(x.size)
        row = {"metric": m, "n": n, "mean": math.nan, "sd": math.nan, "t_lo": math.nan, "t_hi": math.nan,
               "boot_lo": math.nan, "boot_hi": math.nan}
        if n:
            row["mean"] = float(x.mean())
        if n >= 2:
            row["sd"] = float(x.std(ddof=1))
            half = float(sps.t.ppf(0.975, n - 1)) * row["sd"] / math.sqrt(n)
            row["t_lo"], row["t_hi"] = row["mean"] - half, row["mean"] + half
            sub = table[ok]
            cells = [pd.DataFrame({"group": g["model"].to_numpy(), "d": d.loc[g.index].to_numpy(dtype=float)})
                     for _, g in sub.groupby(["task", "shot"], sort=True)]
            _, reps = hierarchical_bootstrap(cells, n_boot=n_boot, rng=0)
            row["boot_lo"], row["boot_hi"] = (float(v) for v in np.nanquantile(reps, [0.025, 0.975]))
        row["t_holds_0"] = None if n < 2 else bool(row["t_lo"] <= 0 <= row["t_hi"])  # None: too few pairs
        row["boot_holds_0"] = None if n < 2 else bool(row["boot_lo"] <= 0 <= row["boot_hi"])
        row["within_margin"] = None if not n else bool(abs(row["mean"]) <= margin)
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# command
# ---------------------------------------------------------------------------------------------
def main(args) -> int:
    from ..util import atomic_output

    results = Path(args.results)
    output = Path(args.output)
    if not str(output).endswith(".tsv"):
        raise GeneMaskError(f"{output}: the paired table is written as TSV; use a .tsv name")
    workdir = output.with_name(output.name[: -len(".tsv")] + ".runs")
    if any(p.resolve().is_relative_to(results.resolve()) for p in (workdir, output)):
        raise GeneMaskError(f"{output}: write it outside {results} (nothing under the results folder is written)")
    runs = find_runs(results, args.tasks, args.shots, args.schemes, args.pretrain_seeds, args.steps, args.seeds)
    if not runs:
        raise GeneMaskError(f"{results}: no fine-tuning run matches the selection")
    pairs, meta = plan_jobs(runs, results, workdir, args)
    _header(runs, meta, results, args)
    t0 = time.perf_counter()

    def say(done, total, res):
        r = res[-1]
        print(f"  [{done}/{total}] {r['task']} {r['shot']}-shot {r['scheme']} pretrain seed {r.get('pretrain_seed')} "
              f"seed {r['seed']}: bf16 accuracy {r['accuracy']:.4f}"
              + (" (reused)" if r["reused"] else f", {r['train_seconds'] + r['eval_seconds']:.1f} s")
              + f"; {time.perf_counter() - t0:.0f} s so far", file=sys.stderr, flush=True)

    table, mismatched = pair_table(meta, _execute(pairs, max(1, int(args.jobs)), say))
    with atomic_output(output) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    report(table, summarize(table, args.margin), mismatched, output, args)
    return 0


def plan_jobs(runs: list[dict], results: Path, workdir: Path, args) -> tuple[list[list[dict]], list[tuple]]:
    """Per run its jobs (float32 rerun if asked, then bf16) and (run, stored JSON, settings source)."""
    pairs, meta = [], []
    for run in runs:
        stored = json.loads(run["json"].read_text())
        if stored.get("precision", "float32") != "float32":
            raise GeneMaskError(f"{run['json']}: a {stored['precision']} run; the stored runs must be float32")
        for f in ("folder", "train", "test"):
            if not run[f].exists():
                raise GeneMaskError(f"{run[f]}: missing ({run['json']} needs it)")
        st, source, threads = run_settings(run, stored, results, args.settings)
        base = {"folder": str(run["folder"]), "train": str(run["train"]), "test": str(run["test"]),
                "task": run["task"], "shot": run["shot"], "seed": run["seed"], "scheme": stored["scheme"],
                "num_labels": int(stored["num_labels"]), "settings": st, "threads": args.threads or threads}
        stem = workdir / run["task"] / str(run["shot"]) / run["model"] / f"seed{run['seed']}"
        pairs.append([{**base, "precision": p, "output": f"{stem}.{p}.json"}
                      for p in (("float32", "bf16") if args.fp32 == "rerun" else ("bf16",))])
        meta.append((run, stored, source))
    return pairs, meta


def pair_table(meta: list[tuple], done: list[list[dict]]):
    """(one row per run: keys, metrics float32 / bf16 / difference, times, provenance; the stored
    JSONs a float32 rerun did not reproduce)."""
    import pandas as pd

    rows, mismatched = [], []
    for (run, stored, source), res in zip(meta, done):
        new = {r["precision"]: r for r in res}
        f32 = new.get("float32", stored)
        same = all(_num(f32[m]) == _num(stored[m]) or (math.isnan(_num(f32[m])) and math.isnan(_num(stored[m])))
                   for m in METRICS)
        if not same:
            mismatched.append(run["json"])
        row = {k: run[k] for k in ("task", "shot", "model", "scheme", "pretrain_seed", "pretrain_step", "seed")}
        for m in METRICS:
            row[f"{m}_float32"], row[f"{m}_bf16"] = _num(f32[m]), _num(new["bf16"][m])
            row[f"{m}_diff"] = row[f"{m}_bf16"] - row[f"{m}_float32"]
        row["seconds_float32"] = f32["train_seconds"] + f32["eval_seconds"]
        row["seconds_bf16"] = new["bf16"]["train_seconds"] + new["bf16"]["eval_seconds"]
        row["float32_from"] = "rerun" if "float32" in new else "stored"
        row["float32_reproduced"] = same if "float32" in new else None
        row["settings_from"] = source
        row["threads"] = new["bf16"].get("threads")
        rows.append(row)
    return pd.DataFrame(rows), mismatched


def _header(runs, meta, results, args) -> None:
    from collections import Counter

    from ..precision import cpu_bf16_flags

    sources = Counter(s for _, _, s in meta)
    print(f"precision check: {len(runs)} fine-tuning runs of {results} "
          f"(tasks {_list(r['task'] for r in runs)}; models {_list(r['model'] for r in runs)}; "
          f"seeds {_list(r['seed'] for r in runs)}); bf16 forced (true), float32: "
          f"{'rerun and checked against' if args.fp32 == 'rerun' else 'the'} stored JSONs; "
          f"CPU bf16 units: {', '.join(cpu_bf16_flags()) or 'none'}; {args.jobs} job(s); settings from "
          + ", ".join(f"{k} ({v} runs)" for k, v in sources.items()), flush=True)


def report(table, summary: list[dict], mismatched: list, output: Path, args) -> None:
    """The printed comparison (module docstring)."""
    print(f"\npaired differences bf16 - float32 over {len(table)} runs (t: 95% t-interval over the pairs; "
          f"bootstrap: 95% hierarchical, pretrained models then seeds, {N_BOOT:,} replicates):")
    print(f"{'metric':<9} {'n':>4} {'mean':>9} {'sd':>8}  {'95% CI (t)':<19} {'95% CI (bootstrap)':<19} "
          f"{'holds 0 (t/boot)':<17} |mean| <= {args.margin:g}")
    for s in summary:
        print(f"{s['metric']:<9} {s['n']:>4} {s['mean']:>+9.4f} {s['sd']:>8.4f}  "
              f"[{s['t_lo']:+.4f}, {s['t_hi']:+.4f}]  [{s['boot_lo']:+.4f}, {s['boot_hi']:+.4f}]  "
              f"{_yes(s['t_holds_0']) + '/' + _yes(s['boot_holds_0']):<17} {_yes(s['within_margin'])}")
    per_task = table.groupby("task", sort=True)
    print("accuracy per task (mean bf16 - float32, n): "
          + "; ".join(f"{t} {g['accuracy_diff'].mean():+.4f} ({len(g)})" for t, g in per_task))
    note = "" if args.fp32 == "rerun" else " (float32: the stored runs' times, under the study's load)"
    print(f"time per run, training + scoring, median{note}: "
          + "; ".join(f"{t} float32 {g['seconds_float32'].median():.1f} s, bf16 {g['seconds_bf16'].median():.1f} s "
                      f"({g['seconds_float32'].median() / g['seconds_bf16'].median():.2f}x)" for t, g in per_task)
          + f"; all runs float32 {table['seconds_float32'].sum():.0f} s, bf16 {table['seconds_bf16'].sum():.0f} s")
    if args.fp32 == "rerun":
        print(f"float32 reruns equal to the stored JSONs: {len(table) - len(mismatched)}/{len(table)}"
              + ("" if not mismatched else " (differing: " + ", ".join(map(str, mismatched[:5]))
                 + (" ..." if len(mismatched) > 5 else "") + ")"))
    acc = summary[0]
    if acc["n"] < 2:
        print(f"verdict on accuracy: none from {acc['n']} pair(s) (2 or more needed); table: {output}")
        return
    holds = acc["t_holds_0"] and acc["boot_holds_0"]
    print(f"verdict on accuracy: bf16 {'does not change' if holds and acc['within_margin'] else 'may change'} the "
          f"results: mean difference {acc['mean']:+.4f}, 95% CI [{acc['t_lo']:+.4f}, {acc['t_hi']:+.4f}] (t), "
          f"[{acc['boot_lo']:+.4f}, {acc['boot_hi']:+.4f}] (bootstrap) {'holds' if holds else 'misses'} 0, "
          f"|mean| {'<=' if acc['within_margin'] else '>'} {args.margin:g}; table: {output}")


def _list(values) -> str:
    v = sorted(set(values), key=str)
    return ", ".join(map(str, v)) if len(v) <= 8 else f"{len(v)} values ({v[0]} .. {v[-1]})"


def _yes(b: bool | None) -> str:
    return "-" if b is None else "yes" if b else "no"
