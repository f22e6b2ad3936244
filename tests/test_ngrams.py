"""n-gram counting: brute force, chunked == whole on real hg38, edge cases, files, CLI."""
from __future__ import annotations

import gzip
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ENV
from genemask import ngrams
from genemask.kmers import kmer_to_index
from genemask.util import GeneMaskError


def brute(seq: str, max_order: int, start: int = 0, end: int | None = None) -> dict[int, np.ndarray]:
    """Plain-Python reference: dict count of every ACGT-only window starting in [start, end)."""
    s = seq.upper()
    end = len(s) if end is None else end
    out = {}
    for n in range(1, max_order + 1):
        d: dict[str, int] = {}
        for i in range(start, min(end, len(s) - n + 1)):
            w = s[i : i + n]
            if all(ch in "ACGT" for ch in w):
                d[w] = d.get(w, 0) + 1
        a = np.zeros(4**n, dtype=np.uint64)
        if d:
            a[kmer_to_index(list(d), n)] = list(d.values())
        out[n] = a
    return out


def assert_counts_equal(a, b):
    assert sorted(a) == sorted(b)
    for n in a:
        assert a[n].dtype == np.uint64
        np.testing.assert_array_equal(a[n], b[n], err_msg=f"order {n}")


# ---- (b) brute force ------------------------------------------------------------------------

DNA = st.text(alphabet="ACGTACGTacgtNNnRYKMSWBDHV-.", max_size=80)


@settings(max_examples=300, deadline=None)
@given(seq=DNA, max_order=st.integers(1, 7), data=st.data())
def test_count_sequence_matches_brute_force(seq, max_order, data):
    start = data.draw(st.integers(0, len(seq) + 2))
    end = data.draw(st.integers(start, len(seq) + 3))
    assert_counts_equal(ngrams.count_sequence(seq.encode(), max_order, start, end),
                        brute(seq, max_order, start, end))


def test_known_small_example():
    c = ngrams.count_sequence(b"acgtNACGTTAC", 3)
    assert int(c[1].sum()) == 11
    assert int(c[2].sum()) == 3 + 6  # acgt: 3, ACGTTAC: 6
    assert int(c[3].sum()) == 2 + 5
    assert c[2][kmer_to_index(["AC"], 2)[0]] == 3  # ac, AC, AC
    assert c[3][kmer_to_index(["CGT"], 3)[0]] == 2  # the N breaks 'GTN'/'TNA'


def test_lower_orders_are_not_prefix_sums_near_breaks():
    # a 3-mer right before an N has no 10-mer containing it: it must still be counted
    c = ngrams.count_sequence(b"ACGNACGTACGTACGTAC", 10)
    assert c[3][kmer_to_index(["ACG"], 3)[0]] == 1 + 3
    assert c[10].sum() == 14 - 10 + 1


# ---- (d) edge cases -------------------------------------------------------------------------

@pytest.mark.parametrize("seq", [b"", b"N", b"NNNNNNNNNNNNNNNNNNNN", b"RYKM-nnnn"])
def test_empty_and_all_n(seq):
    c = ngrams.count_sequence(seq, 10)
    assert sorted(c) == list(range(1, 11))
    assert all(a.shape == (4**n,) and a.dtype == np.uint64 and a.sum() == 0 for n, a in c.items())


def test_shorter_than_order():
    c = ngrams.count_sequence(b"ACGTA", 10)
    assert [int(c[n].sum()) for n in range(1, 11)] == [5, 4, 3, 2, 1, 0, 0, 0, 0, 0]
    assert c[5][kmer_to_index(["ACGTA"], 5)[0]] == 1


def test_max_order_one():
    c = ngrams.count_sequence(b"AAxCCgGt", 1)
    assert list(c) == [1]
    np.testing.assert_array_equal(c[1], [2, 1, 2, 2])  # A T C G


@pytest.mark.parametrize("bad", [0, -1, 13, 2.5])
def test_bad_max_order(bad):
    with pytest.raises(GeneMaskError, match="max_order"):
        ngrams.count_sequence(b"ACGT", bad)


# ---- (c) chunked == whole -------------------------------------------------------------------

def add(parts):
    """Sum of count dicts (the test's own adder, for brute-force references)."""
    return {n: sum(p[n] for p in parts).astype(np.uint64) for n in parts[0]}


def chunked(fasta, contig, bounds, folder, max_order=10):
    """Count each nominal window [bounds[i], bounds[i+1]) as its own region, save each, and add the
    files up with `merge_files` (what `genemask merge` does)."""
    files = []
    for i, (s, e) in enumerate(zip(bounds[:-1], bounds[1:])):
        files.append(folder / f"part{i}.npz")
        ngrams.save_counts(ngrams.count_fasta(fasta, f"{contig}:{s + 1}-{e}", max_order), files[-1])
    ngrams.merge_files(files, folder / "merged.npz")
    return ngrams.load_counts(folder / "merged.npz")


def test_chunked_equals_whole_on_hg38_slice(hg38_slice, tmp_path):
    whole = ngrams.count_fasta(hg38_slice, max_order=10)
    length = 2_333_275
    assert int(whole[1].sum()) == length - 10_000  # the first 10 kb are N, soft-masked bases count
    assert_counts_equal(ngrams.count_fasta(hg38_slice, "chr2", 10), whole)
    for size in (77_777, 1_000_000):
        bounds = list(range(0, length, size)) + [length]
        assert_counts_equal(chunked(hg38_slice, "chr2", bounds, tmp_path), whole)
    # chunks of 4,999 bp over the first 100 kb: the first two end inside the leading N run
    bounds = list(range(0, 100_000, 4_999)) + [100_000, 1_500_000, length]
    assert_counts_equal(chunked(hg38_slice, "chr2", bounds, tmp_path), whole)
    # irregular cuts: inside the N run, at the run's last bases, 1-9 bp chunks, the contig's last bases
    bounds = [0, 1, 9_995, 10_000, 10_001, 10_003, 10_012, 500_000, 500_009, length - 8, length - 3, length]
    assert_counts_equal(chunked(hg38_slice, "chr2", bounds, tmp_path), whole)


def test_chunked_equals_whole_with_internal_gaps(tmp_path):
    import pysam

    rng = np.random.default_rng(7)
    seq = rng.choice(list("ACGTacgt"), size=20_000)
    for a, b in [(0, 5), (3_000, 3_050), (7_777, 7_778), (12_000, 12_003), (19_990, 20_000)]:
        seq[a:b] = "N"
    seq[[100, 4_000, 15_000]] = ["R", "Y", "-"]
    seq = "".join(seq)
    fa = tmp_path / "g.fa"
    fa.write_text(">g\n" + "\n".join(seq[i : i + 60] for i in range(0, len(seq), 60)) + "\n")
    pysam.faidx(str(fa))
    whole = ngrams.count_fasta(fa, max_order=10)
    assert_counts_equal(whole, brute(seq, 10))
    for bounds in ([0, 2_995, 3_010, 3_049, 7_777, 12_001, 19_995, 20_000],
                   list(range(0, 20_000, 1_001)) + [20_000]):
        assert_counts_equal(chunked(fa, "g", bounds, tmp_path), whole)
    for block in (1, 7, 999):  # a region is read in blocks by the same ownership rule
        assert_counts_equal(ngrams.count_fasta(fa, "g:1-20000", 10, block=block), whole)
    assert_counts_equal(ngrams.count_fasta(fa, "g:19001-25000", 10, block=700), brute(seq[19_000:], 10))
    assert_counts_equal(ngrams.count_fasta(fa, "g:20001-25000", 10), ngrams.empty_counts(10))


# ---- (e) files ------------------------------------------------------------------------------

def test_roundtrip_and_merge_is_addition(tmp_path):
    a = ngrams.count_sequence(b"ACGTNACGTTTGCA" * 50, 6)
    b = ngrams.count_sequence(b"GGGCCCATAT" * 30, 6)
    ngrams.save_counts(a, tmp_path / "a.npz")
    ngrams.save_counts(b, tmp_path / "b")  # no suffix: written exactly there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b"]
    assert_counts_equal(ngrams.load_counts(tmp_path / "a.npz"), a)
    ngrams.merge_files([tmp_path / "a.npz", tmp_path / "b"], tmp_path / "ab.npz")
    ab = ngrams.load_counts(tmp_path / "ab.npz")
    assert_counts_equal(ab, {n: a[n] + b[n] for n in a})
    big = {n: x * np.uint64(2**40) for n, x in a.items()}  # no overflow or float rounding
    ngrams.save_counts(big, tmp_path / "big.npz")
    ngrams.merge_files([tmp_path / "big.npz"] * 3, tmp_path / "big3.npz")
    assert_counts_equal(ngrams.load_counts(tmp_path / "big3.npz"), {n: x * np.uint64(3) for n, x in big.items()})


def test_merge_rejects_different_orders(tmp_path):
    ngrams.save_counts(ngrams.count_sequence(b"ACGT", 3), tmp_path / "a.npz")
    ngrams.save_counts(ngrams.count_sequence(b"ACGT", 4), tmp_path / "b.npz")
    with pytest.raises(GeneMaskError, match="b.npz"):
        ngrams.merge_files([tmp_path / "a.npz", tmp_path / "b.npz"], tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_bad_counts_files(tmp_path):
    good = tmp_path / "good.npz"
    ngrams.save_counts(ngrams.count_sequence(b"ACGTACGT", 4), good)
    raw = good.read_bytes()
    cases = {
        "missing.npz": None,
        "empty.npz": b"",
        "text.npz": b"ngram\torder\n",
        "truncated.npz": raw[: len(raw) // 2],
    }
    for name, content in cases.items():
        p = tmp_path / name
        if content is not None:
            p.write_bytes(content)
        with pytest.raises(GeneMaskError, match=name):
            ngrams.load_counts(p)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(GeneMaskError, match="other.npz"):
        ngrams.load_counts(other)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, genemask_ngram_counts=1, max_order=2, order1=np.zeros(4, np.uint64),
             order2=np.zeros(15, np.uint64))
    with pytest.raises(GeneMaskError, match="wrong.npz.*shape"):
        ngrams.load_counts(wrong)


def test_fasta_errors(tmp_path, hg38_slice):
    with pytest.raises(GeneMaskError, match="nope.fa"):
        ngrams.count_fasta(tmp_path / "nope.fa")
    with pytest.raises(GeneMaskError, match="chrZ"):
        ngrams.count_fasta(hg38_slice, "chrZ:1-100")


def test_gzip_multi_record(tmp_path):
    fa = tmp_path / "m.fa.gz"
    with gzip.open(fa, "wt") as fh:
        fh.write(">a\nACGTAC\nGT\n>b\nTTTT\n>c\n\n")
    assert_counts_equal(ngrams.count_fasta(fa, max_order=4),
                        add([brute("ACGTACGT", 4), brute("TTTT", 4)]))


# ---- (f) CLI --------------------------------------------------------------------------------

@pytest.mark.subprocess
def test_cli_ngrams_merge_npmi(tmp_path, hg38_slice):

    def gm(*args):
        r = subprocess.run([sys.executable, "-m", "genemask.cli", *map(str, args)], env=ENV,
                           capture_output=True, text=True, timeout=120)
        return r

    regions = ["chr2:200001-260000", "chr2:260001-300000"]
    for i, reg in enumerate(regions):
        r = gm("ngrams", hg38_slice, "--region", reg, "--max-order", 6, "-o", tmp_path / f"c{i}.npz")
        assert r.returncode == 0, r.stderr
    assert gm("merge", tmp_path / "c0.npz", tmp_path / "c1.npz", "-o", tmp_path / "all.npz").returncode == 0
    r = gm("npmi", tmp_path / "all.npz", "-o", tmp_path / "npmi.tsv")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "npmi.tsv").read_text().splitlines()[0] == "ngram\torder\tcount\tnaive_pmi\tdp_pmi\tnpmi\trank"
    tab = pd.read_csv(tmp_path / "npmi.tsv", sep="\t")
    seq = ngrams.count_fasta(hg38_slice, "chr2:200001-300000", 6)
    assert_counts_equal(ngrams.load_counts(tmp_path / "all.npz"), seq)
    assert sorted(tab["order"].unique()) == [2, 3, 4, 5, 6]
    assert (tab["count"] >= 101).all() and len(tab[tab.order == 2]) == 16
    # one value by hand: dp_pmi of a 2-gram is ln p(ab) - ln p(a) - ln p(b), p = c / Z
    Z = float(seq[1].sum() + seq[2].sum())
    row = tab[tab.ngram == "CG"].iloc[0]
    a, b, ab = seq[1][2], seq[1][3], seq[2][kmer_to_index(["CG"], 2)[0]]
    assert row["count"] == ab
    expect = np.log(ab / Z) - np.log(a / Z) - np.log(b / Z)
    assert row["dp_pmi"] == pytest.approx(expect, abs=1e-9)
    assert row["npmi"] == pytest.approx(expect * np.log(ab) / (np.log(ab) + np.log(101)), abs=1e-9)
    assert row["rank"] == 16  # CpG depletion: the least word-like 2-gram
    for _n, g in tab.groupby("order"):
        assert sorted(g["rank"]) == list(range(1, len(g) + 1))
        assert g.sort_values("rank")["npmi"].is_monotonic_decreasing
    # bad input -> exit 2 and one line naming the file
    (tmp_path / "junk.npz").write_text("junk")
    r = gm("npmi", tmp_path / "junk.npz", "-o", tmp_path / "x.tsv")
    assert r.returncode == 2 and "junk.npz" in r.stderr and not (tmp_path / "x.tsv").exists()


@pytest.mark.parametrize("limit", [50, 150])
def test_uint32_scratch_folds_before_overflow(monkeypatch, limit):
    """The uint32 hot-loop table is folded into uint64 before 2**32 starts; shrink the limit to test it."""
    rng = np.random.default_rng(11)
    seqs = ["".join(rng.choice(list("ACGTNa"), size=int(rng.integers(0, 200)))) for _ in range(40)]
    ref = add([brute(s, 5) for s in seqs])
    monkeypatch.setattr(ngrams.NgramCounter, "_LIMIT", limit)
    c = ngrams.NgramCounter(5)
    for s in seqs:
        c.add(s)
    assert_counts_equal(c.counts(), ref)
