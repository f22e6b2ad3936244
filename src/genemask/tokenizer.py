"""DNABERT-compatible k-mer tokenizer (spec section 3) and fast batch encoding of raw bp.

`build_tokenizer(k)` returns a Hugging Face fast tokenizer (`tokenizers` WordLevel model, whitespace
pre-tokenizer, `[CLS] ... [SEP]` template) whose vocabulary is DNABERT's: `[PAD] [UNK] [CLS] [SEP]
[MASK]` (ids 0-4), then all 4**k k-mers in base-4 order with digits A, T, C, G (AAAAAA=5, AAAAAT=6,
...). It reads space-separated k-mer text; `encode_sequences` additionally reads raw bp and is the
fast path the pipeline uses (vectorised with `kmers.seq_to_ids`, no per-token Python). `kmerize`
turns raw bases into the k-mer text that `AutoTokenizer` reads, for users of the Auto classes.

The k is stored in the tokenizer's init kwargs (`genemask_kmer`, written to tokenizer_config.json by
`save_pretrained`), so `tokenizer_k(AutoTokenizer.from_pretrained(folder))` knows it.
`save_tokenizer` also writes a DNABERT-style `vocab.txt` so that `BertTokenizer` users can load the
folder too.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from . import kmers
from .defaults import default as _schema_default
from .training import padded_rows
from .util import GeneMaskError

MODEL_MAX_LENGTH = 512
KMER_KEY = "genemask_kmer"


def build_tokenizer(k: int = _schema_default("corpus.k")):
    """A `PreTrainedTokenizerFast` for k-mer text with DNABERT's vocabulary order (k in 3..6)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if k not in kmers.SUPPORTED_K:
        raise GeneMaskError(f"k={k}: supported k-mer sizes are {', '.join(map(str, kmers.SUPPORTED_K))}")
    vocab = {tok: i for i, tok in enumerate(kmers.SPECIAL_TOKENS + kmers.all_kmers(k))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", kmers.CLS), ("[SEP]", kmers.SEP)],
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
        model_max_length=MODEL_MAX_LENGTH,
        do_lower_case=False,  # read by BertTokenizer when a user loads vocab.txt from the folder
        **{KMER_KEY: k},
    )
    assert len(tok) == kmers.vocab_size(k)
    return tok


def tokenizer_k(tokenizer) -> int:
    """The k of a tokenizer built here (also after save_pretrained/AutoTokenizer round trip)."""
    k = getattr(tokenizer, "init_kwargs", {}).get(KMER_KEY)
    if k is not None:
        return int(k)
    n = len(tokenizer) - kmers.N_SPECIAL  # fall back on the vocabulary size
    for kk in kmers.SUPPORTED_K:
        if 4**kk == n:
            return kk
    raise GeneMaskError(f"tokenizer with {len(tokenizer)} entries is not a k-mer tokenizer (no '{KMER_KEY}')")


def save_tokenizer(tokenizer, folder: str | os.PathLike) -> None:
    """`save_pretrained` into `folder` plus a DNABERT-style `vocab.txt` (one token a line, id order)."""
    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    vocab = tokenizer.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")


def kmerize(seq: str | bytes, k: int = 6) -> str:
    """Raw bases -> the space-separated overlapping k-mers the tokenizer reads ("ACGTAC" with k=3 ->
    "ACG CGT GTA TAC"); upper-cased; a sequence shorter than k gives "". Vectorised (no loop per base)."""
    if k < 1:
        raise GeneMaskError(f"k={k}: must be >= 1")
    raw = (seq.encode("ascii", "replace") if isinstance(seq, str) else bytes(seq)).strip().upper()
    if len(raw) < k:
        return ""
    win = np.lib.stride_tricks.sliding_window_view(np.frombuffer(raw, np.uint8), k)
    out = np.full((win.shape[0], k + 1), ord(" "), np.uint8)
    out[:, :k] = win
    return out.tobytes()[:-1].decode("ascii")


def encode_sequences(tokenizer_or_k, seqs: list[str], max_length: int = MODEL_MAX_LENGTH,
                     padding: str = "longest") -> dict[str, torch.Tensor]:
    """Raw bp (or space-separated k-mer text, detected by a space) -> padded `[CLS] ids [SEP] [PAD]...`.

    Returns {"input_ids", "attention_mask"} LongTensors [B, T]. k-mers with a non-ACGT letter become
    [UNK]; rows are truncated to `max_length` tokens including [CLS]/[SEP]; padding is to the longest
    row (`padding="longest"`) or to `max_length` (`padding="max_length"`).
    """
    k = tokenizer_or_k if isinstance(tokenizer_or_k, (int, np.integer)) else tokenizer_k(tokenizer_or_k)
    if k not in kmers.SUPPORTED_K:
        raise GeneMaskError(f"k={k}: supported k-mer sizes are {', '.join(map(str, kmers.SUPPORTED_K))}")
    if max_length < 2:
        raise GeneMaskError(f"max_length={max_length}: must leave room for [CLS] and [SEP]")
    if padding not in ("longest", "max_length"):
        raise GeneMaskError(f"padding={padding!r}: expected 'longest' or 'max_length'")
    if isinstance(seqs, (str, bytes)):
        seqs = [seqs]
    room = max_length - 2
    rows = []
    for i, s in enumerate(seqs):
        if isinstance(s, bytes):
            s = s.decode("ascii", "replace")
        s = s.strip()
        if " " in s or "\t" in s:
            toks = s.split()
            bad = [t for t in toks if len(t) != k]
            if bad:
                raise GeneMaskError(f"sequence {i}: token {bad[0]!r} is not a {k}-mer")
            idx = kmers.kmer_to_index(toks[:room], k)
            ids = np.where(idx < 0, kmers.UNK, idx + kmers.N_SPECIAL)
        else:
            ids = kmers.seq_to_ids(s[: room + k - 1], k)
        rows.append(ids)
    ids, _ = padded_rows(rows, max_length, max_length if padding == "max_length" else None)
    return {"input_ids": ids, "attention_mask": (ids != kmers.PAD).long()}
