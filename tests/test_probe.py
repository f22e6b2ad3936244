"""Frozen-representation probes (genemask.probe) on planted features."""
from __future__ import annotations

import numpy as np
import pytest

from genemask.finetune import compute_metrics
from genemask.probe import C_GRID, choose_c, fit_probe


def _planted(n_train, n_test, dim=64, signal=1.0, seed=0, classes=2):
    """Features with a linear signal: class c shifts the features along its own random direction."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(classes, dim))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    y_tr = np.repeat(np.arange(classes), n_train // classes)
    y_te = np.tile(np.arange(classes), n_test // classes)
    x_tr = rng.normal(size=(y_tr.size, dim)) + 3 * signal * dirs[y_tr]
    x_te = rng.normal(size=(y_te.size, dim)) + 3 * signal * dirs[y_te]
    return x_tr, y_tr, x_te, y_te


@pytest.mark.parametrize("classes", [2, 3])
def test_a_planted_linear_signal_is_recovered_from_ten_shots(classes):
    x_tr, y_tr, x_te, y_te = _planted(10 * classes, 600, classes=classes)
    prob, c = fit_probe(x_tr, y_tr, x_te, seed=1, num_labels=classes)
    m = compute_metrics(y_te, prob, classes)
    assert m["accuracy"] > 0.9 and m["mcc"] > 0.85 and c in C_GRID
    assert np.allclose(prob.sum(axis=1), 1)


def test_no_signal_scores_chance():
    x_tr, y_tr, x_te, y_te = _planted(20, 2000, signal=0.0)
    prob, _ = fit_probe(x_tr, y_tr, x_te, seed=1, num_labels=2)
    assert abs(compute_metrics(y_te, prob, 2)["accuracy"] - 0.5) < 0.05


def test_same_seed_identical_and_test_rows_never_used_for_c():
    x_tr, y_tr, x_te, y_te = _planted(40, 200, signal=0.3, seed=3)
    a, ca = fit_probe(x_tr, y_tr, x_te, seed=7, num_labels=2)
    b, cb = fit_probe(x_tr, y_tr, x_te, seed=7, num_labels=2)
    assert ca == cb and np.array_equal(a, b)
    # C depends on the training rows only: other test rows, the same C
    _, cc = fit_probe(x_tr, y_tr, x_te[::-1] * 5, seed=7, num_labels=2)
    assert cc == ca
    # a strong signal prefers weaker regularisation than pure noise
    strong = _planted(40, 2, signal=2.0, seed=4)
    noise = _planted(40, 2, signal=0.0, seed=5)
    assert choose_c(strong[0], strong[1], seed=0) > choose_c(noise[0], noise[1], seed=0)


def test_a_class_with_one_row_uses_the_default_c_and_keeps_its_column():
    x_tr, y_tr, x_te, _ = _planted(10, 20, classes=2)
    y_tr = np.array([0] * 9 + [1])
    x_tr = x_tr[:10]
    prob, c = fit_probe(x_tr, y_tr, x_te, seed=0, num_labels=3)
    assert c == 1.0 and prob.shape == (20, 3) and (prob[:, 2] == 0).all()


def test_probe_runs_of_a_real_model_on_real_task_files(tmp_path, root, fewshot):
    """One JSON of (shot, seed) probe runs with the keys of a fine-tuning run, protocol probe;
    identical when rerun."""
    import json

    from genemask.pretrain import build_model
    from genemask.probe import probe_runs
    from genemask.tokenizer import build_tokenizer, save_tokenizer

    pre = tmp_path / "pre"
    model, k = build_model(json.loads((root / "resources" / "models" / "tiny.json").read_text()), seed=0)
    model.save_pretrained(pre)
    save_tokenizer(build_tokenizer(k), pre)
    (pre / "genemask.json").write_text(json.dumps({"k": k, "scheme": "dnabert", "pretrain_seed": 3,
                                                   "pretrain_step": 100}))
    test = tmp_path / "test.tsv"
    lines = (fewshot / "Prom-core" / "test.tsv").read_text().splitlines()
    test.write_text("\n".join(lines[:21] + lines[-20:]) + "\n")  # both classes
    shots = [(10, str(fewshot / "Prom-core" / "10" / "train.tsv"), str(test)),
             (50, str(fewshot / "Prom-core" / "50" / "train.tsv"), str(test))]
    out = tmp_path / "probe.json"
    runs = probe_runs(str(pre), "Prom-core", "dnabert", 2, shots, [1, 2], out)
    assert json.loads(out.read_text()) == {"runs": runs}
    assert [(r["shot"], r["seed"]) for r in runs] == [(10, 1), (10, 2), (50, 1), (50, 2)]
    for r in runs:
        assert r["protocol"] == "probe" and r["n_test"] == 40 and r["n_train"] == 2 * r["shot"]
        assert (r["pretrain_seed"], r["pretrain_step"], r["scheme"]) == (3, 100, "dnabert")
        assert 0 <= r["accuracy"] <= 1 and -1 <= r["mcc"] <= 1 and r["probe_c"] in C_GRID
    again = probe_runs(str(pre), "Prom-core", "dnabert", 2, shots, [1, 2], tmp_path / "again.json")
    assert [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in again] == \
        [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in runs]


def test_probe_max_train_rows_probes_the_same_stratified_rows(tmp_path, root, fewshot):
    """--max-train-rows: a fixed stratified subsample of the training rows (class shares kept), the same
    for every call, so probes of different models stay paired; n_train says how many were used."""
    import json

    from genemask.pretrain import build_model
    from genemask.probe import probe_runs
    from genemask.tokenizer import build_tokenizer, save_tokenizer

    pre = tmp_path / "pre"
    model, k = build_model(json.loads((root / "resources" / "models" / "tiny.json").read_text()), seed=0)
    model.save_pretrained(pre)
    save_tokenizer(build_tokenizer(k), pre)
    (pre / "genemask.json").write_text(json.dumps({"k": k, "scheme": "none", "pretrain_seed": 1, "pretrain_step": 0}))
    test = tmp_path / "test.tsv"
    lines = (fewshot / "Prom-core" / "test.tsv").read_text().splitlines()
    test.write_text("\n".join(lines[:11] + lines[-10:]) + "\n")
    shots = [(50, str(fewshot / "Prom-core" / "50" / "train.tsv"), str(test))]
    a = probe_runs(str(pre), "Prom-core", "none", 2, shots, [1], tmp_path / "a.json", max_train_rows=30)
    b = probe_runs(str(pre), "Prom-core", "none", 2, shots, [1], tmp_path / "b.json", max_train_rows=30)
    full = probe_runs(str(pre), "Prom-core", "none", 2, shots, [1], tmp_path / "c.json")
    assert a[0]["n_train"] == 30 and full[0]["n_train"] == 100
    assert {k: v for k, v in a[0].items() if not k.endswith("seconds")} == \
        {k: v for k, v in b[0].items() if not k.endswith("seconds")}


def test_a_probe_of_a_random_model_reads_composition_and_nothing_else(tmp_path, root):
    """`none` (random initialisation): its mean-pooled features are a fixed random function of the
    k-mers present, so a probe is above chance where the classes differ in composition (GC content)
    and at chance where the label is independent of the sequence."""
    import json

    from genemask.pretrain import build_model
    from genemask.probe import probe_runs
    from genemask.tokenizer import build_tokenizer, save_tokenizer

    pre = tmp_path / "none"
    model, k = build_model(json.loads((root / "resources" / "models" / "tiny.json").read_text()), seed=0)
    model.save_pretrained(pre)
    save_tokenizer(build_tokenizer(k), pre)
    (pre / "genemask.json").write_text(json.dumps({"k": k, "scheme": "none", "pretrain_seed": 1, "pretrain_step": 0}))
    rng = np.random.default_rng(5)

    def seqs(n, gc):
        p = [(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2]
        return ["".join(rng.choice(list("ACGT"), 80, p=p)) for _ in range(n)]

    def write(path, rows):
        path.write_text("sequence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
        return str(path)

    tasks = {}
    for name, gc1 in (("gc", 0.8), ("random", 0.5)):  # positives GC-rich, or drawn like the negatives
        train = [(s, 0) for s in seqs(40, 0.5)] + [(s, 1) for s in seqs(40, gc1)]
        test = [(s, 0) for s in seqs(150, 0.5)] + [(s, 1) for s in seqs(150, gc1)]
        shots = [(40, write(tmp_path / f"{name}_train.tsv", train), write(tmp_path / f"{name}_test.tsv", test))]
        tasks[name] = probe_runs(str(pre), name, "none", 2, shots, [1], tmp_path / f"{name}.json")[0]["accuracy"]
    assert tasks["gc"] > 0.65, tasks  # chance 0.5; 300 test rows: SE about 0.03
    assert abs(tasks["random"] - 0.5) < 0.08, tasks
