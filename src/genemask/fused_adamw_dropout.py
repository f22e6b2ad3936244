"""Fused AdamW and host dropout: the parts of the lean fine-tuning step that need torch at import
(`finetune.train_classifier` imports this module inside the function, so the CLI never pays for it).

1. `FusedAdamW`: AdamW exactly as `torch.optim.AdamW(fused=True)` computes it (the same
   `torch._fused_adamw_` kernel, one call per parameter group and step), with the gradient-norm
   clip folded in as the kernel's `grad_scale` (`clip_scale`). torch's own wrapper spent about
   0.8 ms of a demo-size model's ~11 ms CPU step in Python: a state lookup and a step-counter
   tensor per parameter, and a per-tensor loop to increment those counters on CPU. Here the
   moment buffers are allocated once and all parameters of a group share one step counter;
   the kernel reads each counter's value, so the parameters come out bit for bit as torch's
   (tests/test_training.py checks it, with and without a grad_scale).
2. `clip_scale`: the clip as a divisor, computed on the device without a host sync.
3. `HostDropout` / `use_host_dropout`: dropout masks from numpy's PCG64 on CPU. torch's CPU
   dropout draws its mask one element at a time from its Mersenne Twister (`bernoulli_`, about
   8 ns per element; 6 masks per step of BERT's hidden dropout); PCG64 fills 64 bits per draw in
   a tight loop, about 4x cheaper per mask. An element is kept when its 32-bit draw is
   >= round(p * 2^32), so P(drop) = p to within 2^-32 (finer than a float32 uniform); kept
   elements are scaled by 1/(1-p); in eval mode, or with p = 0, it is the identity, and the
   backward pass is the product with the same scaled mask. The mask stays float32: under bf16
   autocast a bf16 activation times it comes back float32 (the scale not rounded to bf16's 1.109
   for 1/0.9; BERT adds it to a float32 residual next anyway). One Generator per run, seeded with
   the run's seed: the same seed gives the same masks and metrics, alone or in the warm worker.
   On CUDA torch's dropout is a fused Philox kernel and is kept. The attention-probability
   dropout is not an `nn.Dropout` call (BERT passes its p to the attention kernel), so it stays
   torch's on every device.
"""
from __future__ import annotations

import numpy as np
import torch


class FusedAdamW(torch.optim.Optimizer):
    """AdamW(betas (0.9, 0.999), eps) over `param_groups`-style groups, one fused kernel call per
    group. `step()` reads each group's "lr" (set it before the step, as with torch's AdamW) and
    `grad_scale` (None, or a 0-d tensor the kernel divides every gradient by)."""

    def __init__(self, groups: list[dict], lr: float, eps: float = 1e-8, betas: tuple[float, float] = (0.9, 0.999)):
        super().__init__(groups, {"lr": lr, "eps": eps, "betas": betas, "weight_decay": 0.0})
        self.grad_scale: torch.Tensor | None = None
        self._buffers = []
        for g in self.param_groups:
            ps = g["params"]
            dev = ps[0].device if ps else torch.device("cpu")
            self._buffers.append(([torch.zeros_like(p, memory_format=torch.preserve_format) for p in ps],
                                  [torch.zeros_like(p, memory_format=torch.preserve_format) for p in ps],
                                  torch.zeros((), dtype=torch.float32, device=dev)))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - see the class docstring
        if closure is not None:
            raise ValueError("FusedAdamW.step takes no closure")
        for g, (exp_avg, exp_avg_sq, t) in zip(self.param_groups, self._buffers):
            keep = [i for i, p in enumerate(g["params"]) if p.grad is not None]  # no gradient: moments kept
            if not keep:
                continue
            params = [g["params"][i] for i in keep]
            t += 1
            beta1, beta2 = g["betas"]
            scale = None if self.grad_scale is None else self.grad_scale.to(params[0].device)
            torch._fused_adamw_(params, [p.grad for p in params], [exp_avg[i] for i in keep],
                                [exp_avg_sq[i] for i in keep], [], [t] * len(params),
                                amsgrad=False, lr=g["lr"], beta1=beta1, beta2=beta2,
                                weight_decay=g["weight_decay"], eps=g["eps"], maximize=False,
                                grad_scale=scale, found_inf=None)
        return None


def clip_scale(params, max_norm: float) -> torch.Tensor:
    """The gradient-norm clip as a divisor: max(1, (||g|| + 1e-6) / max_norm), a 0-d tensor.

    ||g|| is the 2-norm of all gradients together (one dot product per tensor, summed). Dividing
    every gradient by this number is `torch.nn.utils.clip_grad_norm_(params, max_norm)` (which
    multiplies by min(1, max_norm / (||g|| + 1e-6))) up to rounding. Handed to the fused AdamW
    kernel as its `grad_scale`, the clip costs one read of the gradients instead of a norm pass
    plus a read-and-write scaling pass.
    """
    grads = [p.grad.reshape(-1) for p in params if p.grad is not None]
    sq = torch.stack([torch.dot(g, g) for g in grads]).sum()
    return torch.clamp((sq.sqrt() + 1e-6) / max_norm, min=1.0)


class HostDropout(torch.nn.Module):
    """`nn.Dropout(p)` with its mask from a numpy Generator (see the module docstring)."""

    def __init__(self, p: float, rng: np.random.Generator):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.rng = rng
        self._threshold = np.uint32(round(self.p * 2**32))
        self._scale = np.float32(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def keep(self, shape: torch.Size) -> torch.Tensor:
        """A bool tensor of `shape`: True where kept (its 32-bit draw >= round(p * 2^32))."""
        n = int(np.prod(shape))
        bits = self.rng.bit_generator.random_raw((n + 1) // 2).view(np.uint32)[:n]
        return torch.from_numpy(bits >= self._threshold).view(shape)

    def mask(self, shape: torch.Size) -> torch.Tensor:
        """A float32 tensor of `shape`: 0 where dropped, 1/(1-p) where kept."""
        m = self.keep(shape).to(torch.float32)
        m *= self._scale
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * self.mask(x.shape).to(device=x.device)  # a bf16 x (autocast) comes back float32


def use_host_dropout(model: torch.nn.Module, seed: int | np.random.Generator) -> int:
    """Replace every `nn.Dropout` of `model` (in place) by a `HostDropout` of the same p; all of
    them draw from one Generator: `seed` itself if it is one, else a PCG64 seeded with it
    (`np.random.default_rng`). Returns the number replaced."""
    rng = np.random.default_rng(seed)
    n = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is torch.nn.Dropout:
                setattr(module, name, HostDropout(child.p, rng))
                n += 1
    return n


CPU_TRAINING_ATTENTION = "genemask_cpu_training"  # the attention implementation's name in transformers' registry


def cpu_training_attention(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0, **kwargs):
    """Attention for training on a CPU under bf16 autocast: the math attention in bf16, its dropout
    mask from the module's `HostDropout`.

    In training: softmax(q k^T / sqrt(d), masked), the dropped probabilities (p = `dropout` > 0)
    set to 0, times v, times 1/(1-p). torch's own CPU attention under bf16 autocast is slower at
    every training shape we measured: without dropout its fused (flash) kernel's bf16 backward is
    slow (at a few-shot task's 37 tokens it made the whole bf16 fine-tuning step slower than
    float32's), and with dropout it falls back to the math attention in float32 with a mask drawn
    by `bernoulli_` (about 8 ns per element: 10 x 12 x 508 x 508 per layer of a BERT-base
    micro-batch). Here both products run in bf16 (the scores are rounded to bf16 before the
    softmax, as every eager bf16 attention does), the mask is one PCG64 pass, and the 1/(1-p) scale
    multiplies the [B, heads, L, d] output instead of the [B, heads, L, L] probabilities.
    In evaluation (and for a causal module) it is transformers' sdpa attention, so validation,
    scoring and inference are unchanged. `attention_mask` is what the sdpa path takes: a boolean
    mask (True: attend) or an additive float one."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not module.training or getattr(module, "is_causal", False):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query * scaling, key.transpose(-1, -2))
    if attention_mask is not None:
        scores = (scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool
                  else scores + attention_mask)
    probs = torch.softmax(scores, dim=-1)
    if dropout > 0:
        drop = getattr(module, "dropout", None)
        if not isinstance(drop, HostDropout):
            raise TypeError("cpu_training_attention: the attention module's dropout is not a HostDropout "
                            "(call use_host_dropout first)")
        probs = probs.masked_fill(~drop.keep(probs.shape).to(probs.device), 0.0)
    out = torch.matmul(probs, value)
    if dropout > 0:
        out = out * (1.0 / (1.0 - dropout))
    return out.transpose(1, 2).contiguous(), None


def use_cpu_training_attention(model) -> None:
    """Make a Hugging Face model's attention `cpu_training_attention` (registered once under
    CPU_TRAINING_ATTENTION). With attention dropout it needs `use_host_dropout` first (the attention
    modules' `dropout` become HostDropouts). Not saved with the model: a saved config.json names no
    attention implementation, so a saved folder loads with transformers' default. Its padding mask
    is made as for sdpa (a boolean [B, 1, L, L]; transformers makes none for an attention it does
    not know)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(CPU_TRAINING_ATTENTION, cpu_training_attention)
    AttentionMaskInterface.register(CPU_TRAINING_ATTENTION, sdpa_mask)
    model.set_attn_implementation(CPU_TRAINING_ATTENTION)
