"""The summary's orders and text tables, shared by the `genemask aggregate` command (aggregate.py),
its HTML page (report.py) and its figures (figures.py): the canonical scheme and task orders,
`accuracy_table` ('mean ± sd' cells), `missing_notes`, `largest_step` and `to_markdown`.
"""
from __future__ import annotations

import math

import pandas as pd

BASELINE = "dnabert"
SCHEME_ORDER = ("none", "dnabert", "genemask", "curriculum", "cm_step", "cm_gems", "global_pmi", "random",
                "reference")
TASK_ORDER = ("Prom-core", "Prom-300", "Cohn-enh", "Splice-40")


def ordered(values, preferred) -> list:
    """Known names in their canonical order first, then the rest sorted."""
    vals = list(dict.fromkeys(values))
    return [v for v in preferred if v in vals] + sorted(v for v in vals if v not in preferred)


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
    for sch in ordered(ok["scheme"], SCHEME_ORDER):
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
    tasks = ordered(summary["task"], TASK_ORDER)
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


def largest_step(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of `summary` at each scheme's largest recorded pretraining step (all rows of a scheme
    without recorded steps, and every missing-setting row)."""
    top = summary.groupby("scheme")["pretrain_step"].max()
    st = summary["pretrain_step"]
    best = summary["scheme"].map(top)
    keep = (summary["status"] == "missing") | (best.isna() & st.isna()) | (st == best).fillna(False)
    return summary[keep.astype(bool)]
