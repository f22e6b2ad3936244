"""`genemask plan-study`: which designs reach a target minimum detectable effect, and at what cost.

From a finished study's report folder it takes (1) the variance components of the paired difference
of one comparison (scheme vs reference at one pretraining step, one metric), estimated from
`runs.tsv` by power.components, and (2) the cost of one pretraining run and of one fine-tuning run,
from the Snakemake benchmark files of the same study (`results/benchmarks/{pretrain,finetune}/`: the
mean of each job's larger of CPU and wall seconds). Every design of P pretraining seeds x F fine-tuning
seeds x C task x shot cells in the ranges asked for gets its MDE (power.design_mde: df = P - 1) and
its cost: both sides of the comparison pretrain P models and fine-tune P x F x C runs each. The
designs whose MDE reaches the target are listed cheapest first.

A larger pretraining budget (`--steps`) scales the pretraining cost by steps / the study's steps;
`--gpu-tokens-per-s` (a measured throughput, e.g. from `scripts/gpu_check.sh`) prices the
pretraining in GPU-hours instead: steps x tokens per step / throughput.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from . import power, stats
from .util import GeneMaskError, read_tsv


def comparison_cells(runs: pd.DataFrame, scheme: str, reference: str, metric: str,
                     step: int | None = None) -> tuple[list, int]:
    """[(pretraining seed per pair, d per pair)] per task x shot cell of one comparison, and its step
    (None: the headline step, the largest step both have)."""
    pairs, _ = stats.pair_table(runs, [reference], [metric])
    sel = pairs[(pairs["scheme"] == scheme) & (pairs["baseline"] == reference)]
    if sel.empty:
        raise GeneMaskError(f"runs table: no paired runs of {scheme} vs {reference}")
    step = int(sel["_step"].max()) if step is None else int(step)
    sel = sel[sel["_step"] == step]
    if sel.empty:
        raise GeneMaskError(f"runs table: no paired runs of {scheme} vs {reference} at pretraining step {step}")
    cells = []
    for _, c in sel.groupby(["task", "shot"], sort=True):
        d = stats.metric_pairs(c, metric)
        cells.append((d["group"].to_numpy(), d["d"].to_numpy()))
    return cells, step


def job_seconds(bench_dir: str | Path, stage: str) -> float:
    """Mean seconds of the benchmark files of one stage: per job the larger of its CPU and wall seconds
    (a fine-tuning job run by the warm worker is a thin client: its own CPU time misses the work the
    worker did for it, its wall time does not; a single-threaded job's wall time is at least its CPU)."""
    files = sorted((Path(bench_dir) / stage).rglob("*.tsv"))
    if not files:
        raise GeneMaskError(f"{Path(bench_dir) / stage}: no benchmark files of the {stage} jobs")
    secs = []
    for f in files:
        b = read_tsv(f, "Snakemake benchmark", ("s",))
        cpu = b["cpu_time"].iloc[-1] if "cpu_time" in b and pd.notna(b["cpu_time"].iloc[-1]) else 0.0
        secs.append(max(float(b["s"].iloc[-1]), float(cpu)))
    return sum(secs) / len(secs)


def designs(comp: dict, target: float, pretrain_s: float, finetune_s: float,
            pretrain_seeds: Sequence[int] = range(2, 13), finetune_seeds: Sequence[int] = range(1, 11),
            cells: Sequence[int] = (), gpu_pretrain_h: float | None = None) -> pd.DataFrame:
    """Every design of the ranges with its MDE and cost; those reaching `target` first, cheapest first.

    pretrain_s / finetune_s: CPU seconds of one pretraining / fine-tuning run; gpu_pretrain_h: GPU
    hours of one pretraining run (then the pretraining is priced in GPU-hours, not core-hours).
    """
    rows = []
    for c in cells or (comp["n_cells"],):
        for p in pretrain_seeds:
            for f in finetune_seeds:
                mde = power.design_mde(comp, p, f, c)
                runs = 2 * p * f * c
                core_h = (runs * finetune_s + (0 if gpu_pretrain_h else 2 * p * pretrain_s)) / 3600
                gpu_h = 2 * p * gpu_pretrain_h if gpu_pretrain_h else 0.0
                rows.append({"pretrain_seeds": p, "finetune_seeds": f, "cells": c, "finetune_runs": runs,
                             "mde": mde, "reaches": bool(mde <= target), "core_hours": core_h, "gpu_hours": gpu_h})
    out = pd.DataFrame(rows)
    out["cost"] = out["core_hours"] + out["gpu_hours"]
    return out.sort_values(["reaches", "cost", "mde"], ascending=[False, True, True]).reset_index(drop=True)


def run_seconds(bench_dir: str | Path, runs: pd.DataFrame, protocol: str) -> float:
    """Core seconds of one evaluation run: a fine-tuning job, or a probe job's share per run (a probe
    job covers one model x task: all its shots x seeds)."""
    if protocol == "finetune":
        return job_seconds(bench_dir, "finetune")
    per_job = runs.groupby(["task", "scheme", "pretrain_step", "pretrain_seed"], dropna=False).size().mean()
    return job_seconds(bench_dir, protocol) / float(per_job)


def protocol_runs(report: str | Path, metric: str, protocol: str) -> pd.DataFrame:
    """The runs of one evaluation protocol in a report's runs.tsv (select_protocol)."""
    runs = read_tsv(Path(report) / "runs.tsv", "runs table", ("task", "shot", "scheme", "seed", metric))
    return select_protocol(runs, protocol, report)


def select_protocol(runs: pd.DataFrame, protocol: str, report: str | Path) -> pd.DataFrame:
    """The runs of one evaluation protocol (a table without the protocol column is all fine-tuning);
    refuses an empty selection, naming `report`."""
    if "protocol" in runs:
        runs = runs[runs["protocol"] == protocol]
    elif protocol != "finetune":
        runs = runs.iloc[:0]
    if runs.empty:
        raise GeneMaskError(f"{report}/runs.tsv: no runs of protocol {protocol}")
    return runs


def plan_study(report: str | Path, bench_dir: str | Path, target: float, scheme: str = "genemask",
               reference: str = "dnabert", metric: str = "accuracy", step: int | None = None,
               steps: int | None = None, gpu_tokens_per_s: float | None = None, tokens_per_step: int | None = None,
               cells: Sequence[int] = (), top: int = 15, protocol: str = "finetune") -> str:
    """The plan-study report as text: the comparison's components, the current design's MDE, the
    cheapest designs that reach `target` (or, if none does, the most powerful ones), for the runs of
    one evaluation `protocol` (runs.tsv's protocol column; a table without it is all fine-tuning)."""
    runs = protocol_runs(report, metric, protocol)
    cell_list, step = comparison_cells(runs, scheme, reference, metric, step)
    comp = power.components(cell_list)
    if math.isnan(comp["var_p"]):
        raise GeneMaskError(f"{report}/runs.tsv: {scheme} vs {reference} has one pretraining seed: the "
                            f"between-model variance cannot be estimated (a plan needs a study with >= 2)")
    pre_s, ft_s = job_seconds(bench_dir, "pretrain"), run_seconds(bench_dir, runs, protocol)
    scale = steps / step if steps and step > 0 else 1.0
    gpu_h = None
    if gpu_tokens_per_s:
        if not (steps and tokens_per_step):
            raise GeneMaskError("--gpu-tokens-per-s needs --steps and --tokens-per-step (the GPU run's budget)")
        gpu_h = steps * tokens_per_step / gpu_tokens_per_s / 3600
    table = designs(comp, target, pre_s * scale, ft_s, cells=cells, gpu_pretrain_h=gpu_h)
    now = power.design_mde(comp, comp["n_pretrain_seeds"], comp["n_finetune_seeds"], comp["n_cells"])
    reach = table[table["reaches"]]
    lines = [
        f"comparison: {scheme} vs {reference}, {metric}, pretraining step {step}, protocol {protocol}",
        f"variance components of the difference: between models {comp['var_p']:.3g}, model x cell "
        f"{comp['var_cp']:.3g}, fine-tuning {comp['var_f']:.3g}",
        f"this study: {comp['n_pretrain_seeds']} pretraining seeds x {comp['n_finetune_seeds']:g} fine-tuning seeds x "
        f"{comp['n_cells']} cells: MDE {now:.4f}",
        f"cost per run: pretraining {pre_s * scale / 3600:.3f} core-h" + (f" ({gpu_h:.3f} GPU-h on the GPU)" if gpu_h
                                                                          else "")
        + f", {'fine-tuning' if protocol == 'finetune' else protocol} {ft_s / 3600:.4f} core-h per run",
        (f"designs reaching MDE <= {target:g}, cheapest first:" if len(reach) else
         f"no design in the ranges reaches MDE <= {target:g}; the most powerful ones:"),
    ]
    shown = reach.head(top) if len(reach) else table.sort_values("mde").head(top)
    cols = ["pretrain_seeds", "finetune_seeds", "cells", "finetune_runs", "mde", "core_hours", "gpu_hours"]
    lines.append(shown[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return "\n".join(lines)


def _protocol_components(report: str | Path, scheme: str, reference: str, metric: str, protocol: str) -> dict:
    """power.components of `scheme` vs `reference` at the headline step, on one protocol's runs of a report."""
    runs = protocol_runs(report, metric, protocol)
    return power.components(comparison_cells(runs, scheme, reference, metric)[0])


def predicted_vs_achieved(previous_report: str | Path, report: str | Path, protocol: str, scheme: str = "genemask",
                          reference: str = "dnabert", metric: str = "accuracy") -> str:
    """One line: the design `report` ran (P x F x C of `scheme` vs `reference`), the MDE the previous
    study's variance components predicted for it (what plan-study promised) and the MDE it reached."""
    prev = _protocol_components(previous_report, scheme, reference, metric, protocol)
    now = _protocol_components(report, scheme, reference, metric, protocol)
    p, f, c = now["n_pretrain_seeds"], now["n_finetune_seeds"], now["n_cells"]
    return (f"{scheme} vs {reference} ({protocol}): {p} pretraining seeds x {f:g} runs per cell x seed x {c} cells; "
            f"MDE predicted from the previous study {power.design_mde(prev, p, f, c):.4f}, reached "
            f"{power.design_mde(now, p, f, c):.4f} {metric}")


def price_config_text(report: str | Path, bench_dir: str | Path, config: str | Path, gpu_tokens_per_s: float,
                      tokens_per_step: int | None = None, scheme: str = "genemask", reference: str = "dnabert",
                      metric: str = "accuracy") -> str:
    """What a study config (e.g. config/study-gpu.yaml) costs and could see, as text: its pretraining
    in GPU-hours at `gpu_tokens_per_s` (runs x steps x `tokens_per_step`, measured with that throughput;
    default sequences per step x max_len, an upper bound: pieces are shorter on average), its fine-tuning
    runs and probe jobs priced by this report's measured job times (CPU core-hours: an upper bound
    for runs a GPU does), and the MDE of `scheme` vs `reference` per protocol at its design if its
    variance components were this report's (same model size and budget; a guide, not a promise)."""
    from . import plan

    cfg = plan.check_config_files([str(config)])
    pre, st = cfg["pretrain"], cfg["pretrain"]["settings"]
    pretrained = [s for s in pre["schemes"] if s != "none"]
    n_p, n_f = len(plan.pretrain_seeds(cfg)), len(cfg["finetune"]["seeds"])
    per_step = tokens_per_step or (int(st["batch_size"]) * int(st["grad_accum"]) * max(int(pre.get("gpus") or 1), 1)
                                   * int(st["max_len"]))
    tokens = int(st["steps"]) * per_step
    gpu_h = len(pretrained) * n_p * tokens / gpu_tokens_per_s / 3600
    runs, probes = plan.runs(cfg), plan.probes(cfg)
    cells = len({(r["task"], r["shot"]) for r in runs})
    ft_h = len(runs) * job_seconds(bench_dir, "finetune") / 3600
    lines = [f"{config}: {len(pretrained)} pretrained schemes x {n_p} pretraining seeds x {st['steps']} steps of "
             f"{tokens // int(st['steps']):,} tokens = {gpu_h:.1f} GPU-hours at {gpu_tokens_per_s:,.0f} tokens/s; "
             f"{len(runs)} fine-tuning runs = {ft_h:.1f} core-hours"
             + (f"; {len(probes)} probe jobs = {len(probes) * job_seconds(bench_dir, 'probe') / 3600:.1f} core-hours"
                if probes else "") + " (CPU job times measured by this study)"]
    runs_tsv = read_tsv(Path(report) / "runs.tsv", "runs table", ("task", "shot", "scheme", "seed", metric))
    for protocol in dict.fromkeys(runs_tsv["protocol"]) if "protocol" in runs_tsv else ["finetune"]:
        sel = select_protocol(runs_tsv, protocol, report)
        comp = power.components(comparison_cells(sel, scheme, reference, metric)[0])
        lines.append(f"{scheme} vs {reference} ({protocol}): MDE {power.design_mde(comp, n_p, n_f, cells):.4f} "
                     f"{metric} at {n_p} pretraining x {n_f} fine-tuning seeds x {cells} cells, with this study's "
                     f"variance components")
    return "\n".join(lines)


def plan_study_cli(report: str | Path, bench_dir: str | Path, target: float | None = None,
                   price_config: str | None = None, gpu_tokens_per_s: float | None = None, **options) -> None:
    """`genemask plan-study`: print the plan (plan_study; `options` are its keyword arguments), or
    with `price_config` what that config costs (price_config_text)."""
    if price_config is not None:
        if not gpu_tokens_per_s:
            raise GeneMaskError("--price-config needs --gpu-tokens-per-s (a measured GPU pretraining throughput)")
        print(price_config_text(report, bench_dir, price_config, gpu_tokens_per_s, options.get("tokens_per_step")))
        return
    if target is None:
        raise GeneMaskError("--target: the MDE to reach is needed (or --price-config)")
    print(plan_study(report, bench_dir, target, gpu_tokens_per_s=gpu_tokens_per_s, **options))
