"""genemask motifs: Tomtom (memelite) p/q-values of k-mers against the real JASPAR release (known cores
match their motif, shuffles do not), the relative-score rule (checked against Biopython's own PSSM
scores), and both methods on the authors' top-50 NPMI 6-mers (Data-A)."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import yaml

pytest.importorskip("pyjaspar", reason="pyjaspar (the 'motifs' extra) is not installed")
pytest.importorskip("memelite", reason="memelite (Tomtom) is not installed")

from Bio.Seq import Seq  # noqa: E402

from genemask import motifs as M  # noqa: E402
from genemask.cli import main  # noqa: E402
from genemask.kmers import all_kmers, kmer_to_index  # noqa: E402
from genemask.util import GeneMaskError  # noqa: E402


@pytest.fixture(scope="module")
def jaspar():
    return M.load_jaspar()


@pytest.fixture(scope="module")
def tomtom_pq(jaspar):
    return M.tomtom_all_kmers(jaspar, 6)


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


def test_tomtom_queries_are_the_kmers(jaspar, tomtom_pq):
    """tomtom_all_kmers' vectorised one-hot queries equal memelite run on one-hot matrices built
    from the k-mer strings (base order A, C, G, T), and the q-values are each row's BH adjustment."""
    from memelite import tomtom

    p, q = tomtom_pq
    assert p.shape == q.shape == (4096, len(jaspar))
    picks = ["CACGTG", "TATAAA", "GATTCA", "CCGGTA"]
    onehot = [np.eye(4)[:, ["ACGT".index(b) for b in s]] for s in picks]
    direct = tomtom(onehot, [M.jaspar_probabilities(m) for m in jaspar], n_jobs=1)[0]
    np.testing.assert_array_equal(p[kmer_to_index(picks, 6)], direct)
    row = p[kmer_to_index(["CACGTG"], 6)[0]]
    o = np.argsort(row)
    bh = np.minimum.accumulate((row[o] * row.size / np.arange(1, row.size + 1))[::-1])[::-1]
    np.testing.assert_allclose(q[kmer_to_index(["CACGTG"], 6)[0]][o], np.minimum(bh, 1.0), rtol=1e-12)
    assert (q >= p - 1e-15).all() and (q <= 1).all()


def _motif(jaspar, name):
    return [j for j, m in enumerate(jaspar) if m.name.upper() == name][0]


def test_tomtom_known_cores_match(jaspar, tomtom_pq):
    p, q = tomtom_pq
    kmers = all_kmers(6)
    # TATA box: TBP is TATAAA's best match of all 1,019 motifs, and TATAAA (with its reverse
    # complement TTTATA) is the 6-mer TBP matches best
    tbp, i = _motif(jaspar, "TBP"), int(kmer_to_index(["TATAAA"], 6)[0])
    assert p[i].argmin() == tbp and p[i, tbp] < 1e-3
    assert {kmers[j] for j in np.flatnonzero(p[:, tbp] == p[:, tbp].min())} <= {"TATAAA", "TTTATA"}
    # E-box: CACGTG matches MAX at q <= 0.05, and the bHLH-zip family is among its matches
    mx, i = _motif(jaspar, "MAX"), int(kmer_to_index(["CACGTG"], 6)[0])
    assert p[i, mx] < 1e-5 and q[i, mx] <= M.DEFAULT_Q
    matched = {jaspar[j].name.upper() for j in np.flatnonzero(q[i] <= M.DEFAULT_Q)}
    assert {"MAX", "USF1", "USF2", "MYC"} <= matched, sorted(matched)


def test_tomtom_shuffled_cores_do_not_match(jaspar, tomtom_pq):
    """Every other arrangement of the core's letters (same composition) scores far worse."""
    p, q = tomtom_pq
    for core, name, factor in (("CACGTG", "MAX", 100), ("TATAAA", "TBP", 5)):
        j = _motif(jaspar, name)
        shuffles = sorted({"".join(x) for x in itertools.permutations(core)} - {core, str(Seq(core).reverse_complement())})
        idx = kmer_to_index(shuffles, 6)
        p_core = p[int(kmer_to_index([core], 6)[0]), j]
        assert (p[idx, j] > factor * p_core).all(), (core, shuffles[int(p[idx, j].argmin())])
        # and none that shares no 5-mer with the core (either strand) matches it at q <= 0.05; the
        # others are shifted cores (ACGTGC holds 5 of CACGTG's 6 bases) and may
        core5 = {c[o : o + 5] for c in (core, str(Seq(core).reverse_complement())) for o in (0, 1)}
        far = [x for x in shuffles if not core5 & {x[0:5], x[1:6]}]
        assert len(far) > 5 and (q[kmer_to_index(far, 6), j] > M.DEFAULT_Q).all()


def test_data_a_top50_tomtom_vs_rule(data_a, jaspar):
    """The comparison the module docstring reports (JASPAR 2026, top 50 of Data-A)."""
    ranks, npmi = M.load_scores(data_a)
    table, s, details = M.motif_enrichment(ranks, npmi, 50, motifs=jaspar, method="both", n_perm=2000, seed=0)
    assert list(table.columns) == ["kmer", "rank", "npmi", "tomtom_matches", "tomtom_motif", "tomtom_p", "tomtom_q",
                                   "tomtom_matched", "rule_hits", "rule_motif", "rule_score"]
    assert len(table) == 50 and list(table["rank"]) == list(range(1, 51))
    assert table["kmer"].iloc[0] == "CCTCCC"  # Data-A rank 1
    assert table["npmi"].is_monotonic_decreasing
    assert s["release"] == "JASPAR2026" and s["n_motifs"] == 1019
    t, r = s["tomtom"], s["rule"]
    assert t["top_with_hit"] == int((table["tomtom_matches"] > 0).sum()) == 11
    assert r["top_with_hit"] == int((table["rule_hits"] > 0).sum()) == 22
    assert round(t["frac_all_with_hit"] * 4096) == 438 and round(r["frac_all_with_hit"] * 4096) == 1789
    assert s["overlap"] == {**s["overlap"], "both": 7, "tomtom_only": 4, "rule_only": 15, "neither": 24}
    assert t["p_fisher"] < 0.05 < r["p_fisher"]
    for m in (t, r):
        for key in ("p_fisher", "p_perm"):
            assert 0.0 < m[key] <= 1.0
        assert m["enrichment"] == pytest.approx(m["frac_top_with_hit"] / m["frac_all_with_hit"])
    # a matched k-mer lists its matches best first, the best one is tomtom_motif, all at q <= 0.05
    matched = table[table["tomtom_matches"] > 0]
    assert (matched["tomtom_q"] <= M.DEFAULT_Q).all() and (table.loc[table["tomtom_matches"] == 0, "tomtom_q"] > M.DEFAULT_Q).all()
    assert all(row.tomtom_matched.split(";")[0] == row.tomtom_motif and len(row.tomtom_matched.split(";")) ==
               row.tomtom_matches for row in matched.itertuples())
    assert table.set_index("kmer").loc["AAAAAA", "tomtom_motif"].endswith("ZNF384")
    assert details["hits"]["tomtom"].shape == details["hits"]["rule"].shape == (4096,)
    # the rule's numbers do not depend on whether Tomtom ran too
    _, s_rule, _ = M.motif_enrichment(ranks, npmi, 50, motifs=jaspar, method="rule", n_perm=2000, seed=0)
    assert s_rule["rule"] == r and "tomtom" not in s_rule
    line = M.summary_line(s)
    assert line.count("\n") == 2 and "7 matched by both" in line
    print(line)


def test_cli_and_errors(data_a, tmp_path, capsys):
    out, png = tmp_path / "motifs.tsv", tmp_path / "motifs.png"
    assert main(["motifs", "--ranking", str(data_a), "--top", "20", "--n-perm", "500", "-o", str(out),
                 "--plot", str(png)]) == 0
    assert "motifs (tomtom)" in capsys.readouterr().out  # Tomtom is the default
    t = pd.read_csv(out, sep="\t")
    assert len(t) == 20 and list(t.columns)[3:] == ["tomtom_matches", "tomtom_motif", "tomtom_p", "tomtom_q",
                                                    "tomtom_matched"]
    assert t["tomtom_p"].between(0, 1).all() and (t["tomtom_q"] >= t["tomtom_p"]).all()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    rule = tmp_path / "rule.tsv"
    assert main(["motifs", "--ranking", str(data_a), "--top", "20", "--n-perm", "500", "--method", "rule",
                 "-o", str(rule)]) == 0
    assert "Fisher one-sided p =" in capsys.readouterr().out
    t = pd.read_csv(rule, sep="\t")
    assert list(t.columns)[3:] == ["rule_hits", "rule_motif", "rule_score"] and t["rule_score"].between(0, 1).all()
    bad = tmp_path / "bad.tsv"
    assert main(["motifs", "--ranking", str(data_a), "--top", "5000", "-o", str(bad)]) == 2
    assert "--top 5000" in capsys.readouterr().err and not bad.exists()
    assert main(["motifs", "--ranking", str(data_a), "--q-threshold", "0", "-o", str(bad)]) == 2
    assert "--q-threshold 0" in capsys.readouterr().err and not bad.exists()
    with pytest.raises(GeneMaskError, match="--method"):
        M.motif_enrichment(np.arange(1, 4097), np.zeros(4096), 5, method="fimo", motifs=[])
    with pytest.raises(GeneMaskError, match="release"):
        M.load_jaspar("JASPAR1999")


def test_config_motif_method(tmp_path):
    """report.motif_method: one default, the schema's, which plan.resolve fills and the module and
    command use; unknown methods fail validation naming the key."""
    from genemask import plan
    from genemask.cli import build_parser

    schema = plan._load_yaml(plan.SCHEMA)
    key = schema["properties"]["report"]["properties"]["motif_method"]
    resolved = plan.resolve(yaml.safe_load((plan.ROOT / "config" / "demo.yaml").read_text()))
    assert key["default"] == resolved["report"]["motif_method"] == M.DEFAULT_METHOD == "tomtom"
    assert build_parser().parse_args(["motifs", "--ranking", "x.tsv", "-o", "y.tsv"]).method == "tomtom"
    assert tuple(key["enum"]) == M.METHODS
    report_schema = tmp_path / "report.schema.yaml"
    report_schema.write_text(yaml.safe_dump({**schema, "required": [], "properties": {"report": schema["properties"]["report"]}}))
    plan.validate({"report": {"motif_method": "both"}}, report_schema)
    with pytest.raises(GeneMaskError, match="report.motif_method"):
        plan.validate({"report": {"motif_method": "fimo"}}, report_schema)
