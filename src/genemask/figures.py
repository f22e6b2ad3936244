"""The figures (matplotlib, Agg backend, PNG): few-shot accuracy vs shots and vs pretraining steps
(`genemask aggregate`), pretraining loss curves (`genemask plot-loss`, from train_log.tsv) and the
NPMI ranks of the masked tokens (`genemask plot-mask-ranks`, from mask_ranks.tsv). Fixed colours per
scheme (`scheme_color`). Tables and statistics are in tables.py, aggregate.py and stats.py.
"""
from __future__ import annotations

import io
import math
import sys
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from .defaults import default as _schema_default
from .tables import SCHEME_ORDER, TASK_ORDER, largest_step, ordered
from .util import GeneMaskError, atomic_output, read_tsv, require_columns

_PALETTE = {  # fixed colours so a scheme looks the same in every figure
    "none": "#7f7f7f", "dnabert": "#1f77b4", "genemask": "#d62728", "curriculum": "#2ca02c",
    "random": "#9467bd", "reference": "#ff7f0e",
}
_EXTRA_COLOURS = ("#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79", "#637939", "#843c39")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def scheme_color(name: str, others: Sequence[str] = ()) -> str:
    if name in _PALETTE:
        return _PALETTE[name]
    extra = sorted(o for o in others if o not in _PALETTE)
    i = extra.index(name) if name in extra else zlib.crc32(name.encode())
    return _EXTRA_COLOURS[i % len(_EXTRA_COLOURS)]


def new_figure(w: float, h: float):
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
        # as many columns as the figure's width holds (~1.6 in per entry), so a one-panel figure keeps them all
        ncol = max(1, min(len(labels), 6, int(fig.get_figwidth() // 1.6)))
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, title=title)


def png_bytes(fig, dpi: int = 130) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_bytes(data)


LOGO_COLOURS = {"A": "#109648", "C": "#255c99", "G": "#f7b32b", "T": "#d62839"}  # the usual DNA logo colours


def information_content(ppm: np.ndarray) -> np.ndarray:
    """Bits per column of a letter-probability matrix [w, 4] (rows sum to 1): 2 - entropy (log2)."""
    p = np.clip(np.asarray(ppm, dtype=np.float64), 0.0, None)
    p = p / np.where(p.sum(1, keepdims=True) > 0, p.sum(1, keepdims=True), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log2(p), 0.0).sum(1)
    return 2.0 - h


def draw_logo(ax, ppm: np.ndarray, alphabet: str = "ACGT", title: str | None = None) -> None:
    """A sequence logo of a letter-probability matrix [w, 4] (columns in `alphabet` order) on `ax`:
    column i is a stack of letters of heights p_ib x IC_i bits, tallest on top (Schneider & Stephens
    1990, no small-sample correction); y from 0 to 2 bits."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import PathPatch
    from matplotlib.textpath import TextPath
    from matplotlib.transforms import Affine2D

    ppm = np.asarray(ppm, dtype=np.float64)
    heights = ppm / np.where(ppm.sum(1, keepdims=True) > 0, ppm.sum(1, keepdims=True), 1.0)
    heights = heights * information_content(ppm)[:, None]
    font = FontProperties(family="DejaVu Sans", weight="bold")
    for i, col in enumerate(heights):
        y = 0.0
        for b in np.argsort(col, kind="stable"):
            if col[b] <= 1e-3:
                continue
            path = TextPath((0, 0), alphabet[b], size=1, prop=font)
            ext = path.get_extents()
            tf = (Affine2D().translate(-ext.x0, -ext.y0).scale(0.9 / ext.width, col[b] / ext.height)
                  .translate(i + 0.05, y))
            ax.add_patch(PathPatch(tf.transform_path(path), color=LOGO_COLOURS.get(alphabet[b], "0.3"), lw=0))
            y += col[b]
    ax.set_xlim(0, max(len(heights), 1))
    ax.set_ylim(0, 2)
    ax.set_ylabel("bits")
    ax.set_xticks(np.arange(len(heights)) + 0.5, [str(i + 1) for i in range(len(heights))], fontsize=6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if title:
        ax.set_title(title, fontsize=8)


# ---------------------------------------------------------------------------------------------
# few-shot results
# ---------------------------------------------------------------------------------------------
def plot_accuracy_vs_shots(summary: pd.DataFrame, metric: str = "accuracy") -> bytes:
    """PNG bytes: one panel per task, `metric` vs shots (log x), one line per scheme, sd error bars;
    a scheme pretrained for several step counts is drawn at its largest."""
    summary = largest_step(summary)
    tasks = ordered(summary["task"], TASK_ORDER)
    ok = summary[summary["status"] == "ok"]
    schemes = ordered(ok["scheme"], SCHEME_ORDER)
    ncol = min(len(tasks), 2) if len(tasks) != 3 else 3
    nrow = math.ceil(len(tasks) / ncol)
    fig = new_figure(5.2 * ncol, 3.8 * nrow + 0.4)
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
    return png_bytes(fig)


def shots_plot_name(protocol: str = "finetune") -> str:
    """The accuracy-vs-shots figure of a protocol: accuracy_vs_shots.png (fine-tuning), <protocol>_... else."""
    return "accuracy_vs_shots.png" if protocol == "finetune" else f"{protocol}_accuracy_vs_shots.png"


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
    all_schemes = ordered(sub["scheme"], SCHEME_ORDER)
    fig = new_figure(max(4.8, 3.9 * len(shots)), 3.3 * len(metrics) + 0.6)
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
                 f"seed runs;\nhorizontal lines: no pretraining steps)", fontsize=10)
    return png_bytes(fig)


# ---------------------------------------------------------------------------------------------
# pretraining: loss curves and masked-token NPMI ranks
# ---------------------------------------------------------------------------------------------
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
    fig = new_figure(11, 4.2)
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
    write_bytes(output, png_bytes(fig))
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
    fig = new_figure(12, 4.4)
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
    write_bytes(output, png_bytes(fig))
    return output


def plot_mask_ranks_cli(stats: Sequence[str | Path], output: str | Path, labels: Sequence[str] | None = None,
                        ranking: str | Path | None = None, reference: str | Path | None = None,
                        k: int = _schema_default("corpus.k")) -> Path:
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
