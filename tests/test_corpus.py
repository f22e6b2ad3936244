"""Pretraining corpus: ACGT-only pieces, lengths, dedup, split, determinism, on the real hg38 slice."""
import numpy as np
import pytest

from genemask.corpus import Corpus, build_corpus, cut_pieces
from genemask.genome import read_sequences
from genemask.kmers import all_kmers
from genemask.util import GeneMaskError

REGION = "chr2:1-400000"  # starts with 10 kb of N, then soft-masked sequence


@pytest.fixture(scope="module")
def corpus_dir(hg38_slice, tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "chunk"
    build_corpus(hg38_slice, out, region=REGION, seed=42)
    return out


def _decode(ids):
    kmers = all_kmers(6)
    toks = [kmers[i - 5] for i in ids]
    return toks[0] + "".join(t[-1] for t in toks[1:])


def test_pieces_are_real_acgt_substrings(hg38_slice, corpus_dir):
    seq = next(read_sequences(hg38_slice, REGION))[1].decode().upper()
    train = Corpus([corpus_dir], "train")
    assert len(train) > 500
    toks = np.fromfile(corpus_dir / "train.bin", dtype=np.uint16)
    assert toks.min() >= 5  # no [UNK]: no piece spans an N
    rng = np.random.default_rng(0)
    for i in rng.choice(len(train), 20, replace=False):
        piece = _decode(train.piece(int(i)))
        assert 6 <= len(piece) <= 511 and piece in seq


def test_length_distribution_dedup_and_split(corpus_dir):
    tr, va = Corpus([corpus_dir], "train"), Corpus([corpus_dir], "valid")
    lens = np.concatenate([tr.ends - tr.starts, va.ends - va.starts])
    assert lens.min() >= 1 and lens.max() == 506
    assert 0.42 < (lens == 506).mean() < 0.56  # half the pieces full length
    assert 0.07 < len(va) / (len(tr) + len(va)) < 0.13
    pieces = {tr.piece(i).tobytes() for i in range(len(tr))} | {va.piece(i).tobytes() for i in range(len(va))}
    assert len(pieces) == len(tr) + len(va)  # exact duplicates dropped


def test_deterministic(hg38_slice, corpus_dir, tmp_path):
    again = tmp_path / "again"
    build_corpus(hg38_slice, again, region=REGION, seed=42)
    for f in ("train.bin", "valid.bin"):
        assert (again / f).read_bytes() == (corpus_dir / f).read_bytes()
    other = tmp_path / "other"
    build_corpus(hg38_slice, other, region=REGION, seed=7)
    assert (other / "train.bin").read_bytes() != (corpus_dir / "train.bin").read_bytes()


def test_cut_pieces_never_cross_gaps():
    seq = b"ACGT" * 300 + b"N" * 5 + b"ac" * 400 + b"R" + b"GGT" * 3
    rng = np.random.default_rng(1)
    for s, e in cut_pieces(seq, rng, max_offset=0):
        assert all(c in b"ACGTacgt" for c in seq[s:e]) and e - s >= 6


def test_truncated_corpus_is_an_error(corpus_dir, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in corpus_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    data = (bad / "train.bin").read_bytes()
    (bad / "train.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(GeneMaskError, match="truncated"):
        Corpus([bad], "train")
