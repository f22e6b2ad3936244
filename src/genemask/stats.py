"""The study's statistics on a runs table: variance components, design-respecting paired tests with
multiple-comparison correction, and the verdict (mean difference over cells with a hierarchical
bootstrap CI, cells won/lost/tied, one generated sentence).

The design. A fine-tuning run is identified by task, shot, scheme, `pretrain_step` (steps of the
pretrained model it started from; 0 for `none`), `pretrain_seed` (which pretrained model / random
init) and `seed` (the fine-tuning seed). Fine-tuning seeds are nested within pretraining seeds: the
runs of one pretrained model share that model's luck, so they are not independent evidence about a
*scheme*. Runs tables without the two pretraining columns (older configs) are read as one
pretraining seed at one step (`design` adds the columns as NaN = "the single default").

Scheme kinds (`scheme_kinds`): `none` (random init), *pretrained* (any other scheme with a recorded
pretraining seed or step, or every scheme when the table records neither), and *external baselines*
(schemes whose runs record neither `pretrain_seed` nor `pretrain_step` in a table where other runs
do, e.g. `dnabert6`): those have no pretraining level and are paired on the fine-tuning seed only.
"""
from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from . import power
from .util import GeneMaskError

STEP_NA = -1  # internal key for "pretraining step not recorded" (the only step)
SEED_NA = -1  # internal key for "pretraining seed not recorded" (the single default / no pretraining)
VARIANCE_METRICS = ("accuracy", "mcc")
VERDICT_METRICS = ("accuracy", "mcc")
# With 2 units the t-test has one degree of freedom and a near-constant difference (identical test
# subsets give differences equal up to float noise) yields absurd p-values such as 1e-15: need 3.
TTEST_MIN_UNITS = 3
# Pretraining-seed means are each an average over fine-tuning seeds, so two of them with different
# differences give an exact (if weak: 1 degree of freedom) t-test under the nested normal model;
# without it a 2-seed study could never count a cell as won or lost.
PRETRAIN_TTEST_MIN_UNITS = 2
# below 6 units the exact two-sided Wilcoxon signed-rank p-value can never reach 0.05
WILCOXON_MIN_UNITS = 6
ALPHA = power.ALPHA  # two-sided level of every test and CI
N_BOOT = 2000
BOOT_SEED = 0


# ---------------------------------------------------------------------------------------------
# design
# ---------------------------------------------------------------------------------------------
def design(runs: pd.DataFrame) -> pd.DataFrame:
    """A copy of `runs` with float columns `pretrain_seed`, `pretrain_step` (NaN where not recorded,
    added when absent) and the integer grouping keys `_pseed`, `_step` (NaN -> SEED_NA / STEP_NA)."""
    df = runs.copy()
    for c in ("pretrain_seed", "pretrain_step"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float) if c in df.columns else math.nan
    df["_pseed"] = df["pretrain_seed"].fillna(SEED_NA).astype("int64")
    df["_step"] = df["pretrain_step"].fillna(STEP_NA).astype("int64")
    return df


def scheme_kinds(runs: pd.DataFrame) -> dict[str, str]:
    """scheme -> 'none' | 'pretrained' | 'baseline' (see the module doc)."""
    df = design(runs)
    recorded = df["pretrain_seed"].notna() | df["pretrain_step"].notna()
    any_recorded = bool(recorded.any())
    kinds = {}
    for sch, rec in recorded.groupby(df["scheme"], sort=True):
        if sch == "none":
            kinds[sch] = "none"
        elif any_recorded and not rec.any():
            kinds[sch] = "baseline"
        else:
            kinds[sch] = "pretrained"
    return kinds


def step_text(step: int) -> str:
    return "" if step == STEP_NA else f" at {step} steps"


def _out_step(step: int):
    return pd.NA if step == STEP_NA else int(step)


# ---------------------------------------------------------------------------------------------
# variance components
# ---------------------------------------------------------------------------------------------
def variance_components(y: np.ndarray, groups: np.ndarray) -> dict:
    """One-way random-effects ANOVA (method of moments) of `y` with pretraining seed = group.

    Model y_ij = mu + a_i + e_ij, a_i ~ (0, s2_pretrain), e_ij ~ (0, s2_finetune); k groups with n_i
    runs, N = sum n_i, ybar_i group means, ybar the grand mean:

        MSB = sum_i n_i (ybar_i - ybar)^2 / (k - 1)        MSW = sum_ij (y_ij - ybar_i)^2 / (N - k)
        n0  = (N - sum_i n_i^2 / N) / (k - 1)              (= n for balanced groups)
        s2_finetune = MSW          s2_pretrain = max(0, (MSB - MSW) / n0)
        share_pretrain = s2_pretrain / (s2_pretrain + s2_finetune)

    Not estimable (NaN, with a note): s2_pretrain with k < 2; s2_finetune with N - k < 1.
    """
    y = np.asarray(y, dtype=float)
    ok = ~np.isnan(y)
    y, groups = y[ok], np.asarray(groups)[ok]
    n_tot = int(y.size)
    out = {"n_runs": n_tot, "n_pretrain_seeds": 0, "mean": math.nan, "sd_total": math.nan,
           "ms_between": math.nan, "ms_within": math.nan, "n0": math.nan, "var_pretrain": math.nan,
           "var_finetune": math.nan, "share_pretrain": math.nan, "note": ""}
    if n_tot == 0:
        out["note"] = "no runs"
        return out
    _, inv, n_i = np.unique(groups, return_inverse=True, return_counts=True)
    k = int(n_i.size)
    out["n_pretrain_seeds"] = k
    out["mean"] = float(y.mean())
    out["sd_total"] = float(y.std(ddof=1)) if n_tot >= 2 else math.nan
    gmean = np.bincount(inv, weights=y) / n_i
    notes = []
    if n_tot - k >= 1:
        out["ms_within"] = float(((y - gmean[inv]) ** 2).sum() / (n_tot - k))
        out["var_finetune"] = out["ms_within"]
    else:
        notes.append("one run per pretraining seed: fine-tuning variance not estimable")
    if k >= 2:
        out["ms_between"] = float((n_i * (gmean - y.mean()) ** 2).sum() / (k - 1))
        out["n0"] = float((n_tot - (n_i**2).sum() / n_tot) / (k - 1))
        if not math.isnan(out["ms_within"]):
            out["var_pretrain"] = max(0.0, (out["ms_between"] - out["ms_within"]) / out["n0"])
    else:
        notes.append("one pretraining seed: between-seed variance not estimable")
    tot = out["var_pretrain"] + out["var_finetune"]
    if not math.isnan(tot):
        out["share_pretrain"] = out["var_pretrain"] / tot if tot > 0 else 0.0
    out["note"] = "; ".join(notes)
    return out


def variance_table(runs: pd.DataFrame, metrics: Sequence[str] = VARIANCE_METRICS) -> pd.DataFrame:
    """`variance_components` per task x shot x scheme x pretraining step x metric (variance.tsv)."""
    df = design(runs)
    rows = []
    for (task, shot, scheme, step), grp in df.groupby(["task", "shot", "scheme", "_step"], sort=True):
        for m in metrics:
            vc = variance_components(grp[m].to_numpy(dtype=float), grp["_pseed"].to_numpy())
            rows.append({"task": task, "shot": shot, "scheme": scheme, "pretrain_step": _out_step(step),
                         "metric": m, **vc})
    cols = ["task", "shot", "scheme", "pretrain_step", "metric", "n_runs", "n_pretrain_seeds", "mean",
            "sd_total", "var_pretrain", "var_finetune", "share_pretrain", "ms_between", "ms_within", "n0", "note"]
    out = pd.DataFrame(rows, columns=cols)
    out["pretrain_step"] = out["pretrain_step"].astype("Int64")
    return out


# ---------------------------------------------------------------------------------------------
# multiple-comparison corrections
# ---------------------------------------------------------------------------------------------
def holm(p: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries stay NaN and do not count in the family size m.

    Sorted ascending p_(1) <= ... <= p_(m): adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    """
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m:
        o = ok[np.argsort(p[ok], kind="stable")]
        adj = np.minimum(1.0, (m - np.arange(m)) * p[o])
        out[o] = np.maximum.accumulate(adj)
    return out


def bh(p: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); NaN entries stay NaN, not counted in m.

    adj_(i) = min_{j >= i} min(1, m p_(j) / j).
    """
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m:
        o = ok[np.argsort(p[ok], kind="stable")]
        adj = np.minimum(1.0, m * p[o] / np.arange(1, m + 1))
        out[o] = np.minimum.accumulate(adj[::-1])[::-1]
    return out


# ---------------------------------------------------------------------------------------------
# pairing
# ---------------------------------------------------------------------------------------------
def comparison_plan(runs: pd.DataFrame, references: Sequence[str]) -> list[tuple[str, str, int]]:
    """(scheme X, reference R, step) for every R in `references` present and every X != R.

    Both pretrained: X at each of its steps against R at the same step. One side pretrained, the
    other `none` or a baseline (one step or none): the pretrained side at each of its steps against
    all runs of the other side; step = the pretrained side's. Neither pretrained: one comparison.
    """
    df = design(runs)
    kinds = scheme_kinds(df)
    steps = {s: sorted(set(g)) for s, g in df.groupby("scheme")["_step"]}
    plan = []
    for ref in dict.fromkeys(references):
        if ref not in kinds:
            continue
        for x in kinds:
            if x == ref:
                continue
            if kinds[x] == "pretrained" and kinds[ref] == "pretrained":
                st = [s for s in steps[x] if s in steps[ref]]
            elif kinds[x] == "pretrained":
                st = steps[x]
            elif kinds[ref] == "pretrained":
                st = steps[ref]
            else:
                st = [STEP_NA]
            plan += [(x, ref, s) for s in st]
    return plan


def _side(runs: pd.DataFrame, scheme: str, step: int, kinds: dict) -> pd.DataFrame:
    d = runs[runs["scheme"] == scheme]
    if kinds[scheme] == "pretrained" and step != STEP_NA:
        d = d[d["_step"] == step]
    return d


PAIR_KEYS = ["scheme", "baseline", "_step", "task", "shot"]


def pair_table(runs: pd.DataFrame, references: Sequence[str], metrics: Sequence[str]) -> tuple[pd.DataFrame, set]:
    """Every paired run of every comparison of `comparison_plan`, and the set of
    (scheme, baseline, step, task, shot) cells where both sides have runs (pairs or not).

    Columns: scheme, baseline, _step, task, shot, group (the pretraining seed the pair belongs to),
    seed, and `<metric>_x`, `<metric>_r` (scheme's and reference's value). Pairs on (pretrain_seed,
    seed) when both sides record pretraining seeds, else on seed only (group = the pretraining seed of
    the side that has one; SEED_NA when neither has). One merge per comparison, all cells at once.
    """
    df = design(runs)
    kinds = scheme_kinds(df)
    frames, cells = [], set()
    for x, ref, step in comparison_plan(df, references):
        a, b = _side(df, x, step, kinds), _side(df, ref, step, kinds)
        a_ps, b_ps = bool((a["_pseed"] != SEED_NA).any()), bool((b["_pseed"] != SEED_NA).any())
        for side, name, has in ((a, x, a_ps), (b, ref, b_ps)):
            k = ["task", "shot", "_pseed", "seed"] if has else ["task", "shot", "seed"]
            dup = side[side.duplicated(k)]
            if len(dup):
                r = dup.iloc[0]
                raise GeneMaskError(f"runs of scheme '{name}' in {r['task']} {r['shot']}-shot{step_text(step)}: more "
                                    f"than one run per {' and '.join(k[2:]).replace('_pseed', 'pretrain_seed')}")
        both = a_ps and b_ps
        keys = ["task", "shot", "_pseed", "seed"] if both else ["task", "shot", "seed"]
        cols = keys + list(metrics) if both else keys + ["_pseed", *metrics]
        m = a[cols].merge(b[cols], on=keys, suffixes=("_x", "_r"))
        if both:
            group = m["_pseed"]
        elif a_ps or b_ps:
            group = m["_pseed_x"] if a_ps else m["_pseed_r"]
        else:
            group = pd.Series(SEED_NA, index=m.index)
        cells |= {(x, ref, step, t, sh) for t, sh in set(zip(a["task"], a["shot"])) & set(zip(b["task"], b["shot"]))}
        f = pd.DataFrame({"scheme": x, "baseline": ref, "_step": step, "task": m["task"], "shot": m["shot"],
                          "group": group.to_numpy(dtype=np.int64), "seed": m["seed"]})
        for mt in metrics:
            f[f"{mt}_x"], f[f"{mt}_r"] = m[f"{mt}_x"].to_numpy(dtype=float), m[f"{mt}_r"].to_numpy(dtype=float)
        frames.append(f)
    cols = PAIR_KEYS + ["group", "seed"] + [f"{mt}_{s}" for mt in metrics for s in "xr"]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    return out[cols], cells


def metric_pairs(pairs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """group, x, r, d = x - r for one metric of (a slice of) `pair_table`, runs with a NaN dropped."""
    x, r = pairs[f"{metric}_x"].to_numpy(dtype=float), pairs[f"{metric}_r"].to_numpy(dtype=float)
    ok = ~(np.isnan(x) | np.isnan(r))
    return pd.DataFrame({"group": pairs["group"].to_numpy()[ok], "x": x[ok], "r": r[ok], "d": x[ok] - r[ok]})


def cell_test(pairs: pd.DataFrame, pretrained_design: bool = True) -> dict:
    """The per-cell test on a `metric_pairs` frame (group = pretraining seed, x, r, d).

    Choice: average the paired differences over fine-tuning seeds within each pretraining seed and
    run a one-sample t-test (and Wilcoxon signed-rank with >= WILCOXON_MIN_UNITS units) on those
    means. The pretraining seed is the unit of replication for a claim about a scheme; under the
    nested normal model the seed means are i.i.d. with variance s2_pretrain + s2_finetune / n, so the
    t-test on them is exact for balanced cells and needs no resampling, whereas a two-level bootstrap
    with the 2-5 pretraining seeds a study can afford has a handful of distinct resamples and
    under-covers. With one pretraining seed (or no pretraining level: baselines) the units are the
    single pairs (test_level = finetune_seed); for pretrained models this is flagged in `note`, since
    the p-value then speaks about that one model, not the scheme. A p-value needs >= 2 pretraining-
    seed units (PRETRAIN_TTEST_MIN_UNITS; 1 degree of freedom at 2, flagged) or >= TTEST_MIN_UNITS
    fine-tuning-seed units, with non-constant differences, else NaN with the reason in `note`.
    """
    from scipy import stats

    res = {"n_pairs": int(len(pairs)), "n_pretrain_seeds": 0, "test_level": "", "n_units": 0,
           "mean_scheme": math.nan, "mean_baseline": math.nan, "mean_diff": math.nan, "sd_diff": math.nan,
           "t_stat": math.nan, "p_ttest": math.nan, "w_stat": math.nan, "p_wilcoxon": math.nan, "note": ""}
    if pairs.empty:
        res["note"] = "no pairs"
        return res
    grp = pairs["group"].to_numpy()
    gids, inv, cnt = np.unique(grp, return_inverse=True, return_counts=True)
    res["n_pretrain_seeds"] = int(gids.size) if (gids != SEED_NA).any() else 0
    x, r = pairs["x"].to_numpy(dtype=float), pairs["r"].to_numpy(dtype=float)
    notes = []
    if gids.size >= 2:
        x, r, level = np.bincount(inv, weights=x) / cnt, np.bincount(inv, weights=r) / cnt, "pretrain_seed"
    else:
        level = "finetune_seed"
        if pretrained_design:
            notes.append("one pretraining seed: fine-tuning seeds used as replicates (about this model only)")
    d = x - r
    n = int(d.size)
    res.update(test_level=level, n_units=n, mean_scheme=float(x.mean()), mean_baseline=float(r.mean()),
               mean_diff=float(d.mean()), sd_diff=float(d.std(ddof=1)) if n >= 2 else math.nan)
    need = PRETRAIN_TTEST_MIN_UNITS if level == "pretrain_seed" else TTEST_MIN_UNITS
    if n < need:
        notes.append(f"{n} {level.replace('_', ' ')} unit(s): a test needs {need}")
    elif np.std(d) <= 1e-12:
        notes.append("constant differences: no test")
    else:
        if n == 2:
            notes.append("2 pretraining seeds: t-test with 1 degree of freedom (little power)")
        t = d.mean() / (d.std(ddof=1) / math.sqrt(n))  # = scipy.stats.ttest_1samp(d, 0) = ttest_rel(x, r)
        res["t_stat"], res["p_ttest"] = float(t), float(2 * stats.t.sf(abs(t), n - 1))
        if n >= WILCOXON_MIN_UNITS and np.any(d != 0):
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                try:
                    w = stats.wilcoxon(d)
                    res["w_stat"], res["p_wilcoxon"] = float(w.statistic), float(w.pvalue)
                except ValueError:
                    pass
    res["note"] = "; ".join(notes)
    return res


TEST_COLUMNS = ["task", "shot", "metric", "scheme", "baseline", "pretrain_step", "n_pairs", "n_pretrain_seeds",
                "test_level", "n_units", "mean_scheme", "mean_baseline", "mean_diff", "sd_diff", "t_stat",
                "p_ttest", "w_stat", "p_wilcoxon", "p_holm", "p_bh", "note"]


def paired_tests(runs: pd.DataFrame, references: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """`cell_test` for every comparison of `comparison_plan` x task x shot x metric (tests.tsv).

    `baseline` = the reference R, `pretrain_step` = the step of the comparison (NaN: not recorded).
    p_holm / p_bh: Holm and Benjamini-Hochberg adjustment of p_ttest within each family = the
    task x shot cells of one (scheme, baseline, pretrain_step, metric), i.e. the cells one verdict
    counts; untested cells (NaN) are not in the family.
    """
    kinds = scheme_kinds(runs)
    pairs, cells = pair_table(runs, references, metrics)
    groups = pairs.groupby(PAIR_KEYS, sort=False).indices
    empty = pairs.iloc[:0]
    rows = []
    for key in sorted(cells, key=lambda k: (k[1], k[0], k[2], k[3], k[4])):
        x, ref, step, task, shot = key
        sub = pairs.iloc[groups[key]] if key in groups else empty
        pretrained_design = kinds[x] != "baseline" or kinds[ref] != "baseline"
        for m in metrics:
            rows.append({"task": task, "shot": shot, "metric": m, "scheme": x, "baseline": ref,
                         "pretrain_step": _out_step(step), **cell_test(metric_pairs(sub, m), pretrained_design)})
    out = pd.DataFrame(rows, columns=TEST_COLUMNS)
    out["pretrain_step"] = out["pretrain_step"].astype("Int64")
    if not out.empty:
        fam = ["scheme", "baseline", "pretrain_step", "metric"]
        for _, idx in out.groupby(fam, sort=False, dropna=False).groups.items():
            p = out.loc[idx, "p_ttest"].to_numpy(dtype=float)
            out.loc[idx, "p_holm"] = holm(p)
            out.loc[idx, "p_bh"] = bh(p)
    return out


# ---------------------------------------------------------------------------------------------
# hierarchical bootstrap and verdict
# ---------------------------------------------------------------------------------------------
def hierarchical_bootstrap(cells: Sequence[pd.DataFrame], n_boot: int = N_BOOT,
                           rng: np.random.Generator | int = BOOT_SEED) -> tuple[float, np.ndarray]:
    """Point estimate and `n_boot` bootstrap replicates of the mean over cells of the paired difference.

    Each cell is a `metric_pairs` frame (group = pretraining seed, d). Cell estimate = mean over
    its pretraining seeds of the mean over fine-tuning seeds of d (pairs stay pairs: resampling is of
    differences). One replicate: (1) draw pretraining seeds with replacement from the union of the
    seeds, once for all cells (the same pretrained model is fine-tuned in every cell, so its luck is
    shared across cells; a cell whose seeds were all left out of a draw uses its own seeds once);
    (2) within every cell and drawn pretraining seed, draw its fine-tuning-seed differences with
    replacement; (3) average as for the estimate. With one pretraining seed step (1) is a no-op and
    the spread is fine-tuning noise only. Vectorised: one (n_boot, seeds, fine-tuning seeds) draw
    per cell.
    """
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    cells = [c for c in cells if len(c)]
    if not cells:
        return math.nan, np.full(n_boot, np.nan)
    union = np.unique(np.concatenate([c["group"].to_numpy() for c in cells]))
    counts = rng.multinomial(union.size, np.full(union.size, 1.0 / union.size), size=n_boot)  # (B, U)
    est, reps = [], []
    for c in cells:
        gids, inv, n_g = np.unique(c["group"].to_numpy(), return_inverse=True, return_counts=True)
        order = np.argsort(inv, kind="stable")
        d_sorted = c["d"].to_numpy(dtype=float)[order]
        start = np.concatenate([[0], np.cumsum(n_g)[:-1]])
        est.append(float(np.mean(np.bincount(inv, weights=c["d"].to_numpy(dtype=float)) / n_g)))
        s_max = int(n_g.max())
        j = np.minimum((rng.random((n_boot, gids.size, s_max)) * n_g[None, :, None]).astype(np.int64),
                       n_g[None, :, None] - 1)
        vals = d_sorted[start[None, :, None] + j]
        inside = np.arange(s_max)[None, None, :] < n_g[None, :, None]
        gmeans = np.where(inside, vals, 0.0).sum(axis=2) / n_g[None, :]  # (B, G)
        w = counts[:, np.searchsorted(union, gids)].astype(float)
        w[w.sum(axis=1) == 0] = 1.0
        reps.append((w * gmeans).sum(axis=1) / w.sum(axis=1))
    return float(np.mean(est)), np.mean(reps, axis=0)


def verdict_sentence(row: Mapping) -> str:
    """The sentence for one verdict row, by these rules (in order):

    * fewer than TTEST_MIN_UNITS pairs over all cells, or no cell with >= 2 pairs: "<scheme> vs
      <baseline>[ at <step> steps]: <metric> from <n> pair(s) over <c> cell(s): too few runs to judge.";
    * 95% CI lower bound > 0: "<scheme> better than <baseline>";
    * 95% CI upper bound < 0: "<scheme> worse than <baseline>";
    * TOST p < alpha at the metric's margin, a design whose MDE is at most the margin (it could have
      seen a margin-sized difference), and >= TTEST_MIN_UNITS pretraining seeds where a side is
      pretrained (with 2 the SE has 1 degree of freedom and is small by luck half the time):
      "equivalent within +-<margin>";
    * otherwise: "inconclusive: a difference smaller than <MDE> could not have been detected".
    Prefix: "<scheme> vs <baseline>[ at <step> steps][ (probe)]: <diff> <metric> [95% CI lo, hi] over <n> cells,
    <won> won, <lost> lost, <tied> tied[, <u> untested]; MDE <mde>, TOST p <p> at +-<margin>"; suffix
    " (one pretraining seed: the CI covers fine-tuning noise only)" when no cell had two pretraining
    seeds and a side was pretrained.
    """
    step = STEP_NA if pd.isna(row["pretrain_step"]) else int(row["pretrain_step"])
    protocol = row.get("protocol")
    tag = f" ({protocol})" if protocol and protocol != "finetune" else ""  # the protocol, when not fine-tuning
    head = f"{row['scheme']} vs {row['baseline']}{step_text(step)}{tag}: "
    if row["conclusion"] == "too few runs to judge":
        return head + f"{row['metric']} from {row['n_pairs']} pair(s) over {row['n_cells']} cell(s): too few runs to judge."
    untested = f", {row['n_untested']} untested" if row["n_untested"] else ""
    p_tost = "n/a" if pd.isna(row["p_tost"]) else f"{row['p_tost']:.3g}"
    s = (f"{head}{row['mean_diff']:+.3f} {row['metric']} [95% CI {row['ci_low']:+.3f}, {row['ci_high']:+.3f}] "
         f"over {row['n_cells']} cell{'s' if row['n_cells'] != 1 else ''}, {row['won']} won, {row['lost']} lost, "
         f"{row['tied']} tied{untested}; MDE {_num(row['mde'])}, TOST p {p_tost} at +-{row['margin']:.3f}: "
         f"{row['conclusion']}")
    if row["single_pretrain_seed"]:
        s += " (one pretraining seed: the CI covers fine-tuning noise only)"
    return s + "."


def _num(x: float) -> str:
    return "not estimable" if pd.isna(x) else f"{x:.3f}"


def conclusion(x: str, ref: str, lo: float, hi: float, p_tost: float, mde: float, margin: float,
               can_be_equivalent: bool, alpha: float = ALPHA) -> str:
    """One of the four words (see verdict_sentence), from the numbers."""
    if lo > 0:
        return f"{x} better than {ref}"
    if hi < 0:
        return f"{x} worse than {ref}"
    if can_be_equivalent and p_tost < alpha and mde <= margin:
        return f"equivalent within +-{margin:.3f}"
    return f"inconclusive: a difference smaller than {_num(mde)} could not have been detected"


VERDICT_COLUMNS = ["scheme", "baseline", "pretrain_step", "metric", "headline", "n_cells", "n_pairs",
                   "max_pretrain_seeds", "mean_diff", "ci_low", "ci_high", "se", "df", "mde", "margin", "p_tost",
                   "won", "lost", "tied", "n_untested", "single_pretrain_seed", "conclusion", "verdict"]


def headline_step(runs: pd.DataFrame) -> int:
    """The largest pretraining step every pretrained scheme has (STEP_NA when none is common)."""
    df = design(runs)
    kinds = scheme_kinds(df)
    sets = [set(g) - {STEP_NA} for s, g in df.groupby("scheme")["_step"] if kinds[s] == "pretrained"]
    common = set.intersection(*sets) if sets else set()
    return max(common) if common else STEP_NA


def verdicts(runs: pd.DataFrame, tests: pd.DataFrame, references: Sequence[str], margins: Mapping[str, float],
             metrics: Sequence[str] = VERDICT_METRICS, n_boot: int = N_BOOT, boot_seed: int = BOOT_SEED,
             alpha: float = ALPHA) -> pd.DataFrame:
    """One row per comparison (scheme, baseline, step) x metric: over all task x shot cells with pairs,
    the mean paired difference (cells weighted equally) with a 95% percentile CI from
    `hierarchical_bootstrap` (`n_boot` replicates; generator seeded with (boot_seed, crc32 of the
    comparison), so every row is reproducible and independent of which other schemes are present),
    cells won (p_holm < alpha and mean_diff > 0), lost (p_holm < alpha and mean_diff < 0), tied (the
    other tested cells) and untested (p NaN), the design's SE, df and MDE (power.design_se, power.mde)
    and TOST p at `margins[metric]` (power.tost_p), and the sentence of `verdict_sentence`.
    `headline` marks, per (scheme, baseline, metric), the row at `headline_step` (else its largest step).
    """
    df = design(runs)
    kinds = scheme_kinds(df)
    hstep = headline_step(df)
    pairs, _ = pair_table(df, references, metrics)
    by_comp = pairs.groupby(["scheme", "baseline", "_step"], sort=False).indices
    t = tests.copy()
    t["_step"] = t["pretrain_step"].astype("Float64").fillna(STEP_NA).astype("int64") if len(t) else []
    t_groups = t.groupby(["scheme", "baseline", "_step", "metric"], sort=False).indices
    rows = []
    for x, ref, step in comparison_plan(df, references):
        pretrained_design = kinds[x] != "baseline" or kinds[ref] != "baseline"
        comp = pairs.iloc[by_comp.get((x, ref, step), [])]
        for m in metrics:
            diffs = [metric_pairs(c, m) for _, c in comp.groupby(["task", "shot"], sort=True)]
            diffs = [d for d in diffs if len(d)]
            if not diffs:
                continue
            key = f"{x}|{ref}|{step}|{m}".encode()
            est, reps = hierarchical_bootstrap(diffs, n_boot, np.random.default_rng([boot_seed, zlib.crc32(key)]))
            lo, hi = (float(v) for v in np.quantile(reps, [0.025, 0.975]))
            sel = t.iloc[t_groups.get((x, ref, step, m), [])]
            tested = sel["p_holm"].notna()
            sig = tested & (sel["p_holm"] < alpha)
            won, lost = int((sig & (sel["mean_diff"] > 0)).sum()), int((sig & (sel["mean_diff"] < 0)).sum())
            n_pairs = int(sum(len(d) for d in diffs))
            max_ps = max(d["group"].nunique() if (d["group"] != SEED_NA).any() else 0 for d in diffs)
            se, df_ = power.design_se([(d["group"].to_numpy(), d["d"].to_numpy()) for d in diffs],
                                      pretrain_level=pretrained_design)
            mde, margin = power.mde(se, df_, alpha), float(margins[m])
            p_tost = power.tost_p(est, se, df_, margin)
            if n_pairs < TTEST_MIN_UNITS or max(len(d) for d in diffs) < 2:
                concl = "too few runs to judge"
            else:
                concl = conclusion(x, ref, lo, hi, p_tost, mde, margin,
                                   can_be_equivalent=not pretrained_design or max_ps >= TTEST_MIN_UNITS, alpha=alpha)
            rows.append({"scheme": x, "baseline": ref, "pretrain_step": _out_step(step), "metric": m,
                         "headline": False, "n_cells": len(diffs), "n_pairs": n_pairs, "max_pretrain_seeds": max_ps,
                         "mean_diff": est, "ci_low": lo, "ci_high": hi, "se": se, "df": df_, "mde": mde,
                         "margin": margin, "p_tost": p_tost, "won": won, "lost": lost,
                         "tied": int(tested.sum()) - won - lost, "n_untested": int((~tested).sum()),
                         "single_pretrain_seed": bool(pretrained_design and max_ps < 2), "conclusion": concl,
                         "_step": step})
    out = pd.DataFrame(rows, columns=VERDICT_COLUMNS + ["_step"])
    for _, idx in out.groupby(["scheme", "baseline", "metric"], sort=False).groups.items():
        st = out.loc[idx, "_step"]
        pick = idx[st == hstep] if (st == hstep).any() else [st.idxmax()]
        out.loc[pick, "headline"] = True
    out["verdict"] = [verdict_sentence(r) for r in out.to_dict("records")]
    out["pretrain_step"] = out["pretrain_step"].astype("Int64")
    return out.drop(columns="_step")


def verdict_markdown(verdict: pd.DataFrame, primary: Sequence[str] = ("dnabert", "none")) -> str:
    """verdict.md: the headline sentences against `primary` references first, then every step and
    reference, then how the sentences are made."""
    lines = ["# Verdict", ""]
    if verdict.empty:
        return "# Verdict\n\nNo comparisons: no reference scheme (dnabert, none or a baseline) has runs.\n"
    # `none` is a reference, not a candidate: "none vs dnabert" repeats "dnabert vs none" (kept in verdict.tsv)
    verdict = verdict[verdict["scheme"] != "none"]
    head = verdict[verdict["headline"] & verdict["baseline"].isin(primary)]
    for m in dict.fromkeys(head["metric"]):
        lines += [f"- {v}" for v in head.loc[head["metric"] == m, "verdict"]]
    rest = verdict[~verdict.index.isin(head.index)]
    if not rest.empty:
        lines += ["", "## Every step and reference", ""] + [f"- {v}" for v in rest["verdict"]]
    lines += ["", "Mean difference = scheme minus reference, averaged over task x shot cells (each cell: mean "
              "over pretraining seeds of the mean over fine-tuning seeds of paired differences); 95% CI from a "
              "hierarchical bootstrap (pretraining seeds, then fine-tuning seeds within them). won/lost: cells "
              f"with Holm-adjusted p < {ALPHA} (per-cell t-test on pretraining-seed means) and a positive/negative "
              "difference; tied: the other tested cells. Better/worse when the CI excludes 0; equivalent when the "
              f"two one-sided t-tests (TOST, alpha {ALPHA}) put the difference inside +-margin "
              f"(report.equivalence_margin) and the MDE is at most the margin, with >= {TTEST_MIN_UNITS} pretraining "
              "seeds; else inconclusive. MDE: the "
              f"smallest difference this design detects with {power.POWER:.0%} power at two-sided alpha {ALPHA} "
              "((t(1-alpha/2) + t(power)) x SE, SE = sd of the pretraining-seed means / sqrt(seeds), df = seeds - 1; "
              "one pretraining seed: the fine-tuning-level SE).", ""]
    return "\n".join(lines)
