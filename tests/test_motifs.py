"""genemask motifs: JASPAR scoring of k-mers (checked against Biopython's own PSSM scores), an E-box
sanity check, and the enrichment test of the authors' top-50 NPMI 6-mers (Data-A)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("pyjaspar", reason="pyjaspar (the 'motifs' extra) is not installed")

from Bio.Seq import Seq  # noqa: E402

from genemask import motifs as M  # noqa: E402
from genemask.cli import main  # noqa: E402
from genemask.kmers import all_kmers, kmer_to_index  # noqa: E402
from genemask.util import GeneMaskError  # noqa: E402


@pytest.fixture(scope="module")
def jaspar():
    return M.load_jaspar()


@pytest.fixture(scope="module")
def scored(jaspar):
    ms = M.build_motif_set(jaspar, 6)
    return ms, M.score_all_kmers(ms, 6, M.DEFAULT_MIN_IC), M.score_all_kmers(ms, 6, 0.0)


def _pssm(motif):
    from Bio.motifs import jaspar

    return motif.counts.normalize(pseudocounts=jaspar.calculate_pseudocounts(motif)).log_odds()


def _brute_best(motif, kmer):
    """Best relative score of a 6-mer against a motif, both strands, all windows (no IC filter)."""
    pssm = _pssm(motif)
    L, k = motif.length, len(kmer)
    best = -np.inf
    for s in (kmer, str(Seq(kmer).reverse_complement())):
        if L >= k:
            for o in range(L - k + 1):
                cols = range(o, o + k)
                sc = sum(pssm[b][c] for b, c in zip(s, cols))
                lo = sum(min(pssm[x][c] for x in "ACGT") for c in cols)
                hi = sum(max(pssm[x][c] for x in "ACGT") for c in cols)
                best = max(best, (sc - lo) / (hi - lo))
        else:  # Biopython's own sliding score (float32) of the motif along the 6-mer (forward strand of s)
            sc = np.asarray(pssm.calculate(Seq(s)))
            best = max(best, float(((sc - pssm.min) / (pssm.max - pssm.min)).max()))
    return best


def test_jaspar_offline_release(jaspar):
    assert len(jaspar) > 500
    assert getattr(jaspar[0], "_gm_release", "").startswith("JASPAR")
    names = {m.name.upper() for m in jaspar}
    assert {"MAX", "MYC", "USF1", "CTCF"} <= names


def test_vectorised_scores_match_biopython(jaspar, scored):
    ms, _, rel_all = scored
    rng = np.random.default_rng(0)
    kmers = all_kmers(6)
    short = [i for i, m in enumerate(jaspar) if m.length < 6][:3]
    picks = short + list(rng.choice(len(jaspar), 6, replace=False))
    for mi in picks:
        for ki in list(rng.choice(4096, 5, replace=False)) + [int(kmer_to_index(["CACGTG"], 6)[0])]:
            assert rel_all[ki, mi] == pytest.approx(_brute_best(jaspar[mi], kmers[ki]), abs=1e-6), \
                (jaspar[mi].matrix_id, kmers[ki])


def test_ebox_hits_bhlh_motifs(jaspar, scored):
    ms, rel, _ = scored
    i = int(kmer_to_index(["CACGTG"], 6)[0])
    hit = {ms.names[j].upper() for j in np.flatnonzero(rel[i] >= M.DEFAULT_THRESHOLD)}
    assert {"MAX", "MYC", "USF1"} & hit, sorted(hit)[:20]
    # and a sequence unlike any E-box does not hit MAX
    j_max = [j for j, n in enumerate(ms.names) if n.upper() == "MAX"][0]
    assert rel[int(kmer_to_index(["AAAAAA"], 6)[0]), j_max] < M.DEFAULT_THRESHOLD


def test_data_a_top50_enrichment(data_a, jaspar):
    ranks, npmi = M.load_scores(data_a)
    table, s, details = M.motif_enrichment(ranks, npmi, 50, motifs=jaspar, n_perm=2000, seed=0)
    assert list(table.columns) == ["kmer", "rank", "npmi", "n_motif_hits", "best_motif", "best_score"]
    assert len(table) == 50 and list(table["rank"]) == list(range(1, 51))
    assert table["kmer"].iloc[0] == "CCTCCC"  # Data-A rank 1
    assert table["npmi"].is_monotonic_decreasing
    for p in ("p_fisher", "p_perm"):
        assert 0.0 < s[p] <= 1.0
    assert s["enrichment"] == pytest.approx(s["frac_top_with_hit"] / s["frac_all_with_hit"])
    assert s["top_with_hit"] == int((table["n_motif_hits"] > 0).sum())
    assert details["hits"].shape == (4096,)
    line = M.summary_line(s)
    assert "enrichment" in line and "p =" in line
    print(line)


def test_cli_and_errors(data_a, tmp_path, capsys):
    out, png = tmp_path / "motifs.tsv", tmp_path / "motifs.png"
    assert main(["motifs", "--ranking", str(data_a), "--top", "20", "--n-perm", "500", "-o", str(out),
                 "--plot", str(png)]) == 0
    assert "Fisher one-sided p =" in capsys.readouterr().out
    t = pd.read_csv(out, sep="\t")
    assert len(t) == 20 and t["best_score"].between(0, 1).all()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    bad = tmp_path / "bad.tsv"
    assert main(["motifs", "--ranking", str(data_a), "--top", "5000", "-o", str(bad)]) == 2
    assert "--top 5000" in capsys.readouterr().err and not bad.exists()
    with pytest.raises(GeneMaskError, match="release"):
        M.load_jaspar("JASPAR1999")
