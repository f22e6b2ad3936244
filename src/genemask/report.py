"""Collect fine-tuning metrics into tables, paired tests and figures, and draw the pretraining plots.

`aggregate_cli` (the `genemask aggregate` command) reads one metrics JSON per fine-tuning run and
writes, in `outdir`:

* `runs.tsv`     one row per run, sorted by task, shot, scheme, seed;
* `summary.tsv`  mean, sample sd (ddof=1) and n over seeds of accuracy, macro-F1, MCC and AUROC per
                 task x shot x scheme; settings listed as missing (see below) appear with
                 status=missing and their reason, never silently dropped, and a scheme with no run in
                 a setting that other schemes have appears with status=no_runs;
* `summary.md`   accuracy "mean ± sd" (rows task x shot, columns scheme), also printed to stdout;
* `tests.tsv`    every scheme minus the `dnabert` baseline per task x shot x metric, paired by seed:
                 mean difference, number of pairs, paired t-test (scipy.stats.ttest_rel) and
                 Wilcoxon signed-rank test (scipy.stats.wilcoxon, only with >= WILCOXON_MIN_PAIRS
                 pairs: below 6 pairs its exact two-sided p-value can never reach 0.05); p-values are
                 NaN with fewer than TTEST_MIN_PAIRS (3) pairs or constant differences;
* `accuracy_vs_shots.png`  one panel per task, accuracy vs shots (log x), one line per scheme,
                 error bars = sd over seeds, missing shots marked;
* `report.html`  a self-contained page (tables + figures embedded as base64), so a report exists
                 without `snakemake --report`.

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
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .util import GeneMaskError, atomic_output, read_tsv, require_columns

METRICS = ("accuracy", "macro_f1", "mcc", "auroc")
ID_KEYS = ("task", "shot", "seed", "scheme")
# the keys finetune.finetune_cli writes (docs/contracts.md); the others are kept when present
REQUIRED_KEYS = ID_KEYS + ("n_train", "n_test") + METRICS + ("train_seconds", "eval_seconds")
OPTIONAL_KEYS = ("num_labels", "epochs", "batch_size", "lr")
BASELINE = "dnabert"
WILCOXON_MIN_PAIRS = 6
# With 2 pairs the t-test has one degree of freedom and a near-constant difference (identical test
# subsets give differences equal up to float noise) yields absurd p-values such as 1e-15: need 3.
TTEST_MIN_PAIRS = 3
SCHEME_ORDER = ("none", "dnabert", "genemask", "curriculum", "random", "reference")
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
    out = {k: rec[k] for k in REQUIRED_KEYS + OPTIONAL_KEYS}
    out["source"] = str(path)
    return out


def load_runs(paths: Sequence[str | Path]) -> pd.DataFrame:
    """All runs, validated; duplicates of (task, shot, scheme, seed) are an error naming both files."""
    if not paths:
        raise GeneMaskError("no metrics JSON files given")
    recs = [load_run(p) for p in paths]
    seen: dict[tuple, str] = {}
    for r in recs:
        key = tuple(r[k] for k in ("task", "shot", "scheme", "seed"))
        if key in seen:
            raise GeneMaskError(f"{r['source']}: same task/shot/scheme/seed {key} as {seen[key]}")
        seen[key] = r["source"]
    df = pd.DataFrame.from_records(recs)
    cols = ["task", "shot", "scheme", "seed", *METRICS, "n_train", "n_test", "num_labels", "epochs",
            "batch_size", "lr", "train_seconds", "eval_seconds", "source"]
    return df[cols].sort_values(["task", "shot", "scheme", "seed"], kind="stable").reset_index(drop=True)


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
    """Mean, sd (ddof=1, NaN for n=1) and n per task x shot x scheme; missing settings as rows."""
    g = runs.groupby(["task", "shot", "scheme"], sort=True)
    out = g.size().rename("n").reset_index()
    for m in METRICS:
        out[f"{m}_mean"] = g[m].mean().to_numpy()
        out[f"{m}_sd"] = g[m].std(ddof=1).to_numpy()
    out["status"] = "ok"
    out["reason"] = ""
    # a scheme without runs in a setting that other schemes have: a row saying so, not a silent gap
    schemes_all = sorted(set(runs["scheme"]))
    have3 = set(zip(out["task"], out["shot"], out["scheme"]))
    gaps = [{"task": t, "shot": s, "scheme": sch, "n": 0, "status": "no_runs", "reason": "no metrics file"}
            for t, s in sorted(set(zip(runs["task"], runs["shot"]))) for sch in schemes_all
            if (t, s, sch) not in have3]
    if gaps:
        out = pd.concat([out, pd.DataFrame(gaps)], ignore_index=True)
    if missing is not None and not missing.empty:
        have = set(zip(runs["task"], runs["shot"]))
        schemes = _ordered(runs["scheme"], SCHEME_ORDER) or ["all"]
        rows = []
        for t, s, reason in missing.itertuples(index=False):
            if (t, s) in have:
                print(f"genemask aggregate: warning: {t} {s}-shot is listed as missing ({reason}) "
                      f"but has runs; the runs are reported", file=sys.stderr)
                continue
            for sch in schemes:
                rows.append({"task": t, "shot": s, "scheme": sch, "n": 0, "status": "missing", "reason": reason})
        if rows:
            out = pd.concat([out, pd.DataFrame(rows)], ignore_index=True)
    out["n"] = out["n"].astype("int64")
    return out.sort_values(["task", "shot", "scheme"], kind="stable").reset_index(drop=True)


def paired_tests(runs: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """Each scheme minus `baseline`, paired by seed, per task x shot x metric."""
    from scipy import stats

    cols = ["task", "shot", "metric", "scheme", "baseline", "n_pairs", "mean_scheme", "mean_baseline",
            "mean_diff", "sd_diff", "t_stat", "p_ttest", "w_stat", "p_wilcoxon"]
    rows = []
    for (task, shot), grp in runs.groupby(["task", "shot"], sort=True):
        base = grp[grp["scheme"] == baseline].set_index("seed")
        if base.empty:
            continue
        for scheme in sorted(set(grp["scheme"]) - {baseline}):
            other = grp[grp["scheme"] == scheme].set_index("seed")
            seeds = sorted(set(base.index) & set(other.index))
            for m in METRICS:
                a = other.loc[seeds, m].to_numpy(dtype=float)
                b = base.loc[seeds, m].to_numpy(dtype=float)
                ok = ~(np.isnan(a) | np.isnan(b))
                a, b = a[ok], b[ok]
                n = int(a.size)
                d = a - b
                t = p_t = w = p_w = math.nan
                if n >= TTEST_MIN_PAIRS and np.std(d) > 1e-12:
                    with warnings.catch_warnings(), np.errstate(all="ignore"):
                        warnings.simplefilter("ignore")
                        res = stats.ttest_rel(a, b)
                        t, p_t = float(res.statistic), float(res.pvalue)
                        if n >= WILCOXON_MIN_PAIRS and np.any(d != 0):
                            try:
                                wr = stats.wilcoxon(a, b)
                                w, p_w = float(wr.statistic), float(wr.pvalue)
                            except ValueError:
                                pass
                rows.append({
                    "task": task, "shot": shot, "metric": m, "scheme": scheme, "baseline": baseline,
                    "n_pairs": n, "mean_scheme": a.mean() if n else math.nan,
                    "mean_baseline": b.mean() if n else math.nan, "mean_diff": d.mean() if n else math.nan,
                    "sd_diff": d.std(ddof=1) if n >= 2 else math.nan,
                    "t_stat": t, "p_ttest": p_t, "w_stat": w, "p_wilcoxon": p_w,
                })
    return pd.DataFrame(rows, columns=cols)


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


def accuracy_table(summary: pd.DataFrame, metric: str = "accuracy") -> tuple[pd.DataFrame, int]:
    """Rows task x shot, columns scheme, cells 'mean ± sd' (strings), 'missing' for settings without
    data (reasons: `missing_notes`), 'no runs' for a scheme absent from a setting; also the usual n."""
    ok = summary[summary["status"] == "ok"]
    n_ref = int(ok["n"].mode().max()) if not ok.empty else 0
    schemes = _ordered(ok["scheme"], SCHEME_ORDER)
    tasks = _ordered(summary["task"], TASK_ORDER)
    rows = []
    for t in tasks:
        for s in sorted(set(summary.loc[summary["task"] == t, "shot"])):
            sub = summary[(summary["task"] == t) & (summary["shot"] == s)]
            row = {"task": t, "shot": int(s)}
            if (sub["status"] == "missing").all():
                for sch in schemes:
                    row[sch] = "missing"
            else:
                for sch in schemes:
                    hit = sub[sub["scheme"] == sch]
                    if hit.empty:
                        row[sch] = "no runs"
                    else:
                        r = hit.iloc[0]
                        row[sch] = _fmt_cell(r[f"{metric}_mean"], r[f"{metric}_sd"], int(r["n"]), n_ref)
            rows.append(row)
    return pd.DataFrame(rows, columns=["task", "shot", *schemes]), n_ref


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
    """PNG bytes: one panel per task, `metric` vs shots (log x), one line per scheme, sd error bars."""
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
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), title="pretraining scheme")
    fig.suptitle(f"Few-shot {metric.replace('_', '-')} vs shots (mean ± sd over seeds)")
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
    parts.append(f"<p class='note'>{len(runs)} fine-tuning runs: {runs['task'].nunique()} task(s), "
                 f"{runs['scheme'].nunique()} scheme(s) ({', '.join(_ordered(runs['scheme'], SCHEME_ORDER))}), "
                 f"seeds {', '.join(str(s) for s in sorted(runs['seed'].unique()))}.</p>")

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

    parts.append(f"<h2>Paired tests against {BASELINE}</h2>")
    if (outdir / "tests.tsv").exists():
        tests = pd.read_csv(outdir / "tests.tsv", sep="\t")
        if tests.empty:
            parts.append(f"<p class='note'>No tests: no {BASELINE} runs to pair with.</p>")
        else:
            parts.append("<p class='note'>Difference scheme minus baseline paired by seed (positive = better "
                         "than the baseline). p_ttest: paired t-test; p_wilcoxon: Wilcoxon signed-rank "
                         f"(only with >= {WILCOXON_MIN_PAIRS} pairs). No correction for multiple testing. "
                         "Accuracy shown; all metrics in tests.tsv.</p>")
            show = tests[tests["metric"] == "accuracy"].drop(columns=["metric", "baseline"])
            parts.append(_table_html(show))

    parts.append("<h2>All metrics, mean and sd per task × shot × scheme</h2>")
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
def aggregate_cli(metrics_jsons: Sequence[str | Path], outdir: str | Path, expected: str | Path | None = None,
                  include: Sequence[str | Path] = (), baseline: str = BASELINE) -> int:
    """`genemask aggregate`: validate every input first, then write all outputs (see module doc).

    `expected`: optional TSV of settings expected but without data (columns task, shot, reason).
    `include`: extra PNG/TSV files to embed in report.html (e.g. loss.png, motifs.tsv).
    """
    outdir = Path(outdir)
    runs = load_runs(metrics_jsons)
    missing = load_missing(expected)
    for p in map(Path, include):
        if not p.exists():
            raise GeneMaskError(f"{p}: file to include in the report does not exist")
    summary = summarize(runs, missing)
    tests = paired_tests(runs, baseline)
    acc, n_ref = accuracy_table(summary)
    md_table = to_markdown(acc)
    md = (f"# Few-shot accuracy (mean ± sd over seeds)\n\n{md_table}\n\n"
          f"sd: sample standard deviation over seeds; usual n = {n_ref} seeds (other n shown).\n")
    notes = missing_notes(summary)
    if notes:
        md += "\nMissing settings (no data):\n" + "".join(f"- {n}\n" for n in notes)
    acc_tests = tests[tests["metric"] == "accuracy"]
    if not acc_tests.empty:
        tt = acc_tests[["task", "shot", "scheme", "n_pairs", "mean_diff", "p_ttest", "p_wilcoxon"]].copy()
        for c in ("mean_diff",):
            tt[c] = tt[c].map(lambda v: f"{v:+.4f}")
        for c in ("p_ttest", "p_wilcoxon"):
            tt[c] = tt[c].map(lambda v: "NaN" if math.isnan(v) else f"{v:.3g}")
        md += f"\n## Accuracy minus {baseline}, paired by seed\n\n{to_markdown(tt)}\n"
    png = plot_accuracy_vs_shots(summary)

    _write_tsv(outdir / "runs.tsv", runs)
    _write_tsv(outdir / "summary.tsv", summary)
    _write_tsv(outdir / "tests.tsv", tests)
    _write_text(outdir / "summary.md", md)
    _write_bytes(outdir / "accuracy_vs_shots.png", png)
    _write_text(outdir / "report.html", summary_html(outdir, include))
    print(md)
    print(f"wrote {outdir}/{{runs.tsv,summary.tsv,summary.md,tests.tsv,accuracy_vs_shots.png,report.html}}",
          file=sys.stderr)
    return 0
