"""`genemask bench train [--model-config JSON] [--steps N]`: our training step vs a bare Hugging Face loop.

Both train the same model from the same initial weights on the same batches of real-length
sequences (10 x 508 tokens, the paper's per-device batch): ours runs `pretrain()` itself (masking,
the masked-positions-only MLM head, clipping, schedule, logging); the bare loop is the textbook
Hugging Face step: DataCollatorForLanguageModeling-masked batch -> BertForMaskedLM(labels=...)
-> backward -> AdamW step. Both exclude start-up (the first step is a warm-up and not timed).
The last line is our tokens/s divided by the bare loop's, e.g. `1.05x`.
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
from ..pretrain import build_model, load_settings, make_batch, pretrain

ROOT = Path(__file__).resolve().parents[3]


def _synthetic_genome(path: Path, n_bp: int = 400_000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    seq = np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, n_bp)].tobytes()
    path.write_bytes(b">synthetic\n" + b"\n".join(seq[i : i + 60] for i in range(0, n_bp, 60)) + b"\n")


def main(args) -> int:
    mc_path = Path(args.model_config) if args.model_config else ROOT / "resources" / "models" / "logo.json"
    mc = json.loads(mc_path.read_text())
    steps = max(2, int(args.steps))
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fa = tmp / "g.fa"
        _synthetic_genome(fa)
        # only full-length pieces, so that both loops see 10 x 508-token batches
        build_corpus(fa, tmp / "c", max_bp=511, min_bp=511, seed=1)
        corpus = Corpus([tmp / "c"], "train")
        B = 10

        # ---- the bare Hugging Face loop ------------------------------------------------------
        from transformers import DataCollatorForLanguageModeling

        from ..tokenizer import build_tokenizer

        tok = build_tokenizer(mc.get("k", 6))
        coll = DataCollatorForLanguageModeling(tok, mlm_probability=0.15, return_tensors="pt")
        model, _ = build_model(mc, seed=0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batches = [make_batch(corpus, np.arange(i * B, (i + 1) * B), 512) for i in range(steps + 1)]
        tokens = 0
        for i, batch in enumerate(batches):
            if i == 1:
                t0 = time.perf_counter()
            enc = coll([{"input_ids": row[row != PAD]} for row in batch])
            out = model(input_ids=enc["input_ids"], attention_mask=(batch != PAD), labels=enc["labels"])
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= 1:
                tokens += int((batch != PAD).sum())
        bare_tps = tokens / (time.perf_counter() - t0)

        # ---- ours: pretrain() with the same batch, one warm-up step not timed -----------------
        s = load_settings({"steps": steps + 1, "batch_size": B, "grad_accum": 1, "warmup_steps": 1,
                           "eval_every": 10**9, "checkpoint_every": 10**9, "log_every": 1})
        state = pretrain([str(tmp / "c")], mc, "dnabert", tmp / "model", settings=s)
        ours_tps = float(np.mean([r["tokens_per_s"] for r in state["log"][1:]]))

    print(f"model {mc.get('name', mc_path.stem)} ({mc['num_hidden_layers']} layers, hidden {mc['hidden_size']}), "
          f"batch {B} x 508 tokens, {steps} timed steps, {threads} threads, device cpu")
    print(f"bare Hugging Face loop (full-vocabulary MLM head, HF collator): {bare_tps:,.0f} tokens/s")
    print(f"genemask pretrain loop (dnabert masking, masked-only head):     {ours_tps:,.0f} tokens/s")
    print(f"ours / bare: {ours_tps / bare_tps:.2f}x")
    return 0
