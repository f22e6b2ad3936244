"""What a design could have seen (genemask.power) and the four-word verdict, on planted studies.

Every study here is simulated from the model of power.py's docstring with known components, so the
truth is known: a planted effect of 2 MDE must be found, a planted zero with enough pretraining seeds
must be called equivalent, and one with 2 pretraining seeds must not be (too weak to tell)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from genemask import power, stats

MARGINS = {"accuracy": 0.02, "mcc": 0.04}  # the schema's report.equivalence_margin defaults
CELLS = [("Prom-core", 10), ("Prom-300", 10), ("Cohn-enh", 10), ("Splice-40", 10)]
# components of one scheme's accuracy: a pretrained model's shared luck, its cell-specific luck,
# fine-tuning noise (per run); the paired difference of two schemes has twice each
SD_P, SD_CP, SD_F = 0.006, 0.004, 0.015


def _runs(effect: float, n_pretrain: int, n_finetune: int, rng: np.random.Generator,
          sd=(SD_P, SD_CP, SD_F)) -> pd.DataFrame:
    """A runs table of dnabert and genemask (accuracy = 0.7 + effect for genemask + model luck +
    fine-tuning noise), every pretraining seed fine-tuned with every fine-tuning seed in every cell."""
    sd_p, sd_cp, sd_f = sd
    rows = []
    for scheme, eff in (("dnabert", 0.0), ("genemask", effect)):
        luck = rng.normal(0, sd_p, n_pretrain)
        for task, shot in CELLS:
            cell_luck = rng.normal(0, sd_cp, n_pretrain)
            for p in range(n_pretrain):
                for f in range(n_finetune):
                    rows.append({"task": task, "shot": shot, "scheme": scheme, "seed": f, "pretrain_seed": p,
                                 "pretrain_step": 1000, "accuracy": 0.7 + eff + luck[p] + cell_luck[p]
                                 + rng.normal(0, sd_f)})
    return pd.DataFrame(rows)


def _verdict(runs: pd.DataFrame, n_boot: int = 200) -> pd.Series:
    tests = stats.paired_tests(runs, ["dnabert"], ["accuracy"])
    v = stats.verdicts(runs, tests, ["dnabert"], MARGINS, metrics=("accuracy",), n_boot=n_boot)
    return v[(v.scheme == "genemask") & (v.baseline == "dnabert")].iloc[0]


def _true_mde(n_pretrain: int, n_finetune: int) -> float:
    comp = {"var_p": 2 * SD_P**2, "var_cp": 2 * SD_CP**2, "var_f": 2 * SD_F**2}
    return power.design_mde(comp, n_pretrain, n_finetune, len(CELLS))


# ---- the formulas ------------------------------------------------------------------------------
def test_mde_and_tost_formulas():
    assert power.mde(0.01, math.inf) == pytest.approx((1.959964 + 0.841621) * 0.01, rel=1e-6)
    assert power.mde(0.01, 2) == pytest.approx((sps.t.ppf(0.975, 2) + sps.t.ppf(0.8, 2)) * 0.01)
    # TOST: a 90% t-interval inside the margin <=> p_tost < 0.05
    for est, se, df in [(0.001, 0.004, 4), (0.01, 0.004, 4), (-0.012, 0.003, 9), (0.0, 0.01, 2)]:
        half = sps.t.ppf(0.95, df) * se
        inside = -0.02 < est - half and est + half < 0.02
        assert (power.tost_p(est, se, df, 0.02) < 0.05) == inside
    assert math.isnan(power.mde(math.nan, 3)) and math.isnan(power.tost_p(0.0, 0.0, 3, 0.02))


@pytest.mark.parametrize("n_pretrain, n_finetune", [(3, 3), (5, 2), (8, 4)])
def test_mde_formula_agrees_with_simulation_within_15_percent(n_pretrain, n_finetune):
    """The effect a level-0.05 t-test on the design's own SE finds in 80% of 4,000 simulated studies,
    against the formula's (t + t) x SE from the true components."""
    rng = np.random.default_rng(n_pretrain * 10 + n_finetune)
    n_sim, C = 4000, len(CELLS)
    sd_p, sd_cp, sd_f = math.sqrt(2) * SD_P, math.sqrt(2) * SD_CP, math.sqrt(2) * SD_F  # of the difference
    d = (rng.normal(0, sd_p, (n_sim, 1, n_pretrain, 1)) + rng.normal(0, sd_cp, (n_sim, C, n_pretrain, 1))
         + rng.normal(0, sd_f, (n_sim, C, n_pretrain, n_finetune)))
    groups = np.repeat(np.arange(n_pretrain), n_finetune)
    est = d.mean(axis=(1, 2, 3))
    se = np.array([power.design_se([(groups, d[s, c].ravel()) for c in range(C)])[0] for s in range(n_sim)])
    crit = sps.t.ppf(0.975, n_pretrain - 1)

    def sim_power(delta):
        return np.mean(np.abs(est + delta) / se > crit)

    lo, hi = 0.0, 1.0
    for _ in range(40):  # bisection on the simulated power curve
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sim_power(mid) < 0.8 else (lo, mid)
    formula = _true_mde(n_pretrain, n_finetune)
    assert hi == pytest.approx(formula, rel=0.15), (hi, formula)
    # and the SE estimated from data is unbiased for the formula's SE (in variance)
    true_se = power.se_formula(sd_p**2, sd_cp**2, sd_f**2, n_pretrain, n_finetune, C)
    assert np.sqrt(np.mean(se**2)) == pytest.approx(true_se, rel=0.05)
    assert est.std() == pytest.approx(true_se, rel=0.05)


def test_components_recover_the_planted_variances():
    rng = np.random.default_rng(7)
    P, F, C = 40, 6, 8
    d = (rng.normal(0, 0.02, (1, P, 1)) + rng.normal(0, 0.01, (C, P, 1)) + rng.normal(0, 0.03, (C, P, F)))
    groups = np.repeat(np.arange(P), F)
    comp = power.components([(groups, d[c].ravel()) for c in range(C)])
    assert (comp["n_cells"], comp["n_pretrain_seeds"], comp["n_finetune_seeds"]) == (C, P, F)
    assert comp["var_f"] == pytest.approx(0.03**2, rel=0.1)
    assert comp["var_cp"] == pytest.approx(0.01**2, rel=0.5)
    assert comp["var_p"] == pytest.approx(0.02**2, rel=0.5)


# ---- the four words on planted studies ---------------------------------------------------------
def test_a_planted_effect_of_two_mde_is_found():
    P, F = 3, 3
    effect = 2 * _true_mde(P, F)
    rng = np.random.default_rng(11)
    words = [_verdict(_runs(effect, P, F, rng)).conclusion for _ in range(40)]
    found = np.mean([w == "genemask better than dnabert" for w in words])
    assert found >= 0.75, words
    words = [_verdict(_runs(-effect, P, F, rng)).conclusion for _ in range(20)]
    assert np.mean([w == "genemask worse than dnabert" for w in words]) >= 0.75, words


def test_a_planted_zero_with_enough_replicates_is_equivalent():
    P, F = 8, 4
    assert _true_mde(P, F) < MARGINS["accuracy"]  # a design that can tell
    rng = np.random.default_rng(12)
    rows = [_verdict(_runs(0.0, P, F, rng)) for _ in range(20)]
    words = [r.conclusion for r in rows]
    assert np.mean([w == "equivalent within +-0.020" for w in words]) >= 0.9, words
    assert all(r.verdict.endswith("equivalent within +-0.020.") for r in rows if r.conclusion.startswith("equiv"))


def test_a_planted_zero_with_two_pretraining_seeds_is_inconclusive_not_equivalent():
    rng = np.random.default_rng(13)
    rows = [_verdict(_runs(0.0, 2, 4, rng)) for _ in range(20)]
    words = [r.conclusion for r in rows]
    assert not any(w.startswith("equivalent") for w in words), words
    assert np.mean([w.startswith("inconclusive") for w in words]) >= 0.75, words
    r = next(r for r in rows if r.conclusion.startswith("inconclusive"))
    assert r.df == 1 and r.conclusion == (f"inconclusive: a difference smaller than {r.mde:.3f} could not have been "
                                          f"detected")
    assert r.mde > MARGINS["accuracy"]  # 1 degree of freedom: too weak to see a margin-sized difference


def test_one_pretraining_seed_is_never_equivalent_for_pretrained_schemes():
    rng = np.random.default_rng(14)
    r = _verdict(_runs(0.0, 1, 10, rng, sd=(0.0, 0.0, 0.002)))  # tiny noise: TOST alone would pass
    assert r.p_tost < 0.05 and r.conclusion.startswith("inconclusive") and r.single_pretrain_seed


# ---- plan-study ----------------------------------------------------------------------------------
def _study_folder(tmp_path, n_pretrain=3, n_finetune=3):
    from pathlib import Path

    rng = np.random.default_rng(21)
    report, bench = Path(tmp_path) / "report", Path(tmp_path) / "benchmarks"
    report.mkdir(parents=True)
    _runs(0.0, n_pretrain, n_finetune, rng).to_csv(report / "runs.tsv", sep="\t", index=False)
    for stage, secs in (("pretrain", [3600.0, 3000.0]), ("finetune", [20.0, 40.0])):
        (bench / stage).mkdir(parents=True)
        for i, s in enumerate(secs):
            pd.DataFrame({"s": [s * 1.1], "h:m:s": ["0:00:01"], "max_rss": [100.0], "cpu_time": [s]}).to_csv(
                bench / stage / f"job{i}.tsv", sep="\t", index=False)
    return report, bench


def test_plan_study_lists_designs_that_reach_the_target_cheapest_first(tmp_path):
    from genemask.planstudy import comparison_cells, designs, plan_study

    report, bench = _study_folder(tmp_path)
    text = plan_study(report, bench, target=0.01)
    assert "genemask vs dnabert, accuracy, pretraining step 1000" in text
    assert "this study: 3 pretraining seeds x 3 fine-tuning seeds x 4 cells: MDE" in text
    assert "designs reaching MDE <= 0.01, cheapest first:" in text
    runs = pd.read_csv(report / "runs.tsv", sep="\t")
    comp = power.components(comparison_cells(runs, "genemask", "dnabert", "accuracy")[0])
    table = designs(comp, 0.01, 3300.0, 30.0)
    reach = table[table.reaches]
    assert len(reach) and (reach.mde <= 0.01).all() and reach.cost.is_monotonic_increasing
    best = reach.iloc[0]
    # cost: both sides pretrain P models (3,300 CPU s each) and fine-tune P x F x C runs (30 s each)
    assert best.core_hours == pytest.approx((2 * best.pretrain_seeds * 3300 + best.finetune_runs * 30) / 3600)
    assert best.finetune_runs == 2 * best.pretrain_seeds * best.finetune_seeds * best.cells
    # no cheaper design in the ranges reaches the target
    assert not ((table.cost < best.cost) & (table.mde <= 0.01)).any()
    # a design needs P >= 2 (df = P - 1) and more seeds never raise the MDE
    mde = {(r.pretrain_seeds, r.finetune_seeds): r.mde for r in table.itertuples()}
    assert all(mde[(p + 1, f)] < mde[(p, f)] and mde[(p, f + 1)] <= mde[(p, f)]
               for p in range(2, 12) for f in range(1, 10))


def test_plan_study_unreachable_target_and_gpu_pricing(tmp_path):
    from genemask.planstudy import plan_study
    from genemask.util import GeneMaskError

    report, bench = _study_folder(tmp_path)
    text = plan_study(report, bench, target=1e-6)
    assert "no design in the ranges reaches MDE <= 1e-06; the most powerful ones:" in text
    text = plan_study(report, bench, target=0.02, steps=10_000, gpu_tokens_per_s=1e6, tokens_per_step=128_000)
    assert "(0.356 GPU-h on the GPU)" in text  # 10k steps x 128k tokens / 1M tokens/s = 1,280 s
    with pytest.raises(GeneMaskError, match="needs --steps and --tokens-per-step"):
        plan_study(report, bench, target=0.02, gpu_tokens_per_s=1e6)
    one, _ = _study_folder(tmp_path / "one", n_pretrain=1)
    with pytest.raises(GeneMaskError, match="one pretraining seed"):
        plan_study(one, bench, target=0.02)


def test_price_config_prices_study_gpu_from_measured_throughput(tmp_path, root):
    """plan-study --price-config: the GPU study's pretraining in GPU-hours = pretrained schemes x seeds x
    steps x sequences x max_len / tokens per second; its fine-tuning runs and probe jobs at this report's
    measured job times; the MDE its design would have with this report's components."""
    import yaml

    from genemask import plan
    from genemask.planstudy import price_config_text

    report, bench = _study_folder(tmp_path)
    (bench / "probe").mkdir()
    pd.DataFrame({"s": [30.0], "cpu_time": [30.0]}).to_csv(bench / "probe" / "job.tsv", sep="\t", index=False)
    config = root / "config" / "study-gpu.yaml"
    text = price_config_text(report, bench, config, 1e6)
    cfg = plan.check_config_files([str(config)])
    st = cfg["pretrain"]["settings"]
    n_pre = len([s for s in cfg["pretrain"]["schemes"] if s != "none"]) * len(cfg["pretrain"]["seeds"])
    gpu_h = n_pre * st["steps"] * st["batch_size"] * st["grad_accum"] * st["max_len"] / 1e6 / 3600
    assert f"= {gpu_h:.1f} GPU-hours at 1,000,000 tokens/s" in text
    assert f"{len(plan.runs(cfg))} fine-tuning runs = {len(plan.runs(cfg)) * 33 / 3600:.1f} core-hours" in text  # wall: 1.1 x CPU
    assert f"{len(plan.probes(cfg))} probe jobs" in text
    assert "genemask vs dnabert (finetune): MDE" in text
    assert yaml.safe_load(config.read_text())["probe"]["enabled"] is True
