"""Pretraining corpus (spec section 2): ACGT-only pieces of 6..511 bp as k-mer token ids on disk.

Per chunk: split the sequence at every non-ACGT run (no piece spans an assembly gap), upper-case,
then from a random offset in [0, 1000) cut consecutive non-overlapping pieces: with probability
0.5 a full-length piece (max_bp), otherwise a length uniform in [min_bp, max_bp - 1]. A segment's
last piece is what is left of it, dropped if shorter than min_bp. Exact duplicate pieces are
dropped, and an independent seeded coin per piece sends 10% to validation.

On disk (per split): `<split>.bin` = uint16 token ids of all pieces concatenated (2 bytes per
token, no [CLS]/[SEP]) and `<split>.idx.npy` = int64 offsets (n_pieces + 1), so that training
memory-maps the tokens and memory does not grow with corpus size. `meta.json` has the counts.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from .genome import acgt_segments, read_sequences
from .kmers import N_SPECIAL, encode, kmer_index
from .util import CORPUS, GeneMaskError, atomic_output


def cut_pieces(seq: bytes, rng: np.random.Generator, max_bp: int = 511, min_bp: int = 6,
               max_offset: int = 1000) -> list[tuple[int, int]]:
    """(start, end) of the pieces cut from `seq` (bp coordinates), never crossing a non-ACGT base."""
    offset = int(rng.integers(0, max_offset)) if max_offset > 0 else 0
    pieces: list[tuple[int, int]] = []
    for s, e in acgt_segments(seq):
        s = max(s, offset)
        if e - s < min_bp:
            continue
        n = e - s
        # Draw enough lengths at once to cover the segment (mean length >= (max+min)/2 * ... >= min_bp).
        m = n // min_bp + 1
        full = rng.random(m) < 0.5
        lens = np.where(full, max_bp, rng.integers(min_bp, max(max_bp, min_bp + 1), size=m))
        ends = s + np.cumsum(lens)
        k = int(np.searchsorted(ends, e, side="left"))  # pieces [0..k) end at or before e... last clipped
        starts = np.concatenate(([s], ends[:-1]))
        st = starts[: k + 1]
        en = np.minimum(ends[: k + 1], e)
        keep = (en - st) >= min_bp
        pieces.extend(zip(st[keep].tolist(), en[keep].tolist()))
    return pieces


def chunk_seed(seed: int, region: str | None) -> int:
    """Seed per chunk, stable across runs and independent of the order chunks run in."""
    h = hashlib.sha256(f"{seed}:{region}".encode()).digest()
    return int.from_bytes(h[:8], "little")


def build_corpus(fasta: str | Path, output: str | Path, region: str | None = None, k: int = 6,
                 max_bp: int = 511, min_bp: int = 6, valid_fraction: float = 0.1, seed: int = 42) -> dict:
    if not 0 <= valid_fraction < 1:
        raise GeneMaskError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    if min_bp < k or max_bp < min_bp:
        raise GeneMaskError(f"piece lengths must satisfy k <= min_bp <= max_bp (k={k}, min_bp={min_bp}, max_bp={max_bp})")
    rng = np.random.default_rng(chunk_seed(seed, region))
    tokens: list[np.ndarray] = []
    lengths: list[int] = []
    seen: set[bytes] = set()
    n_dup = 0
    n_bp_in = 0
    for _name, seq in read_sequences(fasta, region):
        n_bp_in += len(seq)
        seq = seq.upper()
        idx = kmer_index(encode(seq), k)  # one vectorised pass over the chunk
        for s, e in cut_pieces(seq, rng, max_bp=max_bp, min_bp=min_bp):
            piece = seq[s:e]
            if piece in seen:
                n_dup += 1
                continue
            seen.add(piece)
            tokens.append(idx[s : e - k + 1])
            lengths.append(e - s - k + 1)
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    is_valid = rng.random(len(lengths_arr)) < valid_fraction
    all_tokens = (np.concatenate(tokens) if tokens else np.empty(0, np.int64)) + N_SPECIAL
    starts = np.concatenate(([0], np.cumsum(lengths_arr)))
    meta = {"region": region, "k": k, "max_bp": max_bp, "min_bp": min_bp, "seed": seed,
            "valid_fraction": valid_fraction, "bp_in": n_bp_in, "duplicates_dropped": n_dup}
    with atomic_output(output, is_dir=True, kind=CORPUS) as tmp:
        for split, mask in (("train", ~is_valid), ("valid", is_valid)):
            sel = np.flatnonzero(mask)
            seg_lens = lengths_arr[sel]
            gather = _ranges(starts[sel], seg_lens)
            all_tokens[gather].astype(np.uint16).tofile(tmp / f"{split}.bin")
            np.save(tmp / f"{split}.idx.npy", np.concatenate(([0], np.cumsum(seg_lens))).astype(np.int64))
            meta[f"{split}_pieces"] = int(sel.size)
            meta[f"{split}_tokens"] = int(seg_lens.sum())
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"corpus {region or fasta}: {meta['train_pieces']:,} train / {meta['valid_pieces']:,} valid pieces, "
          f"{meta['train_tokens']:,} train tokens, {n_dup} duplicates dropped", file=sys.stderr)
    return meta


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s+l) for each (s, l), vectorised."""
    total = int(lens.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    offs = np.repeat(starts - np.concatenate(([0], np.cumsum(lens)[:-1])), lens)
    return np.arange(total, dtype=np.int64) + offs


class Corpus:
    """Memory-mapped view over one split of several corpus folders: piece i -> token ids."""

    def __init__(self, folders: list[str | Path], split: str):
        self.tokens, starts, ends, self.owner = [], [], [], []
        for j, f in enumerate(folders):
            f = Path(f)
            try:
                idx = np.load(f / f"{split}.idx.npy")
                toks = np.memmap(f / f"{split}.bin", dtype=np.uint16, mode="r") if idx[-1] > 0 else np.empty(0, np.uint16)
            except (OSError, ValueError) as e:
                raise GeneMaskError(f"{f}: not a corpus folder or damaged ({e})") from None
            if len(toks) != idx[-1]:
                raise GeneMaskError(f"{f}/{split}.bin: {len(toks)} tokens but the index says {idx[-1]} (truncated?)")
            self.tokens.append(toks)
            starts.append(idx[:-1])
            ends.append(idx[1:])
            self.owner.append(np.full(len(idx) - 1, j, dtype=np.int32))
        self.starts = np.concatenate(starts) if starts else np.empty(0, np.int64)
        self.ends = np.concatenate(ends) if ends else np.empty(0, np.int64)
        self.owner = np.concatenate(self.owner) if self.owner else np.empty(0, np.int32)

    def __len__(self) -> int:
        return len(self.starts)

    def piece(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.owner[i]][self.starts[i] : self.ends[i]])

    def n_tokens(self) -> int:
        return int((self.ends - self.starts).sum())
