"""`genemask bench masking`: the masking schemes vs Hugging Face's collator vs the Python-loop version.

Times every scheme (the full masker call: masked set + 80/10/10 replacement) on batches of 10x512
and 256x512 tokens, Hugging Face's `DataCollatorForLanguageModeling` (plain 15 %, our tokenizer) on
the same batch, and the slow loop implementation (`masking_oracle`, masked set only, compared with
our masked set only). Then one training step of the LOGO-like model (BertForMaskedLM, 2 layers,
hidden 256, 8 heads, intermediate 3072, vocab 4101, batch 10x512, forward + backward + AdamW step)
to put the masking cost in proportion. Masking is timed on one CPU thread (as in a DataLoader worker,
and because intra-op thread barriers make small ops erratic on a shared machine); the training step
uses all threads. Times are the minimum over repeats (the least disturbed estimate on a shared
machine); medians are printed too.
The last line ends with genemask's time / the HF collator's time at 256x512, written like `0.83x`.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from .. import kmers, masking, maskstats
from ..masking_oracle import loop_mask
from ..tokenizer import build_tokenizer, encode_sequences
from ..util import GeneMaskError

SHAPES = ((10, 512), (256, 512))


def _time(fn, min_repeats: int = 5, min_seconds: float = 1.0, max_repeats: int = 200) -> tuple[float, float]:
    fn()  # warm-up
    ts: list[float] = []
    start = time.perf_counter()
    while len(ts) < max_repeats and (len(ts) < min_repeats or time.perf_counter() - start < min_seconds):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts), statistics.median(ts)


def _batch(n: int, width: int, seed: int) -> torch.Tensor:
    """n full rows `[CLS] 510 tokens [SEP]` of random DNA (k = 6)."""
    rng = np.random.default_rng(seed)
    bp = width - 2 + 5
    seqs = ["".join(rng.choice(list("ACGT"), bp)) for _ in range(n)]
    ids = encode_sequences(6, seqs, max_length=width)["input_ids"]
    assert ids.shape == (n, width)
    return ids


def _ranking(path) -> tuple[np.ndarray, str]:
    from ..npmi import load_ranking

    try:
        p = path if path is not None else maskstats.default_ranking_path()
        return load_ranking(p, k=6), str(p)
    except GeneMaskError as e:
        if path is not None:
            raise
        rng = np.random.default_rng(0)  # timing does not depend on which ranking is used
        return rng.permutation(4**6) + 1, f"synthetic permutation ({e})"


def _train_step_seconds(ids: torch.Tensor, masker, repeats: int = 3) -> float:
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=kmers.vocab_size(6), hidden_size=256, num_hidden_layers=2, num_attention_heads=8,
                     intermediate_size=3072, max_position_embeddings=512, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, pad_token_id=kmers.PAD)
    model = BertForMaskedLM(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=8e-4)
    g = torch.Generator().manual_seed(0)
    inputs, labels = masker(ids, g)
    att = (ids != kmers.PAD).long()

    def step():
        out = model(input_ids=inputs, attention_mask=att, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _time(step, min_repeats=repeats, min_seconds=0.0, max_repeats=repeats)[0]


def main(args) -> int:
    from transformers import DataCollatorForLanguageModeling

    ranking, source = _ranking(getattr(args, "ranking", None))
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}; masking timed on 1 CPU thread, training step on {threads}; ranking: {source}")
    torch.set_num_threads(1)
    tok = build_tokenizer(6)
    hf = DataCollatorForLanguageModeling(tok, mlm_probability=0.15)
    maskers = {s: masking.make_masker(s, ranking=ranking) for s in masking.SCHEMES}
    results: dict[tuple[int, int], dict[str, float]] = {}
    for shape in SHAPES:
        B, L = shape
        ids = _batch(B, L, seed=B)
        g = torch.Generator().manual_seed(0)
        row: dict[str, float] = {}
        print(f"\n== batch {B}x{L} (ms: min / median) ==")
        hf_min, hf_med = _time(lambda: hf.torch_mask_tokens(ids.clone()))
        row["hf"] = hf_min
        print(f"  {'HF collator torch_mask_tokens (15%)':38s} {hf_min * 1e3:9.2f} / {hf_med * 1e3:9.2f}")
        special = (ids == kmers.CLS) | (ids == kmers.SEP) | (ids == kmers.PAD)
        pre_min, pre_med = _time(lambda: hf.torch_mask_tokens(ids.clone(), special_tokens_mask=special))
        row["hf_pre"] = pre_min
        print(f"  {'  same, special_tokens_mask precomputed':38s} {pre_min * 1e3:9.2f} / {pre_med * 1e3:9.2f}")
        examples = list(ids)
        full_min, full_med = _time(lambda: hf(examples), min_repeats=3)
        print(f"  {'HF collator __call__ (collate + mask)':38s} {full_min * 1e3:9.2f} / {full_med * 1e3:9.2f}")
        for s, m in maskers.items():
            t_min, t_med = _time(lambda: m(ids, g, 500, 1000))
            row[s] = t_min
            print(f"  {s + ' (full call)':38s} {t_min * 1e3:9.2f} / {t_med * 1e3:9.2f}   "
                  f"{t_min / hf_min:6.3f}x HF, {t_min / pre_min:6.3f}x HF precomputed mask")
        for s in ("dnabert", "genemask"):
            m = maskers[s]
            fast_min, _ = _time(lambda: m.mask_positions(ids, g))
            slow_min, slow_med = _time(lambda: loop_mask(ids, m, g), min_repeats=2, min_seconds=0.5)
            row[f"loop_{s}"], row[f"set_{s}"] = slow_min, fast_min
            print(f"  {s + ' loop (masked set)':38s} {slow_min * 1e3:9.2f} / {slow_med * 1e3:9.2f}   "
                  f"ours {fast_min * 1e3:.2f} ms: {slow_min / fast_min:6.1f}x faster")
        results[shape] = row

    torch.set_num_threads(threads)
    ids10 = _batch(10, 512, seed=10)
    gm = maskers["genemask"]
    step_s = _train_step_seconds(ids10, gm)
    mask_s = results[(10, 512)]["genemask"]
    print(f"\nLOGO-like BertForMaskedLM training step, 10x512 (fwd + bwd + AdamW): {step_s * 1e3:.1f} ms; "
          f"genemask masking 10x512: {mask_s * 1e3:.2f} ms = {100 * mask_s / step_s:.2f}% of a step")
    r = results[(256, 512)]
    print("genemask masked set vs the loop version: "
          + ", ".join(f"{B}x{L} {row['loop_genemask'] / row['set_genemask']:.1f}x faster" for (B, L), row in results.items())
          + " (small batches: bound by the fixed cost of ~40 tensor ops, a few microseconds each)")
    print(f"genemask vs HF collator at 256x512 (HF given a precomputed special_tokens_mask: "
          f"{r['genemask'] / r['hf_pre']:.2f}x): {r['genemask'] * 1e3:.2f} ms / {r['hf'] * 1e3:.2f} ms = "
          f"{r['genemask'] / r['hf']:.2f}x")
    return 0
