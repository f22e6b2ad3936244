"""Do top-NPMI k-mers look like known transcription-factor motifs? (spec section 8)

The paper ran de-novo motif discovery (rGADEM) on task sequences; this is the offline Python
equivalent: match every k-mer against the JASPAR CORE vertebrate matrices (pyjaspar ships the JASPAR
releases as a local SQLite file, no network; the default is its latest, JASPAR 2026, 1,019 motifs)
and test whether the top-N NPMI k-mers match motifs more often than k-mers in general. Two ways to
call a match, `method` (`genemask motifs --method`, config `report.motif_method`):

* `tomtom` (the default): Tomtom (Gupta et al. 2007; memelite's implementation, MEME's defaults:
  Euclidean column distance, complete scores, both strands, any overlap) of the k-mer as a one-hot
  query motif against every JASPAR matrix (its counts over the column totals, as in JASPAR's
  MEME-format files). A k-mer matches a motif when the Benjamini-Hochberg q-value of its p-value among
  the k-mer's 1,019 target p-values is <= `q_threshold` (0.05). Per query, like MEME's Tomtom, which
  computes q-values per query over its targets, but with BH (pi0 = 1) where MEME estimates pi0 as
  Storey does: our q-values are >= MEME's, i.e. conservative. Columns: `tomtom_matches` (motifs at
  q <= 0.05), `tomtom_motif`, `tomtom_p`, `tomtom_q` (the best motif by p), `tomtom_matched` (all
  matches, best first).
* `rule`: the hand-made relative-score rule below (columns `rule_hits`, `rule_motif`, `rule_score`).
* `both`: both, with their overlap.

Why Tomtom is the default (measured on the authors' Data-A ranking, top 50 6-mers, JASPAR 2026;
test_data_a_top50_tomtom_vs_rule):

* Tomtom calls 11/50 top k-mers matched (22.0%) vs 438/4,096 = 10.7% of all 6-mers: enrichment
  2.06x, one-sided Fisher p = 0.0145 (permutation test on the mean number of motifs matched: p = 0.34,
  the mean is driven by the GC-rich k-mers that match many C2H2 zinc fingers). The rule calls 22/50
  (44.0%) vs 1,789/4,096 = 43.7%: enrichment 1.01x, Fisher p = 0.54. 7 k-mers are matched by both,
  4 by Tomtom only, 15 by the rule only, 24 by neither; over all 4,096 6-mers the two agree on 63.4%.
* Both: CCTCCC/GGGAGG (ranks 1-2; Tomtom: SP5 best, 11 motifs incl. ZNF460, ZNF263, MAZ, ZNF148,
  ZNF281, WT1), AAAAAA/TTTTTT (ZNF384, ZNF362), GCCTCC/GGAGGC (ZNF460), ACAGAG (ZSCAN16).
  Tomtom only: TCCCAG/CTGGGA (Zfp809, q 0.048/0.027) and GCCCAG/CTGGGC (ZNF416, q 0.03; the rule's
  best there, ZSCAN31, scores 0.8498, just under 0.85). Rule only: GT/AC repeats (GTGTGT, ACACAC: ZSCAN4),
  TATATA (SRF), CCCAGC/GCTGGG (ZSCAN31), SNAI2, GLI3, SLC2A4RG, NRL, SOX10 hits at relative scores
  0.85-0.94, none of which Tomtom supports (best q 0.13-0.91).
* The rule's threshold (0.85) and window filter (10 bits) are ours, chosen so that not every 6-mer
  hits something; they have no error rate, and 44% of all 6-mers "hit" a motif, so a top-N set can
  hardly be enriched. Tomtom's p-value comes from the null distribution of column scores against the
  whole database and the q-value controls the false discovery rate of the calls: the field's
  standard, which a reviewer accepts. With q <= 0.05 short queries need near-perfect matches:
  TATAAA's best match is TBP (p = 6e-4) but at q = 0.6, so the TATA box is not "matched" at 6 bp
  while CACGTG matches MAX at q = 3e-4.

The rule stays as a sensitivity check (`--method rule` or `both`), not as a silent fallback: without
memelite, `--method tomtom` fails naming the package. Cost: Tomtom on all 4,096 6-mers x 1,019 motifs
takes 0.7 s on one thread (one-off numba compilation of memelite at its first call: 90 s here,
cached afterwards); the whole `genemask motifs` call about 9 s on a loaded 2-core machine, most of it
reading JASPAR and the 10,000-draw permutation tests.

The rule (`rule`), all of it vectorised (one matrix product scores all 4**k k-mers at once):

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
  strands is >= `threshold` (default 0.85). `rule_hits` counts the motifs hit; `rule_motif` is
  the motif with the highest relative score (`rule_score`; reported even when below the threshold).

Enrichment, per method: the fraction of top-N k-mers matching >= 1 motif against the fraction among
all 4**k k-mers (ratio), with a one-sided Fisher exact test (top-N vs the other k-mers) and a
permutation test on the mean number of motifs matched (top-N vs N k-mers drawn at random without
replacement, seeded).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .defaults import default as _schema_default
from .defaults import node as _schema_node
from .kmers import ALPHABET, all_kmers, kmer_to_index
from .npmi import load_ranking
from .util import GeneMaskError, atomic_output

METHODS = tuple(_schema_node("report.motif_method")["enum"])  # one home: the config schema
DEFAULT_METHOD = _schema_default("report.motif_method")
DEFAULT_Q = _schema_default("report.motif_q_threshold")  # 0.05
DEFAULT_THRESHOLD = _schema_default("report.motif_rule_threshold")  # 0.85
DEFAULT_MIN_IC = _schema_default("report.motif_rule_min_ic")  # 10.0
DEFAULT_N_PERM = _schema_default("report.motif_n_perm")  # 10000
DEFAULT_K = _schema_default("corpus.k")  # 6
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


def build_motif_set(motifs: list, k: int = DEFAULT_K) -> MotifSet:
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


def score_all_kmers(ms: MotifSet, k: int = DEFAULT_K, min_ic: float = DEFAULT_MIN_IC) -> np.ndarray:
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


def load_scores(path: str | Path, k: int = DEFAULT_K) -> tuple[np.ndarray, np.ndarray]:
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


def jaspar_probabilities(motif) -> np.ndarray:
    """[4, L] base frequencies in memelite's order (A, C, G, T): the JASPAR counts over each column's
    total, no pseudocounts (the letter-probability matrix of JASPAR's MEME-format download)."""
    c = np.array([motif.counts[b] for b in "ACGT"], dtype=np.float64)
    return c / c.sum(axis=0, keepdims=True)


def tomtom_jaspar(queries: list[np.ndarray], motifs: list, n_jobs: int = 1) -> dict[str, np.ndarray]:
    """Tomtom (memelite; see the module docstring) of query motifs ([4, w] each, rows A C G T: letter
    probabilities or one-hot) against JASPAR motifs: {p, q, strand}, each [n_queries, n_motifs]: the
    p-value of the best offset and strand, its per-query Benjamini-Hochberg q-value over the motifs,
    and the strand of that alignment (0: the query as given, 1: its reverse complement)."""
    try:
        from memelite import tomtom
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise GeneMaskError(f"memelite is not importable ({e}); install it (pip install memelite==0.5.0; "
                            "genemask motifs can also run --method rule)") from None
    from scipy.stats import false_discovery_control

    out = tomtom([np.ascontiguousarray(q, dtype=np.float64) for q in queries],
                 [jaspar_probabilities(m) for m in motifs], n_jobs=n_jobs)
    p = np.clip(out[0], 0.0, 1.0)
    return {"p": p, "q": false_discovery_control(p, axis=1), "strand": np.asarray(out[4])}


def tomtom_all_kmers(motifs: list, k: int = DEFAULT_K, n_jobs: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(p, q), each [4**k, n_motifs]: Tomtom (memelite) p-value of every k-mer, as a one-hot query
    motif, against every motif (best offset and strand), and its per-query Benjamini-Hochberg
    q-value over the n_motifs targets (see the module docstring)."""
    # one-hot [4**k, k*4] in kmers' order A,T,C,G -> [4**k, 4, k] in memelite's A,C,G,T
    x = _one_hot(k).reshape(4**k, k, 4)[:, :, [ALPHABET.index(b) for b in "ACGT"]].transpose(0, 2, 1)
    t = tomtom_jaspar(list(x), motifs, n_jobs)
    return t["p"], t["q"]


def _enrichment(hits: np.ndarray, in_top: np.ndarray, n_perm: int, seed: int) -> tuple[dict, np.ndarray]:
    """Share of top-N k-mers with >= 1 hit vs all k-mers (ratio, one-sided Fisher exact test, top-N
    vs the rest) and a permutation test on the mean number of hits; returns (stats, null means)."""
    from scipy.stats import fisher_exact

    top, n_all = int(in_top.sum()), hits.size
    any_hit = hits > 0
    a, b = int(any_hit[in_top].sum()), int((~any_hit[in_top]).sum())
    c, d = int(any_hit[~in_top].sum()), int((~any_hit[~in_top]).sum())
    odds, p_fisher = fisher_exact([[a, b], [c, d]], alternative="greater")
    frac_top, frac_all = a / top, float(any_hit.mean())
    rng = np.random.default_rng(seed)
    obs_mean = float(hits[in_top].mean())
    null = np.array([hits[rng.choice(n_all, top, replace=False)].mean() for _ in range(n_perm)])
    p_perm = (1 + int((null >= obs_mean).sum())) / (n_perm + 1)
    return {
        "top_with_hit": a, "frac_top_with_hit": frac_top, "frac_all_with_hit": frac_all,
        "enrichment": frac_top / frac_all if frac_all > 0 else math.nan,
        "odds_ratio": float(odds), "p_fisher": float(p_fisher),
        "mean_hits_top": obs_mean, "mean_hits_all": float(hits.mean()), "p_perm": p_perm,
    }, null


def _label(ms_ids: list[str], ms_names: list[str], j: int) -> str:
    return f"{ms_ids[j]} {ms_names[j]}"


def motif_enrichment(ranks: np.ndarray, npmi: np.ndarray, top: int, k: int = DEFAULT_K, *,
                     motifs: list | None = None, method: str = DEFAULT_METHOD,
                     threshold: float = DEFAULT_THRESHOLD, min_ic: float = DEFAULT_MIN_IC,
                     q_threshold: float = DEFAULT_Q, n_perm: int = DEFAULT_N_PERM, seed: int = 0,
                     release: str | None = None, n_jobs: int = 1) -> tuple[pd.DataFrame, dict, dict]:
    """Match the top-`top` NPMI k-mers to JASPAR by `method` (tomtom, rule or both) and test enrichment.

    Returns (table of the top k-mers, summary dict: common keys plus one stats dict per method under
    "tomtom"/"rule" and, for both, "overlap"; details: `hits`/`null` = {method: motifs matched by
    every k-mer, permutation means}, `ranks`).
    """
    if method not in METHODS:
        raise GeneMaskError(f"--method {method!r}: must be one of {', '.join(METHODS)}")
    n_all = 4**k
    ranked = np.flatnonzero(ranks <= n_all)
    if not 0 < top <= ranked.size:
        raise GeneMaskError(f"--top {top}: must be between 1 and the {ranked.size} ranked {k}-mers")
    if motifs is None:
        motifs = load_jaspar(release)
    ids, names = [str(m.matrix_id) for m in motifs], [str(m.name) for m in motifs]
    order = ranked[np.argsort(ranks[ranked], kind="stable")]
    top_idx = order[:top]
    in_top = np.zeros(n_all, dtype=bool)
    in_top[top_idx] = True
    kmers = all_kmers(k)
    table = pd.DataFrame({"kmer": [kmers[i] for i in top_idx], "rank": ranks[top_idx], "npmi": npmi[top_idx]})
    summary = {"top": top, "n_kmers": n_all, "release": getattr(motifs[0], "_gm_release", ""),
               "n_motifs": len(motifs), "method": method, "n_perm": n_perm}
    hits, nulls = {}, {}
    methods = ("tomtom", "rule") if method == "both" else (method,)
    for meth in methods:
        if meth == "tomtom":
            p, q = tomtom_all_kmers(motifs, k, n_jobs)
            hits[meth] = (q <= q_threshold).sum(axis=1)
            pt, qt = p[top_idx], q[top_idx]
            best = pt.argmin(axis=1)
            rows = np.arange(top)
            by_p = np.argsort(pt, axis=1, kind="stable")
            table["tomtom_matches"] = hits[meth][top_idx]
            table["tomtom_motif"] = [_label(ids, names, j) for j in best]
            table["tomtom_p"] = pt[rows, best]
            table["tomtom_q"] = qt[rows, best]
            table["tomtom_matched"] = [";".join(_label(ids, names, j) for j in by_p[r, : hits[meth][i]])
                                       for r, i in enumerate(top_idx)]
            params = {"q_threshold": q_threshold}
        else:
            ms = build_motif_set(motifs, k)
            rel = score_all_kmers(ms, k, min_ic)  # [4**k, n_motifs]
            hits[meth] = (rel >= threshold).sum(axis=1)
            best = rel.argmax(axis=1)
            best_score = rel[np.arange(n_all), best]
            table["rule_hits"] = hits[meth][top_idx]
            table["rule_motif"] = [_label(ids, names, b) if np.isfinite(best_score[i]) else ""
                                   for i, b in zip(top_idx, best[top_idx])]
            table["rule_score"] = np.round(best_score[top_idx], 4)
            params = {"threshold": threshold, "min_ic": min_ic}
        stats, nulls[meth] = _enrichment(hits[meth], in_top, n_perm, seed)
        summary[meth] = {**params, **stats}
    if method == "both":
        t, r = hits["tomtom"] > 0, hits["rule"] > 0
        summary["overlap"] = {
            "both": int((t & r)[in_top].sum()), "tomtom_only": int((t & ~r)[in_top].sum()),
            "rule_only": int((~t & r)[in_top].sum()), "neither": int((~t & ~r)[in_top].sum()),
            "agreement_all": float((t == r).mean()),
        }
    return table, summary, {"hits": hits, "null": nulls, "ranks": ranks}


def _criterion(meth: str, m: dict) -> str:
    if meth == "tomtom":
        return f"Tomtom q <= {m['q_threshold']:g}"
    return f"relative score >= {m['threshold']:g} in a window of >= {m['min_ic']:g} bits"


def summary_line(s: dict) -> str:
    """One line per method (and the overlap for `both`)."""
    k = int(round(math.log(s["n_kmers"], 4)))
    lines = []
    for meth in ("tomtom", "rule"):
        if meth not in s:
            continue
        m = s[meth]
        lines.append(
            f"motifs ({meth}): top {s['top']} NPMI {k}-mers vs {s['release']} CORE vertebrates ({s['n_motifs']} "
            f"motifs; match = {_criterion(meth, m)}): {m['top_with_hit']}/{s['top']} ({m['frac_top_with_hit']:.1%}) "
            f"match >= 1 motif vs {m['frac_all_with_hit']:.1%} of all k-mers, enrichment {m['enrichment']:.2f}x, "
            f"Fisher one-sided p = {m['p_fisher']:.3g}; mean motifs matched {m['mean_hits_top']:.2f} vs "
            f"{m['mean_hits_all']:.2f}, permutation p = {m['p_perm']:.3g} ({s['n_perm']} draws)")
    if "overlap" in s:
        o = s["overlap"]
        lines.append(f"motifs (tomtom vs rule): of the top {s['top']}, {o['both']} matched by both, "
                     f"{o['tomtom_only']} by Tomtom only, {o['rule_only']} by the rule only, {o['neither']} by "
                     f"neither; the two agree on {o['agreement_all']:.1%} of all k-mers")
    return "\n".join(lines)


def plot_enrichment(details: dict, summary: dict, output: str | Path, bins: int = 32) -> Path:
    """One row per method. Left: share of k-mers matching >= 1 motif per NPMI-rank bin (top-N bin(s)
    highlighted) with the all-k-mer rate; right: permutation null of the mean number of motifs
    matched, observed value marked."""
    from .figures import new_figure, png_bytes, write_bytes

    ranks = details["ranks"]
    methods = [m for m in ("tomtom", "rule") if m in details["hits"]]
    n_all, top = summary["n_kmers"], summary["top"]
    ranked = ranks <= n_all
    fig = new_figure(12, 4.2 * len(methods))
    axes = np.atleast_2d(fig.subplots(len(methods), 2))
    edges = np.linspace(0.5, ranked.sum() + 0.5, bins + 1)
    h_all, _ = np.histogram(ranks[ranked], bins=edges)
    for (ax_r, ax_p), meth in zip(axes, methods):
        hits, null, s = details["hits"][meth], details["null"][meth], summary[meth]
        h_hit, _ = np.histogram(ranks[ranked & (hits > 0)], bins=edges)
        share = np.divide(h_hit, h_all, out=np.full(bins, np.nan), where=h_all > 0)
        ax_r.stairs(share, edges, baseline=None, color="#1f77b4", lw=1.6, label="k-mers in the rank bin")
        ax_r.axhline(s["frac_all_with_hit"], color="black", ls="--", lw=1,
                     label=f"all k-mers ({s['frac_all_with_hit']:.1%})")
        ax_r.axvspan(0.5, top + 0.5, color="#d62728", alpha=0.15, label=f"top {top} ({s['frac_top_with_hit']:.1%})")
        ax_r.set_xlabel("NPMI rank (1 = highest NPMI)")
        ax_r.set_ylabel("share matching >= 1 JASPAR motif")
        ax_r.set_ylim(0, 1)
        ax_r.set_title(f"{meth} ({_criterion(meth, s)}): matches by NPMI rank", fontsize=9)
        ax_r.legend(fontsize=8)
        ax_p.hist(null, bins=40, color="0.7", label=f"{len(null)} random sets of {top} k-mers")
        ax_p.axvline(s["mean_hits_top"], color="#d62728", lw=2,
                     label=f"top {top}: {s['mean_hits_top']:.2f} (p = {s['p_perm']:.3g})")
        ax_p.set_xlabel("mean number of motifs matched per k-mer")
        ax_p.set_ylabel("random sets")
        ax_p.set_title(f"{meth}: permutation test, enrichment {s['enrichment']:.2f}x, Fisher p = {s['p_fisher']:.3g}",
                       fontsize=9)
        ax_p.legend(fontsize=8)
        for ax in (ax_r, ax_p):
            ax.grid(True, alpha=0.3)
    fig.suptitle(f"Top-{top} NPMI k-mers vs {summary['release']} CORE vertebrate motifs")
    output = Path(output)
    write_bytes(output, png_bytes(fig))
    return output


def motifs_cli(ranking: str | Path, top: int, output: str | Path, plot: str | Path | None = None, *,
               k: int = DEFAULT_K, method: str = DEFAULT_METHOD, threshold: float = DEFAULT_THRESHOLD,
               min_ic: float = DEFAULT_MIN_IC, q_threshold: float = DEFAULT_Q, n_perm: int = DEFAULT_N_PERM,
               seed: int = 0, release: str | None = None) -> int:
    """`genemask motifs`: the top-N table as TSV, the summary line(s) on stdout, optionally a figure."""
    if not 0.0 < threshold <= 1.0:
        raise GeneMaskError(f"--threshold {threshold}: must be in (0, 1]")
    if not 0.0 < q_threshold <= 1.0:
        raise GeneMaskError(f"--q-threshold {q_threshold}: must be in (0, 1]")
    if n_perm < 1:
        raise GeneMaskError(f"--n-perm {n_perm}: must be >= 1")
    ranks, npmi = load_scores(ranking, k)
    table, summary, details = motif_enrichment(ranks, npmi, top, k, method=method, threshold=threshold,
                                               min_ic=min_ic, q_threshold=q_threshold, n_perm=n_perm,
                                               seed=seed, release=release)
    with atomic_output(output) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    if plot:
        plot_enrichment(details, summary, plot)
    print(summary_line(summary))
    return 0
