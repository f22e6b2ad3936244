"""genemask explain: in-silico saturation mutagenesis of a k-mer classifier, checked against a slow
loop over Python strings and the tokenizer; the one-hot wrapper; the .npz and bedGraph outputs."""
from __future__ import annotations

import copy
import gzip

import numpy as np
import pytest
import torch

from genemask import explain as ex
from genemask.cli import main
from genemask.kmers import CLS, SEP, UNK, seq_to_ids
from genemask.modelfolder import save_classifier, thread_scope
from genemask.util import GeneMaskError
from test_inference import chr2, classifier, one_thread, pretrained  # noqa: F401 - the tiny model fixtures

RNG_SEQS = [(12, 0), (25, 1), (40, 2)]  # (length, seed) of the random records the exactness test uses


def one_error(capsys) -> str:
    """The one `genemask explain: error:` line of the command's stderr (no traceback)."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("genemask explain: error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def rand_seq(n: int, seed: int) -> str:
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


def rows_of(s: str) -> np.ndarray:
    return ex.ROW_OF[np.frombuffer(s.encode(), np.uint8)]


@pytest.fixture(scope="module")
def sharp(classifier, tmp_path_factory):  # noqa: F811 - the fixture imported above
    """(model, folder): the tiny classifier with every weight matrix redrawn N(0, 0.3^2) (seeded), so
    that substitutions move the log-odds by O(1) and comparisons are sharp; the stock initialisation
    (std 0.02) moves them by ~1e-3."""
    model = copy.deepcopy(classifier[0]).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    folder = save_classifier(model, tmp_path_factory.mktemp("explain") / "sharp",
                             {"labels": ["non-promoter", "promoter"], "source_model": str(classifier[1])})
    return model, folder


# ------------------------------------------------------------------------------------------------
# bases -> token ids on the device
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [3, 4, 5, 6])
def test_codes_to_ids_equal_seq_to_ids(k):
    seqs = [rand_seq(n, 10 + n) for n in (k, k + 1, 17, 64, 515)]
    for s in seqs:
        assert np.array_equal(ex.codes_to_ids(torch.as_tensor(rows_of(s)), k).numpy(), seq_to_ids(s, k))
    same = [rand_seq(30, i) for i in range(5)]  # a batch [B, L] at once
    got = ex.codes_to_ids(torch.as_tensor(np.stack([rows_of(s) for s in same])), k).numpy()
    assert np.array_equal(got, np.stack([seq_to_ids(s, k) for s in same]))
    # one-hot (rows A C G T); an N column is all zero and its k-mers are [UNK], as seq_to_ids makes them
    s = rand_seq(40, 7)
    s = s[:11] + "N" + s[12:]
    x = ex.one_hot(s)[None]
    assert x[0, :, 11].sum() == 0 and torch.equal(x.sum(1)[0, :11], torch.ones(11))
    ids = ex.onehot_to_ids(x, k)[0].numpy()
    assert np.array_equal(ids, seq_to_ids(s, k)) and (ids == UNK).sum() == k


def test_onehot_wrapper_equals_the_classifier_on_tokens(sharp):
    model, _ = sharp
    seqs = [rand_seq(50, 20 + i) for i in range(3)]
    x = torch.stack([ex.one_hot(s) for s in seqs])
    with torch.inference_mode():
        got = ex.OneHotKmerModel(model, 6)(x)
        want = model(input_ids=torch.tensor([[CLS, *seq_to_ids(s, 6), SEP] for s in seqs])).logits
    assert torch.allclose(got, want, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# ISM
# ------------------------------------------------------------------------------------------------
def slow_ism(model, s: str, target: int) -> tuple[np.ndarray, float]:
    """Every substitution as a new Python string, tokenised alone and run alone: ism [4, L] (A C G T)."""
    def f(t: str) -> float:
        with torch.inference_mode():
            z = model(input_ids=torch.tensor([[CLS, *seq_to_ids(t, 6), SEP]])).logits[0].double()
        p = torch.softmax(z, 0)[target]
        return float(torch.log(p) - torch.log1p(-p))  # log-odds from the probability, not from ex.log_odds

    ref = f(s)
    out = np.zeros((4, len(s)))
    for i in range(len(s)):
        for b, c in enumerate("ACGT"):
            if c != s[i]:
                out[b, i] = f(s[:i] + c + s[i + 1 :]) - ref
    return out, ref


@pytest.mark.parametrize("target", [1, 0])
def test_batched_ism_equals_a_slow_loop(sharp, target):
    model, _ = sharp
    seqs = [rand_seq(n, seed) for n, seed in RNG_SEQS]
    # 7 rows a batch: batches mix records of different lengths and cut through records
    ism, ref = ex.saturation_mutagenesis(model, [rows_of(s) for s in seqs], 6, target, 7, torch.device("cpu"))
    assert ism.shape == (3, 4, 40)
    for i, s in enumerate(seqs):
        want, want_ref = slow_ism(model, s, target)
        assert ref[i] == pytest.approx(want_ref, abs=1e-5)
        assert np.abs(ism[i, :, : len(s)] - want).max() < 1e-5, i
        assert (ism[i, :, len(s) :] == 0).all()
        assert np.abs(want).max() > 0.1  # the substitutions really move the log-odds
    assert (ism[:, :, :12] != 0).sum() == 3 * 3 * 12  # every substitution scored, nothing else


def test_log_odds_of_three_classes():
    z = torch.tensor([[0.3, -1.2, 2.0], [1.0, 1.0, 1.0]])
    p = torch.softmax(z.double(), 1)
    for t in range(3):
        assert torch.allclose(ex.log_odds(z, t), torch.log(p[:, t] / (1 - p[:, t])), atol=1e-6)


def test_reference_entries_zero_centred_rows_sum_zero(sharp):
    _, folder = sharp
    seqs = [rand_seq(n, seed) for n, seed in RNG_SEQS]
    out = ex.explain(folder, seqs, ids=["a", "b", "c"], device="cpu", batch_size=16)
    assert out["ids"].tolist() == ["a", "b", "c"] and out["sequence"].tolist() == seqs
    assert out["lengths"].tolist() == [12, 25, 40] and out["ism"].dtype == np.float32
    assert str(out["quantity"]) == "log-odds" and str(out["alphabet"]) == "ACGT" and int(out["target_class"]) == 1
    assert str(out["target_label"]) == "promoter" and int(out["k"]) == 6
    for i, s in enumerate(seqs):
        n, r = len(s), rows_of(s)
        ism, cen, score = out["ism"][i, :, :n], out["centred"][i, :, :n], out["score"][i, :n]
        assert (ism[r, np.arange(n)] == 0).all()  # exactly: set, not computed
        assert (np.delete(ism.T.reshape(-1), r + 4 * np.arange(n)) != 0).all()
        assert np.abs(cen.sum(0)).max() < 1e-5
        assert np.allclose(score, cen[r, np.arange(n)]) and np.allclose(score, -ism.sum(0) / 4, atol=1e-6)
        assert np.isnan(out["ism"][i, :, n:]).all() and np.isnan(out["score"][i, n:]).all()


# ------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------
def test_cli_output_is_deterministic_and_equals_the_api(sharp, tmp_path):
    _, folder = sharp
    seqs = [rand_seq(n, seed) for n, seed in RNG_SEQS]
    fa = tmp_path / "r.fa"
    fa.write_text("".join(f">r{i} random\n{s.lower() if i == 1 else s}\n" for i, s in enumerate(seqs)))
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    for out, bs in ((a, "5"), (b, "5")):
        assert main(["explain", "--model", str(folder), str(fa), "-o", str(out), "--batch-size", bs,
                     "--device", "cpu"]) == 0
    assert a.read_bytes() == b.read_bytes()
    got = np.load(a)  # allow_pickle is False by default: no object arrays
    with thread_scope():  # the CLI's thread count (GENEMASK_THREADS=1): the very same arithmetic
        want = ex.explain(folder, seqs, ids=["r0", "r1", "r2"], device="cpu", batch_size=5)
    assert sorted(got.files) == sorted(want)
    for key in want:
        assert np.array_equal(got[key], want[key], equal_nan=key in ("ism", "centred", "score")), key


def test_tsv_raw_bases_and_6mer_text_give_identical_output(sharp, tmp_path, capsys):
    """predict's reader: a sequence column of raw bases and one of overlapping 6-mer text are the
    same bases, so the same explanation, byte for byte."""
    from genemask.tokenizer import kmerize

    _, folder = sharp
    seqs = [rand_seq(n, seed) for n, seed in RNG_SEQS]
    raw, kmer = tmp_path / "raw.tsv", tmp_path / "kmer.tsv.gz"
    raw.write_text("sequence\tlabel\n" + "".join(f"{s}\t1\n" for s in seqs))
    with gzip.open(kmer, "wt") as fh:
        fh.write("sequence\tlabel\n" + "".join(f"{kmerize(s, 6)}\t1\n" for s in seqs))
    for src in (raw, kmer):
        assert main(["explain", "--model", str(folder), str(src), "-o", str(tmp_path / f"{src.name}.npz"),
                     "--device", "cpu"]) == 0
    assert (tmp_path / "raw.tsv.npz").read_bytes() == (tmp_path / "kmer.tsv.gz.npz").read_bytes()
    assert np.load(tmp_path / "raw.tsv.npz")["ids"].tolist() == ["1", "2", "3"]
    capsys.readouterr()
    assert main(["explain", "--model", str(folder), str(kmer), "-o", str(tmp_path / "two.npz"), "--device", "cpu",
                 "--max-seqs", "2"]) == 0
    assert "explaining the first 2 of 3 sequences (--max-seqs)" in capsys.readouterr().err
    assert np.load(tmp_path / "two.npz")["ids"].tolist() == ["1", "2"]


def test_bedgraph_of_regions(sharp, chr2, tmp_path, capsys):  # noqa: F811
    _, folder = sharp
    regions = [("chr2", 600_000, 60), ("chr2", 150_000, 45), ("chr2", 600_060, 30)]  # 0-based starts
    fa = tmp_path / "regions.fa"
    fa.write_text("".join(f">chr2:{s + 1}-{s + n}\n{chr2[s : s + n].decode()}\n" for _, s, n in regions))
    out, bg = tmp_path / "e.npz", tmp_path / "e.bedGraph"
    assert main(["explain", "--model", str(folder), str(fa), "-o", str(out), "--bedgraph", str(bg),
                 "--device", "cpu", "--max-seqs", "3"]) == 0
    lines = [ln.split("\t") for ln in bg.read_text().splitlines()]
    assert len(lines) == 135 and all(len(f) == 4 and f[0] == "chr2" for f in lines)
    start, end = np.array([int(f[1]) for f in lines]), np.array([int(f[2]) for f in lines])
    assert (end == start + 1).all() and (np.diff(start) > 0).all()  # sorted, one base a line, no overlap
    assert start.tolist() == [*range(150_000, 150_045), *range(600_000, 600_090)]
    npz = np.load(out)
    want = np.concatenate([npz["score"][1, :45], npz["score"][0, :60], npz["score"][2, :30]])
    assert np.allclose([float(f[3]) for f in lines], want, rtol=1e-5, atol=1e-7)

    # refused before the model runs, nothing written
    def err(text, *extra):
        fa.write_text(text)
        for p in (out, bg):
            p.unlink(missing_ok=True)
        assert main(["explain", "--model", str(folder), str(fa), "-o", str(out), "--bedgraph", str(bg), *extra]) == 2
        assert not out.exists() and not bg.exists()
        return one_error(capsys)

    s = chr2[600_000:600_020].decode()
    assert "record 'r1' of" in err(f">r1\n{s}\n") and "has no coordinates" in err(f">r1\n{s}\n")
    assert "names 21 bp but has 20" in err(f">chr2:600001-600021\n{s}\n")
    assert "overlap" in err(f">chr2:600001-600020\n{s}\n>chr2:600011-600030\n{s}\n")


def test_cli_errors_are_one_line(sharp, pretrained, tmp_path, capsys):  # noqa: F811
    _, folder = sharp

    def err(path, text=None, *extra, out=None):
        if text is not None:
            path.write_text(text)
        argv = ["explain", "--model", str(folder), str(path), "-o", str(out or tmp_path / "x.npz"), *extra]
        assert main(argv) == 2
        assert not (tmp_path / "x.npz").exists()
        return one_error(capsys)

    fa = tmp_path / "in.fa"
    msg = err(fa, ">ok\nACGTACGTACGT\n>gap one\nACGTACNNACGTAC\n")
    assert f"{fa}: record 'gap' has 'N' at base 7 (2 non-ACGT bases)" in msg
    assert "has 'R' at base 3" in err(fa, ">iupac\nACRTACGTACGT\n")
    assert f"{tmp_path / 'missing.fa'}: cannot read input" in err(tmp_path / "missing.fa")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep\n")
    assert "is a folder, and this command writes a file" in err(fa, ">ok\nACGTACGTACGT\n", out=user)
    assert (user / "notes.txt").read_text() == "keep\n"
    assert "use a .npz name" in err(fa, None, out=tmp_path / "x.tsv")
    assert "record 'long' has 516 bp; explain scores records of 6 to 515 bp" in err(fa, f">long\n{'A' * 516}\n")
    assert "record 'short' has 5 bp" in err(fa, ">short\nACGTA\n")
    assert "--target-class: " in err(fa, ">ok\nACGTACGTACGT\n", "--target-class", "2")
    assert "--max-seqs: must be >= 1" in err(fa, None, "--max-seqs", "0")
    argv = ["explain", "--model", str(pretrained), str(fa), "-o", str(tmp_path / "x.npz")]
    assert main(argv) == 2 and "not a fine-tuned classifier" in one_error(capsys)


def test_tangermeme_on_the_onehot_wrapper_equals_our_ism(sharp):
    """Where tangermeme is installed (it is no dependency: see the explain module docstring), its
    saturation_mutagenesis driving OneHotKmerModel gives our ism and centred arrays."""
    tsm = pytest.importorskip("tangermeme.saturation_mutagenesis").saturation_mutagenesis
    model, _ = sharp
    s = rand_seq(30, 5)
    ism, ref = ex.saturation_mutagenesis(model, [rows_of(s)], 6, 1, 16, torch.device("cpu"))

    def f(z):
        return ex.log_odds(z, 1)[:, None].float()

    y0, y_hat = tsm(ex.OneHotKmerModel(model, 6), ex.one_hot(s)[None], batch_size=16, raw_outputs=True, fast=False,
                    device="cpu", func=f)
    assert float(y0[0, 0]) == pytest.approx(ref[0], abs=1e-5)
    assert np.abs((y_hat[0, :, :, 0].double() - y0[0, 0].double()).numpy() - ism[0]).max() < 1e-5
    attr = tsm(ex.OneHotKmerModel(model, 6), ex.one_hot(s)[None], batch_size=16, hypothetical=True, fast=False,
               device="cpu", func=f)
    assert np.abs(attr[0].numpy() - ex.pack(["a"], [rows_of(s)], ism, ref)["centred"][0]).max() < 1e-5


def test_check_sequences_names_the_record():
    with pytest.raises(GeneMaskError, match=r"in.fa: record 'x' has 'N' at base 2"):
        ex.check_sequences(["x"], [b"ANGTACGT"], 6, 510, "in.fa")
