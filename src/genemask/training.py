"""Training primitives that pretraining (`pretrain.py`) and fine-tuning (`finetune.py`) share.

- `padded_rows`: the one builder of `[CLS] ids [SEP] [PAD]...` rows (tokenizer.encode_sequences,
  finetune.encode and pretrain.make_batch call it). The attention mask of a row is `ids != PAD`
  (equivalently: position < length), since a row's tokens are k-mer ids or [UNK], never [PAD].
- `param_groups`: AdamW's two groups, decoupled weight decay on the weight matrices only.
- `linear_schedule`: the learning-rate factor per optimiser step, linear warm-up then linear decay.

torch is imported inside the functions, as in finetune.py (the CLI imports these modules lazily).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .kmers import CLS, PAD, SEP


def padded_rows(rows: Sequence[np.ndarray], max_length: int, width: int | None = None):
    """`[CLS] row [SEP] [PAD]...` for each id row, cut to `max_length - 2` tokens first.

    Returns (input_ids, lengths): a LongTensor [B, width], width = the longest row + 2 unless given
    (it must then hold the longest row + 2), and a LongTensor [B] of the row lengths including
    [CLS] and [SEP]. Vectorised: one scatter of all tokens, no loop over rows or tokens.
    """
    import torch

    rows = [r[: max_length - 2] for r in rows]
    n = np.array([len(r) for r in rows], dtype=np.int64)
    if width is None:
        width = int(n.max(initial=0)) + 2
    out = np.full((len(rows), width), PAD, dtype=np.int64)
    if rows:
        out[:, 0] = CLS
        flat = np.concatenate(rows) if n.sum() else np.empty(0, dtype=np.int64)
        r = np.repeat(np.arange(len(rows)), n)
        c = np.arange(len(flat)) - np.repeat(np.cumsum(n) - n, n) + 1
        out[r, c] = flat
        out[np.arange(len(rows)), n + 1] = SEP
    return torch.from_numpy(out), torch.from_numpy(n + 2)


def param_groups(model, weight_decay: float) -> list[dict]:
    """[decay group, no-decay group] of the trainable parameters, for AdamW.

    One rule: parameters with fewer than 2 dimensions (every bias, the LayerNorm gains and biases)
    get no weight decay; the weight matrices and embeddings get `weight_decay`. For BERT this is
    exactly "not biases and LayerNorm" (tests/test_training.py checks it for both heads).
    """
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def linear_schedule(warmup: int, total: int, warmup_offset: int = 0) -> Callable[[int], float]:
    """Learning-rate factor f(t) of optimiser step t (0-based: the t-th call of `opt.step()`):

        f(t) = (t + warmup_offset) / warmup                for t < warmup
        f(t) = max(0, (total - t) / (total - warmup))      otherwise       (denominators >= 1)

    The decay is the same for both users; the warm-up differs by one step, and it is kept as it is
    because changing either would change that training's numbers:
    - fine-tuning, `warmup_offset=0`: Hugging Face's get_linear_schedule_with_warmup, the scheduler
      the paper's fine-tuning used: factors 0, 1/w, ..., (w-1)/w, then 1 at step w (the first step
      has learning rate 0; AdamW still updates its moment estimates there).
    - pretraining, `warmup_offset=1`: factors 1/w, ..., w/w = 1 at step w-1, then 1 at step w (as
      `torch.optim.lr_scheduler.LambdaLR(opt, f)` applies it: the lr of step t is f(t)); no step
      is wasted at lr 0.
    A plain function (not a callable object), so LambdaLR's state_dict stays as it was.
    """
    def f(t: int) -> float:
        if t < warmup:
            return (t + warmup_offset) / max(1, warmup)
        return max(0.0, (total - t) / max(1, total - warmup))
    return f
