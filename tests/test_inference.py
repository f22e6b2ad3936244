"""Using a model: save_classifier + Auto-class load, predict / embed on the real hg38 slice, windows."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pandas as pd
import pytest
import torch

from genemask.cli import main
from genemask.finetune import encode, predict_proba
from genemask.genome import iter_fasta_validated
from genemask.inference import Tokens, embed, ids_file, plan_windows, predict, read_input
from genemask.kmers import CLS, SEP, seq_to_ids
from genemask.modelfolder import load_classifier, save_classifier
from genemask.pretrain import build_model
from genemask.tasks import read_task_file
from genemask.tokenizer import build_tokenizer, save_tokenizer, tokenizer_k
from genemask.util import GeneMaskError

W = 510  # tiny.json: max_position_embeddings 512 -> 510 k-mer tokens per window


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("GENEMASK_THREADS", "1")


@pytest.fixture(scope="module")
def pretrained(root, tmp_path_factory):
    """A pretrained-style folder (BertForMaskedLM + tokenizer + genemask.json) of resources/models/tiny.json."""
    d = tmp_path_factory.mktemp("inference") / "pretrained"
    model, k = build_model(json.loads((root / "resources" / "models" / "tiny.json").read_text()), seed=0)
    model.save_pretrained(d)
    save_tokenizer(build_tokenizer(k), d)
    (d / "genemask.json").write_text(json.dumps({"k": k, "scheme": "random"}))
    return d


@pytest.fixture(scope="module")
def classifier(pretrained):
    """(in-memory freshly initialised classifier, its saved folder). The head gets a wide seeded init so
    that probabilities spread away from 0.5 and comparisons are sharp."""
    torch.manual_seed(0)
    clf = load_classifier(pretrained, 2, None).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        clf.classifier.weight.copy_(torch.randn(clf.classifier.weight.shape, generator=g) * 3)
    folder = save_classifier(clf, pretrained.parent / "clf", {
        "task": "Prom-core", "shot": 10, "seed": 0, "source_model": str(pretrained),
        "metrics": {"accuracy": 0.5}, "labels": ["non-promoter", "promoter"]})
    return clf, folder


@pytest.fixture(scope="module")
def chr2(hg38_slice):
    name, seq = next(iter_fasta_validated(hg38_slice))
    assert name == "chr2"
    return seq


@pytest.fixture(scope="module")
def records(chr2):
    """Real hg38 pieces: one longer than the window (5 kbp), a task-sized one, a short one, one with Ns."""
    return {"long5k": chr2[150_000:155_000], "mid300": chr2[400_000:400_300], "short40": chr2[600_000:600_040],
            "gap": chr2[9_900:10_400]}  # the slice starts with 10 kbp of N


@pytest.fixture(scope="module")
def fasta(records, tmp_path_factory):
    p = tmp_path_factory.mktemp("fa") / "pieces.fa.gz"
    with gzip.open(p, "wb") as fh:
        for name, s in records.items():
            fh.write(b">" + name.encode() + b" hg38 piece\n")
            fh.writelines(s[i : i + 60] + b"\n" for i in range(0, len(s), 60))
    return p


# ------------------------------------------------------------------------------------------------
# windows
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("window,stride", [(510, 255), (510, 510), (510, 1), (7, 3), (1, 1)])
def test_plan_windows_cover_every_token_with_stride_and_flush_end(window, stride):
    n = np.array([1, 2, window - 1, window, window + 1, 4995, 2 * window + stride, 3 * window + 1])
    n = n[n >= 1]
    seq, start, length = plan_windows(n, window, stride)
    for i, ni in enumerate(n):
        st, ln = start[seq == i], length[seq == i]
        want = [0] if ni <= window else sorted(set(range(0, ni - window, stride)) | {ni - window})
        assert st.tolist() == want
        assert (ln == min(ni, window)).all()
        assert st[-1] + ln[-1] == ni  # last window flush with the end
        assert (np.diff(st) <= stride).all() and (np.diff(st)[:-1] == stride).all()
        covered = np.zeros(ni, bool)
        for a, b in zip(st, ln):
            covered[a : a + b] = True
        assert covered.all()
    assert (np.diff(seq) >= 0).all()


def test_plan_windows_counts_for_a_5kbp_record_and_bad_stride():
    seq, start, _ = plan_windows([5000 - 6 + 1], W, W // 2)
    assert len(seq) == 19 and start[-2] == 17 * 255 and start[-1] == 4995 - W  # 0..4335 by 255, then 4485
    with pytest.raises(GeneMaskError, match=r"--stride: must be in \[1, 510\]"):
        plan_windows([600], W, 0)
    with pytest.raises(GeneMaskError, match="--stride"):
        plan_windows([600], W, W + 1)


def test_window_batches_hold_the_planned_tokens(records):
    ids, seqs = list(records), list(records.values())
    tok = Tokens(ids, seqs, 6, W, 255, "pieces")
    assert np.bincount(tok.seq).tolist() == [19, 1, 1, 1]
    seen = 0
    for w, x, mask in tok.batches(4):
        assert list(tok.length[w]) == sorted(tok.length[w], reverse=True)  # longest first
        for row, wi in zip(range(len(w)), w):
            s, n = tok.seq[wi], tok.length[wi]
            start = tok.base[wi] - tok.offset[s]
            want = seq_to_ids(seqs[s], 6)[start : start + n]
            assert x[row, 0] == CLS and x[row, n + 1] == SEP and (x[row, 1 : n + 1].numpy() == want).all()
            assert mask[row].sum() == n + 2
        seen += len(w)
    assert seen == len(tok.seq)


# ------------------------------------------------------------------------------------------------
# save_classifier
# ------------------------------------------------------------------------------------------------
def test_save_classifier_loads_with_auto_classes(classifier, pretrained, records):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    clf, folder = classifier
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "genemask.json"} <= names
    for f in ("tokenizer.json", "vocab.txt"):
        assert (folder / f).read_bytes() == (pretrained / f).read_bytes()
    meta = json.loads((folder / "genemask.json").read_text())
    assert meta["kind"] == "classifier" and meta["k"] == 6 and meta["task"] == "Prom-core" and meta["shot"] == 10
    assert meta["source_model"] == str(pretrained) and meta["metrics"] == {"accuracy": 0.5}
    assert meta["labels"] == ["non-promoter", "promoter"]

    loaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert loaded.config.id2label == {0: "non-promoter", 1: "promoter"}
    assert loaded.config.label2id == {"non-promoter": 0, "promoter": 1}
    tok = AutoTokenizer.from_pretrained(folder)
    assert tokenizer_k(tok) == 6
    ids, lengths = encode([records["mid300"].decode(), records["short40"].decode()], 6, 512)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    with torch.inference_mode():
        assert torch.allclose(loaded(input_ids=ids, attention_mask=mask).logits,
                              clf(input_ids=ids, attention_mask=mask).logits, atol=1e-6)


def test_save_classifier_default_labels_and_bad_labels(pretrained, tmp_path):
    torch.manual_seed(0)
    clf = load_classifier(pretrained, 3, None)
    folder = save_classifier(clf, tmp_path / "c3", {"task": "Splice-40"})  # no source: tokenizer built for k=6
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["id2label"] == {"0": "0", "1": "1", "2": "2"}
    assert (folder / "tokenizer.json").is_file() and json.loads((folder / "genemask.json").read_text())["k"] == 6
    with pytest.raises(GeneMaskError, match="3 distinct names"):
        save_classifier(clf, tmp_path / "bad", {"labels": ["a", "b"]})
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------------
# predict
# ------------------------------------------------------------------------------------------------
def test_predict_cli_on_hg38_fasta(classifier, fasta, records, tmp_path, capsys):
    _, folder = classifier
    out = tmp_path / "predictions.tsv"
    assert main(["predict", "--model", str(folder), str(fasta), "-o", str(out), "--batch-size", "5",
                 "--device", "auto"]) == 0
    df = pd.read_csv(out, sep="\t")
    assert list(df.columns) == ["id", "prob_non-promoter", "prob_promoter", "predicted"]
    assert df["id"].tolist() == list(records)
    p = df[["prob_non-promoter", "prob_promoter"]].to_numpy()
    assert np.allclose(p.sum(axis=1), 1, atol=1e-5) and (p > 0).all()
    assert (df["predicted"] == np.where(p[:, 1] > p[:, 0], "promoter", "non-promoter")).all()
    assert len(np.unique(p[:, 1])) == 4  # the records really score differently


def test_predict_window_equals_plain_and_window_average(classifier, records):
    clf, folder = classifier  # float32 throughout: exact comparisons with a plain forward pass
    short = [records["mid300"], records["short40"], records["gap"]]  # each fits in one window
    ids, lengths = encode([s.decode() for s in short], 6, 512)
    plain = predict_proba(clf, ids, lengths, 64, torch.device("cpu"))
    prob, labels = predict(folder, short, device="cpu", batch_size=2, bf16=False)
    assert labels == ["non-promoter", "promoter"]
    assert np.allclose(prob, plain, atol=1e-6)

    # the 5 kbp record: mean of the logits of its 19 windows, each run alone
    long = records["long5k"]
    tok = seq_to_ids(long, 6)
    _, start, length = plan_windows([len(tok)], W, 255)
    logits = []
    with torch.inference_mode():
        for s, n in zip(start, length):
            x = torch.tensor([[CLS, *tok[s : s + n], SEP]])
            logits.append(clf(input_ids=x).logits[0].double())
    want = torch.softmax(torch.stack(logits).mean(0), -1).numpy()
    prob, _ = predict(folder, [records["short40"], long], device="cpu", batch_size=7, bf16=False)
    assert np.allclose(prob[1], want, atol=1e-6)
    assert np.allclose(prob[0], plain[1], atol=1e-6)
    prob_s, _ = predict(folder, [long], device="cpu", stride=510, bf16=False)  # another stride: other windows
    assert not np.allclose(prob_s[0], prob[1], atol=1e-6)


def test_predict_and_embed_in_bf16_are_deterministic_and_close_to_float32(classifier, pretrained, records):
    """--bf16 true (forced, so CPUs without bf16 units run it too): the same call twice gives identical
    outputs, and they stay close to float32's: class probabilities within 0.01 (measured: 0.002 on this
    tiny model with a wide head), embeddings within 1% of their largest entry (measured: 0.005%).
    The output layer runs in float32, so probabilities of different records do not tie."""
    _, folder = classifier
    seqs = list(records.values())
    p32, _ = predict(folder, seqs, device="cpu", bf16=False)
    p16, _ = predict(folder, seqs, device="cpu", bf16=True)
    assert np.array_equal(p16, predict(folder, seqs, device="cpu", bf16="true")[0])
    assert np.array_equal(p16, predict(folder, seqs, device="cpu", bf16=True, batch_size=2)[0])  # batching
    assert np.abs(p16 - p32).max() <= 0.01 and not np.array_equal(p16, p32)
    assert len(np.unique(p16[:, 1])) == len(seqs)
    for pooling in ("mean", "cls"):
        e32 = embed(pretrained, seqs, pooling=pooling, device="cpu", bf16=False)
        e16 = embed(pretrained, seqs, pooling=pooling, device="cpu", bf16=True)
        assert e16.dtype == np.float32
        assert np.array_equal(e16, embed(pretrained, seqs, pooling=pooling, device="cpu", bf16=True))
        assert np.abs(e16 - e32).max() <= 0.01 * np.abs(e32).max()
    with pytest.raises(GeneMaskError, match="--bf16: expected auto, true or false"):
        predict(folder, seqs, device="cpu", bf16="maybe")


def test_bf16_flag_of_the_commands_that_run_a_model(classifier, fasta, records, tmp_path):
    """--bf16 auto|true|false on predict, embed, explain and probe, default the schema's predict.bf16
    (explain: false, its small log-odds differences would take bf16's rounding)."""
    from genemask.cli import build_parser
    from genemask.defaults import default

    assert default("predict.bf16") == "auto"
    for argv in (["predict", "--model", "m", "in.fa", "-o", "o.tsv"], ["embed", "--model", "m", "in.fa", "-o", "o.npy"],
                 ["explain", "--model", "m", "in.fa", "-o", "o.npz"],
                 ["probe", "--model", "m", "--task", "t", "--scheme", "s", "--num-labels", "2", "--shot", "10", "a", "b",
                  "--seeds", "1", "-o", "o.json"]):
        assert build_parser().parse_args(argv).bf16 == ("false" if argv[0] == "explain" else "auto"), argv[0]
        assert build_parser().parse_args(argv + ["--bf16", "false"]).bf16 == "false", argv[0]
    _, folder = classifier
    out = tmp_path / "p.tsv"
    assert main(["predict", "--model", str(folder), str(fasta), "-o", str(out), "--bf16", "true"]) == 0
    want, _ = predict(folder, list(records.values()), device="auto", bf16=True)
    got = pd.read_csv(out, sep="\t")[["prob_non-promoter", "prob_promoter"]].to_numpy()
    assert np.allclose(got, want, atol=1e-5)


def test_predict_table_inputs(classifier, fewshot, tmp_path):
    _, folder = classifier
    task = read_task_file(fewshot / "Prom-core" / "test.tsv")  # 6-mer text, as the task files hold it
    src_lines = (fewshot / "Prom-core" / "test.tsv").read_text().splitlines()[:13]
    tsv = tmp_path / "rows.tsv"
    tsv.write_text("\n".join(src_lines) + "\n")
    out = tmp_path / "p.tsv"
    assert main(["predict", "--model", str(folder), str(tsv), "-o", str(out)]) == 0
    df = pd.read_csv(out, sep="\t", dtype={"id": str})
    assert df["id"].tolist() == [str(i) for i in range(1, 13)]
    prob, _ = predict(folder, task.sequences[:12], device="cpu")
    assert np.allclose(df[["prob_non-promoter", "prob_promoter"]].to_numpy(), prob, atol=1e-5)

    csv = tmp_path / "named.csv.gz"
    with gzip.open(csv, "wt") as fh:
        fh.write("name,label,sequence\n")
        fh.writelines(f'"r{i}",{lab},{s}\n' for i, (s, lab) in enumerate(zip(task.sequences[:3], task.labels)))
    ids, seqs = read_input(csv)
    assert ids == ["r0", "r1", "r2"] and [s.decode() for s in seqs] == task.sequences[:3]


def test_predict_errors(classifier, pretrained, fasta, tmp_path, capsys):
    _, folder = classifier

    def err(argv):
        assert main(argv) == 2
        msg = capsys.readouterr().err.strip().splitlines()[-1]
        return msg

    out = str(tmp_path / "p.tsv")
    short = tmp_path / "short.fa"
    short.write_text(">ok\nACGTACGTAC\n>tiny one\nACGT\n")
    assert "record 'tiny' has 4 bp, shorter than k=6" in err(["predict", "--model", str(folder), str(short), "-o", out])
    bad = tmp_path / "bad.fasta"
    bad.write_text("ACGT\n>x\nACGT\n")
    assert "sequence before the first '>' header" in err(["predict", "--model", str(folder), str(bad), "-o", out])
    txt = tmp_path / "seqs.txt"
    txt.write_text("ACGTACGT\n")
    assert "unknown input extension '.txt'" in err(["predict", "--model", str(folder), str(txt), "-o", out])
    nocfg = tmp_path / "empty_model"
    nocfg.mkdir()
    assert "not a model folder (no config.json)" in err(["predict", "--model", str(nocfg), str(fasta), "-o", out])
    assert "not a fine-tuned classifier" in err(["predict", "--model", str(pretrained), str(fasta), "-o", out])
    assert "--stride: must be in [1, 510]" in err(["predict", "--model", str(folder), str(fasta), "-o", out,
                                                    "--stride", "600"])
    noseq = tmp_path / "noseq.tsv"
    noseq.write_text("id\tlabel\nx\t1\n")
    assert "no 'sequence' (or 'seq') column" in err(["predict", "--model", str(folder), str(noseq), "-o", out])
    assert not (tmp_path / "p.tsv").exists()


# ------------------------------------------------------------------------------------------------
# embed
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_embed_padding_invariant_and_windowed(pretrained, records, pooling):
    seqs = list(records.values())
    together = embed(pretrained, seqs, pooling=pooling, device="cpu", batch_size=8)
    assert together.shape == (4, 32) and together.dtype == np.float32
    for i, s in enumerate(seqs):
        alone = embed(pretrained, [s], pooling=pooling, device="cpu")
        assert np.allclose(alone[0], together[i], atol=1e-5), i
    assert not np.allclose(together[1], together[2], atol=1e-3)


def test_embed_mean_weights_windows_by_tokens_and_layers(pretrained, records):
    long = records["long5k"]
    tok = seq_to_ids(long, 6)
    _, start, length = plan_windows([len(tok)], W, 255)
    from genemask.modelfolder import load_encoder

    enc, _ = load_encoder(pretrained)
    with torch.inference_mode():
        sums = [enc(input_ids=torch.tensor([[CLS, *tok[s : s + n], SEP]])).last_hidden_state[0].double().sum(0)
                for s, n in zip(start, length)]
    want = (torch.stack(sums).sum(0) / (length + 2).sum()).numpy()
    got = embed(pretrained, [long], pooling="mean", device="cpu", bf16=False)[0]  # float32, as `want`
    assert np.allclose(got, want, atol=1e-5)

    last = embed(pretrained, [records["mid300"]], layer=-1, device="cpu")
    assert np.array_equal(last, embed(pretrained, [records["mid300"]], layer=1, device="cpu"))  # tiny: 1 layer
    first = embed(pretrained, [records["mid300"]], layer=0, device="cpu")
    assert not np.allclose(first, last, atol=1e-3)
    with pytest.raises(GeneMaskError, match=r"--layer: .* hidden states 0..1"):
        embed(pretrained, [records["mid300"]], layer=2, device="cpu")


def test_embed_cli_npy_from_classifier_equals_pretrained(classifier, pretrained, fasta, records, tmp_path, capsys):
    _, folder = classifier
    out = tmp_path / "emb.npy"
    assert main(["embed", "--model", str(folder), str(fasta), "-o", str(out), "--pooling", "mean"]) == 0
    vec = np.load(out)
    assert vec.shape == (4, 32) and vec.dtype == np.float32
    assert ids_file(out) == tmp_path / "emb.ids.txt"
    assert ids_file(out).read_text().split() == list(records)
    # the classifier's encoder is the pretrained one (freshly initialised head only)
    assert np.allclose(vec, embed(pretrained, list(records.values()), pooling="mean", device="cpu"), atol=1e-6)

    assert main(["embed", "--model", str(pretrained), str(fasta), "-o", str(tmp_path / "e.csv")]) == 2
    assert "unknown output extension '.csv'" in capsys.readouterr().err


def test_embed_cli_parquet_reads_back_with_pandas_equal_to_npy(pretrained, fasta, records, tmp_path):
    """.parquet: columns id (string) and embedding (list<float32>); pandas reads back the ids and the
    very values of the .npy output; the run's settings are in the schema metadata."""
    import pyarrow.parquet as pq

    npy, par = tmp_path / "emb.npy", tmp_path / "emb.parquet"
    for out in (npy, par):
        assert main(["embed", "--model", str(pretrained), str(fasta), "-o", str(out), "--pooling", "mean",
                     "--layer", "0"]) == 0
    schema = pq.read_schema(par)
    assert [(f.name, str(f.type)) for f in schema] == [("id", "string"), ("embedding", "list<element: float>")]
    assert json.loads(schema.metadata[b"genemask"]) == {"model": str(pretrained), "pooling": "mean", "layer": 0,
                                                       "hidden": 32}
    df = pd.read_parquet(par)
    assert list(df.columns) == ["id", "embedding"] and df["id"].tolist() == list(records)
    vec = np.stack(df["embedding"].to_numpy())
    assert vec.dtype == np.float32 and vec.shape == (4, 32)
    assert np.array_equal(vec, np.load(npy))
    assert ids_file(npy).read_text().split() == df["id"].tolist()
