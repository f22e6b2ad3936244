"""Few-shot fine-tuning and scoring (spec section 7).

`finetune_cli` loads a pretrained BERT folder as `BertForSequenceClassification` (pooled [CLS] +
linear head; the MLM head is dropped, the pooler/classifier start random where the checkpoint lacks
them), fine-tunes it on one K-shot file and scores the test set once. Tokenisation does not need the
saved tokenizer: raw bp -> overlapping k-mer ids with `kmers.seq_to_ids` (non-ACGT k-mers -> [UNK]),
then [CLS] ... [SEP], padded with [PAD] per batch. k comes from the model folder's `genemask.json`
(key "k", default 6).

Settings (`--settings`: a JSON string, a dict, or a .json/.yaml file; every key optional, missing
keys take the paper's values below; `regimes`, if given, replaces the whole list):

    {
      "regimes": [                                   # first regime with shot <= max_shot wins;
        {"max_shot": 100,  "batch_size": 5,  "lr": 1e-4, "epochs": 20},   # 10/50/100-shot
        {"max_shot": null, "batch_size": 15, "lr": 5e-5, "epochs": 5}     # 500/1000-shot (null = any)
      ],
      "epochs": null,          # if set: overrides the epochs of every regime (quick demo runs)
      "warmup_ratio": 0.1,     # linear warm-up over ceil(ratio * total steps), then linear decay to 0
      "weight_decay": 0.01,    # AdamW decoupled weight decay, not applied to biases and LayerNorm
      "hidden_dropout": 0.1,   # BERT hidden_dropout_prob (also the classifier dropout); null = model's
      "max_grad_norm": 1.0,    # gradient clipping (null = off)
      "eval_batch_size": 64,
      "max_length": 512,       # tokens incl. [CLS]/[SEP]; capped by max_position_embeddings
      "device": "cpu",         # "cpu", "cuda" or "auto" (cuda when available)
      "bf16": "auto"           # bf16 autocast: auto (CUDA with bf16, CPUs with amx_bf16/avx512_bf16), true, false
    }

The shot number K selects the regime (Splice-40's "K" files hold 10*K rows per class; K is still the
shot). Determinism: `torch.manual_seed(seed)` before the model is built (head initialisation; on
CUDA also the dropout masks), a numpy PCG64 seeded with `seed` for the hidden dropout masks on CPU
(`fused_adamw_dropout.HostDropout`), and a `torch.Generator` seeded with `seed` for the epoch
shuffles, so on CPU the same seed and thread count give identical metrics (in float32 and in bf16
alike). Threads:
`GENEMASK_THREADS` (if set) is passed to `torch.set_num_threads` for the run
(`modelfolder.thread_scope`); otherwise torch's default (which honours OMP_NUM_THREADS).

Precision (`bf16`, decided by `precision.use_bf16`): with bf16 the forward passes of training and
scoring run under bf16 autocast (matrix products in bf16; layer norms, softmax and reductions in
float32); the weights, their gradients, the AdamW moments and the update stay float32, and the loss
is the cross-entropy of the logits, outside autocast; the classifier's output layer runs in float32
(`precision.float32_head`: bf16 logits would be rounded to 8 significant bits). A HostDropout mask stays
float32, so a dropped-out bf16 activation comes back float32 (it is added to a float32 residual
next). In bf16 on a CPU, training's attention is the math attention in bf16 with its dropout mask
from the same numpy Generator (`fused_adamw_dropout.cpu_training_attention`): torch's fused CPU
attention has a slow bf16 backward (at Splice-40's 37 tokens the bf16 step was slower than
float32's with it), and with attention dropout torch's falls back to float32 products; scoring
keeps torch's attention. The JSON records the precision used (`precision`: bf16 or float32).

Metrics: accuracy, macro-F1, MCC and AUROC (binary: ROC AUC of the class-1 probability; more
classes: the one-vs-one macro AUROC of Hand & Till, the mean over class pairs (a, b) of the mean of
AUC(a vs b by p_a) and AUC(b vs a by p_b) on the rows labelled a or b; a class absent from the test
set is left out and the probabilities renormalised over the classes present; ties count 1/2);
AUROC is null if the test set holds a single class. Computed in numpy (`compute_metrics`). Output
JSON: task, shot, seed, scheme, n_train, n_test, num_labels, accuracy, macro_f1, mcc, auroc,
train_seconds, eval_seconds, epochs, batch_size, lr, precision (+ a few descriptive keys).
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .defaults import check as check_settings
from .defaults import defaults as config_defaults
from .kmers import seq_to_ids
from .modelfolder import (
    check_vocab_size,
    choose_device,
    load_classifier,
    model_k,
    read_meta,
    save_classifier,
    thread_scope,
)
from .precision import autocast, describe, float32_head, parse_setting, use_bf16
from .tasks import read_stats, read_task_file
from .training import linear_schedule, padded_rows, param_groups
from .util import GeneMaskError, atomic_output, read_settings

# The paper's settings (the module docstring above): the config schema's finetune.settings defaults
# (one home: genemask.defaults), which also validates them (`load_settings`).
DEFAULT_SETTINGS: dict[str, Any] = config_defaults("finetune.settings")


# ---------------------------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------------------------
def load_settings(settings: str | os.PathLike | dict | None) -> dict[str, Any]:
    """Merge user settings (dict, JSON string or JSON/YAML file) over the defaults and validate them
    against the config schema's finetune.settings (the rules a config's settings are checked by)."""
    user, src = read_settings(settings, "fine-tuning")
    unknown = sorted(set(user) - set(DEFAULT_SETTINGS))
    if unknown:
        raise GeneMaskError(f"{src}: unknown fine-tuning setting(s) {unknown}; known: {sorted(DEFAULT_SETTINGS)}")
    out = copy.deepcopy(DEFAULT_SETTINGS)
    out.update(copy.deepcopy(user))
    check_settings(out, "finetune.settings", src, prefix="setting")
    out["bf16"] = parse_setting(out["bf16"], f"{src}: setting 'bf16'")
    for r in out["regimes"]:
        r.setdefault("max_shot", None)
    return out


def select_regime(settings: dict, shot: int) -> dict:
    """The first regime whose max_shot is null or >= shot, with the global epochs override applied."""
    for r in settings["regimes"]:
        if r.get("max_shot") is None or shot <= r["max_shot"]:
            out = dict(r)
            if settings.get("epochs") is not None:
                out["epochs"] = settings["epochs"]
            return out
    raise GeneMaskError(f"--settings: no fine-tuning regime covers shot {shot} "
                        f"(max_shot values: {[r.get('max_shot') for r in settings['regimes']]})")


# ---------------------------------------------------------------------------------------------
# model and data
# ---------------------------------------------------------------------------------------------
def encode(seqs: list[str], k: int, max_length: int):
    """Token id rows [CLS] k-mers [SEP] (truncated to max_length) as a padded LongTensor + lengths."""
    ids, lengths = padded_rows([seq_to_ids(s, k) for s in seqs], max_length)
    if (lengths <= 2).any():
        i = int(np.flatnonzero(lengths.numpy() <= 2)[0])
        raise GeneMaskError(f"sequence {i + 1} is shorter than k={k} bp: no k-mer to tokenise")
    return ids, lengths


def _batch(ids, lengths, idx, device):
    import torch

    L = int(lengths[idx].max())
    x = ids[idx, :L]
    mask = (torch.arange(L)[None, :] < lengths[idx][:, None]).long()
    return x.to(device), mask.to(device)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of `score` for the boolean `positive` (both classes present): the Mann-Whitney U with
    average ranks over ties, U / (n_pos * n_neg), i.e. a tie between a positive and a negative
    counts 1/2 (equal to the trapezoid area under the ROC curve). Ranks are kept doubled so the
    sums are exact integers and the result is one rounded division."""
    order = np.argsort(score, kind="stable")
    s = score[order]
    new = np.empty(len(s), dtype=bool)
    new[0] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    bounds = np.append(np.flatnonzero(new), len(s))  # tie-group starts, then n
    twice_rank = bounds[:-1] + 1 + bounds[1:]  # 2 * (average 1-based rank) of each tie group
    n_pos = int(np.count_nonzero(positive))
    n_neg = len(s) - n_pos
    rank_sum2 = int(twice_rank[np.cumsum(new) - 1][positive[order]].sum())
    return (rank_sum2 - n_pos * (n_pos + 1)) / (2 * n_pos * n_neg)


def _ovo_auc(y: np.ndarray, prob: np.ndarray) -> float:
    """One-vs-one macro AUROC (Hand & Till 2001) over the classes present in y, where `prob`'s
    column i scores the i-th present class (sorted): for each unordered pair (a, b), on the rows
    whose true label is a or b, the mean of AUC(a vs b by prob[:, a]) and AUC(b vs a by prob[:, b]);
    then the mean over pairs."""
    classes = np.unique(y)
    scores = []
    for i in range(len(classes)):
        for j in range(i + 1, len(classes)):
            rows = (y == classes[i]) | (y == classes[j])
            is_a = y[rows] == classes[i]
            scores.append((_auc(is_a, prob[rows, i]) + _auc(~is_a, prob[rows, j])) / 2)
    return float(np.mean(scores))


def compute_metrics(y_true, prob, num_labels: int) -> dict[str, float | None]:
    """accuracy, macro_f1, mcc, auroc from labels and class probabilities [n, num_labels].

    prob is normalised per row; pred = argmax (the first maximum on ties). macro_f1: the mean over
    labels 0..num_labels-1 of 2tp / (2tp + fp + fn), 0 for a label neither true nor predicted (it
    still counts in the mean). mcc: the multiclass Matthews coefficient from the confusion matrix C,
    (c*s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)) with t/p the true/predicted counts, c = trace, s = n;
    0.0 when the denominator is 0. auroc: see `_auc` (binary, class-1 probability) and `_ovo_auc`
    (more classes; if some class is absent from y, prob is renormalised over the present classes);
    None when y holds a single class. The values equal scikit-learn's accuracy_score, f1_score
    (average="macro", zero_division=0), matthews_corrcoef and roc_auc_score (multi_class="ovo")."""
    y = np.asarray(y_true).astype(np.int64, copy=False)
    prob = np.asarray(prob, dtype=np.float64)
    prob = prob / prob.sum(axis=1, keepdims=True)
    pred = prob.argmax(axis=1)
    k = max(num_labels, prob.shape[1], int(y.max()) + 1)  # a label >= num_labels: counted, not in F1
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)  # rows: true, columns: predicted
    tp = np.diag(cm)
    t_sum = cm.sum(axis=1)
    p_sum = cm.sum(axis=0)
    f1_denom = (t_sum + p_sum)[:num_labels].astype(np.float64)
    f1 = np.divide(2.0 * tp[:num_labels], f1_denom, out=np.zeros(num_labels), where=f1_denom > 0)
    n = float(len(y))
    t64, p64 = t_sum.astype(np.float64), p_sum.astype(np.float64)
    cov_tp = float(tp.sum()) * n - np.dot(t64, p64)
    cov_pp_tt = (n * n - np.dot(p64, p64)) * (n * n - np.dot(t64, t64))
    out: dict[str, float | None] = {
        "accuracy": int(tp.sum()) / len(y),
        "macro_f1": float(f1.mean()),
        "mcc": 0.0 if cov_pp_tt == 0 else float(cov_tp / np.sqrt(cov_pp_tt)),
        "auroc": None,
    }
    present = np.unique(y)
    if len(present) >= 2:
        if not np.isfinite(prob).all():
            raise GeneMaskError("compute_metrics: class probabilities contain NaN or inf (a row summing to 0?)")
        if num_labels == 2:
            out["auroc"] = float(_auc(y == 1, prob[:, 1]))
        elif len(present) == num_labels:
            out["auroc"] = _ovo_auc(y, prob)
        else:  # some class absent from the test set: ovo over the classes present
            sub = prob[:, present]
            sub = sub / sub.sum(axis=1, keepdims=True)
            if not np.isfinite(sub).all():
                raise GeneMaskError("compute_metrics: the probabilities of the classes present in the test set sum "
                                    "to 0 in some row")
            out["auroc"] = _ovo_auc(y, sub)
    return out


# ---------------------------------------------------------------------------------------------
# training / evaluation
# ---------------------------------------------------------------------------------------------
def make_optimizer(model, lr: float, weight_decay: float, device):
    """AdamW (betas 0.9/0.999, eps 1e-8), decoupled weight decay except on biases and LayerNorm
    weights: on CPU and CUDA `fused_adamw_dropout.FusedAdamW` (torch's fused kernel, one call per group;
    it applies the gradient clip itself), elsewhere `torch.optim.AdamW`."""
    import torch

    groups = param_groups(model, weight_decay)
    if torch.device(device).type in ("cpu", "cuda"):
        from .fused_adamw_dropout import FusedAdamW

        return FusedAdamW(groups, lr=lr, eps=1e-8)
    return torch.optim.AdamW(groups, lr=lr, eps=1e-8)


def train_classifier(model, ids, lengths, labels, regime: dict, settings: dict, seed: int, device,
                     label: str = "finetune", bf16: bool = False) -> dict:
    """Fine-tune in place (AdamW, linear warm-up/decay); returns {steps, warmup_steps, final_loss}.
    bf16: the forward pass under bf16 autocast (float32 weights, optimiser and loss; module docstring).

    The step is only arithmetic: the whole (few-shot) training set and its attention masks go to
    the device once, a batch is an index into them cut to its longest row, the learning rate is
    set from the schedule's formula directly, the optimiser is fused and applies the gradient
    clip itself (`clip_scale`), the running loss stays on the device (one host sync per epoch,
    for the progress line), and on CPU the dropout masks come from numpy (`fused_adamw_dropout.py`),
    and in bf16 on CPU training's attention is `fused_adamw_dropout.cpu_training_attention`.
    """
    import torch

    from .fused_adamw_dropout import FusedAdamW, clip_scale, use_cpu_training_attention, use_host_dropout

    n = len(labels)
    bs, epochs, lr = int(regime["batch_size"]), int(regime["epochs"]), float(regime["lr"])
    steps_per_epoch = math.ceil(n / bs)
    total = steps_per_epoch * epochs
    warmup = math.ceil(settings["warmup_ratio"] * total)
    if torch.device(device).type == "cpu":
        use_host_dropout(model, seed)
        if bf16:  # torch's CPU attention trains slower in bf16 than the math attention (module docstring)
            use_cpu_training_attention(model)
    opt = make_optimizer(model, lr, settings["weight_decay"], device)
    fused = isinstance(opt, FusedAdamW)  # the kernel applies the clip
    schedule = linear_schedule(warmup, total)
    L = int(lengths.max())
    x_all = ids[:, :L].to(device)
    mask_all = (torch.arange(L)[None, :] < lengths[:, None]).long().to(device)
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.long).to(device)
    len_all = lengths.numpy()
    clip = settings["max_grad_norm"]
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(seed)
    if model.config.problem_type is None:  # what the model sets when handed labels (kept in a saved folder)
        model.config.problem_type = "single_label_classification"
    cross_entropy = torch.nn.functional.cross_entropy
    if bf16:
        float32_head(model)
    model.train()
    t0 = time.perf_counter()
    loss_val = float("nan")
    step = 0
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        tot = torch.zeros((), dtype=torch.float64, device=device)
        for b in range(steps_per_epoch):
            idx = perm[b * bs : (b + 1) * bs]
            w = int(len_all[idx.numpy()].max())
            idx = idx.to(device)
            with autocast(device, bf16):
                logits = model(input_ids=x_all[idx, :w], attention_mask=mask_all[idx, :w]).logits
            loss = cross_entropy(logits.float(), y_all[idx])  # float32 (a no-op cast without autocast)
            loss.backward()
            if clip and fused:
                opt.grad_scale = clip_scale(params, clip)  # the kernel divides the gradients by it
            elif clip:
                torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
            for group in opt.param_groups:
                group["lr"] = lr * schedule(step)
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            tot += loss.detach() * len(idx)
        loss_val = float(tot) / n
        print(f"[{label}] epoch {epoch + 1}/{epochs} loss {loss_val:.4f} lr {lr * schedule(step):.2e} "
              f"{time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    return {"steps": total, "warmup_steps": warmup, "final_train_loss": loss_val}


def predict_proba(model, ids, lengths, batch_size: int, device, bf16: bool = False) -> np.ndarray:
    """Class probabilities [n, num_labels] (float64); batches of similar length, inference mode;
    bf16: the forward pass under bf16 autocast."""
    import torch

    model.eval()
    if bf16:
        float32_head(model)
    order = torch.argsort(lengths, descending=True, stable=True)
    out = None
    with torch.inference_mode(), autocast(device, bf16):
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            x, mask = _batch(ids, lengths, idx, device)
            logits = model(input_ids=x, attention_mask=mask).logits.double()
            p = torch.softmax(logits, dim=-1).cpu().numpy()
            if out is None:
                out = np.empty((len(order), p.shape[1]), dtype=np.float64)
            out[idx.numpy()] = p
    return out


def finetune_cli(model: str, train: str, test: str, task: str, shot: int, seed: int, scheme: str,
                 num_labels: int, settings: str | dict | None, output: str, save_model: str | None = None) -> dict:
    """Fine-tune `model` on `train`, score on `test`, write the metrics JSON to `output`; returns it."""
    st = load_settings(settings)
    regime = select_regime(st, shot)
    if num_labels < 2:
        raise GeneMaskError(f"--num-labels: must be >= 2, got {num_labels}")
    with thread_scope() as threads:  # GENEMASK_THREADS applies to this call only
        return _finetune(model, train, test, task, shot, seed, scheme, num_labels, st, regime, output, save_model,
                         threads)


def _finetune(model, train, test, task, shot, seed, scheme, num_labels, st, regime, output, save_model,
              threads: int) -> dict:
    import torch

    device = choose_device(st["device"], "--settings: device")
    bf16 = use_bf16(st["bf16"], device)
    tr = read_task_file(train, num_labels)
    te = read_task_file(test, num_labels)
    k = model_k(model)
    meta = read_meta(model)
    names = None  # label names of a saved classifier: task-data's stats.json beside its train.tsv, if any
    stats = Path(train).with_name("stats.json")
    if save_model and stats.is_file():
        names = read_stats(stats, int(num_labels))["labels"]  # validated before any training

    torch.manual_seed(seed)
    clf = load_classifier(model, num_labels, st["hidden_dropout"])
    check_vocab_size(clf.config.vocab_size, k, model)
    max_len = min(st["max_length"], int(getattr(clf.config, "max_position_embeddings", st["max_length"])))
    try:
        tr_ids, tr_len = encode(tr.sequences, k, max_len)
        te_ids, te_len = encode(te.sequences, k, max_len)
    except GeneMaskError as e:
        raise GeneMaskError(f"{train} / {test}: {e}") from None
    clf.to(device)

    label = f"finetune {task} {shot}-shot seed {seed} {scheme}"
    print(f"[{label}] {len(tr)} train / {len(te)} test rows, k={k}, batch {regime['batch_size']}, "
          f"lr {regime['lr']}, {regime['epochs']} epochs, {threads} threads, {device}, "
          f"{describe(st['bf16'], device)}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    info = train_classifier(clf, tr_ids, tr_len, tr.labels, regime, st, seed, device, label=label, bf16=bf16)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    prob = predict_proba(clf, te_ids, te_len, st["eval_batch_size"], device, bf16=bf16)
    eval_s = time.perf_counter() - t0
    metrics = compute_metrics(te.labels, prob, num_labels)

    result = {
        "task": task, "shot": int(shot), "seed": int(seed), "scheme": scheme,
        "n_train": len(tr), "n_test": len(te), "num_labels": int(num_labels),
        **metrics,
        "train_seconds": round(train_s, 3), "eval_seconds": round(eval_s, 3),
        "epochs": int(regime["epochs"]), "batch_size": int(regime["batch_size"]), "lr": float(regime["lr"]),
        "warmup_steps": info["warmup_steps"], "steps": info["steps"],
        "final_train_loss": info["final_train_loss"] if math.isfinite(info["final_train_loss"]) else None,
        "k": k, "model": str(model), "device": str(device), "threads": threads,
        "precision": "bf16" if bf16 else "float32",
        "pretrain_seed": meta.get("pretrain_seed"), "pretrain_step": meta.get("pretrain_step"),
    }
    if save_model:  # a Hugging Face folder that AutoModelForSequenceClassification loads (modelfolder.py)
        save_classifier(clf.cpu(), save_model, {
            "task": task, "shot": int(shot), "seed": int(seed), "scheme": scheme, "source_model": str(model),
            "pretrain_seed": meta.get("pretrain_seed"), "pretrain_step": meta.get("pretrain_step"),
            "metrics": metrics, "labels": names})
        result["saved_model"] = str(save_model)
    with atomic_output(output) as tmp:
        tmp.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    print(f"[{label}] accuracy {metrics['accuracy']:.4f} macro_f1 {metrics['macro_f1']:.4f} "
          f"mcc {metrics['mcc']:.4f} auroc {metrics['auroc']} train {train_s:.1f}s eval {eval_s:.1f}s",
          file=sys.stderr, flush=True)
    return result
