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

from .defaults import defaults as config_defaults
from .genome import acgt_segments, read_sequences
from .kmers import N_SPECIAL, SPECIAL_TOKENS, SUPPORTED_K, encode, kmer_index, vocab_size
from .util import CORPUS, GeneMaskError, atomic_output, read_json_object

DEFAULTS = config_defaults("corpus")  # k, max_bp, min_bp, valid_fraction, seed: the config schema's


def cut_pieces(seq: bytes, rng: np.random.Generator, max_bp: int = DEFAULTS["max_bp"], min_bp: int = DEFAULTS["min_bp"],
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


def build_corpus(fasta: str | Path, output: str | Path, region: str | None = None,
                 k: int = DEFAULTS["k"], max_bp: int = DEFAULTS["max_bp"], min_bp: int = DEFAULTS["min_bp"],
                 valid_fraction: float = DEFAULTS["valid_fraction"], seed: int = DEFAULTS["seed"]) -> dict:
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


VERIFY_BLOCK = 1 << 22  # tokens per block of the one verifying pass over a .bin (8 MiB)


def read_meta(folder: str | Path) -> dict:
    """A corpus folder's `meta.json`, validated: a mapping with k in SUPPORTED_K and non-negative
    integer `<split>_pieces` / `<split>_tokens` for both splits; any fault -> one line naming it."""
    path = Path(folder) / "meta.json"
    meta = read_json_object(path, "corpus metadata", hint="; not a corpus folder?")
    if meta.get("k") not in SUPPORTED_K or isinstance(meta.get("k"), bool):
        raise GeneMaskError(f"{path}: corpus metadata key k must be one of {SUPPORTED_K}, got {meta.get('k')!r}")
    for key in ("train_pieces", "train_tokens", "valid_pieces", "valid_tokens"):
        v = meta.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise GeneMaskError(f"{path}: corpus metadata key {key} must be a non-negative integer, got {v!r}")
    return meta


def open_split(folder: str | Path, split: str, k: int | None = None) -> tuple[np.ndarray, np.ndarray, str]:
    """(offsets, memory-mapped token ids, sha256 of `<split>.bin`) of one split of a corpus folder,
    verified against what `build_corpus` writes; any fault -> one line naming the file and the fault.

    Offsets: a 1-D integer array starting at 0, strictly increasing (no empty piece), ending at the
    .bin's length in tokens, as many pieces and tokens as meta.json says. Tokens: every id a k-mer
    (N_SPECIAL .. vocab_size(k)-1: a [PAD] run from zero-filling or a special token inside a piece
    is refused), and neighbours within a piece overlapping k-mers (k-1 shared bases), as cut from a
    real sequence. `k`: the k the caller needs (the model's); must equal meta.json's. One vectorised
    pass over the tokens in blocks of VERIFY_BLOCK, which also computes the sha256.
    """
    folder = Path(folder)
    meta = read_meta(folder)
    if k is not None and meta["k"] != k:
        raise GeneMaskError(f"{folder / 'meta.json'}: a corpus of {meta['k']}-mers, but the model uses k={k}")
    k = meta["k"]
    idx_path, bin_path = folder / f"{split}.idx.npy", folder / f"{split}.bin"
    try:
        idx = np.load(idx_path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise GeneMaskError(f"{idx_path}: not a corpus offsets file ({str(e)[:120]})") from None
    if idx.ndim != 1 or idx.dtype.kind not in "iu" or idx.size == 0:
        raise GeneMaskError(f"{idx_path}: offsets must be a non-empty 1-D integer array, got {idx.dtype} {idx.shape}")
    idx = idx.astype(np.int64)
    if idx[0] != 0:
        raise GeneMaskError(f"{idx_path}: offsets must start at 0, got {idx[0]}")
    step = np.diff(idx)
    if (step <= 0).any():
        i = int(np.flatnonzero(step <= 0)[0])
        raise GeneMaskError(f"{idx_path}: offsets not increasing at piece {i} ({idx[i]} -> {idx[i + 1]})")
    try:
        size = bin_path.stat().st_size
    except OSError as e:
        raise GeneMaskError(f"{bin_path}: cannot read corpus tokens ({e.strerror or e})") from None
    if size % 2:
        raise GeneMaskError(f"{bin_path}: {size} bytes, not a whole number of uint16 token ids (truncated?)")
    n = size // 2
    if n != idx[-1]:
        raise GeneMaskError(f"{bin_path}: {n} tokens but the offsets end at {idx[-1]} (truncated?)")
    if meta[f"{split}_pieces"] != idx.size - 1 or meta[f"{split}_tokens"] != n:
        raise GeneMaskError(f"{folder / 'meta.json'}: says {meta[f'{split}_pieces']} {split} pieces / "
                            f"{meta[f'{split}_tokens']} tokens, the files hold {idx.size - 1} / {n}")
    toks = np.memmap(bin_path, dtype=np.uint16, mode="r") if n else np.empty(0, np.uint16)
    h = hashlib.sha256()
    lo_ok, hi_ok, low_mask = N_SPECIAL, vocab_size(k) - 1, 4 ** (k - 1) - 1
    for s in range(0, n, VERIFY_BLOCK):
        e = min(s + VERIFY_BLOCK, n)
        block = np.asarray(toks[s:e])
        h.update(memoryview(block).cast("B"))
        if block.min() < lo_ok or block.max() > hi_ok:
            j = s + int(np.flatnonzero((block < lo_ok) | (block > hi_ok))[0])
            v = int(toks[j])
            what = SPECIAL_TOKENS[v] if v < N_SPECIAL else "beyond the vocabulary"
            raise GeneMaskError(f"{bin_path}: token {j} (piece {int(np.searchsorted(idx, j, 'right')) - 1}) is id "
                                f"{v} ({what}); a {k}-mer corpus holds only ids {lo_ok}..{hi_ok} "
                                f"(zero-filled, damaged or not a {k}-mer corpus)")
        # neighbours (j, j+1) with j in [s, e) inside one piece share k-1 bases
        a = np.asarray(toks[s : min(e + 1, n)]).astype(np.int64) - N_SPECIAL
        bad = (a[:-1] & low_mask) != (a[1:] >> 2)
        starts = idx[np.searchsorted(idx, s + 1) : np.searchsorted(idx, s + len(bad), "right")]
        bad[starts - s - 1] = False  # j+1 begins a new piece
        if bad.any():
            j = s + int(np.flatnonzero(bad)[0])
            raise GeneMaskError(f"{bin_path}: tokens {j} and {j + 1} (piece {int(np.searchsorted(idx, j, 'right')) - 1}) "
                                f"are not overlapping {k}-mers: not ids cut from a sequence (damaged or rewritten?)")
    return idx, toks, h.hexdigest()


class Corpus:
    """Memory-mapped view over one split of several corpus folders: piece i -> token ids.

    Every folder is verified when opened (`open_split`); `sha256` maps each `<split>.bin` read to its
    sha256 (the content half of pretraining's checkpoint fingerprint). `k`: the k-mer size the caller
    needs; every folder must be a corpus of it (default: whatever the first folder holds)."""

    def __init__(self, folders: list[str | Path], split: str, k: int | None = None):
        self.tokens, starts, ends, self.owner = [], [], [], []
        self.sha256: dict[str, str] = {}
        for j, f in enumerate(folders):
            f = Path(f)
            idx, toks, digest = open_split(f, split, k)
            k = read_meta(f)["k"] if k is None else k
            self.sha256[str(f / f"{split}.bin")] = digest
            self.tokens.append(toks)
            starts.append(idx[:-1])
            ends.append(idx[1:])
            self.owner.append(np.full(len(idx) - 1, j, dtype=np.int32))
        self.k = k
        self.starts = np.concatenate(starts) if starts else np.empty(0, np.int64)
        self.ends = np.concatenate(ends) if ends else np.empty(0, np.int64)
        self.owner = np.concatenate(self.owner) if self.owner else np.empty(0, np.int32)

    def __len__(self) -> int:
        return len(self.starts)

    def piece(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.owner[i]][self.starts[i] : self.ends[i]])

    def n_tokens(self) -> int:
        return int((self.ends - self.starts).sum())
