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

PROTOCOLS = ("finetune", "probe")  # how a pretrained model is read: fine-tuned, or probed frozen (this module)
PROTOCOL_NAMES = {"finetune": "Fine-tuning", "probe": "Frozen-representation probes"}  # headings of reports
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


def probe_runs(model: str, task: str, scheme: str, num_labels: int, shots, seeds, output,
               batch_size: int = 64, device: str = "auto", max_train_rows: int = 0, bf16="auto") -> list[dict]:
    """`genemask probe`: every (shot, seed) probe run of one pretrained model on one task, in one JSON.

    shots: (shot, train TSV, test TSV) per shot size (the cleaned files of `genemask task-data`, the
    same rows fine-tuning trains and scores on). Every distinct sequence is embedded once (mean
    pooling, last layer); each seed draws its own cross-validation folds. `max_train_rows` > 0 caps a
    shot's training rows at a stratified subsample of that size (`tasks.stratified_subsample`, seed 0:
    the same rows for every model, so probes stay paired), e.g. a task's full pool. The JSON is
    {"runs": [record, ...]}, each record with the keys of a fine-tuning run's JSON plus
    `protocol: probe` and the chosen `probe_c`. bf16 (auto, True, False): the embedding's forward
    passes under bf16 autocast (`precision.use_bf16`); `precision` records which was used.
    """
    import json
    import sys
    import time

    from .finetune import compute_metrics
    from .inference import embed
    from .modelfolder import choose_device, read_meta
    from .precision import parse_setting, use_bf16
    from .tasks import read_task_file, stratified_subsample
    from .util import atomic_output

    meta = read_meta(model)
    bf16 = use_bf16(parse_setting(bf16, "--bf16"), choose_device(device))
    files, used = {}, {}  # path -> TaskData, path -> the row indices probed
    for _, train, test in shots:
        for path in (train, test):
            if path not in files:
                files[path] = read_task_file(path, num_labels)
                used[path] = np.arange(len(files[path].labels))
        if max_train_rows > 0:  # a fixed stratified subsample of a large training file
            used[train] = stratified_subsample(files[train].labels, max_train_rows, 0)
    distinct = list(dict.fromkeys(files[p].sequences[i] for p in files for i in used[p]))
    t0 = time.perf_counter()
    vecs = embed(model, distinct, pooling="mean", batch_size=batch_size, device=device, source=f"{task} task files",
                 bf16=bf16)
    embed_s = time.perf_counter() - t0
    row = {s: i for i, s in enumerate(distinct)}

    def features(path):
        f, idx = files[path], used[path]
        return vecs[[row[f.sequences[i]] for i in idx]], np.asarray(f.labels, np.int64)[idx]

    runs = []
    for shot, train, test in shots:
        (x_tr, y_tr), (x_te, y_te) = features(train), features(test)
        for seed in seeds:
            t0 = time.perf_counter()
            prob, c = fit_probe(x_tr, y_tr, x_te, int(seed), int(num_labels))
            fit_s = time.perf_counter() - t0
            m = compute_metrics(y_te, prob, int(num_labels))
            runs.append({"task": task, "shot": int(shot), "seed": int(seed), "scheme": scheme, "protocol": "probe",
                         "n_train": int(y_tr.size), "n_test": int(y_te.size), "num_labels": int(num_labels), **m,
                         "train_seconds": round(fit_s, 3), "eval_seconds": round(embed_s / len(shots) / len(seeds), 3),
                         "probe_c": c, "model": str(model), "precision": "bf16" if bf16 else "float32",
                         "pretrain_seed": meta.get("pretrain_seed"),
                         "pretrain_step": meta.get("pretrain_step")})
            print(f"[probe {task} {shot}-shot seed {seed} {scheme}] accuracy {m['accuracy']:.4f} mcc {m['mcc']:.4f} "
                  f"C {c:g}", file=sys.stderr, flush=True)
    with atomic_output(output) as tmp:
        tmp.write_text(json.dumps({"runs": runs}, indent=1, allow_nan=False) + "\n")
    return runs
