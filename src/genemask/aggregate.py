"""`genemask aggregate`: fine-tuning metrics -> tables, tests, figures and a self-contained HTML page.

`aggregate_cli` (the `genemask aggregate` command) reads one metrics JSON per fine-tuning run (and
one `{"runs": [...]}` JSON per probe job, `genemask probe`) and writes, in `outdir`:

* `runs.tsv`     one row per run, sorted by protocol (finetune, probe), task, shot, scheme,
                 pretrain_step, pretrain_seed, seed (the two pretraining columns empty/NaN where the
                 metrics JSON does not record them). Every table below is computed per protocol on
                 that protocol's runs alone and has a `protocol` column first;
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
* `accuracy_vs_shots.png` (`probe_accuracy_vs_shots.png` for probes: figures.shots_plot_name)  one panel per task, accuracy vs shots (log x), one line per scheme (at its
                 largest pretraining step), error bars = sd over runs, missing shots marked;
* `accuracy_vs_steps_<task>.png` (`steps_plot_name`) accuracy and MCC vs pretraining steps per shot;
* `report.html`  a self-contained page (verdict on top, tables + figures embedded as base64), so a
                 report exists without `snakemake --report`.

Missing settings come from an optional TSV (`task`, `shot`, `reason`), e.g. shots for which the
authors released no file (Cohn-enh and Splice-40 1000-shot).

This module is the command: reading and validating the metrics JSONs, summarising them per task x
shot x scheme x pretraining step, picking the references and ordering the comparisons, summary.md.
The orders and text tables shared with the page and the figures are in tables.py, the statistics
in stats.py, the figures in figures.py, the HTML page (`summary_html`) in report.py.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from . import stats
from .figures import plot_accuracy_vs_shots, plot_accuracy_vs_steps, shots_plot_name, steps_plot_name, write_bytes
from .plan import TASK_NAME
from .probe import PROTOCOL_NAMES, PROTOCOLS
from .report import summary_html
from .tables import BASELINE, SCHEME_ORDER, TASK_ORDER, accuracy_table, missing_notes, ordered, to_markdown
from .util import GeneMaskError, atomic_output, read_json_object, read_tsv

METRICS = ("accuracy", "macro_f1", "mcc", "auroc")
ID_KEYS = ("task", "shot", "seed", "scheme")
# the keys finetune.finetune_cli writes (docs/contracts.md); the others are kept when present
REQUIRED_KEYS = ID_KEYS + ("n_train", "n_test") + METRICS + ("train_seconds", "eval_seconds")
OPTIONAL_KEYS = ("num_labels", "epochs", "batch_size", "lr")
# the pretraining design (docs/contracts.md): int or null; absent = the single default seed / the only step
DESIGN_KEYS = ("pretrain_seed", "pretrain_step")
MAX_INT = 2**53  # integer keys beyond it (e.g. shot 99999999999999999999) overflow int64 tables


# ---------------------------------------------------------------------------------------------
# reading and validating inputs
# ---------------------------------------------------------------------------------------------
def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_run(path: str | Path) -> list[dict]:
    """The runs of one metrics JSON, validated (GeneMaskError naming the file on any fault): a
    fine-tuning run's object, or `{"runs": [...]}` (a probe job's shots x seeds)."""
    path = Path(path)
    obj = read_json_object(path, "metrics JSON")
    if "runs" not in obj:
        return [check_run(obj, str(path))]
    if not isinstance(obj["runs"], list) or not obj["runs"]:
        raise GeneMaskError(f"{path}: 'runs' must be a non-empty list of run objects")
    out = []
    for i, rec in enumerate(obj["runs"], 1):
        if not isinstance(rec, dict):
            raise GeneMaskError(f"{path}: run {i} must be a JSON object, got {type(rec).__name__}")
        out.append(check_run(rec, f"{path} run {i}", source=str(path)))
    return out


def check_run(rec: dict, where: str, source: str | None = None) -> dict:
    """One run record validated; `where` names it in errors (the file, and the run's place in it)."""
    missing = [k for k in REQUIRED_KEYS if k not in rec]
    if missing:
        raise GeneMaskError(f"{where}: metrics JSON lacks key(s) {', '.join(missing)}")
    rec = dict(rec)
    for k in ("task", "scheme"):
        if not isinstance(rec[k], str) or not rec[k]:
            raise GeneMaskError(f"{where}: '{k}' must be a non-empty string, got {rec[k]!r}")
    if not TASK_NAME.fullmatch(rec["task"]):  # it names the steps plot and result folders
        raise GeneMaskError(f"{where}: 'task' {rec['task']!r} must be letters, digits, '_' or '-' (as in the config)")
    if "$" in rec["scheme"] or not rec["scheme"].isprintable():  # '$...$' is math to the figures' labels
        raise GeneMaskError(f"{where}: 'scheme' {rec['scheme']!r} has a '$' or a control character")
    rec["protocol"] = rec.get("protocol", PROTOCOLS[0])
    if rec["protocol"] not in PROTOCOLS:
        raise GeneMaskError(f"{where}: 'protocol' must be one of {', '.join(PROTOCOLS)}, got {rec['protocol']!r}")
    for k in ("shot", "seed", "n_train", "n_test"):
        v = rec[k]
        if not (_is_number(v) and math.isfinite(v) and float(v).is_integer()):
            raise GeneMaskError(f"{where}: '{k}' must be an integer, got {v!r}")
        low = 1 if k == "shot" else 0
        if not low <= v <= MAX_INT:
            raise GeneMaskError(f"{where}: '{k}' = {v} is outside [{low}, 2^53]")
        rec[k] = int(v)
    for k in METRICS + ("train_seconds", "eval_seconds") + OPTIONAL_KEYS:
        v = rec.get(k)
        if v is None:  # not computed (e.g. auroc with one class in the test set)
            rec[k] = math.nan
        elif not _is_number(v):
            raise GeneMaskError(f"{where}: '{k}' must be a number or null, got {v!r}")
        elif not math.isfinite(v):  # JSON NaN/Infinity: counted in n but not in the mean otherwise
            raise GeneMaskError(f"{where}: '{k}' = {v} is not a finite number (null marks a value not computed)")
    for k in METRICS:
        v = rec[k]
        if not math.isnan(v) and not -1.0 <= v <= 1.0:
            raise GeneMaskError(f"{where}: '{k}' = {v} is outside [-1, 1]")
    for k in DESIGN_KEYS:
        v = rec.get(k)
        if v is None:
            rec[k] = math.nan
        elif not (_is_number(v) and math.isfinite(v) and float(v).is_integer() and 0 <= v <= MAX_INT):
            raise GeneMaskError(f"{where}: '{k}' must be a non-negative integer or null, got {v!r}")
    out = {k: rec[k] for k in REQUIRED_KEYS + ("protocol",) + OPTIONAL_KEYS + DESIGN_KEYS}
    out["source"] = source or where
    return out


def load_runs(paths: Sequence[str | Path]) -> pd.DataFrame:
    """All runs, validated; duplicates of (task, shot, scheme, pretrain_step, pretrain_seed, seed) are
    an error naming both files. `pretrain_step`/`pretrain_seed` are nullable integers (NA: not recorded)."""
    if not paths:
        raise GeneMaskError("no metrics JSON files given")
    recs = [r for p in paths for r in load_run(p)]
    seen: dict[tuple, str] = {}
    for r in recs:
        key = tuple(r[k] for k in ("protocol", "task", "shot", "scheme", "pretrain_step", "pretrain_seed", "seed"))
        key = tuple(None if isinstance(v, float) and math.isnan(v) else v for v in key)
        if key in seen:
            raise GeneMaskError(f"{r['source']}: same protocol/task/shot/scheme/pretrain_step/pretrain_seed/seed {key} "
                                f"as {seen[key]}")
        seen[key] = r["source"]
    df = pd.DataFrame.from_records(recs)
    for k in DESIGN_KEYS:
        df[k] = df[k].astype(float).astype("Int64")
    cols = ["protocol", "task", "shot", "scheme", "pretrain_step", "pretrain_seed", "seed", *METRICS, "n_train",
            "n_test", "num_labels", "epochs", "batch_size", "lr", "train_seconds", "eval_seconds", "source"]
    df["_p"] = df["protocol"].map(PROTOCOLS.index)
    return df.sort_values(["_p", "task", "shot", "scheme", "pretrain_step", "pretrain_seed", "seed"],
                          kind="stable")[cols].reset_index(drop=True)


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
    bad = shots.isna() | (shots % 1 != 0) | (shots < 1) | (shots > MAX_INT)
    if bad.any():
        raise GeneMaskError(f"{path}: shot {df['shot'][bad].iloc[0]!r} is not an integer in [1, 2^53]")
    task = df["task"][~df["task"].map(lambda t: bool(TASK_NAME.fullmatch(t)))]
    if len(task):
        raise GeneMaskError(f"{path}: task {task.iloc[0]!r} must be letters, digits, '_' or '-' (as in the config)")
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
        schemes = ordered(runs["scheme"], SCHEME_ORDER) or ["all"]
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


# ---------------------------------------------------------------------------------------------
# ordering and text
# ---------------------------------------------------------------------------------------------
def ordered_verdict(verdict: pd.DataFrame, refs: Sequence[str]) -> pd.DataFrame:
    """Rows by reference (dnabert, none, baselines), metric (accuracy first), scheme (canonical
    order), step: the order of verdict.tsv/md and of the page's headline list."""
    if verdict.empty:
        return verdict
    rank = {s: i for i, s in enumerate(ordered(verdict["scheme"], SCHEME_ORDER))}
    key = pd.DataFrame({"b": verdict["baseline"].map({r: i for i, r in enumerate(refs)}),
                        "m": verdict["metric"].map({m: i for i, m in enumerate(METRICS)}),
                        "s": verdict["scheme"].map(rank), "t": verdict["pretrain_step"].fillna(-1)})
    return verdict.iloc[key.sort_values(["b", "m", "s", "t"], kind="stable").index].reset_index(drop=True)


def summary_markdown(summary: pd.DataFrame, tests: pd.DataFrame, verdict: pd.DataFrame,
                     baseline: str = BASELINE) -> str:
    """summary.md: the headline verdict lines, the accuracy table (`accuracy_table`), the missing
    settings, and the accuracy tests against `baseline` (`tests`: `stats.paired_tests`)."""
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
    return md


def _write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text)


def _write_tsv(path: Path, df: pd.DataFrame) -> None:
    with atomic_output(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, na_rep="NaN", float_format="%.10g")


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------
def parse_margins(items: Sequence[str]) -> dict[str, float]:
    """METRIC=MARGIN items over the schema's report.equivalence_margin defaults; one line on a fault."""
    from .defaults import check, defaults

    out = defaults("report.equivalence_margin")
    for item in items:
        metric, sep, value = item.partition("=")
        try:
            out[metric] = float(value) if sep else math.nan
        except ValueError:
            out[metric] = value
    check(out, "report.equivalence_margin", "--equivalence-margin")
    return out


def analyse(runs: pd.DataFrame, missing: pd.DataFrame, baseline: str, margin: dict, n_boot: int,
            boot_seed: int) -> dict:
    """Every table of one protocol's runs, each with its `protocol` column first."""
    protocol = runs["protocol"].iloc[0]
    refs = references(runs, baseline)
    out = {"summary": summarize(runs, missing if protocol == PROTOCOLS[0] else None),
           "tests": stats.paired_tests(runs, refs, METRICS),
           "variance": stats.variance_table(runs)}
    verdict = ordered_verdict(stats.verdicts(runs, out["tests"], refs, margin, n_boot=n_boot, boot_seed=boot_seed),
                              refs)
    verdict.insert(0, "protocol", protocol)
    verdict["verdict"] = [stats.verdict_sentence(r) for r in verdict.to_dict("records")]
    out["md"] = summary_markdown(out["summary"], out["tests"], verdict, baseline)
    for k in ("summary", "tests", "variance"):
        out[k].insert(0, "protocol", protocol)
    out["verdict"] = verdict
    return out


def aggregate_cli(metrics_jsons: Sequence[str | Path], outdir: str | Path, expected: str | Path | None = None,
                  include: Sequence[str | Path] = (), baseline: str = BASELINE, *, margins: Sequence[str] = (),
                  n_boot: int = stats.N_BOOT, boot_seed: int = stats.BOOT_SEED) -> int:
    """`genemask aggregate`: validate every input first, then write all outputs (see module doc).

    `expected`: optional TSV of settings expected but without data (columns task, shot, reason).
    `include`: extra PNG/TSV files to embed in report.html (e.g. loss.png, motifs.tsv).
    `margins`: METRIC=MARGIN items, the verdict's TOST margins (others: the schema's defaults).
    `n_boot`, `boot_seed`: replicates and seed of the verdict's hierarchical bootstrap.
    Each protocol present (fine-tuning, probes) is analysed on its own runs; the tables stack them
    with a `protocol` column, summary.md has a part per protocol.
    """
    outdir = Path(outdir)
    margin = parse_margins(margins)
    runs = load_runs(metrics_jsons)
    missing = load_missing(expected)
    for p in map(Path, include):
        if not p.exists():
            raise GeneMaskError(f"{p}: file to include in the report does not exist")
    parts = {p: analyse(r, missing, baseline, margin, n_boot, boot_seed)
             for p, r in runs.groupby("protocol", sort=False)}
    tables = {k: pd.concat([a[k] for a in parts.values()], ignore_index=True)
              for k in ("summary", "tests", "variance", "verdict")}
    verdict_md = stats.verdict_markdown(tables["verdict"], primary=(baseline, "none"))
    md = "\n".join(a["md"] if len(parts) == 1 else f"# {PROTOCOL_NAMES[p]}\n\n{a['md']}" for p, a in parts.items())
    pngs = {shots_plot_name(p): plot_accuracy_vs_shots(a["summary"].drop(columns="protocol"))
            for p, a in parts.items()}
    kinds = stats.scheme_kinds(runs)
    first = next(iter(parts.values()))["summary"].drop(columns="protocol")  # fine-tuning when present
    steps_png = {t: plot_accuracy_vs_steps(first, t, kinds) for t in ordered(runs["task"], TASK_ORDER)}

    _write_tsv(outdir / "runs.tsv", runs)
    for k in ("summary", "tests", "variance", "verdict"):
        _write_tsv(outdir / f"{k}.tsv", tables[k])
    _write_text(outdir / "verdict.md", verdict_md)
    _write_text(outdir / "summary.md", md)
    for name, data in pngs.items():
        write_bytes(outdir / name, data)
    for t, data in steps_png.items():
        write_bytes(outdir / steps_plot_name(t), data)
    _write_text(outdir / "report.html", summary_html(outdir, include))
    print(md)
    print(f"wrote {outdir}/{{runs.tsv,summary.tsv,summary.md,tests.tsv,variance.tsv,verdict.tsv,verdict.md,"
          f"{','.join(pngs)},{','.join(steps_plot_name(t) for t in steps_png)},report.html}}", file=sys.stderr)
    return 0
