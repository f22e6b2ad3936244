"""PMI / NPMI scores of n-grams and the k-mer ranking that drives GeneMask masking (spec section 4)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .defaults import default as _schema_default
from .kmers import kmer_to_index
from .util import GeneMaskError, require_columns

DEFAULT_VARIANT = _schema_default("npmi.variant")  # paper
DEFAULT_MIN_COUNT = _schema_default("npmi.min_count")  # 101
DEFAULT_K = _schema_default("corpus.k")  # 6


def load_ranking(path: str | Path, k: int = DEFAULT_K) -> np.ndarray:
    """NPMI rank of every k-mer, indexed by k-mer index (token id - N_SPECIAL); 1 = highest NPMI.

    Reads our NPMI table (`ngram order count naive_pmi dp_pmi npmi rank`, rows of order k) or the
    authors' Data-A CSV (column `norm_pmi_rank_rel`). k-mers absent from the table (under min_count)
    get the worst rank, 4**k + 1. The one reader of ranking tables, so the one place they are
    verified: a text file with the columns, every k-mer of length k in ACGT and listed once, every
    rank an integer in [1, 4**k]; any fault -> one line naming the file, the line and the fault.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head_bytes = fh.read(1 << 16)
    except OSError as e:
        raise GeneMaskError(f"{path}: cannot read ranking table ({e.strerror})") from None
    try:
        if b"\0" in head_bytes:
            raise UnicodeDecodeError("utf-8", head_bytes, 0, 1, "NUL byte")
        head = head_bytes.decode("utf-8", errors="strict" if len(head_bytes) < 1 << 16 else "ignore")
    except UnicodeDecodeError:
        raise GeneMaskError(f"{path}: not a text ranking table (binary content)") from None
    head = head.split("\n", 1)[0]
    if "norm_pmi_rank_rel" in head:
        kind, sep, need = "Data-A ranking CSV", ",", ("ngram", "norm_pmi_rank_rel")
    elif head.rstrip("\r").split("\t")[:2] == ["ngram", "order"]:
        kind, sep, need = "NPMI table", "\t", ("ngram", "order", "rank")
    else:
        raise GeneMaskError(f"{path}: not an NPMI table (expected our TSV header 'ngram order ...' "
                            f"or Data-A's 'norm_pmi_rank_rel' column)")
    try:
        df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise GeneMaskError(f"{path}: not a readable {kind} ({str(e).strip().splitlines()[-1][:160]})") from None
    require_columns(df, path, kind, need, " ".join(COLUMNS) if sep == "\t" else "ngram ... norm_pmi_rank_rel")
    line = df.index.to_numpy() + 2  # file line of each row (header = line 1)
    if sep == "\t":
        order = pd.to_numeric(df["order"].str.strip(), errors="coerce")
        if order.isna().any():
            i = int(np.flatnonzero(order.isna().to_numpy())[0])
            raise GeneMaskError(f"{path}: line {line[i]}: order {df['order'].iat[i]!r} is not a number")
        keep = (order == k).to_numpy()
        df, line = df[keep], line[keep]
        rank_text = df["rank"]
    else:
        rank_text = df["norm_pmi_rank_rel"]
    ngrams = df["ngram"].str.strip().str.strip('"').str.upper()
    if len(ngrams) == 0:
        raise GeneMaskError(f"{path}: no {k}-mers in the ranking table")
    wrong = (ngrams.str.len() != k).to_numpy()
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise GeneMaskError(f"{path}: line {line[i]}: n-gram {ngrams.iat[i]!r} is not a {k}-mer")
    idx = kmer_to_index(list(ngrams), k)
    if (idx < 0).any():
        i = int(np.flatnonzero(idx < 0)[0])
        raise GeneMaskError(f"{path}: line {line[i]}: k-mer {ngrams.iat[i]!r} has a letter other than ACGT")
    dup = pd.Series(idx).duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(line[np.flatnonzero(idx == idx[i])[0]])
        raise GeneMaskError(f"{path}: line {line[i]}: k-mer {ngrams.iat[i]} listed twice (first on line {first})")
    rank = pd.to_numeric(rank_text.str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(rank) | (rank != np.round(rank)) | (rank < 1) | (rank > 4**k)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise GeneMaskError(f"{path}: line {line[i]}: rank {rank_text.iat[i]!r} of {ngrams.iat[i]} is not an "
                            f"integer in [1, {4**k}]")
    ranks = np.full(4**k, 4**k + 1, dtype=np.int64)
    ranks[idx] = rank.astype(np.int64)
    return ranks


# ---------------------------------------------------------------------------------------------------
# Scoring n-gram counts (spec section 4)
# ---------------------------------------------------------------------------------------------------
#
# Output table, one row per scored n-gram, sorted by order then rank:
#   ngram order count naive_pmi dp_pmi npmi rank
# Orders 2..max_order are scored. Order 1 is omitted: a single base has no segmentation into
# >= 2 pieces, so dp_pmi/npmi are undefined for it. N-grams with count < min_count (and never a
# zero count) are omitted. rank is within the order, 1 = highest npmi; ties are broken by k-mer index.
#
# variant "paper" (default, reproduces the authors' Data-A table):
#   Z = total count of 1-grams + total count of 2-grams (all counted, before min_count);
#   p(w) = c(w)/Z for every order; naive_pmi = ln p(w) - sum_i ln p(w_i);
#   dp_pmi = min over segmentations into >= 2 contiguous pieces of length 1 or 2 of
#            ln p(w) - sum ln p(piece)   (dynamic programme over positions);
#   npmi = dp_pmi * ln c / (ln c + ln 101). The 101 is a FIXED constant (DISCOUNT), not tied to
#   --min-count: the spec gives both as 101 but nothing says the discount moves with the threshold,
#   and tying them would silently change scores when a user lowers min_count.
# variant "levine" (Levine et al. 2021, PMI-Masking):
#   p_n(w) = c(w) / (total count of order n); naive_pmi = ln p_n(w) - sum_i ln p_1(w_i);
#   dp_pmi = PMI_n = min over segmentations into >= 2 contiguous pieces of ANY length of
#            ln p_n(w) - sum ln p_len(piece)(piece);
#   npmi = dp_pmi (Levine ranks by PMI_n with no count discount; the column keeps its name so that
#   the table format and load_ranking are the same for both variants).

DISCOUNT = 101
VARIANTS = ("paper", "levine")
COLUMNS = ["ngram", "order", "count", "naive_pmi", "dp_pmi", "npmi", "rank"]


def _digits(idx: np.ndarray, n: int) -> list[np.ndarray]:
    """Base digits (A0 T1 C2 G3) of n-gram indices, most significant first."""
    return [(idx >> (2 * (n - 1 - j))) & 3 for j in range(n)]


def _substring(idx: np.ndarray, n: int, j: int, i: int) -> np.ndarray:
    """Index of w[j:i] (as an (i-j)-gram) for n-gram indices idx."""
    return (idx >> (2 * (n - i))) & ((1 << (2 * (i - j))) - 1)


def _ngram_strings(idx: np.ndarray, n: int) -> np.ndarray:
    table = np.frombuffer(b"ATCG", dtype=np.uint8)
    chars = np.stack([table[d] for d in _digits(idx, n)], axis=1) if len(idx) else np.zeros((0, n), np.uint8)
    return np.ascontiguousarray(chars).view(f"S{n}").ravel().astype(str)


def _log(a: np.ndarray, denom: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(a.astype(np.float64)) - np.log(denom)


def _rank_desc(score: np.ndarray, idx: np.ndarray) -> np.ndarray:
    order = np.lexsort((idx, -score))
    rank = np.empty(len(score), dtype=np.int64)
    rank[order] = np.arange(1, len(score) + 1)
    return rank


def npmi_table(counts, variant: str = DEFAULT_VARIANT, min_count: int = DEFAULT_MIN_COUNT,
               discount: float = DISCOUNT) -> pd.DataFrame:
    """Score every n-gram of orders 2..max with count >= min_count (see the comment block above).

    `counts` is {order: uint64 array of 4**order} (ngrams.count_sequence / load_counts) or a path
    to a counts file. Vectorised: the dynamic programme loops over positions inside the n-gram,
    never over n-grams.
    """
    if not isinstance(counts, dict):
        from .ngrams import load_counts

        counts = load_counts(counts)
    if variant not in VARIANTS:
        raise GeneMaskError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    max_order = max(counts)
    if max_order < 2 or 1 not in counts or 2 not in counts:
        raise GeneMaskError(f"NPMI needs counts of orders 1 and 2 at least (have {sorted(counts)})")
    if int(min_count) < 1:
        raise GeneMaskError(f"min_count {min_count}: must be >= 1 (zero counts cannot be scored)")
    threshold = int(min_count)
    if variant == "paper":
        Z = float(counts[1].sum(dtype=np.uint64)) + float(counts[2].sum(dtype=np.uint64))
        if Z == 0:
            raise GeneMaskError("NPMI: all counts are zero (no ACGT sequence was counted)")
        logp = {n: _log(counts[n], Z) for n in (1, 2)}
    else:
        logp = {}
        for n in range(1, max_order + 1):
            tot = float(counts[n].sum(dtype=np.uint64))
            logp[n] = _log(counts[n], tot) if tot > 0 else np.full(4**n, -np.inf)
    ln_disc = float(np.log(discount))

    frames = []
    for n in range(2, max_order + 1):
        c = counts[n]
        idx = np.flatnonzero(c >= threshold).astype(np.int64)
        cw = c[idx]
        d = _digits(idx, n)
        naive_sub = np.zeros(len(idx))
        for dj in d:
            naive_sub += logp[1][dj]
        if variant == "paper":
            lpw = _log(cw, Z)
            best = [np.zeros(len(idx)), logp[1][d[0]]]
            for i in range(2, n + 1):
                one = best[i - 1] + logp[1][d[i - 1]]
                if i == n == 2:  # the whole 2-gram is one piece, not a segmentation
                    best.append(one)
                else:
                    best.append(np.maximum(one, best[i - 2] + logp[2][4 * d[i - 2] + d[i - 1]]))
            with np.errstate(invalid="ignore"):
                dp = lpw - best[n]
                lc = np.log(cw.astype(np.float64))
                score = dp * lc / (lc + ln_disc)
        else:
            lpw = logp[n][idx]
            best = [np.zeros(len(idx))]
            for i in range(1, n + 1):
                b = np.full(len(idx), -np.inf)
                for j in range(0, i):
                    if j == 0 and i == n:
                        continue  # the n-gram itself is not a segmentation
                    b = np.maximum(b, best[j] + logp[i - j][_substring(idx, n, j, i)])
                best.append(b)
            with np.errstate(invalid="ignore"):
                dp = lpw - best[n]
            score = dp
        frames.append(pd.DataFrame({
            "ngram": _ngram_strings(idx, n),
            "order": np.full(len(idx), n, dtype=np.int64),
            "count": cw.astype(np.int64),
            "naive_pmi": lpw - naive_sub,
            "dp_pmi": dp,
            "npmi": score,
            "rank": _rank_desc(score, idx),
        }).sort_values("rank", kind="stable"))
    return pd.concat(frames, ignore_index=True)[COLUMNS]


def npmi_file(counts: str | Path, output: str | Path, variant: str = DEFAULT_VARIANT,
              min_count: int = DEFAULT_MIN_COUNT) -> int:
    """`genemask npmi`: score a counts file and write the TSV (header `ngram order count naive_pmi dp_pmi npmi rank`)."""
    import sys
    import time

    from .ngrams import load_counts
    from .util import atomic_output

    t0 = time.perf_counter()
    loaded = load_counts(counts)
    try:
        table = npmi_table(loaded, variant=variant, min_count=min_count)
    except GeneMaskError as e:
        raise GeneMaskError(f"{counts}: {e}") from None
    with atomic_output(output) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.10g")
    print(f"[npmi] {counts}: {len(table):,} n-grams (orders 2..{table['order'].max() if len(table) else '-'}, "
          f"variant {variant}, min_count {min_count}) in {time.perf_counter() - t0:.1f}s -> {output}",
          file=sys.stderr)
    return 0
