"""NPMI scoring: reproduce the authors' Data-A table from its own recovered counts; variants; I/O."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from genemask import ngrams, npmi
from genemask.kmers import kmer_to_index
from genemask.util import GeneMaskError

Z_DATA_A = 1_338_256_542


@pytest.fixture(scope="module")
def data_a_df(data_a):
    return pd.read_csv(data_a)


@pytest.fixture(scope="module")
def data_a_counts(data_a_df):
    """6-mer counts inverted from Data-A's discount factor; lower orders as prefix sums."""
    d = data_a_df
    F = d["norm_dp_true_pmi"] / d["dp.true.pmi"]
    c = np.exp(np.log(101) * F / (1 - F))
    assert np.abs(c - np.round(c)).max() < 1e-5  # they really are integers
    c6 = np.zeros(4**6, dtype=np.uint64)
    c6[kmer_to_index(list(d["ngram"]), 6)] = np.round(c).astype(np.uint64)
    counts = {6: c6}
    for n in range(5, 0, -1):
        counts[n] = counts[n + 1].reshape(-1, 4).sum(axis=1, dtype=np.uint64)
    return dict(sorted(counts.items()))


def test_spec_discount_example():
    c = 2947
    F = math.log(c) / (math.log(c) + math.log(npmi.DISCOUNT))
    assert F == pytest.approx(0.6338270601, abs=1e-10)
    assert -2.133809 * F == pytest.approx(-1.352466, abs=1e-6)


def test_reproduces_data_a(data_a_df, data_a_counts):
    d = data_a_df
    counts = data_a_counts
    assert int(counts[1].sum() + counts[2].sum()) == Z_DATA_A
    assert counts[6][kmer_to_index(["TCGCGA"], 6)[0]] == 2947
    tab = npmi.npmi_table(counts, variant="paper", min_count=101)
    assert list(tab.columns) == npmi.COLUMNS
    t6 = tab[tab["order"] == 6].set_index("ngram")
    assert len(t6) == 4096  # every 6-mer has count >= 101
    t6 = t6.loc[d["ngram"]]
    np.testing.assert_array_equal(t6["count"].to_numpy(),
                                  counts[6][kmer_to_index(list(d["ngram"]), 6)].astype(np.int64))
    # the spec's measured errors are 0.0034 (dp_pmi) and 0.0021 (npmi): the residue of
    # approximating lower-order counts by prefix sums
    assert np.abs(t6["dp_pmi"].to_numpy() - d["dp.true.pmi"].to_numpy()).max() < 0.005
    assert np.abs(t6["npmi"].to_numpy() - d["norm_dp_true_pmi"].to_numpy()).max() < 0.005
    assert np.abs(t6["naive_pmi"].to_numpy() - d["naive.pmi"].to_numpy()).max() < 0.005
    rho = spearmanr(t6["rank"].to_numpy(), d["norm_pmi_rank_rel"].to_numpy()).statistic
    assert rho >= 0.99999
    assert np.abs(t6["rank"].to_numpy() - d["norm_pmi_rank_rel"].to_numpy()).max() <= 10
    assert list(tab[tab["order"] == 6]["ngram"][:4]) == ["CCTCCC", "GGGAGG", "GTGTGT", "CCCAGC"]
    last = t6.loc["TCGCGA"]
    assert last["rank"] == 4096
    assert last["dp_pmi"] == pytest.approx(-2.133809, abs=0.005)
    assert last["npmi"] == pytest.approx(last["dp_pmi"] * 0.6338270601, abs=1e-9)


def test_load_ranking_reads_our_table(tmp_path, data_a_counts, data_a):
    p = tmp_path / "c.npz"
    ngrams.save_counts(data_a_counts, p)
    npmi.npmi_file(p, tmp_path / "t.tsv")
    ours = npmi.load_ranking(tmp_path / "t.tsv", k=6)
    theirs = npmi.load_ranking(data_a, k=6)
    assert sorted(ours) == list(range(1, 4097))
    assert spearmanr(ours, theirs).statistic >= 0.99999


def _segmentations(n, max_piece):
    """All compositions of n into >= 2 parts of size <= max_piece."""
    for cuts in itertools.product([0, 1], repeat=n - 1):
        if not any(cuts):
            continue
        pieces, last = [], 0
        for i, cut in enumerate(cuts, start=1):
            if cut:
                pieces.append((last, i))
                last = i
        pieces.append((last, n))
        if all(b - a <= max_piece for a, b in pieces):
            yield pieces


@pytest.mark.parametrize("variant", ["paper", "levine"])
def test_dp_equals_exhaustive_min(variant):
    rng = np.random.default_rng(3)
    seq = "".join(rng.choice(list("AACCGGTTTA"), size=30_000))
    counts = ngrams.count_sequence(seq.encode(), 6)
    tab = npmi.npmi_table(counts, variant=variant, min_count=5)
    Z = float(counts[1].sum() + counts[2].sum())
    tot = {n: float(counts[n].sum()) for n in counts}

    def c(w):
        return float(counts[len(w)][kmer_to_index([w], len(w))[0]])

    def lp(w, n=None):
        return math.log(c(w) / Z) if variant == "paper" else math.log(c(w) / tot[len(w)])

    sample = tab.groupby("order").head(40)
    for row in sample.itertuples():
        w, n = row.ngram, row.order
        assert row.count == c(w)
        segs = list(_segmentations(n, 2 if variant == "paper" else n - 1))
        want = min(lp(w) - sum(lp(w[a:b]) for a, b in s) for s in segs)
        assert row.dp_pmi == pytest.approx(want, abs=1e-9)
        assert row.naive_pmi == pytest.approx(lp(w) - sum(lp(ch) for ch in w), abs=1e-9)
        if variant == "paper":
            assert row.npmi == pytest.approx(want * math.log(c(w)) / (math.log(c(w)) + math.log(101)), abs=1e-9)
        else:
            assert row.npmi == row.dp_pmi
    assert (tab["count"] >= 5).all()
    assert set(tab["order"]) == {2, 3, 4, 5, 6}  # order 1 has no segmentation: omitted


def test_min_count_omits_rare_and_ranks_within_order():
    counts = ngrams.count_sequence(b"ACGTTGCAAC" * 30 + b"GGGGG", 4)
    tab = npmi.npmi_table(counts, min_count=20)
    for n, g in tab.groupby("order"):
        want = int((counts[n] >= 20).sum())
        assert len(g) == want
        assert list(g["rank"]) == list(range(1, want + 1))
    assert "GGGG" not in set(tab["ngram"])
    with pytest.raises(GeneMaskError, match="min_count"):
        npmi.npmi_table(counts, min_count=0)
    with pytest.raises(GeneMaskError, match="variant"):
        npmi.npmi_table(counts, variant="nope")


def test_npmi_file_errors(tmp_path):
    with pytest.raises(GeneMaskError, match="missing.npz"):
        npmi.npmi_file(tmp_path / "missing.npz", tmp_path / "o.tsv")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(GeneMaskError, match="bad.npz"):
        npmi.npmi_file(bad, tmp_path / "o.tsv")
    one = tmp_path / "one.npz"
    ngrams.save_counts(ngrams.count_sequence(b"ACGT", 1), one)
    with pytest.raises(GeneMaskError, match="one.npz.*orders 1 and 2"):
        npmi.npmi_file(one, tmp_path / "o.tsv")
    assert not (tmp_path / "o.tsv").exists()
