"""Fine-tuning with a tiny BERT on the real few-shot files: metrics, determinism, 3 classes, learning."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genemask.cli import main
from genemask.finetune import DEFAULT_SETTINGS, compute_metrics, finetune_cli, load_settings, select_regime
from genemask.modelfolder import model_k
from genemask.tasks import prepare_task_data
from genemask.util import GeneMaskError

QUICK = {"epochs": 2}  # paper regimes, epochs cut to 2
METRIC_KEYS = ("accuracy", "macro_f1", "mcc", "auroc")


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # tiny models: one thread is fastest and immune to a busy machine; finetune_cli restores torch's count
    monkeypatch.setenv("GENEMASK_THREADS", "1")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from transformers import BertConfig, BertForMaskedLM

    d = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=4101, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    BertForMaskedLM(cfg).save_pretrained(d)
    (d / "genemask.json").write_text(json.dumps({"k": 6}))
    return d


@pytest.fixture(scope="module")
def prom_core_10(fewshot, tmp_path_factory):
    d = tmp_path_factory.mktemp("prom_core_10")
    prepare_task_data(task="Prom-core", train=str(fewshot / "Prom-core" / "10" / "train.tsv"),
                      test=str(fewshot / "Prom-core" / "test.tsv"), exclude=[], num_labels=2, max_test=200, seed=0,
                      out_train=d / "train.tsv", out_test=d / "test.tsv", out_stats=d / "stats.json")
    return d


def _run(model, data, out, seed=0, shot=10, num_labels=2, task="Prom-core", settings=QUICK):
    return finetune_cli(model=str(model), train=str(data / "train.tsv"), test=str(data / "test.tsv"), task=task,
                        shot=shot, seed=seed, scheme="random-init", num_labels=num_labels, settings=settings,
                        output=str(out))


def test_prom_core_10shot_metrics_and_determinism(tiny_model, prom_core_10, tmp_path):
    threads = torch.get_num_threads()
    r1 = _run(tiny_model, prom_core_10, tmp_path / "a.json", seed=7)
    r2 = _run(tiny_model, prom_core_10, tmp_path / "b.json", seed=7)
    assert torch.get_num_threads() == threads
    j1 = json.loads((tmp_path / "a.json").read_text())
    assert j1 == r1
    for key in ("task", "shot", "seed", "scheme", "n_train", "n_test", "num_labels", *METRIC_KEYS,
                "train_seconds", "eval_seconds", "epochs", "batch_size", "lr"):
        assert key in j1, key
    assert (j1["task"], j1["shot"], j1["seed"], j1["n_train"], j1["n_test"]) == ("Prom-core", 10, 7, 20, 200)
    assert (j1["epochs"], j1["batch_size"], j1["lr"]) == (2, 5, 1e-4)
    assert j1["steps"] == 8 and j1["warmup_steps"] == 1
    for key in ("accuracy", "macro_f1", "auroc"):
        assert 0.0 <= j1[key] <= 1.0
    assert -1.0 <= j1["mcc"] <= 1.0
    assert {k: r1[k] for k in METRIC_KEYS} == {k: r2[k] for k in METRIC_KEYS}


def test_splice_three_classes_ovo_auroc(tiny_model, fewshot, tmp_path):
    d = tmp_path / "data"
    prepare_task_data(task="Splice-40", train=str(fewshot / "Splice-40" / "10" / "train_splice40_10.tsv"),
                      test=str(fewshot / "Splice-40" / "test.tsv"), exclude=[], num_labels=3, max_test=300, seed=0,
                      out_train=d / "train.tsv", out_test=d / "test.tsv", out_stats=d / "stats.json")
    r = _run(tiny_model, d, tmp_path / "m.json", num_labels=3, task="Splice-40", settings={"epochs": 1})
    assert r["num_labels"] == 3 and r["n_train"] == 300 and r["n_test"] == 300
    assert r["auroc"] is not None and 0.0 <= r["auroc"] <= 1.0
    assert 0.0 <= r["accuracy"] <= 1.0 and -1.0 <= r["mcc"] <= 1.0


def _synthetic(path, n, rng, length=60):
    """GC-rich (label 1) vs AT-rich (label 0) sequences: a task any working classifier learns."""
    lines = ["sequence\tlabel"]
    for i in range(n):
        y = i % 2
        gc = 0.75 if y else 0.25
        s = rng.choice(list("ATCG"), size=length, p=[(1 - gc) / 2, (1 - gc) / 2, gc / 2, gc / 2])
        lines.append("".join(s) + f"\t{y}")
    path.write_text("\n".join(lines) + "\n")


def test_learning_happens_on_easy_synthetic_task(tiny_model, tmp_path):
    rng = np.random.default_rng(0)
    _synthetic(tmp_path / "train.tsv", 160, rng)
    _synthetic(tmp_path / "test.tsv", 200, rng)
    settings = json.dumps({"regimes": [{"max_shot": None, "batch_size": 10, "lr": 1e-3, "epochs": 8}],
                           "hidden_dropout": 0.0})
    r = _run(tiny_model, tmp_path, tmp_path / "m.json", shot=80, task="synthetic", settings=settings)
    assert r["accuracy"] > 0.9, r
    assert r["auroc"] > 0.95 and r["mcc"] > 0.8


def test_cli_finetune_with_json_settings(tiny_model, prom_core_10, tmp_path, capsys):
    out = tmp_path / "m.json"
    rc = main(["finetune", "--model", str(tiny_model), "--train", str(prom_core_10 / "train.tsv"),
               "--test", str(prom_core_10 / "test.tsv"), "--task", "Prom-core", "--shot", "10", "--seed", "1",
               "--scheme", "genemask", "--num-labels", "2", "--settings", json.dumps(DEFAULT_SETTINGS | {"epochs": 1}),
               "-o", str(out)])
    assert rc == 0
    j = json.loads(out.read_text())
    assert j["scheme"] == "genemask" and j["epochs"] == 1
    err = capsys.readouterr().err
    assert "epoch 1/1" in err


def test_bad_model_folder_and_settings_errors(tmp_path, prom_core_10, capsys):
    out = tmp_path / "m.json"
    with pytest.raises(GeneMaskError, match="no config.json"):
        _run(tmp_path, prom_core_10, out)
    assert not out.exists()
    rc = main(["finetune", "--model", str(tmp_path), "--train", str(prom_core_10 / "train.tsv"),
               "--test", str(prom_core_10 / "test.tsv"), "--task", "x", "--shot", "10", "--seed", "1",
               "--scheme", "s", "--num-labels", "2", "--settings", '{"epoch": 3}', "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "unknown fine-tuning setting" in err[0] and "epoch" in err[0]
    assert not out.exists()


def test_settings_schema(tmp_path):
    s = load_settings(None)
    assert select_regime(s, 10) == {"max_shot": 100, "batch_size": 5, "lr": 1e-4, "epochs": 20}
    assert select_regime(s, 100)["batch_size"] == 5
    assert select_regime(s, 500) == {"max_shot": None, "batch_size": 15, "lr": 5e-5, "epochs": 5}
    assert select_regime(s, 1000)["lr"] == 5e-5
    assert (s["warmup_ratio"], s["weight_decay"], s["hidden_dropout"]) == (0.1, 0.01, 0.1)
    assert select_regime(load_settings('{"epochs": 3}'), 500)["epochs"] == 3
    y = tmp_path / "ft.yaml"
    y.write_text("regimes:\n  - {max_shot: 50, batch_size: 4, lr: 0.001, epochs: 2}\neval_batch_size: 8\n")
    s = load_settings(str(y))
    assert select_regime(s, 50)["batch_size"] == 4 and s["eval_batch_size"] == 8
    with pytest.raises(GeneMaskError, match="no fine-tuning regime covers shot 100"):
        select_regime(s, 100)
    for bad, msg in [('{"regimes": []}', "non-empty"), ('{"warmup_ratio": 2}', "warmup_ratio"),
                     ('{"regimes": [{"batch_size": 0, "lr": 1, "epochs": 1}]}', "batch_size"),
                     ('{"regimes": [{"lr": 1, "epochs": 1}]}', "'batch_size' is a required property"), ("{oops", "not valid JSON"),
                     (str(tmp_path / "absent.json"), "cannot read")]:
        with pytest.raises(GeneMaskError, match=msg):
            load_settings(bad)


def test_model_k(tmp_path):
    assert model_k(tmp_path) == 6
    (tmp_path / "genemask.json").write_text('{"k": 4, "scheme": "dnabert"}')
    assert model_k(tmp_path) == 4


def test_compute_metrics():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    m = compute_metrics(y, p, 2)
    assert m == {"accuracy": 1.0, "macro_f1": 1.0, "mcc": 1.0, "auroc": 1.0}
    m = compute_metrics(y, p[:, ::-1], 2)
    assert m["accuracy"] == 0.0 and m["mcc"] == -1.0 and m["auroc"] == 0.0
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y3 = rng.integers(0, 3, 60)
    p3 = rng.dirichlet(np.ones(3), 60).astype(np.float32)
    m3 = compute_metrics(y3, p3, 3)
    p64 = p3.astype(np.float64) / p3.astype(np.float64).sum(1, keepdims=True)
    assert m3["auroc"] == pytest.approx(roc_auc_score(y3, p64, multi_class="ovo"))
    assert compute_metrics(np.zeros(4, int), p, 2)["auroc"] is None  # one class: AUROC undefined



def _sklearn_metrics(y, prob, num_labels):
    """The reference: scikit-learn's metrics as compute_metrics used them (the ovo AUROC over the
    classes present by its pairwise definition with sklearn's binary ROC AUC when only two of three or
    more are present, where roc_auc_score(multi_class="ovo") takes the binary path and refuses 2-D scores)."""
    import warnings
    from itertools import combinations

    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, roc_auc_score

    prob = np.asarray(prob, dtype=np.float64)
    prob = prob / prob.sum(axis=1, keepdims=True)
    pred = prob.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {"accuracy": accuracy_score(y, pred),
               "macro_f1": f1_score(y, pred, average="macro", labels=list(range(num_labels)), zero_division=0),
               "mcc": matthews_corrcoef(y, pred), "auroc": None}
    present = np.unique(y)
    if len(present) < 2:
        return out
    if num_labels == 2:
        out["auroc"] = roc_auc_score(y, prob[:, 1])
        return out
    sub = prob if len(present) == num_labels else prob[:, present] / prob[:, present].sum(axis=1, keepdims=True)
    if len(present) > 2:
        out["auroc"] = roc_auc_score(y, sub, multi_class="ovo", average="macro", labels=list(present))
    pairs = []
    for i, j in combinations(range(len(present)), 2):
        rows = np.isin(y, present[[i, j]])
        pairs.append((roc_auc_score(y[rows] == present[i], sub[rows, i])
                      + roc_auc_score(y[rows] == present[j], sub[rows, j])) / 2)
    if out["auroc"] is None:
        out["auroc"] = float(np.mean(pairs))
    else:  # the pairwise definition is what multi_class="ovo" computes
        assert out["auroc"] == pytest.approx(np.mean(pairs), abs=1e-12)
    return out


def test_compute_metrics_equals_sklearn_on_random_cases():
    """compute_metrics (numpy) against scikit-learn on 300 random cases: 2/3/4 classes, probabilities
    with heavy ties (rounded to 1 decimal, or all rows equal), a class absent from y, a class never
    predicted, a single class in y, float32 input. Accuracy and F1 (ratios of integers) exactly,
    MCC and AUROC to 1e-12."""
    rng = np.random.default_rng(7)
    kinds = {"absent": 0, "never_predicted": 0, "single": 0, "constant": 0, "mcc0": 0}
    for case in range(300):
        num_labels = int(rng.choice([2, 3, 4]))
        n = int(rng.integers(1, 90))
        prob = rng.dirichlet(np.ones(num_labels) * rng.choice([0.3, 1.0, 5.0]), n)
        if rng.random() < 0.5:
            prob = np.round(prob, 1) + 0.05  # heavy ties, no zero row sums
        classes = np.arange(num_labels)
        mode = case % 5
        if mode == 1:  # one or more classes absent from y
            keep = rng.choice(num_labels, int(rng.integers(1, num_labels)), replace=False)
            classes = np.sort(keep)
            kinds["absent"] += len(classes) < num_labels
        elif mode == 2:  # a class never predicted
            prob[:, int(rng.integers(num_labels))] *= 1e-3
        elif mode == 3:  # a single class
            classes = classes[[int(rng.integers(num_labels))]]
        elif mode == 4 and rng.random() < 0.5:  # every row the same: all ties, one prediction
            prob[:] = prob[0]
            kinds["constant"] += 1
        y = rng.choice(classes, n)
        if rng.random() < 0.3:
            prob = prob.astype(np.float32)
        if rng.random() < 0.3:
            y = y.tolist()
        got = compute_metrics(y, prob, num_labels)
        want = _sklearn_metrics(np.asarray(y), prob, num_labels)
        assert all(type(got[k]) is float for k in ("accuracy", "macro_f1", "mcc")), got
        assert got["accuracy"] == want["accuracy"] and got["macro_f1"] == want["macro_f1"], (case, got, want)
        assert got["mcc"] == pytest.approx(want["mcc"], abs=1e-12), (case, got, want)
        if want["auroc"] is None:
            assert got["auroc"] is None
            kinds["single"] += 1
        else:
            assert type(got["auroc"]) is float and got["auroc"] == pytest.approx(want["auroc"], abs=1e-12), \
                (case, got, want)
        pred = np.asarray(prob, dtype=np.float64).argmax(1)
        kinds["never_predicted"] += len(np.unique(pred)) < num_labels
        kinds["mcc0"] += got["mcc"] == 0.0
    assert min(kinds.values()) >= 15, kinds  # every edge case was exercised


def test_compute_metrics_edge_cases():
    # a label neither true nor predicted scores F1 0 and counts in the macro mean
    y, p = np.array([0, 0, 1, 1]), np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]])
    m = compute_metrics(y, p, 3)
    assert m["accuracy"] == 1.0 and m["macro_f1"] == pytest.approx(2 / 3) and m["mcc"] == 1.0
    assert m["auroc"] == 1.0  # classes 0 and 1 present of 3: ovo over the pair (scikit-learn refused this case)
    # one prediction for every row: MCC's denominator is 0 -> 0.0; all scores tied -> AUROC 1/2
    m = compute_metrics([0, 1, 1, 0], np.full((4, 2), 0.5), 2)
    assert m["mcc"] == 0.0 and m["auroc"] == 0.5 and m["accuracy"] == 0.5 and m["macro_f1"] == pytest.approx(1 / 3)
    with pytest.raises(GeneMaskError, match="NaN"):
        compute_metrics([0, 1], [[0.5, np.nan], [0.5, 0.5]], 2)

def test_save_model_folder_loads_with_auto_classes_and_predicts(tiny_model, prom_core_10, tmp_path):
    """finetune.save: all -> the classifier is a Hugging Face folder; predictions from it equal the
    probabilities the run scored with (same rows, same model)."""
    from transformers import AutoModelForSequenceClassification

    from genemask.inference import predict
    from genemask.tasks import read_task_file

    out = tmp_path / "m.json"
    r = finetune_cli(model=str(tiny_model), train=str(prom_core_10 / "train.tsv"), test=str(prom_core_10 / "test.tsv"),
                     task="Prom-core", shot=10, seed=5, scheme="none", num_labels=2, settings=QUICK,
                     output=str(out), save_model=str(tmp_path / "m.model"))
    assert r["saved_model"] == str(tmp_path / "m.model")
    clf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m.model")
    assert clf.config.num_labels == 2 and set(clf.config.id2label.values()) == {"0", "1"}
    meta = json.loads((tmp_path / "m.model" / "genemask.json").read_text())
    assert (meta["task"], meta["shot"], meta["seed"], meta["metrics"]["accuracy"]) == ("Prom-core", 10, 5,
                                                                                        r["accuracy"])
    te = read_task_file(str(prom_core_10 / "test.tsv"), 2)
    prob, labels = predict(tmp_path / "m.model", te.sequences, device="cpu")
    assert labels == ["0", "1"]
    got = compute_metrics(te.labels, prob, 2)
    assert got["accuracy"] == r["accuracy"] and got["auroc"] == pytest.approx(r["auroc"], abs=1e-9)


def test_damaged_weights_refused_in_one_line(tiny_model, prom_core_10, tmp_path, capsys, monkeypatch):
    """A model folder records the sha256 of its weights; flipped bytes are refused, not scored."""
    out = tmp_path / "m.json"
    finetune_cli(model=str(tiny_model), train=str(prom_core_10 / "train.tsv"), test=str(prom_core_10 / "test.tsv"),
                 task="Prom-core", shot=10, seed=1, scheme="none", num_labels=2, settings=QUICK,
                 output=str(out), save_model=str(tmp_path / "m.model"))
    w = tmp_path / "m.model" / "model.safetensors"
    blob = bytearray(w.read_bytes())
    blob[-100] ^= 0x01  # inside the tensor data: safetensors itself loads this without complaint
    w.write_bytes(bytes(blob))
    for argv in (["predict", "--model", str(tmp_path / "m.model"), str(prom_core_10 / "test.tsv"),
                  "-o", str(tmp_path / "p.tsv")],
                 ["finetune", "--model", str(tmp_path / "m.model"), "--train", str(prom_core_10 / "train.tsv"),
                  "--test", str(prom_core_10 / "test.tsv"), "--task", "Prom-core", "--shot", "10", "--seed", "1",
                  "--scheme", "x", "--num-labels", "2", "-o", str(tmp_path / "x.json")]):
        monkeypatch.setenv("GENEMASK_WORKER", "0")  # the command itself, in this process (as its console script)
        capsys.readouterr()
        rc, err = main(argv), capsys.readouterr().err
        errors = [line for line in err.splitlines() if "error" in line]
        assert rc == 2 and len(errors) == 1 and "Traceback" not in err, err
        assert errors[0].startswith(f"genemask {argv[0]}: error: {w}: damaged weights (sha256 "), errors
        assert not (tmp_path / "p.tsv").exists() and not (tmp_path / "x.json").exists()


# ---------------------------------------------------------------------------------------------
# precision (finetune.settings.bf16)
# ---------------------------------------------------------------------------------------------
def _weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_bf16_finetuning_is_deterministic_with_float32_master_weights(tiny_model, prom_core_10, tmp_path):
    """bf16: true (forced, so a CPU without bf16 units runs it too): the same seed twice gives the same
    metrics and the same weights; the weights stay float32; the result differs from float32's (the
    autocast really ran) but not by much."""
    runs = {}
    for name, bf16 in (("a", True), ("b", True), ("fp32", False)):
        runs[name] = finetune_cli(model=str(tiny_model), train=str(prom_core_10 / "train.tsv"),
                                  test=str(prom_core_10 / "test.tsv"), task="Prom-core", shot=10, seed=7,
                                  scheme="none", num_labels=2, settings={**QUICK, "bf16": bf16},
                                  output=str(tmp_path / f"{name}.json"), save_model=str(tmp_path / name))
    a, b, fp32 = runs["a"], runs["b"], runs["fp32"]
    assert (a["precision"], fp32["precision"]) == ("bf16", "float32")
    timing = ("train_seconds", "eval_seconds", "saved_model")
    assert {k: v for k, v in a.items() if k not in timing} == {k: v for k, v in b.items() if k not in timing}
    wa, wb, w32 = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "fp32")
    assert wa.keys() == wb.keys() == w32.keys()
    assert all(wa[k].dtype == torch.float32 and torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], w32[k]) for k in wa)
    assert a["final_train_loss"] != fp32["final_train_loss"]
    assert abs(a["final_train_loss"] - fp32["final_train_loss"]) < 0.05


def test_bf16_training_keeps_float32_weights_and_logits(tiny_model):
    """train_classifier with bf16: the body's matrix products run in bf16, the classifier's logits in
    float32 (precision.float32_head), and the parameters stay float32 (so do the AdamW moments,
    allocated like them)."""
    from genemask.finetune import train_classifier
    from genemask.modelfolder import load_classifier

    torch.manual_seed(0)
    clf = load_classifier(tiny_model, 2, 0.1)
    seen = {}

    def dtype_of(name):
        def hook(module, args, out):
            seen.setdefault(name, out.dtype)
        return hook

    clf.bert.encoder.layer[0].intermediate.dense.register_forward_hook(dtype_of("body"))
    clf.classifier.register_forward_hook(dtype_of("head"))
    ids, lengths = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 9, 3, 0]]), torch.tensor([5, 4])
    info = train_classifier(clf, ids, lengths, [0, 1], {"batch_size": 2, "lr": 1e-3, "epochs": 2},
                            DEFAULT_SETTINGS, 0, torch.device("cpu"), label="t", bf16=True)
    assert seen == {"body": torch.bfloat16, "head": torch.float32}
    assert np.isfinite(info["final_train_loss"])
    assert all(p.dtype == torch.float32 for p in clf.parameters())


@pytest.mark.parametrize("flags", [(), ("avx512_bf16",)])
def test_bf16_auto_resolves_as_precision_says(tiny_model, prom_core_10, tmp_path, monkeypatch, flags):
    """The default, auto, follows precision.use_bf16: on a CPU, bf16 exactly when its flags name bf16 units."""
    from genemask import precision

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda cpuinfo="/proc/cpuinfo": flags)
    assert load_settings(None)["bf16"] == "auto"
    r = _run(tiny_model, prom_core_10, tmp_path / "m.json", settings={"epochs": 1})
    assert precision.use_bf16("auto", "cpu") == bool(flags)
    assert r["precision"] == ("bf16" if flags else "float32")


def test_host_dropout_keeps_its_float32_mask_on_bf16_activations():
    """Under autocast a hidden activation is bf16; the mask is not rounded to bf16 (1/0.9 would become
    1.109): the product comes back float32, the same draws as for a float32 activation."""
    from genemask.fused_adamw_dropout import HostDropout

    x = torch.randn(4, 8).bfloat16()
    a = HostDropout(0.1, np.random.Generator(np.random.PCG64(3)))
    b = HostDropout(0.1, np.random.Generator(np.random.PCG64(3)))
    y16, y32 = a(x), b(x.float())
    assert y16.dtype == torch.float32 and torch.equal(y16, y32)
    ratio = y32[x != 0] / x.float()[x != 0]
    assert ((ratio == 0) | ((ratio - 1 / 0.9).abs() < 1e-6)).all()  # bf16's 1.109375 would be 2e-3 off
