"""k-mer encoding shared by counting, tokenising and masking (DNABERT-compatible order).

Bases are digits in the order A, T, C, G (DNABERT's vocabulary order): the k-mer index of
AAAAAA is 0, AAAAAT is 1, ... and token id = index + N_SPECIAL. Every function here is vectorised.
"""
from __future__ import annotations

import numpy as np

ALPHABET = "ATCG"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PAD, UNK, CLS, SEP, MASK = range(5)
N_SPECIAL = len(SPECIAL_TOKENS)
SUPPORTED_K = (3, 4, 5, 6)

BASE_CODE = np.full(256, 255, dtype=np.uint8)  # byte -> 0..3 for ACGT (either case), 255 otherwise
for _i, _c in enumerate(ALPHABET):
    BASE_CODE[ord(_c)] = _i
    BASE_CODE[ord(_c.lower())] = _i


def vocab_size(k: int) -> int:
    return N_SPECIAL + 4**k


def encode(seq: str | bytes | np.ndarray) -> np.ndarray:
    """Bases -> uint8 digits (A0 T1 C2 G3, either case); anything else -> 255."""
    if isinstance(seq, str):
        seq = seq.encode("ascii", "replace")
    arr = np.frombuffer(seq, dtype=np.uint8) if not isinstance(seq, np.ndarray) else seq.view(np.uint8)
    return BASE_CODE[arr]


def kmer_index(codes: np.ndarray, k: int) -> np.ndarray:
    """Overlapping k-mer indices (int64, length L-k+1) of digit codes; -1 where a window has a non-ACGT."""
    n = codes.shape[0] - k + 1
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    idx = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    for j in range(k):  # loop over the k digits, not over positions
        c = codes[j : j + n]
        idx = idx * 4 + (c & 3)
        bad |= c == 255
    idx[bad] = -1
    return idx


def seq_to_ids(seq: str | bytes, k: int) -> np.ndarray:
    """Raw bp -> token ids (no [CLS]/[SEP]); k-mers with a non-ACGT letter become [UNK]."""
    idx = kmer_index(encode(seq), k)
    return np.where(idx < 0, UNK, idx + N_SPECIAL)


def all_kmers(k: int) -> list[str]:
    """Every k-mer in index order (AAAA.., AAAT.., AAAC.., AAAG.., AATA..)."""
    idx = np.arange(4**k)
    digits = (idx[:, None] // (4 ** np.arange(k - 1, -1, -1))[None, :]) % 4
    table = np.frombuffer(ALPHABET.encode(), dtype=np.uint8)
    chars = table[digits]
    return [bytes(row).decode() for row in chars]


def kmer_to_index(kmers: list[str] | np.ndarray, k: int) -> np.ndarray:
    """k-mer strings (all of length k) -> indices; -1 for any with a non-ACGT letter."""
    if len(kmers) == 0:
        return np.empty(0, dtype=np.int64)
    joined = "".join(kmers).encode("ascii", "replace")
    codes = encode(joined).reshape(-1, k).astype(np.int64)
    bad = (codes == 255).any(axis=1)
    idx = (codes & 3) @ (4 ** np.arange(k - 1, -1, -1))
    idx[bad] = -1
    return idx


def kmers_to_seq(tokens: list[str]) -> str:
    """Space-separated overlapping k-mers -> raw bp. Raises ValueError if neighbours do not overlap."""
    if not tokens:
        raise ValueError("no k-mers")
    k = len(tokens[0])
    for a, b in zip(tokens, tokens[1:]):
        if len(b) != k or a[1:] != b[:-1]:
            raise ValueError(f"k-mers {a!r} and {b!r} do not overlap by {k - 1} bases")
    return tokens[0] + "".join(t[-1] for t in tokens[1:])
