"""PMI / NPMI scores of n-grams and the k-mer ranking that drives GeneMask masking (spec section 4)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .kmers import kmer_to_index
from .util import GeneMaskError


def load_ranking(path: str | Path, k: int = 6) -> np.ndarray:
    """NPMI rank of every k-mer, indexed by k-mer index (token id - N_SPECIAL); 1 = highest NPMI.

    Reads our NPMI table (`ngram order count naive_pmi dp_pmi npmi rank`, rows of order k) or the
    authors' Data-A CSV (column `norm_pmi_rank_rel`). k-mers absent from the table (under min_count)
    get the worst rank, 4**k + 1.
    """
    path = Path(path)
    try:
        head = path.open().readline()
    except OSError as e:
        raise GeneMaskError(f"{path}: cannot read ranking table ({e.strerror})") from None
    if "norm_pmi_rank_rel" in head:
        df = pd.read_csv(path, usecols=["ngram", "norm_pmi_rank_rel"])
        df = df.rename(columns={"norm_pmi_rank_rel": "rank"})
    elif head.rstrip("\n").split("\t")[:2] == ["ngram", "order"]:
        df = pd.read_csv(path, sep="\t", usecols=["ngram", "order", "rank"])
        df = df[df["order"] == k]
    else:
        raise GeneMaskError(f"{path}: not an NPMI table (expected our TSV header 'ngram order ...' "
                            f"or Data-A's 'norm_pmi_rank_rel' column)")
    ngrams = df["ngram"].astype(str).str.strip('"').str.upper().to_numpy()
    if len(ngrams) == 0:
        raise GeneMaskError(f"{path}: no {k}-mers in the ranking table")
    if any(len(s) != k for s in ngrams):
        raise GeneMaskError(f"{path}: ranking table holds n-grams that are not {k}-mers")
    idx = kmer_to_index(list(ngrams), k)
    if (idx < 0).any():
        raise GeneMaskError(f"{path}: ranking table holds a k-mer with a non-ACGT letter")
    ranks = np.full(4**k, 4**k + 1, dtype=np.int64)
    ranks[idx] = df["rank"].to_numpy(dtype=np.int64)
    return ranks
