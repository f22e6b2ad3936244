"""`genemask bench train [--model-config JSON] [--steps N] [--threads T]`: what the hardware allows, and
how close our pretraining step comes to it.

In one run, on the device pretraining would use (a CUDA GPU, else the CPU with `--threads`
threads, 1 by default: the issue's goals are per core):

1. The measured dense matmul peak at the model's shapes: `torch.mm` of the model's linear layers
   (query/key/value/output [T, H] x [H, H], the feed-forward [T, H] x [H, I] and [T, I] x [H, I]^T,
   the masked-token head [0.15 T, H] x [H, V]; T = 10 x 508 tokens), in float32 and in bf16; the
   best of them is the peak of that precision.
2. Tokens/s and model-FLOPs utilisation (MFU) of four training loops on the same model (same
   initial weights), the same batches of real-length sequences (10 x 508 tokens, the paper's
   per-device micro-batch, no padding) and one warm-up step not timed:
   - the bare Hugging Face loop, float32: DataCollatorForLanguageModeling-masked batch ->
     BertForMaskedLM(labels=...) (the vocabulary head at every position) -> backward -> clip ->
     AdamW, `loss.item()` every step;
   - ours (`pretrain()` itself: dnabert masking made ahead, the head at the masked positions only,
     clipping, schedule, logging) in float32: today's step, the same arithmetic bit for bit
     (tests/test_pretrain_step.py), so its tokens/s is today's;
   - ours under bf16 autocast (`bf16: true`);
   - ours under bf16 autocast, compiled (`compile: true`: one torch.compile(fullgraph=True) graph).
   Each loop's tokens/s is its best timed step (as `timeit` takes the best: a busy machine only
   slows steps down), tokens being every non-[PAD] token.

Model FLOPs per token (the work the model needs, the same for every loop; the bare loop's
full-vocabulary head is waste it pays for, not model FLOPs):
    6 N_enc + 12 n_layers H L + 6 N_head x 0.15
N_enc: the encoder layers' parameters (the embeddings are lookups, not products); 12 n_layers H L:
attention's two products (scores and their average of the values, 2 L H each per token, times 3
for forward and backward) at L = 508 tokens per row; N_head: the masked-token head's parameters
(transform, layer norm, the H x V decoder, its bias) at the 15 % of tokens masked. MFU = model
FLOPs per second / the measured matmul peak of the precision the loop multiplies in (float32 for
the float32 loops, bf16 for the bf16 ones): the share of what this device's matrix units do at
these shapes, not of a datasheet number.

The last line reads `NAME: A tokens/s -> B tokens/s (R.Rx), MFU M %`: A is ours in float32
(today's step), B the fastest of ours, R = B / A and M that loop's MFU.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..corpus import Corpus, build_corpus
from ..kmers import PAD
from ..precision import describe
from ..pretrain import build_model, load_settings, make_batch, pretrain

ROOT = Path(__file__).resolve().parents[3]
B, L = 10, 508  # the paper's per-device micro-batch; every piece full length (511 bp -> 506 6-mers + 2)
MASKED = 0.15  # share of tokens at the masked-token head, in the model-FLOPs formula
OURS = (("ours, float32 (today's step)", "fp32", {"bf16": False}),
        ("ours, bf16 autocast", "bf16", {"bf16": True}),
        ("ours, bf16 autocast, compiled", "bf16", {"bf16": True, "compile": True}))


def _synthetic_genome(path: Path, n_bp: int = 400_000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    seq = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, n_bp)].tobytes()
    path.write_bytes(b">synthetic\n" + b"\n".join(seq[i : i + 60] for i in range(0, n_bp, 60)) + b"\n")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_flops(model) -> tuple[float, str]:
    """(model FLOPs per token, the formula with its numbers) of a BertForMaskedLM (module docstring)."""
    c = model.config
    n_enc = sum(p.numel() for p in model.bert.encoder.parameters())
    n_head = sum(p.numel() for p in model.cls.parameters())  # the decoder too (tied to the word embeddings)
    attn = 12 * c.num_hidden_layers * c.hidden_size * L
    per_token = 6 * n_enc + attn + 6 * n_head * MASKED
    text = (f"model FLOPs per token: 6 x {n_enc / 1e6:.2f}M encoder parameters + 12 x {c.num_hidden_layers} layers x "
            f"{c.hidden_size} x {L} (attention) + 6 x {n_head / 1e6:.2f}M head parameters x {MASKED:.2f} masked "
            f"= {per_token / 1e6:.1f} MFLOP")
    return per_token, text


def matmul_peak(mc: dict, dtype: torch.dtype, device: torch.device, seconds: float = 0.25) -> tuple[float, str]:
    """(FLOP/s, 'MxK @ KxN') of the fastest `torch.mm` among the model's linear-layer shapes."""
    T, H, inner, V = B * L, mc["hidden_size"], mc["intermediate_size"], 4**mc.get("k", 6) + 5
    shapes = [(T, H, H), (T, H, inner), (T, inner, H), (int(T * MASKED), H, V)]
    best = (0.0, "")
    g = torch.Generator(device=device).manual_seed(0)
    for m, k, n in shapes:
        a = torch.randn(m, k, generator=g, device=device).to(dtype)
        b = torch.randn(k, n, generator=g, device=device).to(dtype)
        torch.mm(a, b)  # warm-up: kernel selection, packing buffers
        _sync(device)
        fastest = float("inf")
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or fastest == float("inf"):
            t0 = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            fastest = min(fastest, time.perf_counter() - t0)
        rate = 2 * m * k * n / fastest
        if rate > best[0]:
            best = (rate, f"{m}x{k} @ {k}x{n}")
    return best


def bare_loop(corpus: Corpus, mc: dict, steps: int, device: torch.device) -> float:
    """Tokens/s (best timed step) of the textbook Hugging Face masked-LM loop in float32."""
    from transformers import DataCollatorForLanguageModeling

    from ..tokenizer import build_tokenizer

    tok = build_tokenizer(mc.get("k", 6))
    coll = DataCollatorForLanguageModeling(tok, mlm_probability=MASKED, return_tensors="pt")
    model, _ = build_model(mc, seed=0)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    best = 0.0
    for i in range(steps + 1):
        batch = make_batch(corpus, np.arange(i * B, (i + 1) * B), 512)
        _sync(device)
        t0 = time.perf_counter()
        enc = coll([{"input_ids": row[row != PAD]} for row in batch])
        out = model(input_ids=enc["input_ids"].to(device), attention_mask=(batch != PAD).to(device),
                    labels=enc["labels"].to(device))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.loss.item()
        _sync(device)
        if i >= 1:
            best = max(best, int((batch != PAD).sum()) / (time.perf_counter() - t0))
    return best


def ours(corpus_dir: Path, mc: dict, steps: int, threads: int, more: dict, out: Path) -> float:
    """Tokens/s (best timed step) of `pretrain()` with the settings `more`, dnabert masking."""
    s = load_settings({"steps": steps + 1, "batch_size": B, "grad_accum": 1, "warmup_steps": 1, "eval_every": 10**9,
                       "checkpoint_every": 10**9, "log_every": 1, "keep_checkpoints": False, "threads": threads,
                       **more})
    state = pretrain([str(corpus_dir)], mc, "dnabert", out, settings=s)
    return max(r["tokens_per_s"] for r in state["log"][1:])


def main(args) -> int:
    mc_path = Path(args.model_config) if args.model_config else ROOT / "resources" / "models" / "logo.json"
    mc = json.loads(mc_path.read_text())
    name = mc.get("name", mc_path.stem)
    steps, threads = max(2, int(args.steps)), max(1, int(getattr(args, "threads", 1) or 1))
    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    per_token, formula = model_flops(build_model(mc, seed=0)[0])
    where = f"{threads} thread{'s' if threads > 1 else ''}, cpu" if device.type == "cpu" else str(device)
    print(f"model {name} ({mc['num_hidden_layers']} layers, hidden {mc['hidden_size']}), batch {B} x {L} tokens, "
          f"{steps} timed steps (best counts), {where}; auto precision here: {describe('auto', device)}")
    print(formula)
    peak = {p: matmul_peak(mc, dt, device) for p, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print("matmul peak at the model's shapes: " + ", ".join(
        f"{p} {rate / 1e12:.3f} TFLOP/s ({shape})" for p, (rate, shape) in peak.items()))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _synthetic_genome(tmp / "g.fa")
        build_corpus(tmp / "g.fa", tmp / "c", max_bp=511, min_bp=511, seed=1)  # full-length pieces only
        rows = [("bare Hugging Face loop, float32 (full-vocabulary head, HF collator)", "fp32",
                 bare_loop(Corpus([tmp / "c"], "train"), mc, steps, device))]
        for i, (label, prec, more) in enumerate(OURS):
            rows.append((label, prec, ours(tmp / "c", mc, steps, threads, more, tmp / f"run{i}")))
    width = max(len(r[0]) for r in rows)
    mfu = [tps * per_token / peak[prec][0] * 100 for _, prec, tps in rows]
    for (label, _, tps), m in zip(rows, mfu):
        print(f"{label + ':':<{width + 1}} {tps:>9,.0f} tokens/s  MFU {m:5.1f} %  ({tps / rows[0][2]:.2f}x the bare loop)")
    today, best = rows[1][2], max(range(1, len(rows)), key=lambda i: rows[i][2])
    print(f"{name.upper()}: {today:,.0f} tokens/s -> {rows[best][2]:,.0f} tokens/s ({rows[best][2] / today:.1f}x), "
          f"MFU {mfu[best]:.1f} %")
    return 0
