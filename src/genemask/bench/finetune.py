"""`genemask bench finetune [--runs N] [--steps S]`: the fixed cost of a fine-tuning run, its step, and
the step in float32 vs bf16.

1. Fixed cost per run (process start + imports + model load + writing the JSON: everything but
   training and scoring), measured as `wall - train_seconds - eval_seconds` of real
   `genemask finetune` commands on a demo-size model and a small generated 2-class task:
   - one process per run (`GENEMASK_WORKER=0`, the path before the warm worker): 3 runs;
   - the warm worker (`GENEMASK_WORKER=1`, a fresh server in a private folder, so its start-up is
     paid once and amortised): N runs, as the Snakemake jobs of one task x model would call it.
2. The step: `finetune.train_classifier` (ours) against the textbook Hugging Face loop on the same
   model (same initial weights) and the same batches (5 x 37 tokens, Splice-40's length, 3
   classes): AutoModelForSequenceClassification with its default attention, `torch.optim.AdamW`
   with its defaults, `get_linear_schedule_with_warmup`, clipping, `loss.item()` every step.
   Each is timed in `--rounds` (25) rounds of `--steps` (40) steps, interleaved, the order swapped
   every round, and the best round of each counts, as `timeit` does: a busy machine only slows
   runs down. Rounds are short on purpose: on a shared VM the speed of one core drifts by up to
   2x over tenths of a second, so few long rounds (3 of 200 steps, as before) average that drift
   in and put the ratio anywhere between 1.4x and 1.7x from run to run. The line also gives the
   median and range of the per-round ratios. "ours" here is the float32 step (bf16: false), the step
   of every run before the bf16 setting existed.
3. Precision: our step in float32 against the same step under bf16 autocast (bf16: true; same
   model, same batches), interleaved rounds, best round of each, at Splice-40's 37 tokens (the
   rounds of 2.) and at 300 tokens (Prom-300's length; a fifth of the rounds, a quarter of the
   steps). The line names this CPU's bf16 units (`precision.cpu_bf16_flags`) and what `auto` picks
   here: on a CPU without them bf16 is emulated and slower, and auto stays in float32.
The last line reads `fixed cost per run: A s -> B s; step: R.RRx the bare loop; bf16 step: P.PPx
float32's at 37 tokens, Q.QQx at 300 (auto: bf16|float32 here)` (a ratio > 1: bf16 faster).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]


def _model_folder(d: Path, num_labels: int = 2) -> Path:
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from ..modelfolder import quiet_transformers, write_meta

    mc = json.loads((ROOT / "resources" / "models" / "demo.json").read_text())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=4101, **{k: v for k, v in mc.items() if k not in ("name", "k")})
    with quiet_transformers():
        BertForMaskedLM(cfg).save_pretrained(d)
    write_meta(d, {"k": 6})
    return d


def _task_file(path: Path, n_per_class: int, length: int, num_labels: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = ["sequence\tlabel"]
    for label in range(num_labels):
        for _ in range(n_per_class):
            rows.append("".join(np.array(list("ACGT"))[rng.integers(0, 4, length)]) + f"\t{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


def _runs(tmp: Path, model: Path, n: int, worker: bool) -> list[float]:
    """Fixed cost of each of n `genemask finetune` commands (seconds)."""
    env = {**os.environ, "GENEMASK_WORKER": "1" if worker else "0", "GENEMASK_THREADS": "1",
           "GENEMASK_WORKER_DIR": str(tmp / "sock"), "GENEMASK_WORKER_IDLE": "30"}
    exe = Path(sys.executable).with_name("genemask")
    cmd0 = [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "genemask.cli"])]
    out = []
    for i in range(n):
        js = tmp / f"run-{int(worker)}-{i}.json"
        cmd = [*cmd0, "finetune", "--model", str(model), "--train", str(tmp / "train.tsv"),
               "--test", str(tmp / "test.tsv"), "--task", "bench", "--shot", "10", "--seed", str(i),
               "--scheme", "none", "--num-labels", "2", "--settings", '{"epochs": 1}', "-o", str(js)]
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        r = json.loads(js.read_text())
        out.append(wall - r["train_seconds"] - r["eval_seconds"])
    return out


def _step_data(steps: int, bs: int = 5, length: int = 37, num_labels: int = 3, seed: int = 0):
    """steps * bs rows of `length` tokens ([CLS] random k-mer ids [SEP]): ids, lengths, labels."""
    import torch

    rng = np.random.default_rng(seed)
    n = steps * bs
    ids = torch.from_numpy(rng.integers(5, 4101, (n, length)).astype(np.int64))
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    return ids, torch.full((n,), length, dtype=torch.long), rng.integers(0, num_labels, n)


def _bare_loop(model, ids, labels, bs: int, lr: float) -> float:
    """The textbook Hugging Face fine-tuning loop; seconds for all steps."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    steps = math.ceil(len(ids) / bs)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(0.1 * steps), steps)
    y = torch.as_tensor(labels)
    mask = torch.ones_like(ids)
    model.train()
    t0 = time.perf_counter()
    for b in range(steps):
        sl = slice(b * bs, (b + 1) * bs)
        out = model(input_ids=ids[sl], attention_mask=mask[sl], labels=y[sl])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        out.loss.item()
    return time.perf_counter() - t0


def _ours(model, ids, lengths, labels, bf16: bool) -> float:
    """finetune.train_classifier on a fresh classifier of `model` (seed 0), one epoch at batch 5;
    seconds for all steps (the model load is not counted)."""
    import torch

    from ..finetune import DEFAULT_SETTINGS, train_classifier
    from ..modelfolder import load_classifier

    torch.manual_seed(0)
    m = load_classifier(model, 3, 0.1)
    regime = {"batch_size": 5, "lr": 1e-4, "epochs": 1}
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # its per-epoch progress line
        train_classifier(m, ids, lengths, labels, regime, dict(DEFAULT_SETTINGS), 0, torch.device("cpu"),
                         label="bench", bf16=bf16)
    return time.perf_counter() - t0


def _precision_rounds(model, steps: int, rounds: int, length: int) -> tuple[float, float]:
    """Best seconds per step of our step in float32 and in bf16 at batch 5 x `length` tokens:
    `rounds` interleaved rounds of `steps` steps, the order swapped every round."""
    ids, lengths, labels = _step_data(steps, length=length)
    best = {False: math.inf, True: math.inf}
    for r in range(rounds):
        for bf16 in ((False, True) if r % 2 == 0 else (True, False)):
            best[bf16] = min(best[bf16], _ours(model, ids, lengths, labels, bf16) / steps)
    return best[False], best[True]


def main(args) -> int:
    import torch

    from ..modelfolder import load_classifier
    from ..precision import cpu_bf16_flags, use_bf16

    n_runs, steps, rounds = max(2, int(args.runs)), max(10, int(args.steps)), max(1, int(args.rounds))
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = _model_folder(tmp / "model")
        _task_file(tmp / "train.tsv", 10, 70, 2, seed=1)
        _task_file(tmp / "test.tsv", 50, 70, 2, seed=2)
        (tmp / "sock").mkdir(mode=0o700)

        print(f"fine-tuning bench: demo model ({ROOT / 'resources/models/demo.json'}), 1 thread, cpu")
        old = _runs(tmp, model, 3, worker=False)
        new = _runs(tmp, model, n_runs, worker=True)
        old_s, new_s = float(np.mean(old)), float(np.mean(new))
        print(f"fixed cost per run, one process per run ({len(old)} runs): "
              + " ".join(f"{v:.2f}" for v in old) + f" s; mean {old_s:.2f} s")
        print(f"fixed cost per run, warm worker ({n_runs} runs): first {new[0]:.2f} s (server start), then "
              f"median {float(np.median(new[1:])):.2f} s; amortised {new_s:.2f} s")

        ids, lengths, labels = _step_data(steps)
        ours, ours16, bare = [], [], []
        orders = (("ours", "bf16", "bare"), ("bare", "ours", "bf16"), ("bf16", "bare", "ours"))
        for r in range(rounds):
            for which in orders[r % 3] if r % 2 == 0 else orders[r % 3][::-1]:
                if which == "ours":
                    ours.append(_ours(model, ids, lengths, labels, bf16=False))
                elif which == "bf16":
                    ours16.append(_ours(model, ids, lengths, labels, bf16=True))
                else:
                    torch.manual_seed(0)
                    bare.append(_bare_loop(load_classifier(model, 3, 0.1), ids, labels, 5, 1e-4))
        ours_sps, bare_sps = steps / min(ours), steps / min(bare)
        per_round = sorted(b / o for o, b in zip(ours, bare))
        print(f"step at batch 5 x 37 tokens, 3 classes (best of {rounds} rounds of {steps} steps): "
              f"bare Hugging Face loop {bare_sps:.1f} steps/s ({1e3 / bare_sps:.1f} ms), "
              f"ours {ours_sps:.1f} steps/s ({1e3 / ours_sps:.1f} ms); per-round ratio median "
              f"{float(np.median(per_round)):.2f}x (range {per_round[0]:.2f}-{per_round[-1]:.2f})")
        f32_37, bf_37 = min(ours) / steps, min(ours16) / steps
        long_rounds, long_steps = max(3, rounds // 5), max(10, steps // 4)
        f32_300, bf_300 = _precision_rounds(model, long_steps, long_rounds, 300)
        flags = ", ".join(cpu_bf16_flags()) or "none"
        auto = "bf16" if use_bf16("auto", "cpu") else "float32"
        print(f"precision, our step at batch 5 (best of {rounds} rounds of {steps} steps at 37 tokens, "
              f"{long_rounds} of {long_steps} at 300; CPU bf16 units: {flags}; auto: {auto}): "
              f"37 tokens float32 {1e3 * f32_37:.1f} ms, bf16 {1e3 * bf_37:.1f} ms; "
              f"300 tokens float32 {1e3 * f32_300:.1f} ms, bf16 {1e3 * bf_300:.1f} ms")
    print(f"fixed cost per run: {old_s:.2f} s -> {new_s:.2f} s; step: {ours_sps / bare_sps:.2f}x the bare loop; "
          f"bf16 step: {f32_37 / bf_37:.2f}x float32's at 37 tokens, {f32_300 / bf_300:.2f}x at 300 (auto: {auto} here)")
    return 0
