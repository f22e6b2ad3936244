"""Do top-NPMI k-mers look like known transcription-factor motifs? (spec section 8)

The paper ran de-novo motif discovery (rGADEM) on task sequences; this is the offline Python
equivalent: score every k-mer against JASPAR position weight matrices (pyjaspar ships the JASPAR
releases as a local SQLite file, no network) and test whether the top-N NPMI k-mers hit motifs more
often than k-mers in general.

Definition of a hit (all of it vectorised: one matrix product scores all 4**k k-mers at once):

* PWM: JASPAR counts + Biopython's JASPAR pseudocounts (sqrt(mean column count) x 0.25 per base,
  `Bio.motifs.jaspar.calculate_pseudocounts`), log2-odds against a uniform background
  (`motif.counts.normalize(...).log_odds()`).
* Alignment, no gaps, both strands (the k-mer and its reverse complement are both scored):
  - motif length L >= k: the k-mer slides along the motif; each window is k consecutive PWM columns;
  - motif length L <  k: the motif slides along the k-mer; each window is the whole motif placed at
    one of the k-L+1 offsets of the k-mer (bases outside it score 0).
* Relative score of a k-mer in a window: (s - min_w) / (max_w - min_w), where s is the sum of the
  log-odds of the aligned bases and min_w/max_w are the lowest/highest sums possible in that window
  (the usual "relative score" of TFBSTools/Biopython, applied to the window).
* Only informative windows count: the window's information content (sum over its columns of
  sum_b p_b log2(p_b/0.25)) must be >= `min_ic` bits (default 10 of a possible 2k = 12), so a k-mer
  cannot "hit" a long motif through its flat flanks. Why 10: with 1,019 JASPAR 2026 vertebrate motifs
  a looser rule makes nearly every 6-mer a hit (min_ic 8 bits: 99% of all 4,096 6-mers hit >= 1
  motif at 0.85), which leaves nothing to enrich; at 10 bits and 0.85 about 44% do.
* A k-mer hits a motif if its best relative score over the motif's informative windows and both
  strands is >= `threshold` (default 0.85). `n_motif_hits` counts the motifs hit; `best_motif` is
  the motif with the highest relative score (reported even when below the threshold).

Enrichment: the fraction of top-N k-mers hitting >= 1 motif against the fraction among all 4**k
k-mers (ratio), with a one-sided Fisher exact test (top-N vs the other k-mers) and a permutation test
on the mean number of motifs hit (top-N vs N k-mers drawn at random without replacement).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .kmers import ALPHABET, all_kmers, kmer_to_index
from .npmi import load_ranking
from .util import GeneMaskError, atomic_output

DEFAULT_THRESHOLD = 0.85
DEFAULT_MIN_IC = 10.0
# kmers order A,T,C,G -> column of a PWM row vector; reverse complement swaps A<->T and C<->G
_RC_DIGIT = np.array([1, 0, 3, 2])


@dataclass
class MotifSet:
    """PWM windows of a motif collection, flattened for one matrix product with one-hot k-mers."""

    ids: list[str]  # motif matrix ids, e.g. MA0058.4
    names: list[str]  # motif names, e.g. MAX
    weights: np.ndarray  # float64 [n_windows, k*4]: log-odds of window column j, base b at j*4+b (ATCG)
    w_min: np.ndarray  # [n_windows] lowest possible window score
    w_max: np.ndarray  # [n_windows] highest possible window score
    w_ic: np.ndarray  # [n_windows] information content (bits)
    w_motif: np.ndarray  # int64 [n_windows] index into ids/names
    release: str = ""


def load_jaspar(release: str | None = None, collection: str = "CORE",
                tax_group: str = "vertebrates") -> list:
    """Motifs (Bio.motifs.jaspar.Motif, latest version of each) from pyjaspar's offline database."""
    try:
        from pyjaspar import jaspardb
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise GeneMaskError(f"pyjaspar is not importable ({e}); install it with pip install pyjaspar") from None
    try:
        jdb = jaspardb(release=release) if release else jaspardb()
        motifs = jdb.fetch_motifs(collection=collection, tax_group=[tax_group])
    except Exception as e:  # pyjaspar raises plain exceptions for unknown releases etc.
        raise GeneMaskError(f"pyjaspar release {release or 'default'}: cannot read motifs ({e})") from None
    if not motifs:
        raise GeneMaskError(f"pyjaspar release {jdb.release}: no {collection} {tax_group} motifs")
    for m in motifs:
        m._gm_release = jdb.release
    return list(motifs)


def _log_odds(motif) -> np.ndarray:
    """[L, 4] log2-odds in kmers' base order (A, T, C, G), and [L, 4] probabilities."""
    from Bio.motifs import jaspar

    pwm = motif.counts.normalize(pseudocounts=jaspar.calculate_pseudocounts(motif))
    pssm = pwm.log_odds()  # uniform background
    lo = np.array([pssm[b] for b in ALPHABET], dtype=np.float64).T
    pr = np.array([pwm[b] for b in ALPHABET], dtype=np.float64).T
    return lo, pr


def build_motif_set(motifs: list, k: int = 6) -> MotifSet:
    """All alignment windows of every motif against a k-mer (see the module docstring)."""
    rows, mins, maxs, ics, owner, ids, names = [], [], [], [], [], [], []
    for mi, m in enumerate(motifs):
        lo, pr = _log_odds(m)
        ic_col = (pr * np.log2(pr / 0.25)).sum(axis=1)
        L = lo.shape[0]
        ids.append(str(m.matrix_id))
        names.append(str(m.name))
        if L >= k:
            for o in range(L - k + 1):
                w = lo[o : o + k]
                rows.append(w.reshape(-1))
                mins.append(w.min(axis=1).sum())
                maxs.append(w.max(axis=1).sum())
                ics.append(ic_col[o : o + k].sum())
                owner.append(mi)
        else:
            for o in range(k - L + 1):
                w = np.zeros((k, 4))
                w[o : o + L] = lo
                rows.append(w.reshape(-1))
                mins.append(lo.min(axis=1).sum())
                maxs.append(lo.max(axis=1).sum())
                ics.append(ic_col.sum())
                owner.append(mi)
    release = getattr(motifs[0], "_gm_release", "") if motifs else ""
    return MotifSet(ids, names, np.array(rows), np.array(mins), np.array(maxs), np.array(ics),
                    np.array(owner, dtype=np.int64), release)


def _one_hot(k: int, reverse_complement: bool = False) -> np.ndarray:
    """[4**k, k*4] one-hot of every k-mer in index order (or of its reverse complement)."""
    idx = np.arange(4**k)
    digits = (idx[:, None] // (4 ** np.arange(k - 1, -1, -1))[None, :]) % 4
    if reverse_complement:
        digits = _RC_DIGIT[digits[:, ::-1]]
    x = np.zeros((4**k, k, 4))
    np.put_along_axis(x, digits[:, :, None], 1.0, axis=2)
    return x.reshape(4**k, k * 4)


def score_all_kmers(ms: MotifSet, k: int = 6, min_ic: float = DEFAULT_MIN_IC) -> np.ndarray:
    """[4**k, n_motifs] best relative score of each k-mer against each motif (both strands,
    informative windows only; -inf where a motif has no informative window)."""
    keep = ms.w_ic >= min_ic
    w = ms.weights[keep]
    span = (ms.w_max - ms.w_min)[keep]
    span[span <= 0] = np.inf
    best_w = None
    for rc in (False, True):
        s = _one_hot(k, rc) @ w.T  # [4**k, n_windows]
        rel = (s - ms.w_min[keep]) / span
        best_w = rel if best_w is None else np.maximum(best_w, rel)
    out = np.full((4**k, len(ms.ids)), -np.inf)
    owner = ms.w_motif[keep]
    # max over the windows of each motif: windows of a motif are contiguous, reduceat over segments
    if owner.size:
        starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
        out[:, owner[starts]] = np.maximum.reduceat(best_w, starts, axis=1)
    return out


def load_scores(path: str | Path, k: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(rank, npmi) arrays indexed by k-mer index, from our NPMI TSV or the authors' Data-A CSV."""
    path = Path(path)
    ranks = load_ranking(path, k)
    head = path.open().readline()
    if "norm_pmi_rank_rel" in head:
        df = pd.read_csv(path, usecols=["ngram", "norm_dp_true_pmi"]).rename(columns={"norm_dp_true_pmi": "npmi"})
    else:
        df = pd.read_csv(path, sep="\t", usecols=["ngram", "order", "npmi"])
        df = df[df["order"] == k]
    npmi = np.full(4**k, np.nan)
    idx = kmer_to_index(list(df["ngram"].astype(str).str.strip('"').str.upper()), k)
    npmi[idx] = df["npmi"].to_numpy(dtype=np.float64)
    return ranks, npmi


def motif_enrichment(ranks: np.ndarray, npmi: np.ndarray, top: int, k: int = 6, *,
                     motifs: list | None = None, threshold: float = DEFAULT_THRESHOLD,
                     min_ic: float = DEFAULT_MIN_IC, n_perm: int = 10000, seed: int = 0,
                     release: str | None = None) -> tuple[pd.DataFrame, dict, dict]:
    """Score the top-`top` NPMI k-mers against JASPAR and test enrichment.

    Returns (table of the top k-mers, summary dict, details: `hits` = n_motif_hits of every k-mer by
    index, `null` = the permutation means, `ranks`).
    """
    from scipy.stats import fisher_exact

    n_all = 4**k
    ranked = np.flatnonzero(ranks <= n_all)
    if not 0 < top <= ranked.size:
        raise GeneMaskError(f"--top {top}: must be between 1 and the {ranked.size} ranked {k}-mers")
    if motifs is None:
        motifs = load_jaspar(release)
    ms = build_motif_set(motifs, k)
    rel = score_all_kmers(ms, k, min_ic)  # [4**k, n_motifs]
    hits = (rel >= threshold).sum(axis=1)
    best = rel.argmax(axis=1)
    best_score = rel[np.arange(n_all), best]

    order = ranked[np.argsort(ranks[ranked], kind="stable")]
    top_idx = order[:top]
    kmers = all_kmers(k)
    table = pd.DataFrame({
        "kmer": [kmers[i] for i in top_idx],
        "rank": ranks[top_idx],
        "npmi": npmi[top_idx],
        "n_motif_hits": hits[top_idx],
        "best_motif": [f"{ms.ids[b]} {ms.names[b]}" if np.isfinite(best_score[i]) else ""
                       for i, b in zip(top_idx, best[top_idx])],
        "best_score": np.round(best_score[top_idx], 4),
    })

    in_top = np.zeros(n_all, dtype=bool)
    in_top[top_idx] = True
    any_hit = hits > 0
    a, b = int(any_hit[in_top].sum()), int((~any_hit[in_top]).sum())
    c, d = int(any_hit[~in_top].sum()), int((~any_hit[~in_top]).sum())
    odds, p_fisher = fisher_exact([[a, b], [c, d]], alternative="greater")
    frac_top, frac_all = a / top, any_hit.mean()
    rng = np.random.default_rng(seed)
    obs_mean = hits[in_top].mean()
    null = np.array([hits[rng.choice(n_all, top, replace=False)].mean() for _ in range(n_perm)])
    p_perm = (1 + int((null >= obs_mean).sum())) / (n_perm + 1)
    summary = {
        "top": top, "n_kmers": n_all, "release": ms.release, "n_motifs": len(ms.ids),
        "threshold": threshold, "min_ic": min_ic,
        "top_with_hit": a, "frac_top_with_hit": frac_top, "frac_all_with_hit": float(frac_all),
        "enrichment": frac_top / frac_all if frac_all > 0 else math.nan,
        "odds_ratio": float(odds), "p_fisher": float(p_fisher),
        "mean_hits_top": float(obs_mean), "mean_hits_all": float(hits.mean()),
        "p_perm": p_perm, "n_perm": n_perm,
    }
    return table, summary, {"hits": hits, "null": null, "ranks": ranks}


def summary_line(s: dict) -> str:
    return (f"motifs: top {s['top']} NPMI {int(math.log(s['n_kmers'], 4))}-mers vs {s['release']} CORE vertebrates "
            f"({s['n_motifs']} motifs; hit = relative score >= {s['threshold']:g} in a window of >= "
            f"{s['min_ic']:g} bits): {s['top_with_hit']}/{s['top']} ({s['frac_top_with_hit']:.1%}) hit >= 1 motif "
            f"vs {s['frac_all_with_hit']:.1%} of all k-mers, enrichment {s['enrichment']:.2f}x, "
            f"Fisher one-sided p = {s['p_fisher']:.3g}; mean motifs hit {s['mean_hits_top']:.2f} vs "
            f"{s['mean_hits_all']:.2f}, permutation p = {s['p_perm']:.3g} ({s['n_perm']} draws)")


def plot_enrichment(details: dict, summary: dict, output: str | Path, bins: int = 32) -> Path:
    """Left: share of k-mers hitting >= 1 motif per NPMI-rank bin (top-N bin(s) highlighted) with the
    all-k-mer rate; right: permutation null of the mean number of motifs hit, observed value marked."""
    from .figures import new_figure, png_bytes, write_bytes

    hits, null, ranks = details["hits"], details["null"], details["ranks"]
    n_all, top = summary["n_kmers"], summary["top"]
    ranked = ranks <= n_all
    fig = new_figure(12, 4.2)
    ax_r, ax_p = fig.subplots(1, 2)
    edges = np.linspace(0.5, ranked.sum() + 0.5, bins + 1)
    h_all, _ = np.histogram(ranks[ranked], bins=edges)
    h_hit, _ = np.histogram(ranks[ranked & (hits > 0)], bins=edges)
    share = np.divide(h_hit, h_all, out=np.full(bins, np.nan), where=h_all > 0)
    ax_r.stairs(share, edges, baseline=None, color="#1f77b4", lw=1.6, label="k-mers in the rank bin")
    ax_r.axhline(summary["frac_all_with_hit"], color="black", ls="--", lw=1,
                 label=f"all k-mers ({summary['frac_all_with_hit']:.1%})")
    ax_r.axvspan(0.5, top + 0.5, color="#d62728", alpha=0.15,
                 label=f"top {top} ({summary['frac_top_with_hit']:.1%})")
    ax_r.set_xlabel("NPMI rank (1 = highest NPMI)")
    ax_r.set_ylabel("share of k-mers hitting >= 1 JASPAR motif")
    ax_r.set_ylim(0, 1)
    ax_r.set_title(f"motif hits by NPMI rank ({bins} bins)")
    ax_r.legend(fontsize=8)
    ax_p.hist(null, bins=40, color="0.7", label=f"{len(null)} random sets of {top} k-mers")
    ax_p.axvline(summary["mean_hits_top"], color="#d62728", lw=2,
                 label=f"top {top}: {summary['mean_hits_top']:.2f} (p = {summary['p_perm']:.3g})")
    ax_p.set_xlabel("mean number of motifs hit per k-mer")
    ax_p.set_ylabel("random sets")
    ax_p.set_title("permutation test")
    ax_p.legend(fontsize=8)
    for ax in (ax_r, ax_p):
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"Top-{top} NPMI k-mers vs {summary['release']} CORE vertebrate motifs: enrichment "
                 f"{summary['enrichment']:.2f}x, Fisher p = {summary['p_fisher']:.3g}")
    output = Path(output)
    write_bytes(output, png_bytes(fig))
    return output


def motifs_cli(ranking: str | Path, top: int, output: str | Path, plot: str | Path | None = None, *,
               k: int = 6, threshold: float = DEFAULT_THRESHOLD, min_ic: float = DEFAULT_MIN_IC,
               n_perm: int = 10000, seed: int = 0, release: str | None = None) -> int:
    """`genemask motifs`: the top-N table as TSV, the summary line on stdout, optionally a figure."""
    if not 0.0 < threshold <= 1.0:
        raise GeneMaskError(f"--threshold {threshold}: must be in (0, 1]")
    if n_perm < 1:
        raise GeneMaskError(f"--n-perm {n_perm}: must be >= 1")
    ranks, npmi = load_scores(ranking, k)
    table, summary, details = motif_enrichment(ranks, npmi, top, k, threshold=threshold, min_ic=min_ic,
                                               n_perm=n_perm, seed=seed, release=release)
    with atomic_output(output) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    if plot:
        plot_enrichment(details, summary, plot)
    print(summary_line(summary))
    return 0
