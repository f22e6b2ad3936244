"""`genemask explain-report`: what the fine-tuned classifiers learned, compared between schemes.

Inputs: per task x scheme, the motifs TSV and the reliance TSV of `genemask explain-motifs` (the
attributions of that scheme's classifiers, one per pretraining seed, on the same test rows). Outputs:

* the motifs table: every discovered motif with its task and scheme and its best JASPAR match;
* the reliance table: per task, each scheme against each reference present (`dnabert`, `none`), the
  motif reliance (the share of a record's attribution mass inside seqlets of JASPAR-matched motifs,
  attribution_motifs.reliance) paired on (pretraining seed, test record) and tested with the study's
  own paired statistics (`stats.cell_test`: the differences averaged per pretraining seed, a t-test on
  those means; with one pretraining seed the records are the units, about that one model, and the
  note says so). Records without attribution mass (reliance NaN) are left out of the pairs. Beside
  it, each scheme's mean seqlet share (the mass inside any seqlet, matched or not: reliance's upper
  bound, informative where no motif was found), and `models` (pretraining seeds) with the sd of
  their mean reliance.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from . import stats
from .tables import BASELINE, SCHEME_ORDER, ordered
from .util import GeneMaskError, atomic_output, read_tsv

RELIANCE_COLUMNS = ("source", "scheme", "pretrain_seed", "id", "reliance", "seqlet_share")
MOTIF_COLUMNS = ("motif", "n_seqlets", "consensus", "jaspar_id", "jaspar_name", "q", "matched")


def reliance_tests(reliance: pd.DataFrame, references: Sequence[str] = (BASELINE, "none")) -> pd.DataFrame:
    """One row per task x scheme x reference present: stats.cell_test on reliance paired on
    (pretraining seed, record id)."""
    rows = []
    for task, t in reliance.groupby("task", sort=True):
        schemes = ordered(t["scheme"].unique(), SCHEME_ORDER)
        for ref in [r for r in references if r in schemes]:
            r = t[t["scheme"] == ref]
            for scheme in [s for s in schemes if s not in (ref, "none")]:  # none: the floor, never a candidate
                x = t[t["scheme"] == scheme]
                m = x.merge(r, on=["pretrain_seed", "id"], suffixes=("_x", "_r")).dropna(
                    subset=["reliance_x", "reliance_r"])
                pairs = pd.DataFrame({"group": m["pretrain_seed"].to_numpy(), "x": m["reliance_x"].to_numpy(),
                                      "r": m["reliance_r"].to_numpy()})
                pairs["d"] = pairs["x"] - pairs["r"]
                res = stats.cell_test(pairs, pretrained_design=True)
                if res["test_level"] == "finetune_seed":  # one pretraining seed: here the units are records
                    res["test_level"] = "record"
                    res["note"] = res["note"].replace("fine-tuning seeds used as replicates", "records used as replicates")
                rows.append({"task": task, "scheme": scheme, "baseline": ref, **res})
    return pd.DataFrame(rows)


def explain_report_cli(inputs: Sequence[Sequence[str]], motifs_out: str, reliance_out: str) -> int:
    """`genemask explain-report`: inputs are (TASK, SCHEME, MOTIFS_TSV, RELIANCE_TSV) quadruples."""
    motifs, reliance = [], []
    for task, scheme, mpath, rpath in inputs:
        m = read_tsv(Path(mpath), "explain-motifs motifs table", MOTIF_COLUMNS)
        motifs.append(m.assign(task=task, scheme=scheme))
        r = read_tsv(Path(rpath), "explain-motifs reliance table", RELIANCE_COLUMNS)
        if (r["scheme"].astype(str) != scheme).any():
            raise GeneMaskError(f"{rpath}: attributions of scheme {r['scheme'].iloc[0]!r}, given as {scheme!r}")
        reliance.append(r.assign(task=task))
    motifs = pd.concat(motifs, ignore_index=True)
    motifs = motifs[["task", "scheme", *[c for c in motifs.columns if c not in ("task", "scheme")]]]
    reliance = pd.concat(reliance, ignore_index=True)
    tests = reliance_tests(reliance)
    per_model = reliance.groupby(["task", "scheme", "pretrain_seed"], sort=True)[["reliance", "seqlet_share"]].mean()
    summary = per_model.groupby(["task", "scheme"]).agg(
        mean_reliance=("reliance", "mean"), sd_reliance=("reliance", "std"), models=("reliance", "size"),
        mean_seqlet_share=("seqlet_share", "mean")).reset_index()
    out = summary.merge(tests, on=["task", "scheme"], how="left") if len(tests) else summary
    with atomic_output(motifs_out) as tm, atomic_output(reliance_out) as tr:
        motifs.to_csv(tm, sep="\t", index=False, float_format="%.6g")
        out.to_csv(tr, sep="\t", index=False, float_format="%.6g")
    for row in tests.itertuples():
        print(f"explain-report {row.task}: {row.scheme} vs {row.baseline} motif reliance {row.mean_diff:+.3f} "
              f"(p {row.p_ttest:.3g}; {row.n_units} {row.test_level.replace('_', ' ')} units"
              + (f"; {row.note}" if row.note else "") + ")")
    return 0
