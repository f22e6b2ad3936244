"""The `genemask aggregate` HTML page: `summary_html` builds report.html, a self-contained page
(verdict on top, tables and figures embedded as base64) from the files the command
(aggregate.aggregate_cli) wrote in its output folder, so a report exists without
`snakemake --report`."""
from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from . import stats
from .figures import shots_plot_name, steps_plot_name
from .tables import BASELINE, SCHEME_ORDER, TASK_ORDER, accuracy_table, missing_notes, ordered
from .util import GeneMaskError

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
                 "tested cells. Better / worse when the CI excludes 0; equivalent within +-margin when TOST puts the "
                 "difference inside report.equivalence_margin and the design's minimum detectable effect (MDE, 80 % "
                 "power) is at most the margin; else inconclusive, with the MDE. Probe lines read the frozen "
                 "pretrained model (embeddings + logistic regression) instead of fine-tuning it. "
                 "Headline: the largest pretraining step all pretrained schemes share; verdict.tsv has them all.")


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table_html(df: pd.DataFrame, float_digits: int = 4) -> str:
    return df.to_html(index=False, na_rep="", border=0, escape=True,
                      float_format=lambda v: f"{v:.{float_digits}g}")


RUN_WORD = {"finetune": "fine-tuning", "probe": "probe"}


def _accuracy_section(outdir: Path, summary: pd.DataFrame, protocol: str, tagged: bool) -> list[str]:
    """The accuracy table, missing settings and accuracy-vs-shots figure of one protocol."""
    if "protocol" in summary:
        summary = summary[summary["protocol"] == protocol].drop(columns="protocol")
    title = " (frozen-representation probes)" if protocol == "probe" else (" (fine-tuning)" if tagged else "")
    acc, n_ref = accuracy_table(summary)
    parts = [f"<h2>Accuracy{title}, mean ± sd over seeds</h2>",
             f"<p class='note'>Rows: task and shots per class; columns: pretraining scheme (none = random "
             f"initialisation). sd is the sample sd over seeds; cells computed from a number of seeds other "
             f"than the usual {n_ref} say so. 'missing' marks settings without data (reason given).</p>",
             _table_html(acc).replace("<td>missing", "<td class='missing'>missing")]
    notes = missing_notes(summary)
    if notes:
        parts.append("<p class='missing'>Missing settings (no data):</p><ul>"
                     + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    png = outdir / shots_plot_name(protocol)
    if png.exists():
        parts.append(f"<h2>Accuracy vs shots{title}</h2>" + _img_tag(png, f"accuracy vs shots{title}"))
    return parts


EXPLAIN_TABLES = ("explain_motifs.tsv", "explain_reliance.tsv")  # genemask explain-report's outputs
EXPLAIN_SHOWN = {"explain_reliance.tsv": ("scheme", "models", "mean_reliance", "mean_seqlet_share", "baseline",
                                          "mean_diff", "p_ttest", "test_level", "n_units", "note"),
                 "explain_motifs.tsv": ("scheme", "motif", "n_seqlets", "consensus", "jaspar_id", "jaspar_name", "q",
                                        "matched")}  # the page's columns; the TSVs have them all
_EXPLAIN_NOTE = ("Attributions: in-silico saturation mutagenesis of the first test rows of the target class "
                 "(genemask explain); seqlets, TF-MoDISco motifs and their best JASPAR CORE match by Tomtom "
                 "(genemask explain-motifs). Motif reliance: the share of a record's attribution mass inside "
                 "seqlets of JASPAR-matched motifs (q <= report.motif_q_threshold), compared between schemes "
                 "paired on pretraining seed and record: differences averaged per pretraining seed, t-test on "
                 "those means (with one pretraining seed the records are the units: about that one model).")


def _explain_section(files: list[Path]) -> list[str]:
    """'What the classifiers learned': per task, the reliance comparison, the motifs and each scheme's
    logos (results/explain/<task>/<K>/<scheme>.motifs.png)."""
    tables = {p.name: pd.read_csv(p, sep="\t") for p in files if p.name in EXPLAIN_TABLES}
    logos = [p for p in files if p.name.endswith(".motifs.png")]
    tasks = sorted({str(t) for df in tables.values() for t in df.get("task", [])} | {p.parent.parent.name for p in logos})
    parts = ["<h2 id='explain'>What the classifiers learned</h2>", f"<p class='note'>{html.escape(_EXPLAIN_NOTE)}</p>"]
    for task in tasks:
        parts.append(f"<h3>{html.escape(task)}</h3>")
        for name, title in (("explain_reliance.tsv", "Motif reliance"), ("explain_motifs.tsv", "Motifs")):
            df = tables.get(name)
            if df is not None and "task" in df:
                sub = df[df["task"].astype(str) == task].drop(columns="task")
                sub = sub[[c for c in EXPLAIN_SHOWN.get(name, sub.columns) if c in sub]]
                parts.append(f"<h4>{title}</h4>" + (_table_html(sub) if len(sub) else
                                                    "<p class='note'>none (too few seqlets for a motif)</p>"))
        for p in sorted(q for q in logos if q.parent.parent.name == task):
            parts.append(f"<h4>{html.escape(p.name.removesuffix('.motifs.png'))}: motif logos</h4>"
                         + _img_tag(p, f"{task} {p.name}"))
    return parts


def summary_html(outdir: str | Path, include: Sequence[str | Path] = (), title: str = "GeneMask report") -> str:
    """A self-contained HTML page from the files `aggregate` wrote in `outdir` (+ `include`d PNG/TSV)."""
    outdir = Path(outdir)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    runs = pd.read_csv(outdir / "runs.tsv", sep="\t")
    summary = pd.read_csv(outdir / "summary.tsv", sep="\t", keep_default_na=False, na_values=["NaN"])
    pseeds = sorted(runs["pretrain_seed"].dropna().astype(int).unique()) if "pretrain_seed" in runs else []
    psteps = sorted(runs["pretrain_step"].dropna().astype(int).unique()) if "pretrain_step" in runs else []
    protocols = list(dict.fromkeys(runs["protocol"])) if "protocol" in runs else ["finetune"]
    counts = runs["protocol"].value_counts() if "protocol" in runs else pd.Series({"finetune": len(runs)})
    parts.append("<p class='note'>" + html.escape(
        f"{' and '.join(f'{counts[p]} {RUN_WORD[p]} runs' for p in protocols)}: {runs['task'].nunique()} task(s), "
        f"{runs['scheme'].nunique()} scheme(s) ({', '.join(map(str, ordered(runs['scheme'], SCHEME_ORDER)))}), "
        f"seeds {', '.join(str(s) for s in sorted(runs['seed'].unique()))}; "
        f"pretraining seeds {', '.join(map(str, pseeds)) or 'not recorded (one)'}; "
        f"pretraining steps {', '.join(map(str, psteps)) or 'not recorded (one)'}.") + "</p>")
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

    for protocol in protocols:
        parts += _accuracy_section(outdir, summary, protocol, len(protocols) > 1)

    for t in ordered(runs["task"], TASK_ORDER):
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
            parts.append(f"<p class='note'>No tests: no {html.escape(BASELINE)}, none or baseline runs to pair with.</p>")
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

    include = [Path(p) for p in include]
    for p in include:
        if not p.exists():
            raise GeneMaskError(f"{p}: file to include in the report does not exist")
    explained = [p for p in include if p.name in EXPLAIN_TABLES or p.name.endswith(".motifs.png")]
    if explained:
        parts += _explain_section(explained)
    for p in include:
        if p in explained:
            continue
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
