"""genemask aggregate / plot-loss / plot-mask-ranks: tables with known values, tests equal to scipy's,
missing settings listed, invalid inputs rejected without outputs, figures and the HTML page rendered."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from genemask import aggregate, figures, report
from genemask.cli import main
from genemask.util import GeneMaskError

SEEDS = list(range(6))
MARGINS = {"accuracy": 0.02, "mcc": 0.04}  # the schema's report.equivalence_margin defaults
# accuracy by (task, shot, scheme): one value per seed (known numbers, so means/sds/tests are checkable)
ACC = {
    ("Prom-core", 10, "dnabert"): [0.61, 0.64, 0.60, 0.66, 0.63, 0.62],
    ("Prom-core", 10, "genemask"): [0.66, 0.65, 0.64, 0.70, 0.69, 0.63],
    ("Prom-core", 10, "none"): [0.52, 0.55, 0.50, 0.51, 0.56, 0.53],
    ("Prom-core", 100, "dnabert"): [0.71, 0.72, 0.70, 0.74, 0.73, 0.69],
    ("Prom-core", 100, "genemask"): [0.73, 0.71, 0.75, 0.76, 0.72, 0.74],
    ("Prom-core", 100, "none"): [0.60, 0.58, 0.61, 0.59, 0.62, 0.57],
    ("Splice-40", 10, "dnabert"): [0.50, 0.55, 0.53],  # seeds 0-2 only
    ("Splice-40", 10, "genemask"): [0.54, 0.52, 0.58],
    ("Splice-40", 100, "dnabert"): [0.70],  # one seed: sd and p-values NaN
    ("Splice-40", 100, "genemask"): [0.72],
}


def _record(task, shot, scheme, seed, acc):
    nl = 3 if task == "Splice-40" else 2
    return {"task": task, "shot": shot, "seed": seed, "scheme": scheme, "n_train": shot * nl, "n_test": 500,
            "num_labels": nl, "accuracy": acc, "macro_f1": acc - 0.01, "mcc": 2 * acc - 1.0,
            "auroc": min(1.0, acc + 0.1), "train_seconds": 1.5, "eval_seconds": 0.25, "epochs": 20,
            "batch_size": 5, "lr": 1e-4}


@pytest.fixture()
def metrics(tmp_path) -> list[Path]:
    d = tmp_path / "metrics"
    d.mkdir()
    paths = []
    for (task, shot, scheme), vals in ACC.items():
        for seed, acc in zip(SEEDS, vals):
            p = d / f"{task}_{shot}_{scheme}_{seed}.json"
            p.write_text(json.dumps(_record(task, shot, scheme, seed, acc)))
            paths.append(p)
    return paths


@pytest.fixture()
def missing_tsv(tmp_path) -> Path:
    p = tmp_path / "missing.tsv"
    p.write_text("task\tshot\treason\nSplice-40\t1000\tno 1000-shot file released\n"
                 "Cohn-enh\t1000\tno 1000-shot file released\n")
    return p


def _png_ok(path: Path, min_ink: float = 0.01) -> None:
    """A real, non-blank PNG: the magic bytes, and some share of pixels that are not background."""
    import matplotlib.image as mpimg

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    img = mpimg.imread(path)[..., :3]
    ink = (np.abs(img - img[0, 0]).sum(axis=2) > 0.05).mean()
    assert ink > min_ink, f"{path}: looks blank ({ink:.4f} of pixels differ from the corner)"


def test_aggregate_known_values(metrics, missing_tsv, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["aggregate", *map(str, metrics), "--outdir", str(out), "--missing", str(missing_tsv)]) == 0
    printed = capsys.readouterr().out
    for f in ("runs.tsv", "summary.tsv", "summary.md", "tests.tsv", "accuracy_vs_shots.png", "report.html"):
        assert (out / f).stat().st_size > 0, f

    runs = pd.read_csv(out / "runs.tsv", sep="\t")
    assert len(runs) == sum(len(v) for v in ACC.values())
    key = runs[["task", "shot", "scheme", "seed"]]
    assert key.equals(key.sort_values(["task", "shot", "scheme", "seed"]).reset_index(drop=True))

    summ = pd.read_csv(out / "summary.tsv", sep="\t", keep_default_na=False, na_values=["NaN"])
    for (task, shot, scheme), vals in ACC.items():
        row = summ[(summ.task == task) & (summ.shot == shot) & (summ.scheme == scheme)]
        assert len(row) == 1
        r = row.iloc[0]
        assert r["n"] == len(vals)
        assert r["accuracy_mean"] == pytest.approx(np.mean(vals), rel=1e-9)
        if len(vals) > 1:
            assert r["accuracy_sd"] == pytest.approx(np.std(vals, ddof=1), rel=1e-9)
            assert r["mcc_sd"] == pytest.approx(np.std(2 * np.array(vals) - 1, ddof=1), rel=1e-9)
        else:
            assert math.isnan(r["accuracy_sd"])

    # missing settings are rows (status missing, with the reason), in the markdown and on stdout
    miss = summ[summ.status == "missing"]
    assert set(zip(miss.task, miss.shot)) == {("Splice-40", 1000), ("Cohn-enh", 1000)}
    assert (miss.n == 0).all() and (miss.reason == "no 1000-shot file released").all()
    md = (out / "summary.md").read_text()
    assert "Splice-40 | 1000" in md and "Cohn-enh  | 1000" in md and "missing" in md
    assert "Splice-40 1000-shot: no 1000-shot file released" in md
    assert "| task" in printed and "missing" in printed
    pc10 = next(line for line in md.splitlines() if line.startswith("| Prom-core | 10 "))
    g = ACC[("Prom-core", 10, "genemask")]
    assert f"{np.mean(g):.3f} ± {np.std(g, ddof=1):.3f}" in pc10
    assert "(n=1)" in md and "(n=3)" in md  # other numbers of seeds than the usual 6 are flagged
    # Splice-40 has no 'none' runs: listed as no_runs in the table, 'no runs' in the markdown
    gap = summ[(summ.task == "Splice-40") & (summ.scheme == "none") & (summ.shot.isin([10, 100]))]
    assert list(gap.status) == ["no_runs", "no_runs"] and (gap.n == 0).all()
    assert "no runs" in next(line for line in md.splitlines() if line.startswith("| Splice-40 | 10 "))


def test_paired_tests_equal_scipy(metrics, tmp_path):
    out = tmp_path / "out"
    aggregate.aggregate_cli(metrics, out)
    t = pd.read_csv(out / "tests.tsv", sep="\t")
    assert set(t.baseline) == {"dnabert", "none"}  # the references present: dnabert, none (no baselines)
    assert set(t.metric) == set(aggregate.METRICS)

    def row(task, shot, scheme, metric="accuracy", baseline="dnabert"):
        r = t[(t.task == task) & (t.shot == shot) & (t.scheme == scheme) & (t.metric == metric)
              & (t.baseline == baseline)]
        assert len(r) == 1
        return r.iloc[0]

    a, b = np.array(ACC[("Prom-core", 10, "genemask")]), np.array(ACC[("Prom-core", 10, "dnabert")])
    r = row("Prom-core", 10, "genemask")
    assert r.n_pairs == 6
    assert r.mean_diff == pytest.approx((a - b).mean(), abs=1e-9)
    assert r.p_ttest == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-5)
    assert r.t_stat == pytest.approx(stats.ttest_rel(a, b).statistic, rel=1e-5)
    assert r.p_wilcoxon == pytest.approx(stats.wilcoxon(a, b).pvalue, rel=1e-5)
    # the 'none' scheme is compared too; mcc = 2*acc-1 so its t statistic equals accuracy's
    r_none = row("Prom-core", 100, "none")
    assert r_none.mean_diff < 0
    assert row("Prom-core", 100, "none", "mcc").t_stat == pytest.approx(r_none.t_stat, rel=1e-5)
    # 3 pairs: t-test but no Wilcoxon; 1 pair: no test at all
    a, b = np.array(ACC[("Splice-40", 10, "genemask")]), np.array(ACC[("Splice-40", 10, "dnabert")])
    r = row("Splice-40", 10, "genemask")
    assert r.n_pairs == 3 and r.p_ttest == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-5)
    assert math.isnan(r.p_wilcoxon)
    r = row("Splice-40", 100, "genemask")
    assert r.n_pairs == 1 and math.isnan(r.p_ttest) and math.isnan(r.p_wilcoxon)
    assert r.mean_diff == pytest.approx(0.02)


@pytest.mark.parametrize("fault", ["missing_key", "bad_json", "not_object", "bad_type", "duplicate"])
def test_invalid_metrics_rejected_without_output(metrics, tmp_path, capsys, fault):
    bad = tmp_path / "metrics" / "bad_run.json"
    rec = _record("Prom-core", 10, "random", 0, 0.6)
    if fault == "missing_key":
        del rec["mcc"]
        bad.write_text(json.dumps(rec))
    elif fault == "bad_json":
        bad.write_text('{"task": "Prom-core", "shot": 10,')
    elif fault == "not_object":
        bad.write_text("[1, 2, 3]")
    elif fault == "bad_type":
        rec["shot"] = "ten"
        bad.write_text(json.dumps(rec))
    else:
        bad.write_text(metrics[0].read_text())
    out = tmp_path / "out"
    with pytest.raises(GeneMaskError, match="bad_run.json"):
        aggregate.aggregate_cli([*metrics, bad], out)
    assert not out.exists() or not any(out.iterdir())
    # through the command: one error line naming the file, exit status 2
    assert main(["aggregate", *map(str, metrics), str(bad), "--outdir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genemask aggregate: error:") and "bad_run.json" in err
    if fault == "missing_key":
        assert "mcc" in err
    assert not out.exists() or not any(out.iterdir())


def test_bad_missing_table(metrics, tmp_path):
    p = tmp_path / "missing.tsv"
    p.write_text("task\tshots\nSplice-40\t1000\n")
    with pytest.raises(GeneMaskError, match="missing.tsv.*shot"):
        aggregate.aggregate_cli(metrics, tmp_path / "out", expected=p)
    assert not (tmp_path / "out").exists()


def test_accuracy_plot_and_html(metrics, missing_tsv, tmp_path):
    out = tmp_path / "out"
    extra = tmp_path / "extra.tsv"
    extra.write_text("kmer\tscore\nCACGTG\t0.9\n")
    aggregate.aggregate_cli(metrics, out, expected=missing_tsv, include=[extra])
    _png_ok(out / "accuracy_vs_shots.png")
    page = (out / "report.html").read_text()
    assert page.count("<table") >= 4  # accuracy, tests, summary, included table, runs
    assert "data:image/png;base64," in page
    for s in ("Prom-core", "Splice-40", "genemask", "dnabert", "none", "missing", "Cohn-enh 1000-shot",
              "p_ttest", "accuracy_mean", "CACGTG"):
        assert s in page, s
    g = ACC[("Prom-core", 10, "genemask")]
    assert f"{np.mean(g):.3f} ± {np.std(g, ddof=1):.3f}" in page


def _loss_log(path: Path, decay: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    steps = np.arange(0, 3000, 10)
    loss = 7.0 * np.exp(-steps / (700 * decay)) + 1.4 + rng.normal(0, 0.05, steps.size)
    val = np.where(steps % 500 == 0, loss + 0.1, np.nan)  # empty on most rows
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"step": steps, "lr": 1e-4, "loss": loss, "val_loss": val, "val_ppl": np.exp(val),
                  "tokens_per_s": 2e5}).to_csv(path, sep="\t", index=False, na_rep="")
    return path


def test_plot_loss(tmp_path):
    logs = [_loss_log(tmp_path / s / "train_log.tsv", d, i)
            for i, (s, d) in enumerate([("dnabert", 1.0), ("genemask", 1.2), ("curriculum", 0.9)])]
    png = tmp_path / "loss.png"
    assert main(["plot-loss", *map(str, logs), "-o", str(png)]) == 0
    _png_ok(png)
    png2 = tmp_path / "loss2.png"
    assert main(["plot-loss", *map(str, logs), "--labels", "a", "b", "c", "-o", str(png2)]) == 0
    _png_ok(png2)
    with pytest.raises(GeneMaskError, match="2 label"):
        figures.plot_loss(logs, ["a", "b"], tmp_path / "x.png")
    bad = tmp_path / "bad" / "train_log.tsv"
    bad.parent.mkdir()
    bad.write_text("step\tlr\tloss\n1\t0.1\t5.0\n")
    with pytest.raises(GeneMaskError, match="bad/train_log.tsv.*val_loss"):
        figures.plot_loss([bad], None, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_mask_ranks(tmp_path, data_a, capsys):
    """The layout `genemask pretrain` writes (rank, masked_count, all_count; 4097 = unranked/[UNK]),
    the plain (rank, count) layout, and a run pretrained without a ranking (header only)."""
    rng = np.random.default_rng(0)
    r = np.arange(1, 4098)
    allc = rng.poisson(1000, r.size)
    files = {}
    for scheme, masked in {"dnabert": rng.binomial(allc, 0.15),
                           "genemask": rng.binomial(allc, np.clip(0.6 * np.exp(-r / 600), 0, 1))}.items():
        p = tmp_path / scheme / "mask_ranks.tsv"
        p.parent.mkdir()
        pd.DataFrame({"rank": r, "masked_count": masked, "all_count": allc}).to_csv(p, sep="\t", index=False)
        files[scheme] = p
    p = tmp_path / "random" / "mask_ranks.tsv"
    p.parent.mkdir()
    pd.DataFrame({"rank": r, "count": rng.poisson(150, r.size)}).to_csv(p, sep="\t", index=False)
    files["random"] = p
    p = tmp_path / "none" / "mask_ranks.tsv"
    p.parent.mkdir()
    p.write_text("rank\tmasked_count\tall_count\n")
    files["none"] = p
    png = tmp_path / "mask_ranks.png"
    assert main(["plot-mask-ranks", "--ranking", str(data_a), "--stats", *map(str, files.values()),
                 "-o", str(png)]) == 0
    assert "none/mask_ranks.tsv: no masked tokens counted" in capsys.readouterr().err
    _png_ok(png)
    # the function itself, with one rank per masked token and an explicit all-token reference
    png2 = tmp_path / "direct.png"
    figures.mask_rank_histogram({"genemask": rng.integers(1, 300, 5000), "dnabert": rng.integers(1, 4097, 5000)},
                               png2, reference=(r, np.ones(r.size)))
    _png_ok(png2)
    bad = tmp_path / "bad.tsv"
    bad.write_text("rank\tn\n1\t5\n")
    with pytest.raises(GeneMaskError, match="bad.tsv.*count"):
        figures.plot_mask_ranks_cli([bad], tmp_path / "y.png")
    assert not (tmp_path / "y.png").exists()


@pytest.mark.subprocess
@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs /usr/bin/chromium (headless)")
def test_report_html_renders_in_chromium(metrics, missing_tsv, tmp_path):
    out = tmp_path / "out"
    aggregate.aggregate_cli(metrics, out, expected=missing_tsv)
    shot = tmp_path / "screenshot.png"
    cmd = ["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--window-size=1280,1600", f"--user-data-dir={tmp_path / 'chrome-profile'}",
           f"--screenshot={shot}", (out / "report.html").resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=50, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    _png_ok(shot, min_ink=0.02)
    shutil.rmtree(tmp_path / "chrome-profile", ignore_errors=True)


@pytest.mark.parametrize("reader, name", [
    (lambda p: aggregate.load_missing(p), "missing-shots table"),
    (lambda p: figures._read_loss_log(p), "training log"),
    (lambda p: figures._read_rank_counts(p), "mask-rank table"),
])
@pytest.mark.parametrize("content, fault", [
    (None, "cannot read"),
    ("", "empty file; expected a"),
    ("alpha\tbeta\n1\t2\n", "lacks column(s)"),
    (b"\xff\xfe\x00garbage\n", "not a readable TSV"),
])
def test_table_readers_name_file_and_fault(tmp_path, reader, name, content, fault):
    p = tmp_path / "t.tsv"
    if content is not None:
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(GeneMaskError) as e:
        reader(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and fault in msg and "\n" not in msg, msg
    if fault != "cannot read":
        assert name in msg, msg


# ---------------------------------------------------------------------------------------------
# the study's statistics on generated designs where the truth is known
# ---------------------------------------------------------------------------------------------
DESIGN_CELLS = [(t, s) for t in ("Prom-core", "Prom-300", "Cohn-enh", "Splice-40") for s in (10, 100)]


def _design_records(effects, *, steps=(1000, 2000), pseeds=(0, 1, 2), seeds=(0, 1, 2, 3), sd_pretrain=0.03,
                    sd_finetune=0.02, sd_noise=0.01, baselines=None, rng_seed=0, cells=DESIGN_CELLS,
                    legacy=False):
    """Metrics records of a nested design with known truth.

    accuracy = 0.6 + effects[scheme] + u[cell, pretrain_seed] + v[cell, pretrain_seed, seed] + e, where u
    (sd_pretrain) and v (sd_finetune) are shared by every scheme with the same pretraining / fine-tuning
    seed (what pairing removes) and e (sd_noise) is each run's own noise. `none` (random init) is at
    step 0 with the same pretrain seeds; `baselines` {name: effect} have no pretraining seed/step
    (their v is the one of pretrain seed 0). legacy=True leaves the two pretraining keys out.
    """
    rng = np.random.default_rng(rng_seed)
    recs = []
    for task, shot in cells:
        u = rng.normal(0, sd_pretrain, len(pseeds))
        v = rng.normal(0, sd_finetune, (len(pseeds), len(seeds)))
        for scheme, eff in effects.items():
            for st in ((0,) if scheme == "none" else steps):
                for i, ps in enumerate(pseeds):
                    for j, sd in enumerate(seeds):
                        acc = 0.6 + eff + u[i] + v[i, j] + rng.normal(0, sd_noise)
                        r = _record(task, shot, scheme, sd, float(acc))
                        if not legacy:
                            r.update(pretrain_seed=ps, pretrain_step=st)
                        recs.append(r)
        for scheme, eff in (baselines or {}).items():
            for j, sd in enumerate(seeds):
                r = _record(task, shot, scheme, sd, float(0.6 + eff + v[0, j] + rng.normal(0, sd_noise)))
                r.update(pretrain_seed=None, pretrain_step=None)
                recs.append(r)
    return recs


def _write_records(recs, d: Path) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, r in enumerate(recs):
        p = d / f"run{i:05d}.json"
        p.write_text(json.dumps(r))
        paths.append(p)
    return paths


PLANTED = {"none": -0.2, "dnabert": 0.0, "genemask": 0.1, "random": 0.0}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """aggregate on a generated nested design: genemask +0.1 over dnabert, random identical in law to
    dnabert, none -0.2, one external baseline dnabert6 (+0.05, no pretraining seed/step)."""
    tmp = tmp_path_factory.mktemp("planted")
    paths = _write_records(_design_records(PLANTED, baselines={"dnabert6": 0.05}), tmp / "metrics")
    out = tmp / "out"
    assert aggregate.aggregate_cli(paths, out, n_boot=1000) == 0
    return out, paths


def _read(out, name):
    return pd.read_csv(out / name, sep="\t", keep_default_na=False, na_values=["NaN"])


def _verdict_row(v, scheme, baseline, step, metric="accuracy"):
    r = v[(v.scheme == scheme) & (v.baseline == baseline) & (v.metric == metric)
          & ((v.pretrain_step == step) if step is not None else v.pretrain_step.isna())]
    assert len(r) == 1, (scheme, baseline, step)
    return r.iloc[0]


def test_verdict_planted_effect_and_identical_scheme(planted):
    out, _ = planted
    v = _read(out, "verdict.tsv")
    g = _verdict_row(v, "genemask", "dnabert", 2000)
    assert g.ci_low > 0 and g.mean_diff == pytest.approx(0.1, abs=0.01)
    assert g.conclusion == "genemask better than dnabert" and g.headline
    assert (g.won, g.lost, g.tied, g.n_cells, g.n_pairs) == (8, 0, 0, 8, 8 * 12)
    assert g.verdict.startswith("genemask vs dnabert at 2000 steps: +0.09") and g.verdict.endswith(
        "at +-0.020: genemask better than dnabert.")
    # the verdict sentence is made from the row's numbers by the documented rules
    assert g.verdict == (f"genemask vs dnabert at 2000 steps: {g.mean_diff:+.3f} accuracy [95% CI {g.ci_low:+.3f}, "
                         f"{g.ci_high:+.3f}] over 8 cells, 8 won, 0 lost, 0 tied; MDE {g.mde:.3f}, TOST p "
                         f"{g.p_tost:.3g} at +-{g.margin:.3f}: genemask better than dnabert.")
    # MDE from the design's own SE: 3 pretraining seeds, df 2
    assert g.df == 2 and g.mde == pytest.approx((stats.t.ppf(0.975, 2) + stats.t.ppf(0.8, 2)) * g.se)
    # pinned: fixed data seed and bootstrap seed give this exact sentence
    assert g.verdict == ("genemask vs dnabert at 2000 steps: +0.099 accuracy [95% CI +0.095, +0.103] over 8 cells, "
                         "8 won, 0 lost, 0 tied; MDE 0.009, TOST p 1 at +-0.020: genemask better than dnabert.")
    r = _verdict_row(v, "random", "dnabert", 2000)
    assert r.verdict == ("random vs dnabert at 2000 steps: -0.001 accuracy [95% CI -0.005, +0.003] over 8 cells, "
                         "0 won, 0 lost, 8 tied; MDE 0.008, TOST p 0.00326 at +-0.020: equivalent within +-0.020.")
    assert r.ci_low < 0 < r.ci_high and r.conclusion == "equivalent within +-0.020" and r.lost == 0
    assert r.p_tost < 0.05 and r.mde < r.margin
    assert _verdict_row(v, "genemask", "none", 1000).conclusion == "genemask better than none"
    assert _verdict_row(v, "none", "dnabert", 1000, "mcc").conclusion == "none worse than dnabert"
    # against the external baseline: paired on the fine-tuning seed only, every pretraining seed kept
    b = _verdict_row(v, "genemask", "dnabert6", 2000)
    assert b.n_pairs == 8 * 12 and b.mean_diff == pytest.approx(0.05, abs=0.02)
    # headline = the largest step common to the pretrained schemes; per-step rows are not headlines
    assert set(v.loc[v.headline & v.pretrain_step.notna(), "pretrain_step"]) == {2000}
    assert not _verdict_row(v, "genemask", "dnabert", 1000).headline
    md = (out / "verdict.md").read_text()
    assert md.startswith("# Verdict") and g.verdict in md
    page = (out / "report.html").read_text()
    assert page.index("Verdict") < page.index("Accuracy, mean") and html_escape(g.verdict) in page


def html_escape(s):
    import html

    return html.escape(s)


def test_tests_pretraining_level_and_holm(planted):
    out, _ = planted
    t = _read(out, "tests.tsv")
    assert set(t.baseline) == {"dnabert", "none", "dnabert6"}
    c = t[(t.scheme == "genemask") & (t.baseline == "dnabert") & (t.pretrain_step == 2000) & (t.metric == "accuracy")]
    assert len(c) == 8 and (c.test_level == "pretrain_seed").all() and (c.n_units == 3).all()
    assert (c.n_pairs == 12).all() and (c.n_pretrain_seeds == 3).all()
    # p-values: one-sample t-test on the 3 per-pretraining-seed mean differences, recomputed here
    runs = _read(out, "runs.tsv")
    cell = runs[(runs.task == "Prom-core") & (runs.shot == 10) & (runs.pretrain_step == 2000)]
    x = cell[cell.scheme == "genemask"].groupby("pretrain_seed").accuracy.mean()
    r = cell[cell.scheme == "dnabert"].groupby("pretrain_seed").accuracy.mean()
    row = c[(c.task == "Prom-core") & (c.shot == 10)].iloc[0]
    assert row.p_ttest == pytest.approx(stats.ttest_rel(x, r).pvalue, rel=1e-6)
    assert row.mean_diff == pytest.approx((x - r).mean(), abs=1e-9)  # TSV keeps 10 digits
    # Holm within the family of the 8 cells, as computed by hand
    p = c.p_ttest.to_numpy()
    o = np.argsort(p)
    hand = np.maximum.accumulate(np.minimum(1, (8 - np.arange(8)) * p[o]))
    assert c.p_holm.to_numpy()[o] == pytest.approx(hand, rel=1e-9)
    assert c.p_bh.to_numpy() == pytest.approx(stats.false_discovery_control(p), rel=1e-9)


def test_holm_bh_hand_values():
    p = [0.01, 0.04, 0.03, 0.005, math.nan]
    # sorted: 0.005, 0.01, 0.03, 0.04 (m = 4; NaN not counted)
    # Holm: 4*0.005=0.02, 3*0.01=0.03, 2*0.03=0.06, max(0.06, 1*0.04)=0.06
    h = report.stats.holm(p)
    assert h[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(h[4])
    # BH: 4/1*0.005=0.02, 4/2*0.01=0.02, 4/3*0.03=0.04, 4/4*0.04=0.04 (running min from the top)
    q = report.stats.bh(p)
    assert q[:4] == pytest.approx([0.02, 0.04, 0.04, 0.02]) and math.isnan(q[4])
    assert report.stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert report.stats.holm([]).size == 0


def test_variance_decomposition_recovers_planted_components():
    st = report.stats
    # hand example: groups {1,2,3} and {4,5,6}: MSB = 3*(1.5^2+1.5^2)/1 = 13.5, MSW = 4/4 = 1, n0 = 3
    vc = st.variance_components(np.array([1, 2, 3, 4, 5, 6.0]), np.array([0, 0, 0, 1, 1, 1]))
    assert (vc["ms_between"], vc["ms_within"], vc["n0"]) == pytest.approx((13.5, 1.0, 3.0))
    assert vc["var_pretrain"] == pytest.approx(12.5 / 3) and vc["var_finetune"] == pytest.approx(1.0)
    # between below within: clipped at 0
    vc = st.variance_components(np.array([1, 3, 2, 2.0]), np.array([0, 0, 1, 1]))
    assert vc["var_pretrain"] == 0.0 and vc["share_pretrain"] == 0.0
    # one pretraining seed: not estimable, said so
    vc = st.variance_components(np.array([1, 2, 3.0]), np.array([-1, -1, -1]))
    assert math.isnan(vc["var_pretrain"]) and "one pretraining seed" in vc["note"]
    assert vc["var_finetune"] == pytest.approx(1.0)
    cells = [("Prom-core", 10)]
    for sd_p, sd_f, lo, hi in ((0.05, 0.005, 0.85, 1.0), (0.005, 0.05, 0.0, 0.15)):
        recs = _design_records({"genemask": 0.0}, steps=(2000,), pseeds=range(30), seeds=range(8), sd_pretrain=0,
                               sd_finetune=0, sd_noise=0, cells=cells)
        rng = np.random.default_rng(1)
        u, v = rng.normal(0, sd_p, 30), rng.normal(0, sd_f, (30, 8))
        for r in recs:
            r["accuracy"] = r["mcc"] = 0.6 + u[r["pretrain_seed"]] + v[r["pretrain_seed"], r["seed"]]
        var = st.variance_table(pd.DataFrame(recs))
        row = var[var.metric == "accuracy"].iloc[0]
        assert row.n_pretrain_seeds == 30 and row.n_runs == 240
        assert lo <= row.share_pretrain <= hi, (sd_p, sd_f, row.share_pretrain)
        assert row.var_finetune == pytest.approx(sd_f**2, rel=0.25)
        assert row.var_pretrain == pytest.approx(sd_p**2, rel=0.5, abs=sd_f**2 / 8)  # MSB noise ~ sd_f^2/n


def test_bootstrap_reproducible_and_hierarchical(planted, tmp_path):
    out, paths = planted
    out2 = tmp_path / "again"
    aggregate.aggregate_cli(paths, out2, n_boot=1000)
    assert (out2 / "verdict.tsv").read_bytes() == (out / "verdict.tsv").read_bytes()
    aggregate.aggregate_cli(paths, out2, n_boot=1000, boot_seed=7)
    a, b = _read(out, "verdict.tsv"), _read(out2, "verdict.tsv")
    assert not np.allclose(a.ci_low, b.ci_low) and np.allclose(a.mean_diff, b.mean_diff)
    # two levels: differences with a large between-pretraining-seed spread and none within give a CI
    # as wide as the seed means vary; treating every run as its own unit would make it 4x narrower
    st = report.stats
    d = np.repeat([-0.05, 0.0, 0.05], 16) + 0.02
    nested = pd.DataFrame({"group": np.repeat([0, 1, 2], 16), "d": d})
    flat = pd.DataFrame({"group": np.arange(48), "d": d})
    est, reps = st.hierarchical_bootstrap([nested], 2000, 0)
    _, reps_flat = st.hierarchical_bootstrap([flat], 2000, 0)
    assert est == pytest.approx(0.02)
    w = np.subtract(*np.quantile(reps, [0.975, 0.025]))
    w_flat = np.subtract(*np.quantile(reps_flat, [0.975, 0.025]))
    assert w > 0.05 and w > 3 * w_flat
    assert np.array_equal(st.hierarchical_bootstrap([nested], 500, 3)[1], st.hierarchical_bootstrap([nested], 500, 3)[1])


def test_pairing_matters(tmp_path):
    """Pairs share large pretraining- and fine-tuning-seed effects: paired on (pretrain_seed, seed) a
    +0.02 effect is clear; with fine-tuning seeds shuffled across pretraining seeds it is not."""
    recs = _design_records({"dnabert": 0.0, "genemask": 0.02}, steps=(2000,), pseeds=range(4), seeds=range(4),
                           sd_pretrain=0.05, sd_finetune=0.05, sd_noise=0.004, cells=DESIGN_CELLS[:2], rng_seed=3)
    runs = pd.DataFrame(recs)
    rng = np.random.default_rng(0)
    shuffled = runs.copy()
    for (_, _), idx in shuffled[shuffled.scheme == "genemask"].groupby(["task", "shot"]).groups.items():
        perm = rng.permutation(len(idx))
        shuffled.loc[idx, ["pretrain_seed", "seed"]] = shuffled.loc[idx, ["pretrain_seed", "seed"]].to_numpy()[perm]
    st = report.stats
    res = {}
    for name, df in (("paired", runs), ("shuffled", shuffled)):
        t = st.paired_tests(df, ["dnabert"], ["accuracy"])
        t = t[t.scheme == "genemask"]
        v = st.verdicts(df, t, ["dnabert"], MARGINS, metrics=("accuracy",), n_boot=1000)
        res[name] = (t, v.iloc[0])
    tp, vp = res["paired"]
    ts, vs = res["shuffled"]
    assert (tp.p_ttest < 0.01).all() and (ts.p_ttest > 0.01).all()
    assert (ts.sd_diff.to_numpy() > 3 * tp.sd_diff.to_numpy()).all()
    assert vp.conclusion == "genemask better than dnabert" and vs.conclusion.startswith("inconclusive")
    assert vs.mde > 3 * vp.mde  # shuffling the pairs throws the design's power away
    assert vs.ci_high - vs.ci_low > 3 * (vp.ci_high - vp.ci_low)


def test_few_pretraining_seeds_flagged_or_untested(tmp_path):
    st = report.stats
    # two pretraining seeds: tested at the pretraining level with 1 degree of freedom, flagged
    runs = pd.DataFrame(_design_records({"dnabert": 0.0, "genemask": 0.1}, steps=(500,), pseeds=(0, 1),
                                        cells=DESIGN_CELLS[:1]))
    t = st.paired_tests(runs, ["dnabert"], ["accuracy"])
    r = t[t.scheme == "genemask"].iloc[0]
    assert r.test_level == "pretrain_seed" and r.n_units == 2 and 0 < r.p_ttest < 1
    from scipy import stats as sps

    g = runs[runs.scheme == "genemask"].groupby("pretrain_seed").accuracy.mean().to_numpy()
    b = runs[runs.scheme == "dnabert"].groupby("pretrain_seed").accuracy.mean().to_numpy()
    assert r.p_ttest == pytest.approx(sps.ttest_rel(g, b).pvalue)
    assert "1 degree of freedom" in r.note
    # one pretraining seed: falls back to fine-tuning seeds, flagged, and the verdict says so
    runs = pd.DataFrame(_design_records({"dnabert": 0.0, "genemask": 0.1}, steps=(500,), pseeds=(0,),
                                        cells=DESIGN_CELLS[:3]))
    t = st.paired_tests(runs, ["dnabert"], ["accuracy"])
    r = t[t.scheme == "genemask"]
    assert (r.test_level == "finetune_seed").all() and (r.n_units == 4).all() and r.p_ttest.notna().all()
    assert r.note.str.contains("one pretraining seed").all()
    v = st.verdicts(runs, t, ["dnabert"], MARGINS, metrics=("accuracy",), n_boot=200)
    g = v[v.scheme == "genemask"].iloc[0]
    assert g.single_pretrain_seed and "(one pretraining seed: the CI covers fine-tuning noise only)." in g.verdict
    # one run per cell: no CI is trusted, the sentence says so
    runs = pd.DataFrame(_design_records({"dnabert": 0.0, "genemask": 0.1}, steps=(500,), pseeds=(0,), seeds=(0,),
                                        cells=DESIGN_CELLS[:2]))
    t = st.paired_tests(runs, ["dnabert"], ["accuracy"])
    assert t.p_ttest.isna().all() and t.note.str.contains("1 finetune seed unit").all()
    v = st.verdicts(runs, t, ["dnabert"], MARGINS, metrics=("accuracy",), n_boot=100)
    assert v.iloc[0].verdict == ("genemask vs dnabert at 500 steps: accuracy from 2 pair(s) over 2 cell(s): "
                                 "too few runs to judge.")


def test_old_style_runs_without_design_columns(metrics, tmp_path):
    """Metrics JSONs without pretrain_seed/pretrain_step: one pretraining seed at the only step."""
    out = tmp_path / "out"
    aggregate.aggregate_cli(metrics, out, n_boot=200)
    runs = _read(out, "runs.tsv")
    assert runs.pretrain_seed.isna().all() and runs.pretrain_step.isna().all()
    summ = _read(out, "summary.tsv")
    assert summ.pretrain_step.isna().all() and (summ.n_pretrain_seeds == 0).all()
    var = _read(out, "variance.tsv")
    r = var[(var.task == "Prom-core") & (var.shot == 10) & (var.scheme == "genemask") & (var.metric == "accuracy")]
    assert r.iloc[0].var_finetune == pytest.approx(np.var(ACC[("Prom-core", 10, "genemask")], ddof=1))
    v = _read(out, "verdict.tsv")
    g = _verdict_row(v, "genemask", "dnabert", None)
    assert g.verdict.startswith("genemask vs dnabert: +0.0") and g.headline and g.n_cells == 4
    _png_ok(out / figures.steps_plot_name("Prom-core"), min_ink=0.005)
    # the same runs with the keys written as null read the same
    nulls = []
    for p in metrics:
        rec = json.loads(p.read_text())
        rec.update(pretrain_seed=None, pretrain_step=None)
        q = tmp_path / "nulls" / p.name
        q.parent.mkdir(exist_ok=True)
        q.write_text(json.dumps(rec))
        nulls.append(q)
    aggregate.aggregate_cli(nulls, tmp_path / "out2", n_boot=200)
    assert (tmp_path / "out2/verdict.tsv").read_bytes() == (out / "verdict.tsv").read_bytes()


def test_steps_dimension_in_tables_and_plot(planted):
    out, _ = planted
    summ = _read(out, "summary.tsv")
    g = summ[(summ.task == "Cohn-enh") & (summ.shot == 10) & (summ.scheme == "genemask")]
    assert list(g.pretrain_step) == [1000, 2000] and (g.n == 12).all() and (g.n_pretrain_seeds == 3).all()
    assert list(summ[(summ.task == "Cohn-enh") & (summ.shot == 10) & (summ.scheme == "none")].pretrain_step) == [0]
    assert summ[summ.scheme == "dnabert6"].pretrain_step.isna().all()
    md = (out / "summary.md").read_text()
    assert "genemask @1000" in md and "genemask @2000" in md and "| dnabert6" in md
    var = _read(out, "variance.tsv")
    assert set(var.metric) == {"accuracy", "mcc"} and (var[var.scheme == "dnabert6"].n_pretrain_seeds == 1).all()
    for task in ("Prom-core", "Prom-300", "Cohn-enh", "Splice-40"):
        _png_ok(out / figures.steps_plot_name(task))
    page = (out / "report.html").read_text()
    assert "accuracy and MCC vs pretraining steps" in page and "share_pretrain" in page


@pytest.mark.parametrize("key, value", [("pretrain_step", "2000"), ("pretrain_seed", -1), ("pretrain_seed", 1.5)])
def test_bad_design_keys_rejected(tmp_path, key, value):
    rec = _record("Prom-core", 10, "genemask", 0, 0.6)
    rec[key] = value
    p = tmp_path / "bad_run.json"
    p.write_text(json.dumps(rec))
    with pytest.raises(GeneMaskError, match=f"bad_run.json: '{key}' must be a non-negative integer or null"):
        aggregate.load_run(p)


def test_study_doc_generated_from_the_report(planted, tmp_path):
    """docs/study.md is assembled from the report: its verdict lines, the sanity bar computed from
    tests.tsv (genemask +0.3 over none on all four tasks passes), the figures copied beside it."""
    from genemask.studydoc import sanity_bar, study_doc

    out, _ = planted
    cfg = tmp_path / "study.yaml"
    cfg.write_text("genome: {source: g, contigs: {X: 10}}\npretrain: {model: demo, schemes: [none, genemask], "
                   "seeds: [0, 1, 2], eval_steps: [1000], settings: {steps: 2000, batch_size: 5}}\n"
                   "finetune: {shots: [10], seeds: [0, 1, 2, 3], max_test: 400}\n")
    doc = study_doc(out, cfg, tmp_path / "docs" / "study.md", "snakemake --configfile x --cores 2", 3600.0)
    text = doc.read_text()
    verdict = [line for line in (out / "verdict.md").read_text().splitlines() if line.startswith("- ")]
    assert verdict and all(line in text for line in verdict)
    assert "wall time **60.0 min**" in text and "snakemake --configfile x --cores 2" in text
    bar = sanity_bar(_read(out, "tests.tsv"))
    g = bar[(bar.scheme == "genemask") & (bar.pretrain_step == 2000)].iloc[0]
    assert g.passes and g.tasks_won == "Cohn-enh, Prom-300, Prom-core, Splice-40"
    assert (tmp_path / "docs" / "study" / "accuracy_vs_shots.png").is_file()
    assert "![accuracy_vs_steps_Prom-core.png](study/accuracy_vs_steps_Prom-core.png)" in text


def test_probe_runs_join_the_tables_with_their_own_protocol(tmp_path, metrics):
    """A probe job's {"runs": [...]} JSON is read beside the fine-tuning JSONs; every table has a
    protocol column, each protocol is analysed on its own runs (the fine-tuning rows equal those of an
    aggregate without probes), and the probe's verdict lines say so."""
    probe = tmp_path / "probe.json"
    recs = []
    for (task, shot, scheme), vals in ACC.items():
        for seed, acc in zip(SEEDS, vals):
            recs.append({**_record(task, shot, scheme, seed, min(1.0, acc + 0.05)), "protocol": "probe"})
    probe.write_text(json.dumps({"runs": recs}))
    both, alone = tmp_path / "both", tmp_path / "alone"
    assert aggregate.aggregate_cli([*metrics, probe], both, margins=[], n_boot=200) == 0
    assert aggregate.aggregate_cli(metrics, alone, margins=[], n_boot=200) == 0
    for name in ("runs", "summary", "tests", "variance", "verdict"):
        t = pd.read_csv(both / f"{name}.tsv", sep="\t")
        assert list(dict.fromkeys(t["protocol"])) == ["finetune", "probe"], name
        ft = t[t["protocol"] == "finetune"].reset_index(drop=True)
        ref = pd.read_csv(alone / f"{name}.tsv", sep="\t")
        pd.testing.assert_frame_equal(ft.drop(columns=[c for c in ("protocol", "source") if c in ft]),
                                      ref.drop(columns=[c for c in ("protocol", "source") if c in ref]),
                                      check_dtype=False)
    verdict = pd.read_csv(both / "verdict.tsv", sep="\t")
    pv = verdict[verdict["protocol"] == "probe"]
    assert len(pv) and pv["verdict"].str.contains(r"^genemask vs dnabert \(probe\): |^\w+ vs \w+ \(probe\): ").all()
    assert not verdict.loc[verdict["protocol"] == "finetune", "verdict"].str.contains("(probe)", regex=False).any()
    assert (both / "probe_accuracy_vs_shots.png").stat().st_size > 1000
    html_text = (both / "report.html").read_text()
    assert "frozen-representation probes" in html_text and "fine-tuning runs" in html_text
    assert "# Frozen-representation probes" in (both / "summary.md").read_text()


def test_a_probe_json_with_a_bad_run_names_the_file_and_the_run(tmp_path):
    p = tmp_path / "probe.json"
    good = {**_record("Prom-core", 10, "dnabert", 1, 0.6), "protocol": "probe"}
    p.write_text(json.dumps({"runs": [good, {**good, "protocol": "linear"}]}))
    with pytest.raises(GeneMaskError, match=r"probe\.json run 2: 'protocol' must be one of finetune, probe"):
        aggregate.load_run(p)
    p.write_text(json.dumps({"runs": []}))
    with pytest.raises(GeneMaskError, match="non-empty list"):
        aggregate.load_run(p)


def test_study_doc_with_probes_what_changed_and_the_next_plan(tmp_path):
    """Both protocols in every generated section, the design facts that changed since the previous
    config (and only those), the MDE of each headline comparison, plan-study's text per protocol, and
    the report's tables copied beside the figures for the next plan."""
    from genemask.studydoc import study_doc

    recs = _design_records({"none": -0.2, "dnabert": 0.0, "genemask": 0.0}, steps=(2500,))
    probes = [{**r, "protocol": "probe", "accuracy": r["accuracy"] - 0.05} for r in recs]
    paths = _write_records(recs, tmp_path / "metrics")
    (tmp_path / "probe.json").write_text(json.dumps({"runs": probes}))
    out = tmp_path / "report"
    assert aggregate.aggregate_cli([*paths, tmp_path / "probe.json"], out, n_boot=200) == 0
    bench = tmp_path / "benchmarks"
    for stage, secs in (("pretrain", 450.0), ("finetune", 14.0), ("probe", 30.0)):
        (bench / stage).mkdir(parents=True)
        pd.DataFrame({"s": [secs], "cpu_time": [secs]}).to_csv(bench / stage / "job.tsv", sep="\t", index=False)
    base = ("genome: {source: g, contigs: {X: 10}}\nfinetune: {shots: [10], seeds: [0, 1, 2, 3], max_test: 400}\n"
            "pretrain: {model: demo, schemes: [none, dnabert, genemask%s], seeds: %s, eval_steps: %s, "
            "settings: {steps: 2500, batch_size: 5, lr: 0.002}}\n")
    prev, cfg = tmp_path / "previous", tmp_path / "study.yaml"
    prev.mkdir()
    (prev / "study.yaml").write_text(base % (", cm_step", "[1, 2, 3]", "[1000]"))
    shutil.copyfile(out / "runs.tsv", prev / "runs.tsv")  # same runs: the plan's prediction must equal the reach
    cfg.write_text(base % ("", "[0, 1, 2]", "[]") + "probe: {enabled: true}\n")
    doc = study_doc(out, cfg, tmp_path / "docs" / "study.md", "make study", 60.0, previous=prev,
                    bench_dir=bench, design_target=0.03)
    text = doc.read_text()
    chosen = text.partition("## How this design was chosen")[2].partition("\n## ")[0]
    assert f"$ genemask plan-study --report {prev} --target 0.03 --protocol finetune" in chosen
    for protocol in ("finetune", "probe"):
        line = next(ln for ln in chosen.splitlines() if ln.startswith(f"genemask vs dnabert ({protocol}): "))
        predicted, reached = re.findall(r"(?:predicted from the previous study|reached) ([0-9.]+)", line)
        assert predicted == reached and float(reached) > 0
    changed = text.partition("## What changed since the previous study")[2].partition("\n## ")[0]
    assert "| schemes | none, dnabert, genemask, cm_step | none, dnabert, genemask |" in changed
    assert "| budgets fine-tuned (steps) | 1000, 2500 | 2500 |" in changed
    assert "| protocols | fine-tuning | fine-tuning + probes (also the full pool) |" in changed
    assert "learning rate" not in changed and "fine-tuning seeds" not in changed  # unchanged facts are left out
    assert "genemask vs dnabert at 2500 steps (probe): " in text
    mde = text.partition("## Minimum detectable effect")[2].partition("\n## ")[0]
    v = _read(out, "verdict.tsv")
    for protocol in ("finetune", "probe"):
        row = v[(v.protocol == protocol) & (v.scheme == "genemask") & (v.baseline == "dnabert")
                & (v.metric == "accuracy")].iloc[0]
        assert f"| {protocol} | genemask | dnabert | 2500 | accuracy |" in mde and f"{row.mde:.3f}" in mde
        assert f"$ genemask plan-study --target 0.02 --protocol {protocol}" in text
    assert "### Frozen-representation probes" in text and "### Fine-tuning" in text
    assert "## What a random model's features read (probes of `none`)" in text
    for f in ("runs.tsv", "variance.tsv", "verdict.tsv", "probe_accuracy_vs_shots.png"):
        assert (tmp_path / "docs" / "study" / f).is_file(), f


def test_the_page_has_a_section_on_what_the_classifiers_learned(tmp_path, metrics):
    """explain-report's tables and explain-motifs' logos, given to aggregate --include, become one
    section per task (reliance, motifs, each scheme's logos), not a list of file names."""
    from genemask.figures import draw_logo

    logo = tmp_path / "explain" / "Prom-core" / "10" / "genemask.motifs.png"
    logo.parent.mkdir(parents=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 1))
    draw_logo(ax, np.full((12, 4), 0.25))
    fig.savefig(logo)
    rel, mot = tmp_path / "explain_reliance.tsv", tmp_path / "explain_motifs.tsv"
    rel.write_text("task\tscheme\tmean_reliance\tbaseline\tmean_diff\tp_ttest\nProm-core\tgenemask\t0.41\tdnabert\t0.12\t0.003\n")
    mot.write_text("task\tscheme\tmotif\tjaspar_id\tjaspar_name\tq\nProm-core\tgenemask\tpos_0\tMA0108.3\tTBP\t1e-06\n")
    out = tmp_path / "out"
    assert aggregate.aggregate_cli(metrics, out, include=[str(rel), str(mot), str(logo)], n_boot=100) == 0
    page = (out / "report.html").read_text()
    section = page.partition("<h2 id='explain'>What the classifiers learned</h2>")[2]
    assert section and "<h3>Prom-core</h3>" in section and "MA0108.3" in section and "TBP" in section
    assert "genemask: motif logos" in section and section.count("data:image/png;base64") >= 1
    assert "<h2>explain_reliance.tsv</h2>" not in page
