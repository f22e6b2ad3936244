"""Frozen-representation probes: a second way to read a pretrained model, without fine-tuning noise.

Fine-tuning changes every weight of the model from a handful of examples, so its score mixes what
the pretrained representation holds with how well a few gradient steps adapt it (and with the
luck of those steps: dropout, batch order). A probe keeps the encoder frozen: each sequence is
embedded once (mean pooling over the k-mer tokens of the last layer, `embed`), and an L2-regularised
logistic regression is fitted on the K-shot training rows. Its regularisation strength C is chosen
by stratified cross-validation on the training rows only (the test rows are scored once), so the
probe measures how linearly the pretrained features separate the classes; it is the protocol of
the Nucleotide Transformer and BEND benchmarks. A probe on `none` (random initialisation) reads
random features of k-mer composition: above chance only where composition alone solves the task.

`fit_probe` works on plain arrays (features standardised with the training rows' mean and sd).
"""
from __future__ import annotations

import numpy as np

C_GRID = tuple(float(c) for c in np.logspace(-4, 3, 8))  # inverse regularisation strengths tried
MAX_FOLDS = 5


def choose_c(x: np.ndarray, y: np.ndarray, seed: int, grid=C_GRID) -> float:
    """The C of `grid` with the best mean cross-validated log-loss on (x, y): stratified folds,
    as many as the smallest class allows (at most MAX_FOLDS); 1.0 when a class has one row."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold

    present = np.bincount(y)[np.unique(y)]  # rows per class present
    folds = min(MAX_FOLDS, int(present.min())) if present.size > 1 else 0
    if folds < 2:
        return 1.0
    labels = np.unique(y)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    losses = np.zeros(len(grid))
    for train, held in cv.split(x, y):
        for i, c in enumerate(grid):
            clf = LogisticRegression(C=c, max_iter=2000).fit(x[train], y[train])
            losses[i] += log_loss(y[held], clf.predict_proba(x[held]), labels=labels)
    return float(grid[int(np.argmin(losses))])  # the first of equal losses: the strongest regularisation


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int,
              num_labels: int) -> tuple[np.ndarray, float]:
    """(class probabilities of the test rows [n_test, num_labels], the chosen C)."""
    from sklearn.linear_model import LogisticRegression

    x_train, x_test = np.asarray(x_train, np.float64), np.asarray(x_test, np.float64)
    y_train = np.asarray(y_train, np.int64)
    mu, sd = x_train.mean(axis=0), x_train.std(axis=0)
    sd[sd == 0] = 1.0
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    c = choose_c(x_train, y_train, seed)
    clf = LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train)
    prob = np.zeros((len(x_test), num_labels))
    prob[:, clf.classes_] = clf.predict_proba(x_test)  # a class absent from training keeps probability 0
    return prob, c
