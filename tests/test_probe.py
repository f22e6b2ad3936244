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
