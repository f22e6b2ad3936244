"""What a design could have seen: variance components of a paired difference, its standard error,
the minimum detectable effect (MDE) and the TOST equivalence test.

A comparison (scheme x vs reference r at one pretraining step, one metric) is a set of task x shot
cells; in cell c, pretrained model (pretraining seed) p and fine-tuning seed f give a paired
difference d_cpf = x - r. The model behind every number here:

    d_cpf = delta + P_p + I_cp + e_cpf,   P_p ~ (0, var_p), I_cp ~ (0, var_cp), e_cpf ~ (0, var_f)

P_p is the luck of pretrained model p, shared by every cell (the same model is fine-tuned in each),
I_cp its cell-specific part, e_cpf fine-tuning noise. The study's estimate is the mean over cells of
the mean over pretraining seeds of the mean over fine-tuning seeds, so with P pretraining seeds,
F fine-tuning seeds and C cells

    SE^2 = var_p / P + var_cp / (C P) + var_f / (C P F)                             (se_formula)

and the pretraining seed is the unit of replication (df = P - 1). For the verdict the SE is taken
from the data without the model: the per-seed means M_p (mean over cells of the cell x seed means)
have variance var_p + var_cp / C + var_f / (C F), so SE = sd(M_p) / sqrt(P) (`design_se`); with one
pretraining seed (or an external baseline, which has no pretraining level) only the fine-tuning
level is left: SE^2 = sum_c s_c^2 / n_c / C^2 with df = sum_c (n_c - 1), about that one model.

MDE at power 1 - beta and two-sided alpha: (t_{1-alpha/2, df} + t_{1-beta, df}) SE, the usual
approximation to the noncentral t. TOST (Schuirmann 1987): the difference is equivalent within
+-margin when both one-sided t-tests reject at alpha, i.e. the (1 - 2 alpha) t-interval lies
inside (-margin, +margin); p_tost is the larger one-sided p-value.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ALPHA = 0.05
POWER = 0.80


def _t_ppf(q: float, df: float) -> float:
    from scipy import stats

    return float(stats.norm.ppf(q)) if not math.isfinite(df) else float(stats.t.ppf(q, df))


def mde(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true difference a two-sided level-alpha t-test finds with probability `power`."""
    if not (se >= 0) or not (df >= 1):
        return math.nan
    return (_t_ppf(1 - alpha / 2, df) + _t_ppf(power, df)) * se


def tost_p(est: float, se: float, df: float, margin: float) -> float:
    """p-value of the two one-sided tests of |true difference| >= margin (small: equivalent)."""
    from scipy import stats

    if not (se > 0) or not (df >= 1) or not (margin > 0):
        return math.nan
    dist = stats.norm if not math.isfinite(df) else stats.t(df)
    return float(max(dist.sf((est + margin) / se), dist.cdf((est - margin) / se)))


def design_se(cells: Sequence[tuple[np.ndarray, np.ndarray]], pretrain_level: bool = True) -> tuple[float, float]:
    """(SE, df) of the mean over cells of the paired difference, from the data (see module doc).

    cells: per cell, (pretraining-seed id per pair, d per pair). pretrain_level False (an external
    baseline on both sides) or a single pretraining seed: the fine-tuning-level SE.
    """
    cells = [(np.asarray(g), np.asarray(d, dtype=float)) for g, d in cells if len(d)]
    if not cells:
        return math.nan, math.nan
    seeds = np.unique(np.concatenate([g for g, _ in cells]))
    if pretrain_level and seeds.size >= 2:
        per_seed: dict = {}
        for g, d in cells:
            gids, inv, n = np.unique(g, return_inverse=True, return_counts=True)
            for s, m in zip(gids, np.bincount(inv, weights=d) / n):
                per_seed.setdefault(s, []).append(m)
        m_p = np.array([np.mean(v) for v in per_seed.values()])
        return float(m_p.std(ddof=1) / math.sqrt(m_p.size)), float(m_p.size - 1)
    var_sum, df = 0.0, 0
    for _, d in cells:
        if d.size < 2:
            return math.nan, math.nan
        var_sum += d.var(ddof=1) / d.size
        df += d.size - 1
    return math.sqrt(var_sum) / len(cells), float(df)


def components(cells: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Method-of-moments estimates of var_p, var_cp, var_f of the module's model, with the design's
    sizes (P pretraining seeds, F mean fine-tuning seeds per cell x seed, C cells).

    var_f: pooled variance within cell x seed. With the table of cell x seed means m_cp (F-bar runs
    each), the two-way residual mean square estimates var_cp + var_f / F-bar and the seed mean
    square C * var(M_p) estimates C var_p + var_cp + var_f / F-bar; each variance is clipped at 0.
    With one cell var_cp cannot be told from var_p and is counted in var_p (conservative for designs
    with more cells); with one pretraining seed var_p and var_cp are NaN.
    """
    cells = [(np.asarray(g), np.asarray(d, dtype=float)) for g, d in cells if len(d)]
    seeds = np.unique(np.concatenate([g for g, _ in cells])) if cells else np.array([])
    C, P = len(cells), int(seeds.size)
    out = {"n_cells": C, "n_pretrain_seeds": P, "n_finetune_seeds": math.nan, "var_p": math.nan,
           "var_cp": math.nan, "var_f": math.nan}
    if not cells:
        return out
    table = np.full((C, P), np.nan)
    ss_within, df_within, counts = 0.0, 0, []
    for i, (g, d) in enumerate(cells):
        gids, inv, n = np.unique(g, return_inverse=True, return_counts=True)
        means = np.bincount(inv, weights=d) / n
        table[i, np.searchsorted(seeds, gids)] = means
        ss_within += float(((d - means[inv]) ** 2).sum())
        df_within += int(d.size - gids.size)
        counts.extend(n.tolist())
    f_bar = float(np.mean(counts))
    out["n_finetune_seeds"] = f_bar
    var_f = ss_within / df_within if df_within else math.nan
    out["var_f"] = var_f
    if P < 2:
        return out
    m_p = np.nanmean(table, axis=0)
    ms_seed = C * float(np.var(m_p, ddof=1))
    noise = var_f / f_bar if math.isfinite(var_f) else 0.0
    if C >= 2 and not np.isnan(table).any():
        resid = table - table.mean(axis=1, keepdims=True) - m_p[None, :] + table.mean()
        ms_res = float((resid**2).sum() / ((C - 1) * (P - 1)))
        out["var_cp"] = max(0.0, ms_res - noise)
        out["var_p"] = max(0.0, (ms_seed - ms_res) / C)
    else:  # one cell, or seeds missing from some cells: the interaction is counted in var_p
        out["var_cp"] = 0.0
        out["var_p"] = max(0.0, (ms_seed - noise) / C)
    return out


def se_formula(var_p: float, var_cp: float, var_f: float, n_pretrain: int, n_finetune: float, n_cells: int) -> float:
    """SE of the study's estimate for a design of P pretraining seeds x F fine-tuning seeds x C cells."""
    v = var_p / n_pretrain + var_cp / (n_cells * n_pretrain) + var_f / (n_cells * n_pretrain * n_finetune)
    return math.sqrt(v) if v >= 0 else math.nan


def design_mde(comp: dict, n_pretrain: int, n_finetune: float, n_cells: int, alpha: float = ALPHA,
               power: float = POWER) -> float:
    """MDE of a planned design from variance components (`components`), df = P - 1."""
    se = se_formula(comp["var_p"], comp["var_cp"], comp["var_f"], n_pretrain, n_finetune, n_cells)
    return mde(se, n_pretrain - 1, alpha, power) if n_pretrain >= 2 else math.nan
