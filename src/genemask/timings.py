"""Time per pipeline stage, from Snakemake's `benchmark:` files (results/benchmarks/<rule>/...)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .util import GeneMaskError

STAGE_ORDER = ["fetch", "index_genome", "chunks", "ngrams", "merge_ngrams", "npmi", "corpus", "pretrain", "baseline",
               "task_data", "finetune", "aggregate", "plot_loss", "mask_ranks", "motifs"]


def stage_timings(bench_dir: str | Path) -> pd.DataFrame:
    bench_dir = Path(bench_dir)
    rows = []
    for f in sorted(bench_dir.rglob("*.tsv")):
        rel = f.relative_to(bench_dir)
        stage = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        try:
            b = pd.read_csv(f, sep="\t")
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise GeneMaskError(f"{f}: not a Snakemake benchmark file ({e})") from None
        rows.append({"stage": stage, "s": float(b["s"].iloc[-1]), "max_rss_mb": float(b["max_rss"].iloc[-1])
                     if "max_rss" in b and pd.notna(b["max_rss"].iloc[-1]) else float("nan")})
    if not rows:
        raise GeneMaskError(f"{bench_dir}: no benchmark files (has the workflow run?)")
    df = pd.DataFrame(rows)
    out = df.groupby("stage").agg(jobs=("s", "size"), total_s=("s", "sum"), max_job_s=("s", "max"),
                                  max_rss_mb=("max_rss_mb", "max")).reset_index()
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    return out.sort_values("stage", key=lambda c: c.map(lambda s: order.get(s, len(order)))).reset_index(drop=True)


def timings_cli(bench_dir: str) -> None:
    t = stage_timings(bench_dir)
    print(f"{'stage':<14}{'jobs':>6}{'total s':>10}{'max job s':>11}{'max RSS MB':>12}")
    for r in t.itertuples():
        print(f"{r.stage:<14}{r.jobs:>6}{r.total_s:>10.1f}{r.max_job_s:>11.1f}{r.max_rss_mb:>12.0f}")
    print(f"{'all jobs':<14}{int(t.jobs.sum()):>6}{t.total_s.sum():>10.1f}")
