"""genemask explain-motifs: seqlet calling on attribution arrays with a known answer (a planted window is
found exactly, pure noise gives none), reliance on known mass shares, and end to end: a tiny model
fine-tuned on a synthetic task whose positives hold a sampled JASPAR CTCF site (MA0139) is explained and
its seqlets cluster into a motif that Tomtom matches to MA0139 (q < 0.05); the same model class trained
on shuffled labels yields no JASPAR-matched motif."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from genemask import attribution_motifs as am
from genemask.cli import main
from genemask.util import GeneMaskError
from test_inference import one_thread  # noqa: F401 - GENEMASK_THREADS=1: the same arithmetic every run


# ------------------------------------------------------------------------------------------------
# seqlets
# ------------------------------------------------------------------------------------------------
def noise(n: int, length: int, seed: int, dist: str = "laplace") -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.laplace(0, 1, (n, length)) if dist == "laplace" else rng.normal(0, 1, (n, length))


def test_a_planted_window_is_found_exactly():
    score = noise(40, 120, 0) * 0.1
    lengths = np.full(40, 120)
    planted = {3: (50, 1), 17: (30, 1), 25: (80, -1)}  # record -> (window start, sign)
    for r, (s, sign) in planted.items():
        score[r, s : s + 10] += sign * 2.0
    out = am.call_seqlets(score, lengths, window=10, flank=5, fdr=0.05)
    got = {int(r.record): (int(r.start), int(r.end), int(r.sign)) for r in out.itertuples()}
    assert got == {r: (s - 5, s + 15, sign) for r, (s, sign) in planted.items()}, out
    assert (out["q"] < 1e-6).all() and list(np.abs(out["window_sum"])) == sorted(np.abs(out["window_sum"]))[::-1]


def test_seqlets_do_not_overlap_and_fit_inside_their_records():
    score = noise(5, 100, 1) * 0.1
    score[0, 20:60] += 1.0  # one broad region: several windows pass, the seqlets tile it without overlap
    lengths = np.array([100, 100, 100, 100, 37])
    score[4, 37:] = 0.0
    score[4, 0:10] += 3.0  # at the very start: no room for the left flank, so no seqlet there
    out = am.call_seqlets(score, lengths, window=10, flank=5)
    r0 = out[out["record"] == 0].sort_values("start")
    assert len(r0) == 2 and (r0["start"].to_numpy()[1:] >= r0["end"].to_numpy()[:-1]).all()
    assert (r0["start"] >= 15).all() and (r0["end"] <= 65).all()
    assert (out["start"] >= 0).all() and (out["end"] <= lengths[out["record"]]).all()
    assert (out["end"] - out["start"] == 20).all()


@pytest.mark.parametrize("dist", ["laplace", "normal"])
def test_pure_noise_gives_no_seqlets(dist):
    score = noise(200, 150, 2, dist)
    out = am.call_seqlets(score, np.full(200, 150))
    assert len(out) == 0, out
    assert out.attrs["scale"][1] > 0 and out.attrs["scale"][-1] > 0


def test_laplace_scale_from_the_lower_quartile():
    x = np.random.default_rng(3).laplace(0, 2.5, 200_000)
    assert am.laplace_scale(x[x > 0]) == pytest.approx(2.5, rel=0.02)
    pos = x[x > 0]
    signal = np.concatenate([pos, np.full(len(pos) // 2, 50.0)])  # a third of the values are signal
    # Q25 of the mix is the null's 37.5% quantile: b x ln(1/0.625) / ln(4/3) = 1.63 b (the median: 2 b)
    assert am.laplace_scale(signal) == pytest.approx(2.5 * np.log(1 / 0.625) / np.log(4 / 3), rel=0.03)
    assert np.isnan(am.laplace_scale(np.zeros(5)))


def test_reliance_is_the_matched_share_of_the_mass():
    score = np.zeros((3, 20))
    score[0] = 1.0  # total 20
    score[0, 2:6] = -3.0  # a seqlet of mass 12 (negative attribution counts by its size)
    score[1, :10] = 0.5  # total 5 (record of 10 bp; the rest is padding)
    score[1, 10:] = 0.0
    seqlets = pd.DataFrame({"record": [0, 0, 1], "start": [2, 10, 0], "end": [6, 14, 4]})
    rel = am.reliance(score, np.array([20, 10, 20]), seqlets, np.array([True, False, False]))
    total = 16 * 1.0 + 4 * 3.0
    assert rel["total_mass"].tolist() == [total, 5.0, 0.0]
    assert rel["seqlet_mass"].tolist() == [16.0, 2.0, 0.0] and rel["matched_mass"].tolist() == [12.0, 0.0, 0.0]
    assert rel["reliance"][0] == pytest.approx(12 / total) and rel["reliance"][1] == 0 and np.isnan(rel["reliance"][2])
    assert rel["seqlet_share"][0] == pytest.approx(16 / total) and rel["n_matched_seqlets"].tolist() == [1, 0, 0]


def test_trim_span_and_consensus():
    ppm = np.full((8, 4), 0.25)
    ppm[2] = [1, 0, 0, 0]
    ppm[3] = [0.7, 0.1, 0.1, 0.1]
    ppm[5] = [0, 0, 0, 1]
    assert am.trim_span(ppm, 0.5) == (2, 6)
    assert am.consensus(ppm[2:6]) == "Aa" + "a" + "T"  # column 4 is uniform: lower case (argmax A)
    assert am.trim_span(np.full((5, 4), 0.25), 0.5) == (0, 5)


def test_load_refuses_what_is_not_an_explain_file(tmp_path, capsys):
    from genemask.explain import write_npz

    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    with pytest.raises(GeneMaskError, match="not a genemask explain .npz"):
        am.load_attributions([str(bad)])
    arrays = {"ids": np.array(["a"]), "sequence": np.array(["ACGTACGTAC"]), "lengths": np.array([10]),
              "score": np.zeros((1, 10), np.float32), "centred": np.zeros((1, 4, 10), np.float32),
              "target_class": np.asarray(1), "quantity": np.asarray("log-odds"), "alphabet": np.asarray("ACGT")}
    a, b = write_npz(tmp_path / "a.npz", arrays), write_npz(tmp_path / "b.npz", {**arrays, "target_class": np.asarray(0)})
    assert main(["explain-motifs", str(a), str(b), "-o", str(tmp_path / "m.tsv")]) == 2
    assert "explains class 0 (log-odds) but" in capsys.readouterr().err
    assert main(["explain-motifs", str(a), "-o", str(tmp_path / "m.txt")]) == 2
    assert "use a .tsv name" in capsys.readouterr().err
    assert not (tmp_path / "m.tsv").exists()


# ------------------------------------------------------------------------------------------------
# end to end: a planted JASPAR motif is recovered, shuffled labels recover none
# ------------------------------------------------------------------------------------------------
PLANTED = "MA0139"  # CTCF
LENGTH, N_TRAIN, N_TEST, N_EXPLAIN = 60, 8000, 400, 150


def synthetic_task(ppm: np.ndarray, n: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(sequences, labels, planted start or -1): n/2 uniform random LENGTH-bp sequences holding one site
    sampled from ppm [4, w] (either strand, anywhere), then n/2 without; labels 1 then 0."""
    rng = np.random.default_rng(seed)
    seqs = rng.integers(0, 4, (n, LENGTH))
    w, half = ppm.shape[1], n // 2
    site = (rng.random((half, w, 1)) > np.cumsum(ppm.T, axis=1)[None]).sum(-1).clip(max=3)
    flip = rng.random(half) < 0.5
    site[flip] = 3 - site[flip, ::-1]  # rows A C G T: 3 - b is the complement
    start = rng.integers(0, LENGTH - w + 1, half)
    for i in range(half):
        seqs[i, start[i] : start[i] + w] = site[i]
    labels = np.r_[np.ones(half, int), np.zeros(n - half, int)]
    return ["".join("ACGT"[b] for b in s) for s in seqs], labels, np.r_[start, np.full(n - half, -1)]


def train_and_explain(root, tmp, shuffle: bool) -> tuple[dict, str, np.ndarray, int]:
    """Fine-tune a fresh tiny model (resources/models/tiny.json) on the synthetic task (labels shuffled
    if asked) and explain the first N_EXPLAIN held-out positives: (metrics, npz, their planted starts,
    the site's width)."""
    from genemask.finetune import finetune_cli
    from genemask.motifs import jaspar_probabilities, load_jaspar
    from genemask.pretrain import build_model
    from genemask.tokenizer import build_tokenizer, save_tokenizer

    ppm = jaspar_probabilities([m for m in load_jaspar() if m.matrix_id.startswith(PLANTED)][0])
    model, k = build_model(json.loads((root / "resources" / "models" / "tiny.json").read_text()), seed=0)
    model.save_pretrained(tmp / "pre")
    save_tokenizer(build_tokenizer(k), tmp / "pre")
    (tmp / "pre" / "genemask.json").write_text(json.dumps({"k": k, "scheme": "random"}))
    for name, n, seed in (("train", N_TRAIN, 1), ("test", N_TEST, 2)):
        seqs, labels, starts = synthetic_task(ppm, n, seed)
        if shuffle:
            labels = np.random.default_rng(seed + 10).permutation(labels)
        (tmp / f"{name}.tsv").write_text("sequence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in zip(seqs, labels)))
    settings = {"regimes": [{"max_shot": None, "batch_size": 32, "lr": 2e-3, "epochs": 5}], "hidden_dropout": 0.0}
    metrics = finetune_cli(str(tmp / "pre"), str(tmp / "train.tsv"), str(tmp / "test.tsv"), "synthetic", 10, 0,
                           "random", 2, settings, str(tmp / "metrics.json"), str(tmp / "clf"))
    seqs, _, starts = synthetic_task(ppm, N_TEST, 2)  # the held-out positives come first
    fa = tmp / "positives.fa"
    fa.write_text("".join(f">pos{i}\n{seqs[i]}\n" for i in range(N_EXPLAIN)))
    assert main(["explain", "--model", str(tmp / "clf"), str(fa), "-o", str(tmp / "pos.npz"), "--device", "cpu",
                 "--batch-size", "512"]) == 0
    return metrics, str(tmp / "pos.npz"), starts[:N_EXPLAIN], ppm.shape[1]


def run_motifs(npz: str, tmp) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    outs = {name: tmp / f"{name}.tsv" for name in ("motifs", "seqlets", "reliance")}
    assert main(["explain-motifs", npz, "-o", str(outs["motifs"]), "--seqlets", str(outs["seqlets"]),
                 "--reliance", str(outs["reliance"]), "--logos", str(tmp / "logos.png")]) == 0
    assert (tmp / "logos.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return tuple(pd.read_csv(outs[n], sep="\t", keep_default_na=False) for n in ("motifs", "seqlets", "reliance"))


@pytest.mark.slow  # two fine-tunes of 8,000 rows, two ISM runs, modisco-lite twice: ~45 s of CPU, 1-2 min on 2 loaded cores
def test_planted_jaspar_motif_is_recovered_and_shuffled_labels_give_none(root, tmp_path, one_thread, capsys):  # noqa: F811
    metrics, npz, starts, width = train_and_explain(root, tmp_path / "planted", shuffle=False)
    print(f"planted: test accuracy {metrics['accuracy']:.3f}, AUROC {metrics['auroc']:.3f}")
    assert metrics["accuracy"] > 0.8, metrics  # the model learnt the task
    motifs, seqlets, rel = run_motifs(npz, tmp_path / "planted")
    print(capsys.readouterr().out)
    hits = motifs[motifs["jaspar_id"].str.startswith(PLANTED) & (motifs["q"] < 0.05)]
    assert len(hits) >= 1, motifs
    assert hits["matched"].all() and (motifs["matched"] == motifs["jaspar_id"].str.startswith(PLANTED)).all(), motifs
    # the seqlets of the matched motif lie on the planted sites
    mine = seqlets[seqlets["motif"].isin(hits["motif"])]
    site = starts[mine["id"].str.slice(3).astype(int)]
    overlap = np.minimum(mine["end"], site + width) - np.maximum(mine["start"], site)
    assert len(mine) >= 20 and (overlap >= 8).mean() > 0.75, mine  # most on the planted sites
    assert rel["reliance"].astype(float).mean() > 0.1 and len(rel) == N_EXPLAIN

    metrics, npz, _, _ = train_and_explain(root, tmp_path / "shuffled", shuffle=True)
    print(f"shuffled: test accuracy {metrics['accuracy']:.3f}, AUROC {metrics['auroc']:.3f}")
    assert metrics["accuracy"] < 0.65, metrics  # nothing to learn
    motifs, seqlets, rel = run_motifs(npz, tmp_path / "shuffled")
    print(capsys.readouterr().out)
    assert not (motifs["q"].astype(float) < 0.05).any(), motifs
    assert (rel["reliance"].astype(float).fillna(0) == 0).all()


def test_explain_report_pairs_reliance_on_pretraining_seed_and_record(tmp_path):
    """genemask explain-report: motif reliance of each scheme against dnabert and none, paired on
    (pretraining seed, record), the differences averaged per pretraining seed and t-tested on those
    means (stats.cell_test); a planted +0.2 for genemask is found, an identical scheme is not."""
    import pandas as pd

    from genemask.explainreport import explain_report_cli

    rng = np.random.default_rng(3)
    base = rng.uniform(0.1, 0.5, size=(4, 30))  # pretraining seed x record: shared by the schemes
    inputs = []
    for scheme, shift in (("none", -0.1), ("dnabert", 0.0), ("genemask", 0.2), ("random", 0.0)):
        rows = [{"source": f"{scheme}/seed{p}.npz", "scheme": scheme, "pretrain_seed": p, "pretrain_step": 300,
                 "id": f"line{i}", "reliance": float(np.clip(base[p, i] + shift + rng.normal(0, 0.01), 0, 1)),
                 "seqlet_share": 0.8}
                for p in range(4) for i in range(30)]
        rel = tmp_path / f"{scheme}.reliance.tsv"
        pd.DataFrame(rows).to_csv(rel, sep="\t", index=False)
        mot = tmp_path / f"{scheme}.motifs.tsv"
        mot.write_text("motif\tn_seqlets\tconsensus\tjaspar_id\tjaspar_name\tq\tmatched\n"
                       "pos_0\t25\tCCGCGNGGNGGCAG\tMA0139.2\tCTCF\t1e-9\tTrue\n")
        inputs.append(("Prom-core", scheme, str(mot), str(rel)))
    mo, ro = tmp_path / "explain_motifs.tsv", tmp_path / "explain_reliance.tsv"
    assert explain_report_cli(inputs, str(mo), str(ro)) == 0
    t = pd.read_csv(ro, sep="\t")
    g = t[(t.scheme == "genemask") & (t.baseline == "dnabert")].iloc[0]
    assert g.mean_diff == pytest.approx(0.2, abs=0.01) and g.p_ttest < 0.01 and g.n_units == 4
    assert g.test_level == "pretrain_seed"
    r = t[(t.scheme == "random") & (t.baseline == "dnabert")].iloc[0]
    assert abs(r.mean_diff) < 0.01 and r.p_ttest > 0.01
    d = t[(t.scheme == "dnabert") & (t.baseline == "none")].iloc[0]
    assert d.mean_diff == pytest.approx(0.1, abs=0.01)
    assert t[t.scheme == "none"].baseline.isna().all()  # none: its mean reliance, never a candidate
    m = pd.read_csv(mo, sep="\t")
    assert list(m.columns[:2]) == ["task", "scheme"] and set(m.scheme) == {"none", "dnabert", "genemask", "random"}
