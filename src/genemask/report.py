"""Collect fine-tuning metrics into tables, paired tests and figures, and draw the pretraining plots.

`aggregate_cli` (the `genemask aggregate` command) reads one metrics JSON per fine-tuning run and
writes, in `outdir`:

* `runs.tsv`     one row per run, sorted by task, shot, scheme, pretrain_step, pretrain_seed, seed
                 (the two pretraining columns empty/NaN where the metrics JSON does not record them);
* `summary.tsv`  mean, sample sd (ddof=1), n (runs) and n_pretrain_seeds of accuracy, macro-F1, MCC
                 and AUROC per task x shot x scheme x pretrain_step (over all pretraining x
                 fine-tuning seed runs); settings listed as missing (see below) appear with
                 status=missing and their reason, never silently dropped, and a scheme (at a step)
                 with no run in a setting that other schemes have appears with status=no_runs;
* `summary.md`   the headline verdict, then accuracy "mean ± sd" (rows task x shot, columns scheme,
                 or 'scheme @step' for a scheme with several steps), also printed to stdout;
* `tests.tsv`    every scheme minus each reference (`dnabert`, `none`, each external baseline) per
                 task x shot x metric x pretraining step, paired on (pretrain_seed, seed), tested on
                 the per-pretraining-seed means, with Holm / BH adjusted p-values: `stats.paired_tests`;
* `variance.tsv` pretraining- vs fine-tuning-seed variance components: `stats.variance_table`;
* `verdict.tsv`, `verdict.md`  mean difference over cells with a hierarchical-bootstrap 95% CI, cells
                 won / lost / tied and one generated sentence per comparison: `stats.verdicts`;
* `accuracy_vs_shots.png`  one panel per task, accuracy vs shots (log x), one line per scheme (at its
                 largest pretraining step), error bars = sd over runs, missing shots marked;
* `accuracy_vs_steps_<task>.png` (`steps_plot_name`) accuracy and MCC vs pretraining steps per shot;
* `report.html`  a self-contained page (verdict on top, tables + figures embedded as base64), so a
                 report exists without `snakemake --report`.

Missing settings come from an optional TSV (`task`, `shot`, `reason`), e.g. shots for which the
authors released no file (Cohn-enh and Splice-40 1000-shot).

Also here: `plot_loss` (pretraining loss curves from `train_log.tsv`) and `mask_rank_histogram`
(NPMI ranks of the masked tokens per masking scheme, from the `mask_ranks.tsv` pretraining writes).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import sys
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import stats
from .util import GeneMaskError, atomic_output, read_tsv, require_columns

METRICS = ("accuracy", "macro_f1", "mcc", "auroc")
ID_KEYS = ("task", "shot", "seed", "scheme")
# the keys finetune.finetune_cli writes (docs/contracts.md); the others are kept when present
REQUIRED_KEYS = ID_KEYS + ("n_train", "n_test") + METRICS + ("train_seconds", "eval_seconds")
OPTIONAL_KEYS = ("num_labels", "epochs", "batch_size", "lr")
# the pretraining design (docs/contracts.md): int or null; absent = the single default seed / the only step
DESIGN_KEYS = ("pretrain_seed", "pretrain_step")
BASELINE = "dnabert"
WILCOXON_MIN_PAIRS = stats.WILCOXON_MIN_UNITS
TTEST_MIN_PAIRS = stats.TTEST_MIN_UNITS
SCHEME_ORDER = ("none", "dnabert", "genemask", "curriculum", "cm_step", "cm_gems", "global_pmi", "random",
                "reference")
TASK_ORDER = ("Prom-core", "Prom-300", "Cohn-enh", "Splice-40")
_PALETTE = {  # fixed colours so a scheme looks the same in every figure
    "none": "#7f7f7f", "dnabert": "#1f77b4", "genemask": "#d62728", "curriculum": "#2ca02c",
    "random": "#9467bd", "reference": "#ff7f0e",
}
_EXTRA_COLOURS = ("#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79", "#637939", "#843c39")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _ordered(values, preferred) -> list:
    """Known names in their canonical order first, then the rest sorted."""
    vals = list(dict.fromkeys(values))
    return [v for v in preferred if v in vals] + sorted(v for v in vals if v not in preferred)


def scheme_color(name: str, others: Sequence[str] = ()) -> str:
    if name in _PALETTE:
        return _PALETTE[name]
    extra = sorted(o for o in others if o not in _PALETTE)
    i = extra.index(name) if name in extra else zlib.crc32(name.encode())
    return _EXTRA_COLOURS[i % len(_EXTRA_COLOURS)]


def _new_figure(w: float, h: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def _shared_legend(fig, axes, title: str) -> None:
    """One figure legend below the panels, each label once (panels repeat the same schemes)."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), title=title)


def _png_bytes(fig, dpi: int = 130) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_bytes(data)


def _write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text)


def _write_tsv(path: Path, df: pd.DataFrame) -> None:
    with atomic_output(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, na_rep="NaN", float_format="%.10g")


# ---------------------------------------------------------------------------------------------
# reading and validating inputs
# ---------------------------------------------------------------------------------------------
def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_run(path: str | Path) -> dict:
    """One metrics JSON, validated (GeneMaskError naming the file on any fault)."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except OSError as e:
        raise GeneMaskError(f"{path}: cannot read metrics JSON ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GeneMaskError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(rec, dict):
        raise GeneMaskError(f"{path}: metrics JSON must be an object, got {type(rec).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in rec]
    if missing:
        raise GeneMaskError(f"{path}: metrics JSON lacks key(s) {', '.join(missing)}")
    for k in ("task", "scheme"):
        if not isinstance(rec[k], str) or not rec[k]:
            raise GeneMaskError(f"{path}: '{k}' must be a non-empty string, got {rec[k]!r}")
    for k in ("shot", "seed", "n_train", "n_test"):
        v = rec[k]
        if not (_is_number(v) and float(v).is_integer()):
            raise GeneMaskError(f"{path}: '{k}' must be an integer, got {v!r}")
        rec[k] = int(v)
    for k in METRICS + ("train_seconds", "eval_seconds") + OPTIONAL_KEYS:
        v = rec.get(k)
        if v is None:
            rec[k] = math.nan
        elif not _is_number(v):
            raise GeneMaskError(f"{path}: '{k}' must be a number or null, got {v!r}")
    for k in METRICS:
        v = rec[k]
        if not math.isnan(v) and not -1.0 <= v <= 1.0:
            raise GeneMaskError(f"{path}: '{k}' = {v} is outside [-1, 1]")
    for k in DESIGN_KEYS:
        v = rec.get(k)
        if v is None:
            rec[k] = math.nan
        elif not (_is_number(v) and float(v).is_integer() and v >= 0):
            raise GeneMaskError(f"{path}: '{k}' must be a non-negative integer or null, got {v!r}")
    out = {k: rec[k] for k in REQUIRED_KEYS + OPTIONAL_KEYS + DESIGN_KEYS}
    out["source"] = str(path)
    return out


def load_runs(paths: Sequence[str | Path]) -> pd.DataFrame:
    """All runs, validated; duplicates of (task, shot, scheme, pretrain_step, pretrain_seed, seed) are
    an error naming both files. `pretrain_step`/`pretrain_seed` are nullable integers (NA: not recorded)."""
    if not paths:
        raise GeneMaskError("no metrics JSON files given")
    recs = [load_run(p) for p in paths]
    seen: dict[tuple, str] = {}
    for r in recs:
        key = tuple(r[k] for k in ("task", "shot", "scheme", "pretrain_step", "pretrain_seed", "seed"))
        key = tuple(None if isinstance(v, float) and math.isnan(v) else v for v in key)
        if key in seen:
            raise GeneMaskError(f"{r['source']}: same task/shot/scheme/pretrain_step/pretrain_seed/seed {key} "
                                f"as {seen[key]}")
        seen[key] = r["source"]
    df = pd.DataFrame.from_records(recs)
    for k in DESIGN_KEYS:
        df[k] = df[k].astype(float).astype("Int64")
    cols = ["task", "shot", "scheme", "pretrain_step", "pretrain_seed", "seed", *METRICS, "n_train", "n_test",
            "num_labels", "epochs", "batch_size", "lr", "train_seconds", "eval_seconds", "source"]
    return df[cols].sort_values(["task", "shot", "scheme", "pretrain_step", "pretrain_seed", "seed"],
                                kind="stable").reset_index(drop=True)


def load_missing(path: str | Path | None) -> pd.DataFrame:
    """Settings (task, shot) that have no data, with a reason; empty frame when path is None."""
    empty = pd.DataFrame({"task": pd.Series(dtype=str), "shot": pd.Series(dtype="int64"),
                          "reason": pd.Series(dtype=str)})
    if path is None:
        return empty
    path = Path(path)
    df = read_tsv(path, "missing-shots table", ("task", "shot", "reason"), dtype=str, keep_default_na=False)
    if df.empty:
        return empty
    shots = pd.to_numeric(df["shot"], errors="coerce")
    if shots.isna().any() or not (shots % 1 == 0).all():
        bad = df["shot"][shots.isna() | (shots % 1 != 0)].iloc[0]
        raise GeneMaskError(f"{path}: shot {bad!r} is not an integer")
    out = pd.DataFrame({"task": df["task"], "shot": shots.astype("int64"), "reason": df["reason"]})
    return out.drop_duplicates(["task", "shot"]).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
def summarize(runs: pd.DataFrame, missing: pd.DataFrame | None = None) -> pd.DataFrame:
    """Mean, sd (ddof=1, NaN for n=1), n (runs) and n_pretrain_seeds per task x shot x scheme x
    pretrain_step (NA: not recorded, i.e. the only step); missing settings as rows."""
    df = stats.design(runs)
    g = df.groupby(["task", "shot", "scheme", "_step"], sort=True)
    out = g.size().rename("n").reset_index()
    out["n_pretrain_seeds"] = g["pretrain_seed"].nunique().to_numpy()
    for m in METRICS:
        out[f"{m}_mean"] = g[m].mean().to_numpy()
        out[f"{m}_sd"] = g[m].std(ddof=1).to_numpy()
    out["status"] = "ok"
    out["reason"] = ""
    # a scheme (at a step) without runs in a setting that other schemes have: a row saying so
    variants = sorted(set(zip(out["scheme"], out["_step"])))
    have = set(zip(out["task"], out["shot"], out["scheme"], out["_step"]))
    gaps = [{"task": t, "shot": s, "scheme": sch, "_step": st, "n": 0, "n_pretrain_seeds": 0, "status": "no_runs",
             "reason": "no metrics file"}
            for t, s in sorted(set(zip(runs["task"], runs["shot"]))) for sch, st in variants
            if (t, s, sch, st) not in have]
    if gaps:
        out = pd.concat([out, pd.DataFrame(gaps)], ignore_index=True)
    if missing is not None and not missing.empty:
        have2 = set(zip(runs["task"], runs["shot"]))
        schemes = _ordered(runs["scheme"], SCHEME_ORDER) or ["all"]
        rows = []
        for t, s, reason in missing.itertuples(index=False):
            if (t, s) in have2:
                print(f"genemask aggregate: warning: {t} {s}-shot is listed as missing ({reason}) "
                      f"but has runs; the runs are reported", file=sys.stderr)
                continue
            for sch in schemes:
                rows.append({"task": t, "shot": s, "scheme": sch, "_step": stats.STEP_NA, "n": 0,
                             "n_pretrain_seeds": 0, "status": "missing", "reason": reason})
        if rows:
            out = pd.concat([out, pd.DataFrame(rows)], ignore_index=True)
    out["n"] = out["n"].astype("int64")
    out["n_pretrain_seeds"] = out["n_pretrain_seeds"].astype("int64")
    out = out.sort_values(["task", "shot", "scheme", "_step"], kind="stable").reset_index(drop=True)
    out.insert(3, "pretrain_step", out.pop("_step").map(lambda v: pd.NA if v == stats.STEP_NA else v).astype("Int64"))
    return out


def references(runs: pd.DataFrame, baseline: str = BASELINE) -> list[str]:
    """The reference schemes present: `baseline` (dnabert), `none`, then each external baseline."""
    kinds = stats.scheme_kinds(runs)
    refs = [baseline, "none", *sorted(s for s, k in kinds.items() if k == "baseline")]
    return [r for r in dict.fromkeys(refs) if r in kinds]


def paired_tests(runs: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Each scheme minus each reference of `references` per task x shot x metric x pretraining step,
    paired on (pretrain_seed, seed) (seed only against a baseline), tested at the pretraining-seed
    level, with Holm and BH adjusted p-values: `stats.paired_tests`."""
    return stats.paired_tests(runs, references(runs, baseline), METRICS)


def _fmt_cell(mean: float, sd: float, n: int, n_ref: int, digits: int = 3) -> str:
    if n == 0 or math.isnan(mean):
        return "no runs"
    s = f"{mean:.{digits}f}"
    s += f" ± {sd:.{digits}f}" if n >= 2 and not math.isnan(sd) else ""
    if n != n_ref:
        s += f" (n={n})"
    return s


def missing_notes(summary: pd.DataFrame) -> list[str]:
    """One line per missing task x shot: 'Cohn-enh 1000-shot: <reason>'."""
    miss = summary[summary["status"] == "missing"].drop_duplicates(["task", "shot"])
    return [f"{t} {int(s)}-shot: {r or 'no data'}" for t, s, r in miss[["task", "shot", "reason"]].itertuples(index=False)]


def _variants(summary: pd.DataFrame) -> list[tuple[str, object, str]]:
    """(scheme, pretrain_step, column label) of the rows with runs, schemes in canonical order, steps
    ascending; the label is the scheme name, or 'scheme @step' for a scheme with several steps."""
    ok = summary[summary["status"] == "ok"]
    out = []
    for sch in _ordered(ok["scheme"], SCHEME_ORDER):
        steps = ok.loc[ok["scheme"] == sch, "pretrain_step"]
        vals = sorted(set(steps.dropna().astype(int))) + ([pd.NA] if steps.isna().any() else [])
        for st in vals:
            out.append((sch, st, sch if len(vals) == 1 else f"{sch} @{'?' if pd.isna(st) else st}"))
    return out


def _step_rows(sub: pd.DataFrame, scheme: str, step) -> pd.DataFrame:
    hit = sub[sub["scheme"] == scheme]
    return hit[hit["pretrain_step"].isna()] if pd.isna(step) else hit[hit["pretrain_step"] == step]


def accuracy_table(summary: pd.DataFrame, metric: str = "accuracy") -> tuple[pd.DataFrame, int]:
    """Rows task x shot, columns scheme (one per pretraining step where a scheme has several:
    'genemask @2000'), cells 'mean ± sd' (strings), 'missing' for settings without data (reasons:
    `missing_notes`), 'no runs' for a scheme absent from a setting; also the usual n."""
    ok = summary[summary["status"] == "ok"]
    n_ref = int(ok["n"].mode().max()) if not ok.empty else 0
    variants = _variants(summary)
    tasks = _ordered(summary["task"], TASK_ORDER)
    rows = []
    for t in tasks:
        for s in sorted(set(summary.loc[summary["task"] == t, "shot"])):
            sub = summary[(summary["task"] == t) & (summary["shot"] == s)]
            row = {"task": t, "shot": int(s)}
            for sch, st, label in variants:
                if (sub["status"] == "missing").all():
                    row[label] = "missing"
                    continue
                hit = _step_rows(sub, sch, st)
                if hit.empty or hit.iloc[0]["status"] != "ok":
                    row[label] = "no runs"
                else:
                    r = hit.iloc[0]
                    row[label] = _fmt_cell(r[f"{metric}_mean"], r[f"{metric}_sd"], int(r["n"]), n_ref)
            rows.append(row)
    return pd.DataFrame(rows, columns=["task", "shot", *(v[2] for v in variants)]), n_ref


def to_markdown(df: pd.DataFrame) -> str:
    cells = [[str(c) for c in df.columns]] + [[str(v) for v in row] for row in df.itertuples(index=False)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(df.columns))]
    line = lambda r: "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def plot_accuracy_vs_shots(summary: pd.DataFrame, metric: str = "accuracy") -> bytes:
    """PNG bytes: one panel per task, `metric` vs shots (log x), one line per scheme, sd error bars;
    a scheme pretrained for several step counts is drawn at its largest."""
    summary = largest_step(summary)
    tasks = _ordered(summary["task"], TASK_ORDER)
    ok = summary[summary["status"] == "ok"]
    schemes = _ordered(ok["scheme"], SCHEME_ORDER)
    ncol = min(len(tasks), 2) if len(tasks) != 3 else 3
    nrow = math.ceil(len(tasks) / ncol)
    fig = _new_figure(5.2 * ncol, 3.8 * nrow + 0.4)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    for ax, task in zip(axes, tasks):
        sub = summary[summary["task"] == task]
        shots = sorted(set(sub["shot"]))
        for i, sch in enumerate(schemes):
            d = sub[(sub["scheme"] == sch) & (sub["status"] == "ok")].sort_values("shot")
            if d.empty:
                continue
            dodge = 1.0 + 0.035 * (i - (len(schemes) - 1) / 2)  # spread error bars on the log axis
            ax.errorbar(d["shot"] * dodge, d[f"{metric}_mean"], yerr=d[f"{metric}_sd"].fillna(0.0),
                        marker="o", ms=4, lw=1.6, capsize=3, color=scheme_color(sch, schemes), label=sch)
        miss = sorted(set(sub.loc[sub["status"] == "missing", "shot"]))
        for s in miss:
            ax.axvline(s, color="0.6", ls=":", lw=1)
            ax.annotate("missing", (s, 0.02), xycoords=("data", "axes fraction"), rotation=90,
                        ha="right", va="bottom", fontsize=8, color="0.4")
        ax.set_xscale("log")
        ax.set_xticks(shots)
        ax.set_xticklabels([str(s) for s in shots])
        ax.minorticks_off()
        ax.set_xlim(min(shots) / 1.5, max(shots) * 1.5)
        ax.set_title(task)
        ax.set_xlabel("shots (training examples per class, log scale)")
        ax.set_ylabel(metric.replace("_", "-"))
        ax.grid(True, alpha=0.3)
    _shared_legend(fig, axes, "pretraining scheme")
    fig.suptitle(f"Few-shot {metric.replace('_', '-')} vs shots (mean ± sd over seeds)")
    return _png_bytes(fig)


def largest_step(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of `summary` at each scheme's largest recorded pretraining step (all rows of a scheme
    without recorded steps, and every missing-setting row)."""
    top = summary.groupby("scheme")["pretrain_step"].max()
    st = summary["pretrain_step"]
    best = summary["scheme"].map(top)
    keep = (summary["status"] == "missing") | (best.isna() & st.isna()) | (st == best).fillna(False)
    return summary[keep.astype(bool)]


def steps_plot_name(task: str) -> str:
    """File name of the accuracy-vs-pretraining-steps figure of `task` (the report rule lists these)."""
    return "accuracy_vs_steps_" + "".join(c if c.isalnum() or c in "-_." else "_" for c in task) + ".png"


def plot_accuracy_vs_steps(summary: pd.DataFrame, task: str, kinds: Mapping[str, str],
                           metrics: Sequence[str] = ("accuracy", "mcc")) -> bytes:
    """PNG bytes for one task: rows `metrics`, one panel per shot; x = pretraining steps, one line per
    pretrained scheme (mean ± sd over all pretraining x fine-tuning seed runs at each step); `none`
    (random init) a solid horizontal line at its mean, external baselines dashed horizontal lines."""
    sub = summary[(summary["task"] == task) & (summary["status"] == "ok")]
    shots = sorted(set(sub["shot"]))
    all_schemes = _ordered(sub["scheme"], SCHEME_ORDER)
    fig = _new_figure(max(4.8, 3.9 * len(shots)), 3.3 * len(metrics) + 0.6)
    axes = fig.subplots(len(metrics), max(1, len(shots)), squeeze=False)
    steps_known = sorted(set(sub.loc[sub["scheme"].map(kinds) == "pretrained", "pretrain_step"].dropna().astype(int)))
    for i, m in enumerate(metrics):
        for j, shot in enumerate(shots):
            ax = axes[i, j]
            cell = sub[sub["shot"] == shot]
            for sch in all_schemes:
                d = cell[cell["scheme"] == sch].sort_values("pretrain_step")
                col = scheme_color(sch, all_schemes)
                if d.empty:
                    continue
                if kinds.get(sch) == "pretrained" and d["pretrain_step"].notna().any():
                    d = d[d["pretrain_step"].notna()]
                    ax.errorbar(d["pretrain_step"], d[f"{m}_mean"], yerr=d[f"{m}_sd"].fillna(0.0), marker="o",
                                ms=4, lw=1.6, capsize=3, color=col, label=sch)
                else:
                    ls = "-" if sch == "none" else "--"
                    label = "none (random init)" if sch == "none" else f"{sch} (baseline)"
                    ax.axhline(float(d[f"{m}_mean"].mean()), color=col, ls=ls, lw=1.4, label=label)
            if steps_known:
                ax.set_xticks(steps_known)
                ax.set_xticklabels([str(v) for v in steps_known], rotation=30 if len(steps_known) > 4 else 0)
            else:
                ax.text(0.5, 0.5, "no pretraining steps recorded in the runs", ha="center", va="center",
                        transform=ax.transAxes, color="0.4", fontsize=8)
            ax.set_title(f"{task}, {shot}-shot", fontsize=10)
            ax.set_xlabel("pretraining steps")
            ax.set_ylabel(m.replace("_", "-"))
            ax.grid(True, alpha=0.3)
    _shared_legend(fig, axes.ravel(), "scheme")
    fig.suptitle(f"{task}: few-shot results vs pretraining steps\n(mean ± sd over all pretraining × fine-tuning "
                 f"seed runs; horizontal lines: no pretraining steps)", fontsize=10)
    return _png_bytes(fig)


def _read_loss_log(path: Path) -> pd.DataFrame:
    df = read_tsv(path, "training log", ("step", "loss", "val_loss"),
                  expected="step lr loss val_loss val_ppl tokens_per_s")
    for c in ("step", "loss", "val_loss"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    if df["step"].isna().any():
        raise GeneMaskError(f"{path}: non-numeric value in column 'step'")
    if df["loss"].notna().sum() == 0 and df["val_loss"].notna().sum() == 0:
        raise GeneMaskError(f"{path}: training log has no loss values")
    return df


def _default_labels(paths: Sequence[Path]) -> list[str]:
    """The folder each file lives in (results/models/genemask/train_log.tsv -> genemask), else its stem."""
    labels = [p.parent.name or p.stem for p in paths]
    if len(set(labels)) < len(labels):
        labels = [f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem for p in paths]
    return labels


def plot_loss(logs: Sequence[str | Path], labels: Sequence[str] | None, output: str | Path) -> Path:
    """Train loss (faint raw + running mean) and validation loss vs step, one colour per label."""
    paths = [Path(p) for p in logs]
    if labels is None or len(labels) == 0:
        labels = _default_labels(paths)
    if len(labels) != len(paths):
        raise GeneMaskError(f"--labels: {len(labels)} label(s) for {len(paths)} log file(s)")
    data = [_read_loss_log(p) for p in paths]
    fig = _new_figure(11, 4.2)
    ax_tr, ax_va = fig.subplots(1, 2, sharey=False)
    for lab, df in zip(labels, data):
        col = scheme_color(lab, labels)
        tr = df[df["loss"].notna()]
        if not tr.empty:
            win = max(1, len(tr) // 50)
            ax_tr.plot(tr["step"], tr["loss"], color=col, alpha=0.25, lw=0.8)
            ax_tr.plot(tr["step"], tr["loss"].rolling(win, min_periods=1).mean(), color=col, lw=1.8,
                       label=f"{lab} (final {tr['loss'].iloc[-win:].mean():.3f})")
        va = df[df["val_loss"].notna()]
        if not va.empty:
            ax_va.plot(va["step"], va["val_loss"], color=col, marker="o", ms=3.5, lw=1.6,
                       label=f"{lab} (last {va['val_loss'].iloc[-1]:.3f})")
    ax_tr.set_title("training loss (faint: logged; solid: running mean)")
    ax_va.set_title("validation loss")
    for ax in (ax_tr, ax_va):
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("masked-LM cross-entropy (nats)")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, title="scheme", title_fontsize=8)
        else:
            ax.text(0.5, 0.5, "no values logged", ha="center", va="center", transform=ax.transAxes, color="0.4")
    fig.suptitle("Pretraining loss by masking scheme")
    output = Path(output)
    _write_bytes(output, _png_bytes(fig))
    return output


def _read_rank_counts(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(ranks, masked counts, all-token counts or None) from a mask-rank table.

    Two layouts: `rank, masked_count, all_count` (what `genemask pretrain` writes: masked tokens and
    all real tokens seen, per NPMI rank, 4**k+1 = unranked/[UNK]) or `rank, count` (masked tokens only).
    A table without any counted token (a run pretrained without a ranking) gives zero masked counts.
    """
    layouts = "rank masked_count all_count, or rank count"
    df = read_tsv(path, "mask-rank table", expected=layouts)
    cols = ["rank", "masked_count", "all_count"] if "masked_count" in df.columns else ["rank", "count"]
    require_columns(df, path, "mask-rank table", cols, layouts)
    vals = [pd.to_numeric(df[c], errors="coerce") for c in cols]
    if any(v.isna().any() for v in vals) or any((v < 0).any() for v in vals[1:]):
        raise GeneMaskError(f"{path}: non-numeric or negative value in columns {', '.join(cols)}")
    r = vals[0].to_numpy(dtype=np.int64)
    masked = vals[1].to_numpy(dtype=np.float64)
    allc = vals[2].to_numpy(dtype=np.float64) if len(vals) == 3 else None
    return r, masked, allc


def mask_rank_histogram(ranks: Mapping[str, np.ndarray], output: str | Path, *,
                        weights: Mapping[str, np.ndarray] | None = None, n_ranked: int = 4096,
                        reference: tuple[np.ndarray, np.ndarray] | None = None,
                        reference_label: str | None = None, bins: int = 64) -> Path:
    """Distribution of the NPMI ranks of masked tokens, one line per scheme.

    `ranks[scheme]`: ranks of masked tokens (1 = highest NPMI), either one entry per token or, with
    `weights[scheme]`, distinct ranks with their counts. Ranks outside 1..n_ranked (unranked k-mers,
    [UNK]) are left out of the curves and reported as a percentage in the legend.
    `reference`: (ranks, counts) of all tokens; default: every ranked k-mer once (uniform).
    Left: histogram (share of masked tokens per rank bin, log y); right: ECDF.
    """
    edges = np.linspace(0.5, n_ranked + 0.5, bins + 1)
    fig = _new_figure(12, 4.4)
    ax_h, ax_c = fig.subplots(1, 2)
    names = list(ranks)

    def draw(r, w, label, **kw):
        r = np.asarray(r, dtype=np.int64)
        w = np.ones(r.size) if w is None else np.asarray(w, dtype=np.float64)
        inside = (r >= 1) & (r <= n_ranked)
        total = w.sum()
        out_share = 1.0 - w[inside].sum() / total if total > 0 else 0.0
        r, w = r[inside], w[inside]
        if w.sum() <= 0:
            return
        h, _ = np.histogram(r, bins=edges, weights=w)
        share = h / w.sum()
        if out_share > 0.0005:
            label += f", {out_share:.1%} unranked"
        ax_h.stairs(np.where(share > 0, share, np.nan), edges, baseline=None, label=label, lw=1.6, **kw)
        o = np.argsort(r, kind="stable")
        rs, cw = r[o], np.cumsum(w[o]) / w.sum()
        ax_c.step(rs, cw, where="post", lw=1.6, **kw)

    ref_kw = dict(color="black", ls="--", zorder=5)  # on top, so a scheme that matches it hides nothing
    if reference is None:
        draw(np.arange(1, n_ranked + 1), None, reference_label or f"all {n_ranked} k-mers once (uniform)", **ref_kw)
    else:
        draw(reference[0], reference[1], reference_label or "all tokens", **ref_kw)
    for name in names:
        w = None if weights is None else weights.get(name)
        r = np.asarray(ranks[name])
        tot = r.size if w is None else float(np.sum(w))
        draw(r, w, f"{name} (n={tot:,.0f})", color=scheme_color(name, names))
    ax_h.set_yscale("log")
    ax_h.set_title(f"share of masked tokens per NPMI-rank bin ({bins} bins)")
    ax_h.set_ylabel("share of tokens (log scale)")
    ax_c.set_title("cumulative share (ECDF)")
    ax_c.set_ylabel("share of tokens with rank <= x")
    ax_c.set_ylim(0, 1.01)
    for ax in (ax_h, ax_c):
        ax.set_xlabel("NPMI rank of the token's k-mer (1 = highest NPMI)")
        ax.set_xlim(0, n_ranked + 1)
        ax.grid(True, alpha=0.3)
    if not names:
        ax_h.text(0.5, 0.5, "no masked-token ranks were counted\n(pretraining ran without an NPMI ranking)",
                  ha="center", va="center", transform=ax_h.transAxes, color="0.3")
    ax_h.legend(fontsize=8)
    fig.suptitle("NPMI ranks of masked tokens by masking scheme")
    output = Path(output)
    _write_bytes(output, _png_bytes(fig))
    return output


def plot_mask_ranks_cli(stats: Sequence[str | Path], output: str | Path, labels: Sequence[str] | None = None,
                        ranking: str | Path | None = None, reference: str | Path | None = None,
                        k: int = 6) -> Path:
    """`genemask plot-mask-ranks`: read `mask_ranks.tsv` files and draw the histogram.

    The reference curve is, in order of preference: the `reference` table; the all-token counts of
    the stats files (summed); every ranked k-mer once. Files without masked counts are skipped with a
    warning (a figure is still written, so the pipeline does not stop at a plot).
    """
    paths = [Path(p) for p in stats]
    if not labels:
        labels = _default_labels(paths)
    if len(labels) != len(paths):
        raise GeneMaskError(f"--labels: {len(labels)} label(s) for {len(paths)} stats file(s)")
    if len(set(labels)) != len(labels):
        raise GeneMaskError(f"--labels: labels must be distinct, got {list(labels)}")
    n_ranked = 4**k
    if ranking is not None:
        from .npmi import load_ranking

        n_ranked = int((load_ranking(ranking, k) <= 4**k).sum())
    data = {}
    ref_r, ref_c = [], []
    for lab, p in zip(labels, paths):
        r, masked, allc = _read_rank_counts(p)
        if masked.sum() > 0:
            data[lab] = (r, masked)
        else:
            print(f"genemask plot-mask-ranks: warning: {p}: no masked tokens counted (pretrained without an "
                  f"NPMI ranking?); '{lab}' left out", file=sys.stderr)
        if allc is not None and allc.sum() > 0:
            ref_r.append(r)
            ref_c.append(allc)
    if reference:
        r, masked, allc = _read_rank_counts(Path(reference))
        c = allc if allc is not None else masked
        if c.sum() <= 0:
            raise GeneMaskError(f"{reference}: reference mask-rank table counts no tokens")
        ref, ref_label = (r, c), "all tokens (reference table)"
    elif ref_r:  # all real tokens the pretraining runs saw, summed over the runs
        ref, ref_label = (np.concatenate(ref_r), np.concatenate(ref_c)), "all tokens seen in pretraining"
    else:
        ref, ref_label = None, None
    if not data:
        print("genemask plot-mask-ranks: warning: no run counted masked-token ranks; the figure says so",
              file=sys.stderr)
    return mask_rank_histogram({lab: d[0] for lab, d in data.items()}, output,
                               weights={lab: d[1] for lab, d in data.items()}, n_ranked=n_ranked,
                               reference=ref, reference_label=ref_label)


# ---------------------------------------------------------------------------------------------
# HTML fallback report
# ---------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #d62728;padding-bottom:.2em}
h2{font-size:1.25em;margin-top:1.8em;color:#333}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
tr:nth-child(even){background:#fafafa}
img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
.note{color:#555;font-size:.9em}
.missing{color:#a00}
"""


_VERDICT_NOTE = ("Each line: scheme minus reference, averaged over task × shot cells, with a 95% CI from a "
                 "hierarchical bootstrap (pretraining seeds, then fine-tuning seeds within them); won / lost = "
                 "cells with Holm-adjusted p < 0.05 and a positive / negative difference, tied = the other "
                 "tested cells. Better / worse when the CI excludes 0, else no difference beyond noise. "
                 "Headline: the largest pretraining step all pretrained schemes share; verdict.tsv has them all.")


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table_html(df: pd.DataFrame, float_digits: int = 4) -> str:
    return df.to_html(index=False, na_rep="", border=0, escape=True,
                      float_format=lambda v: f"{v:.{float_digits}g}")


def summary_html(outdir: str | Path, include: Sequence[str | Path] = (), title: str = "GeneMask report") -> str:
    """A self-contained HTML page from the files `aggregate` wrote in `outdir` (+ `include`d PNG/TSV)."""
    outdir = Path(outdir)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    runs = pd.read_csv(outdir / "runs.tsv", sep="\t")
    summary = pd.read_csv(outdir / "summary.tsv", sep="\t", keep_default_na=False, na_values=["NaN"])
    pseeds = sorted(runs["pretrain_seed"].dropna().astype(int).unique()) if "pretrain_seed" in runs else []
    psteps = sorted(runs["pretrain_step"].dropna().astype(int).unique()) if "pretrain_step" in runs else []
    parts.append(f"<p class='note'>{len(runs)} fine-tuning runs: {runs['task'].nunique()} task(s), "
                 f"{runs['scheme'].nunique()} scheme(s) ({', '.join(_ordered(runs['scheme'], SCHEME_ORDER))}), "
                 f"fine-tuning seeds {', '.join(str(s) for s in sorted(runs['seed'].unique()))}; "
                 f"pretraining seeds {', '.join(map(str, pseeds)) or 'not recorded (one)'}; "
                 f"pretraining steps {', '.join(map(str, psteps)) or 'not recorded (one)'}.</p>")
    if (outdir / "verdict.tsv").exists():
        verdict = pd.read_csv(outdir / "verdict.tsv", sep="\t", keep_default_na=False, na_values=["NaN"])
        parts.append("<h2>Verdict</h2>")
        if verdict.empty:
            parts.append("<p class='note'>No comparisons: no reference scheme (dnabert, none or a baseline) "
                         "has runs.</p>")
        else:
            head = verdict[verdict["headline"].astype(str) == "True"]
            head = head[head["baseline"].isin([BASELINE, "none"]) & (head["scheme"] != "none")]
            parts.append("<ul>" + "".join(f"<li><b>{html.escape(v)}</b></li>" for v in head["verdict"]) + "</ul>")
            parts.append("<p class='note'>" + html.escape(_VERDICT_NOTE) + "</p>")
            rest = verdict[~verdict.index.isin(head.index)]
            if not rest.empty:
                parts.append("<details><summary>Every step and reference</summary><ul>"
                             + "".join(f"<li>{html.escape(v)}</li>" for v in rest["verdict"]) + "</ul></details>")

    acc, n_ref = accuracy_table(summary)
    parts.append("<h2>Accuracy, mean ± sd over seeds</h2>")
    parts.append(f"<p class='note'>Rows: task and shots per class; columns: pretraining scheme (none = random "
                 f"initialisation). sd is the sample sd over seeds; cells computed from a number of seeds other "
                 f"than the usual {n_ref} say so. 'missing' marks settings without data (reason given).</p>")
    parts.append(_table_html(acc).replace("<td>missing", "<td class='missing'>missing"))
    notes = missing_notes(summary)
    if notes:
        parts.append("<p class='missing'>Missing settings (no data):</p><ul>"
                     + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    if (outdir / "accuracy_vs_shots.png").exists():
        parts.append("<h2>Accuracy vs shots</h2>" + _img_tag(outdir / "accuracy_vs_shots.png", "accuracy vs shots"))

    for t in _ordered(runs["task"], TASK_ORDER):
        p = outdir / steps_plot_name(t)
        if p.exists():
            parts.append(f"<h2>{html.escape(t)}: accuracy and MCC vs pretraining steps</h2>" + _img_tag(p, p.name))

    if (outdir / "variance.tsv").exists():
        var = pd.read_csv(outdir / "variance.tsv", sep="\t", keep_default_na=False, na_values=["NaN"])
        parts.append("<h2>Where the spread comes from: pretraining vs fine-tuning seeds</h2>")
        parts.append("<p class='note'>One-way random-effects ANOVA per task × shot × scheme × step (method of "
                     "moments, clipped at 0): var_pretrain = between-pretraining-seed component, var_finetune = "
                     "within (fine-tuning seeds); share_pretrain = var_pretrain / (var_pretrain + var_finetune). "
                     "Accuracy shown; MCC in variance.tsv.</p>")
        parts.append(_table_html(var[var["metric"] == "accuracy"].drop(
            columns=["metric", "ms_between", "ms_within", "n0"])))

    parts.append("<h2>Paired tests per task × shot</h2>")
    if (outdir / "tests.tsv").exists():
        tests = pd.read_csv(outdir / "tests.tsv", sep="\t", keep_default_na=False, na_values=["NaN"])
        if tests.empty:
            parts.append(f"<p class='note'>No tests: no {BASELINE}, none or baseline runs to pair with.</p>")
        else:
            parts.append("<p class='note'>Difference scheme minus reference (baseline column), paired on "
                         "pretraining seed and fine-tuning seed (fine-tuning seed only against an external "
                         "baseline); positive = better than the reference. The test is a one-sample t-test "
                         "(and Wilcoxon signed-rank with >= "
                         f"{stats.WILCOXON_MIN_UNITS} units) on the per-pretraining-seed means of the differences "
                         "(test_level); with one pretraining seed the fine-tuning seeds are the units, flagged in "
                         "note. p_holm / p_bh: Holm / Benjamini-Hochberg adjusted over the task × shot cells of one "
                         "scheme × reference × step × metric. Accuracy shown; all metrics in tests.tsv.</p>")
            show = tests[tests["metric"] == "accuracy"].drop(columns=["metric"])
            parts.append(_table_html(show))

    parts.append("<h2>All metrics, mean and sd per task × shot × scheme × pretraining step</h2>")
    parts.append(_table_html(summary))

    for p in map(Path, include):
        if not p.exists():
            raise GeneMaskError(f"{p}: file to include in the report does not exist")
        parts.append(f"<h2>{html.escape(p.name)}</h2>")
        if p.suffix.lower() == ".png":
            parts.append(_img_tag(p, p.name))
        elif p.suffix.lower() in (".tsv", ".txt", ".csv"):
            sep = "," if p.suffix.lower() == ".csv" else "\t"
            try:
                parts.append(_table_html(pd.read_csv(p, sep=sep).head(200)))
            except (pd.errors.ParserError, pd.errors.EmptyDataError):
                parts.append(f"<pre>{html.escape(p.read_text()[:20000])}</pre>")
        else:
            parts.append(f"<pre>{html.escape(p.read_text()[:20000])}</pre>")

    parts.append("<h2>Runs</h2>" + _table_html(runs.drop(columns=["source"])))
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
def _ordered_verdict(verdict: pd.DataFrame, refs: Sequence[str]) -> pd.DataFrame:
    """Rows by reference (dnabert, none, baselines), metric (accuracy first), scheme (canonical
    order), step: the order of verdict.tsv/md and of the page's headline list."""
    if verdict.empty:
        return verdict
    rank = {s: i for i, s in enumerate(_ordered(verdict["scheme"], SCHEME_ORDER))}
    key = pd.DataFrame({"b": verdict["baseline"].map({r: i for i, r in enumerate(refs)}),
                        "m": verdict["metric"].map({m: i for i, m in enumerate(METRICS)}),
                        "s": verdict["scheme"].map(rank), "t": verdict["pretrain_step"].fillna(-1)})
    return verdict.iloc[key.sort_values(["b", "m", "s", "t"], kind="stable").index].reset_index(drop=True)


def aggregate_cli(metrics_jsons: Sequence[str | Path], outdir: str | Path, expected: str | Path | None = None,
                  include: Sequence[str | Path] = (), baseline: str = BASELINE, *, n_boot: int = stats.N_BOOT,
                  boot_seed: int = stats.BOOT_SEED) -> int:
    """`genemask aggregate`: validate every input first, then write all outputs (see module doc).

    `expected`: optional TSV of settings expected but without data (columns task, shot, reason).
    `include`: extra PNG/TSV files to embed in report.html (e.g. loss.png, motifs.tsv).
    `n_boot`, `boot_seed`: replicates and seed of the verdict's hierarchical bootstrap.
    """
    outdir = Path(outdir)
    runs = load_runs(metrics_jsons)
    missing = load_missing(expected)
    for p in map(Path, include):
        if not p.exists():
            raise GeneMaskError(f"{p}: file to include in the report does not exist")
    summary = summarize(runs, missing)
    refs = references(runs, baseline)
    tests = stats.paired_tests(runs, refs, METRICS)
    variance = stats.variance_table(runs)
    verdict = _ordered_verdict(stats.verdicts(runs, tests, refs, n_boot=n_boot, boot_seed=boot_seed), refs)
    verdict_md = stats.verdict_markdown(verdict, primary=(baseline, "none"))
    acc, n_ref = accuracy_table(summary)
    md_table = to_markdown(acc)
    head = verdict[verdict["headline"] & verdict["baseline"].isin([baseline, "none"]) & (verdict["scheme"] != "none")]
    md = "".join(f"- {v}\n" for v in head["verdict"])
    md = (f"# Verdict\n\n{md}\n" if md else "") + (
        f"# Few-shot accuracy (mean ± sd over seeds)\n\n{md_table}\n\n"
        f"sd: sample standard deviation over runs (pretraining x fine-tuning seeds); usual n = {n_ref} runs "
        f"(other n shown).\n")
    notes = missing_notes(summary)
    if notes:
        md += "\nMissing settings (no data):\n" + "".join(f"- {n}\n" for n in notes)
    acc_tests = tests[(tests["metric"] == "accuracy") & (tests["baseline"] == baseline)]
    if not acc_tests.empty:
        cols = ["task", "shot", "scheme", "pretrain_step", "n_pretrain_seeds", "n_pairs", "mean_diff", "p_ttest",
                "p_holm", "p_wilcoxon"]
        tt = acc_tests[cols].copy()
        if tt["pretrain_step"].isna().all():
            tt = tt.drop(columns=["pretrain_step", "n_pretrain_seeds"])
        tt["mean_diff"] = tt["mean_diff"].map(lambda v: f"{v:+.4f}")
        for c in ("p_ttest", "p_holm", "p_wilcoxon"):
            tt[c] = tt[c].map(lambda v: "NaN" if math.isnan(v) else f"{v:.3g}")
        md += (f"\n## Accuracy minus {baseline}, paired on pretraining and fine-tuning seed\n\n"
               f"{to_markdown(tt.astype(str).replace('<NA>', ''))}\n")
    png = plot_accuracy_vs_shots(summary)
    kinds = stats.scheme_kinds(runs)
    steps_png = {t: plot_accuracy_vs_steps(summary, t, kinds) for t in _ordered(runs["task"], TASK_ORDER)}

    _write_tsv(outdir / "runs.tsv", runs)
    _write_tsv(outdir / "summary.tsv", summary)
    _write_tsv(outdir / "tests.tsv", tests)
    _write_tsv(outdir / "variance.tsv", variance)
    _write_tsv(outdir / "verdict.tsv", verdict)
    _write_text(outdir / "verdict.md", verdict_md)
    _write_text(outdir / "summary.md", md)
    _write_bytes(outdir / "accuracy_vs_shots.png", png)
    for t, data in steps_png.items():
        _write_bytes(outdir / steps_plot_name(t), data)
    _write_text(outdir / "report.html", summary_html(outdir, include))
    print(md)
    print(f"wrote {outdir}/{{runs.tsv,summary.tsv,summary.md,tests.tsv,variance.tsv,verdict.tsv,verdict.md,"
          f"accuracy_vs_shots.png,{','.join(steps_plot_name(t) for t in steps_png)},report.html}}", file=sys.stderr)
    return 0
