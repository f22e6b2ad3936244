"""`genemask study-doc`: docs/study.md from a finished study's report folder, nothing typed by hand.

It assembles what `genemask aggregate` computed (verdict.md, the accuracy table of summary.md,
tests.tsv, variance.tsv, the figures) with the run's facts (config, command, wall time, the
per-stage times, cm_gems' switch steps) and one more generated check, the study's sanity bar: a
pretrained scheme must beat `none` (random initialisation) beyond noise (a won cell against
`none`: Holm-adjusted p < 0.05, positive difference) on at least two tasks before any masking
conclusion is drawn from the same runs.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import yaml

from .figures import shots_plot_name
from .probe import PROTOCOL_NAMES, PROTOCOLS
from .util import GeneMaskError, atomic_output, read_tsv

FIGURES = (*(shots_plot_name(p) for p in PROTOCOLS), "pretrain_loss.png", "mask_ranks.png")
# The README quotes the study's headline verdict line between these markers (written by study-doc).
README_BEGIN = "<!-- study-result: the first verdict line of docs/study.md, written by genemask study-doc -->"
README_END = "<!-- /study-result -->"


def headline_verdict(study_md: str, where: str = "docs/study.md") -> str:
    """The first line of the study page's verdict section: the headline comparison as printed."""
    section = study_md.partition("\n## Verdict")[2].partition("\n## ")[0]
    for line in section.splitlines():
        if line.startswith("- "):
            return line[2:].strip()
    raise GeneMaskError(f"{where}: no verdict line under '## Verdict'")


def readme_with_result(readme: str, study_md: str, where: str = "README.md") -> str:
    """`readme` with the text between README_BEGIN and README_END replaced by the headline verdict."""
    head, sep, rest = readme.partition(README_BEGIN)
    _, sep2, tail = rest.partition(README_END)
    if not (sep and sep2):
        raise GeneMaskError(f"{where}: lacks the markers {README_BEGIN} ... {README_END}")
    return f"{head}{README_BEGIN}\n{headline_verdict(study_md)}\n{README_END}{tail}"


def sanity_bar(tests: pd.DataFrame, min_tasks: int = 2, alpha: float = 0.05) -> pd.DataFrame:
    """Per pretrained scheme and step: the tasks on which it beats `none` beyond noise (accuracy)."""
    t = tests[(tests["baseline"] == "none") & (tests["metric"] == "accuracy")]
    rows = []
    for (scheme, step), g in t.groupby(["scheme", "pretrain_step"], sort=True):
        won = g[(g["p_holm"] < alpha) & (g["mean_diff"] > 0)]
        tasks = sorted(set(won["task"]))
        rows.append({"scheme": scheme, "pretrain_step": step, "cells": len(g), "cells_won": len(won),
                     "tasks_won": ", ".join(tasks) or "-", "passes": len(tasks) >= min_tasks})
    return pd.DataFrame(rows)


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    out = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for r in df.itertuples(index=False):
        out.append("| " + " | ".join(_cell(v) for v in r) + " |")
    return "\n".join(out)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def write_readme_result(readme: str | Path, study_md: str | Path) -> None:
    """Put docs/study.md's headline verdict line into the README between its markers."""
    readme = Path(readme)
    text = readme_with_result(readme.read_text(), Path(study_md).read_text(), str(readme))
    with atomic_output(readme) as tmp:
        tmp.write_text(text)


DATA_FILES = ("runs.tsv", "variance.tsv", "verdict.tsv")  # copied beside the figures: the next plan-study's input
PREVIOUS_CONFIG = "study.yaml"  # a previous study's folder (`make study-previous`): this config and its DATA_FILES
MDE_COLUMNS = ["protocol", "scheme", "baseline", "pretrain_step", "metric", "mean_diff", "ci_low", "ci_high", "mde",
               "margin", "p_tost", "conclusion"]


def design_facts(cfg: dict) -> dict[str, str]:
    """The design of a study config as readable facts (what "what changed" compares)."""
    pre, ft, st = cfg.get("pretrain", {}), cfg.get("finetune", {}), cfg.get("pretrain", {}).get("settings", {})
    probe = cfg.get("probe") or {}
    steps = st.get("steps")
    return {
        "genome": str(cfg.get("genome", {}).get("source")),
        "model": str(pre.get("model")),
        "schemes": ", ".join(pre.get("schemes", [])),
        "pretraining seeds": str(len(pre.get("seeds", []))),
        "pretraining steps (batch x tokens)": f"{steps} ({st.get('batch_size')} x {st.get('max_len', 512)})",
        "budgets fine-tuned (steps)": ", ".join(map(str, sorted(set(pre.get("eval_steps") or []) | {steps}))),
        "learning rate": str(st.get("lr")),
        "tasks x shots": str(ft.get("shots")),
        "fine-tuning seeds": str(len(ft.get("seeds", []))),
        "test rows per task": str(ft.get("max_test")),
        "protocols": "fine-tuning" + (" + probes" + (" (also the full pool)" if probe.get("pool", True) else "")
                                      if probe.get("enabled") else ""),
    }


def what_changed(previous: dict, current: dict) -> list[str]:
    """Markdown lines: the design facts that differ between two study configs (previous -> this)."""
    a, b = design_facts(previous), design_facts(current)
    rows = [f"| {k} | {a[k]} | {b[k]} |" for k in b if a[k] != b[k]]
    if not rows:
        return ["The design is the same as the previous study's.", ""]
    return ["| design | previous study | this study |", "|---|---|---|", *rows, ""]


def _read_yaml(path: str | Path, what: str) -> dict:
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise GeneMaskError(f"{path}: cannot read the {what} ({e})") from None


def _protocols(df: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(df["protocol"])) if "protocol" in df else ["finetune"]


def _of(df: pd.DataFrame, protocol: str) -> pd.DataFrame:
    return df[df["protocol"] == protocol].drop(columns="protocol") if "protocol" in df else df


def _sanity_section(tests: pd.DataFrame) -> list[str]:
    lines = ["## Sanity bar: pretrained models beat random initialisation", "",
             "A scheme passes at a step when it beats `none` beyond noise (a won cell: Holm-adjusted p < 0.05 "
             "on pretraining-seed means, positive difference) on at least two tasks.", ""]
    for protocol in _protocols(tests):
        bar = sanity_bar(_of(tests, protocol))
        lines += [f"### {PROTOCOL_NAMES[protocol]}", ""] if "protocol" in tests else []
        if bar.empty:
            lines += ["No comparison against `none` in this study.", ""]
            continue
        passed = bar[bar["passes"]]
        lines += [_md_table(bar), "",
                  f"**{len(passed)} of {len(bar)} scheme x step rows pass the bar.**" if len(passed) else
                  "**No scheme passes the bar at this budget and replication: no masking conclusion should be "
                  "drawn from the comparisons below** (the verdict's pooled CIs against `none` are the evidence "
                  "on pretraining itself).", ""]
    return lines


def _accuracy_section(summary: pd.DataFrame) -> list[str]:
    from .tables import accuracy_table, to_markdown

    lines = ["## Accuracy, mean +- sd over all (pretraining seed, seed) runs", ""]
    for protocol in _protocols(summary):
        acc, n_ref = accuracy_table(_of(summary, protocol))
        lines += ([f"### {PROTOCOL_NAMES[protocol]}", ""] if "protocol" in summary else []) + [
            to_markdown(acc), "", f"sd over runs; usual n = {n_ref} runs (other n shown).", ""]
    return lines


def _none_probe_section(runs: pd.DataFrame) -> list[str]:
    """Probes of `none` (random initialisation) against chance, per task x shot: above chance only
    where k-mer composition separates the classes (docs/study-design.md); shown, not hidden."""
    if "protocol" not in runs:
        return []
    r = runs[(runs["protocol"] == "probe") & (runs["scheme"] == "none")]
    if r.empty:
        return []
    t = r.groupby(["task", "shot"], sort=True).agg(accuracy=("accuracy", "mean"), sd=("accuracy", "std"),
                                                   n=("accuracy", "size"), num_labels=("num_labels", "first"))
    t = t.reset_index()
    t["chance"] = 1.0 / t["num_labels"]
    t["above_chance_by"] = t["accuracy"] - t["chance"]
    return ["## What a random model's features read (probes of `none`)", "",
            "A probe of random initialisation reads random features of k-mer composition: above chance only "
            "where composition alone separates the classes. Chance = 1 / classes (balanced test rows).", "",
            _md_table(t.drop(columns="num_labels")), ""]


def _chosen_section(previous: Path, report: Path, bench: str | Path, target: float,
                    protocols: list[str]) -> list[str]:
    """How this design was chosen: plan-study on the previous study's report (its runs.tsv in
    `previous`), and per protocol the MDE it predicted for the design that ran against the one reached."""
    from .planstudy import plan_study, predicted_vs_achieved

    lines = ["## How this design was chosen (genemask plan-study on the previous study)", ""]
    for protocol in protocols:
        try:
            plan = plan_study(previous, bench, target, protocol=protocol, top=6)
            check = predicted_vs_achieved(previous, report, protocol)
        except GeneMaskError as e:
            plan, check = f"not computed: {e}", ""
        lines += ["```", f"$ genemask plan-study --report {previous} --target {target:g} --protocol {protocol}", plan,
                  "```", "", check, ""]
    return lines


def _plan_section(report: Path, bench: str | Path, protocols: list[str], margin: float) -> list[str]:
    """plan-study's text for genemask vs dnabert per protocol, at the accuracy margin as target."""
    from .planstudy import plan_study

    lines = ["## Planning the next study (genemask plan-study on this report)", "",
             f"Designs that would reach an MDE of {margin:g} accuracy (the equivalence margin), from this study's "
             "own variance components and job times:", ""]
    for protocol in protocols:
        try:
            text = plan_study(report, bench, margin, protocol=protocol, top=8)
        except GeneMaskError as e:
            text = f"not computed: {e}"
        lines += ["```", f"$ genemask plan-study --target {margin:g} --protocol {protocol}", text, "```", ""]
    return lines


def study_doc(report: str | Path, config: str | Path, output: str | Path, run_command: str, wall_s: float | None,
              models: str | Path | None = None, timings: str | Path | None = None,
              readme: str | Path | None = None, previous: str | Path | None = None,
              design_target: float | None = None,
              bench_dir: str | Path | None = None, gpu_config: str | Path | None = None,
              gpu_tokens_per_s: float | None = None, gpu_tokens_per_step: int | None = None) -> Path:
    report, output = Path(report), Path(output)
    for f in ("verdict.md", "summary.tsv", "tests.tsv", "variance.tsv", "verdict.tsv"):
        if not (report / f).is_file():
            raise GeneMaskError(f"{report / f}: missing (run the study's aggregate step first)")
    cfg = _read_yaml(config, "study config")
    tests = read_tsv(report / "tests.tsv", "paired tests", ("task", "scheme", "baseline", "metric", "pretrain_step",
                                                            "mean_diff", "p_holm"))
    variance = read_tsv(report / "variance.tsv", "variance table")
    verdict_tsv = read_tsv(report / "verdict.tsv", "verdict table", ("scheme", "baseline", "metric", "mde"))
    summary = read_tsv(report / "summary.tsv", "summary table", ("task", "shot", "scheme"), keep_default_na=False,
                       na_values=["NaN"])
    facts = design_facts(cfg)
    fig_dir = output.with_suffix("")  # docs/study/ beside docs/study.md
    lines = [
        "# The study: does NPMI-guided masking help, and at which pretraining budget?", "",
        f"Generated by `genemask study-doc` from `{report}` (every number and sentence below comes from the "
        "pipeline's outputs; nothing is typed by hand).", "",
        "## What was run", "",
        f"- config: `{config}`; command: `{run_command}`" + (f"; wall time **{wall_s / 60:.1f} min** on this machine"
                                                          if wall_s else ""),
        *[f"- {k}: {v}" for k, v in facts.items()], "",
    ]
    margin = float(verdict_tsv.loc[verdict_tsv["metric"] == "accuracy", "margin"].iloc[0]) \
        if "margin" in verdict_tsv and (verdict_tsv["metric"] == "accuracy").any() else 0.02
    if previous:
        lines += ["## What changed since the previous study", "",
                  f"Previous design: `{Path(previous) / PREVIOUS_CONFIG}`; this one: `{config}`.", "",
                  *what_changed(_read_yaml(Path(previous) / PREVIOUS_CONFIG, "previous study config"), cfg)]
        if bench_dir:
            lines += _chosen_section(Path(previous), report, bench_dir,
                                     margin if design_target is None else design_target, _protocols(verdict_tsv))
    lines += _switch_lines(models) + _sanity_section(tests)
    verdict = (report / "verdict.md").read_text().split("\n", 1)[1].strip()
    lines += ["## Verdict (as the report printed it)", "", verdict, ""]
    mde = verdict_tsv[verdict_tsv["headline"].astype(str) == "True"] if "headline" in verdict_tsv else verdict_tsv
    mde = mde[(mde["scheme"] != "none")][[c for c in MDE_COLUMNS if c in mde]]
    lines += ["## Minimum detectable effect per comparison (headline step)", "",
              "MDE: the smallest difference this design detects with 80 % power at alpha 0.05; a comparison is "
              "called equivalent only when its MDE is at most the margin and TOST p < 0.05.", "",
              _md_table(mde), ""]
    lines += _accuracy_section(summary)
    lines += _none_probe_section(read_tsv(report / "runs.tsv", "runs table", ("task", "shot", "scheme", "accuracy")))
    if not variance.empty and {"metric", "scheme"} <= set(variance.columns):
        share = [c for c in variance.columns if "share" in c]
        if share:
            keys = [c for c in ("protocol", "scheme") if c in variance]
            v = variance[variance["metric"] == "accuracy"].groupby(keys)[share].mean().reset_index()
            lines += ["## Where the spread comes from (accuracy; mean over cells and steps)", "", _md_table(v), ""]
    if bench_dir:
        lines += _plan_section(report, bench_dir, _protocols(verdict_tsv), margin)
        if gpu_config and gpu_tokens_per_s:
            from .planstudy import price_config_text

            lines += [f"## What `{gpu_config}` would cost", "",
                      f"Priced by `genemask plan-study --price-config {gpu_config}` from a measured GPU throughput "
                      f"({gpu_tokens_per_s:,.0f} tokens/s" + (f", {gpu_tokens_per_step:,} tokens per step" if
                                                              gpu_tokens_per_step else "") + ") and this study's job "
                      "times and variance components:", "", "```",
                      price_config_text(report, bench_dir, gpu_config, gpu_tokens_per_s, gpu_tokens_per_step),
                      "```", ""]
    figs = sorted(p.name for p in report.glob("accuracy_vs_steps_*.png")) + [f for f in FIGURES
                                                                             if (report / f).is_file()]
    if figs:
        lines += ["## Figures", ""] + [f"![{f}]({fig_dir.name}/{f})" for f in figs] + [""]
    lines += ["The report's tables are copied beside the figures: "
              + ", ".join(f"[{f}]({fig_dir.name}/{f})" for f in DATA_FILES) + ".", ""]
    if timings and Path(timings).is_file():
        lines += ["## Time per stage", "", "```", Path(timings).read_text().strip(), "```", ""]
    with atomic_output(output) as tmp:
        tmp.write_text("\n".join(lines))
    fig_dir.mkdir(parents=True, exist_ok=True)
    for f in (*figs, *DATA_FILES):
        shutil.copyfile(report / f, fig_dir / f)
    if readme:
        write_readme_result(readme, output)
    return output


def _switch_lines(models: str | Path | None) -> list[str]:
    """cm_gems' switch step per pretraining seed, where the study ran it."""
    if not models:
        return []
    from .pretrain import read_run_meta  # the run file's writer validates it on read

    sw = [f"{meta.parent.name}: {read_run_meta(meta)['switch_step']}"
          for meta in sorted(Path(models).glob("cm_gems/seed*/genemask.json"))]
    return [f"- cm_gems switch step (null = never switched): {'; '.join(sw)}", ""] if sw else []
