#!/usr/bin/env python3
"""The working half of scripts/gpu_check.sh (run that script; this file is its helper).

    gpu_check.py prepare DIR [--mirror M]
        the inputs, built where the project's environment and the data mirror are (pysam reads the
        FASTA; a GPU node that only trains needs neither): corpus/c0 and corpus/c1 (chr2:1-300000 and
        chr2:300001-600000 of the demo genome, the corpora of tests/test_pretrain.py, for `pytest -m
        gpu`), corpus/full (the whole demo genome cut into full-length 511 bp pieces: 508 tokens per
        sequence, the paper's 512-token rows, for the throughput runs) and ranking.csv (Data-A).
    gpu_check.py measure PART --inputs DIR --work W --report FILE [--smoke]
        PART logo: peak memory per sequence (two short runs), tokens/s and MFU at 50 x 5 and at the
                   micro-batch recommended from that memory (the time of 10k paper steps);
        PART bert: the same for BERT-base (resources/models/dnabert.json) at the largest micro-batch
                   whose peak fits in 60 % of the GPU's memory, and at the recommended one.
        Every run is `genemask pretrain` (in this process, so the CUDA start is paid once); tokens/s
        comes from its train_log.tsv (the rows after the first ones: no warm-up), peak memory from
        its genemask.json (torch.cuda.max_memory_allocated, reset before each run). Lines are
        appended to FILE as they are measured (a part stopped at its time cap keeps what it had) and
        the figures to FILE's .json twin.

Memory per sequence: peak(B) = static + B x per_seq, fitted from runs at two micro-batches B1 < B2
(static: weights, gradients, AdamW state, workspaces). The largest micro-batch within a budget is
floor((budget - static) / per_seq); the recommended one for the configs is the largest divisor of
the paper's 250 sequences per step not above it (grad_accum = 250 / it, per GPU).

MFU: model FLOPs 6 x N per token (N: the model's parameters, tied embeddings once) over the GPU's
dense bf16 peak (NVIDIA's datasheets: H100 SXM and H200 989 TFLOP/s; GPU_PEAK_TFLOPS overrides);
also with the attention products, 6N + 12 x layers x hidden x sequence length per token.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PER_STEP = 250  # the paper's sequences per optimiser step (all GPUs together)
MEMORY_SHARE = 0.6  # the largest micro-batch is sized to this share of the GPU's memory
# dense bf16 tensor-core peaks [TFLOP/s] (no sparsity), first match of the device name wins
PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("A100", 312.0))
DEMO_GENOME = "genome/hg38_chr2_1-2333275.fa.gz"
RANKING = "genemask/Data-A_norm-pmi-score-ranking.csv"
SEQ_TOKENS = 508  # a full-length piece: 511 bp -> 506 k-mers + [CLS] + [SEP]


# ---- arithmetic (tests/test_gpu_check.py) -------------------------------------------------------
def memory_model(b1: int, peak1: float, b2: int, peak2: float) -> tuple[float, float]:
    """(static, per sequence) [GiB] of peak = static + B x per_seq through two measured points."""
    if b2 == b1:
        raise ValueError("two different micro-batches are needed")
    per_seq = (peak2 - peak1) / (b2 - b1)
    return peak1 - b1 * per_seq, per_seq


def largest_micro_batch(budget_gib: float, static_gib: float, per_seq_gib: float) -> int:
    """The largest B with static + B x per_seq <= budget (0 when not even one sequence fits)."""
    if per_seq_gib <= 0:
        raise ValueError(f"memory per sequence must be > 0, got {per_seq_gib}")
    return max(0, math.floor((budget_gib - static_gib) / per_seq_gib + 1e-9))


def recommended(b_max: int, per_step: int = PER_STEP, gpus: int = 1) -> tuple[int, int] | None:
    """(batch_size, grad_accum) keeping batch_size x grad_accum x gpus = per_step with the largest
    batch_size <= b_max; None when per_step / gpus is not whole or nothing fits."""
    if per_step % gpus:
        return None
    per_gpu = per_step // gpus
    fits = [d for d in range(1, per_gpu + 1) if per_gpu % d == 0 and d <= b_max]
    return (fits[-1], per_gpu // fits[-1]) if fits else None


def peak_tflops(device_name: str, env: dict | None = None) -> float | None:
    """Dense bf16 peak of a GPU by name (GPU_PEAK_TFLOPS in `env` overrides); None if unknown."""
    env = os.environ if env is None else env
    if env.get("GPU_PEAK_TFLOPS"):
        return float(env["GPU_PEAK_TFLOPS"])
    return next((v for key, v in PEAK_TFLOPS if key in device_name), None)


def flops_per_token(params: int, layers: int, hidden: int, seq_len: int, attention: bool = False) -> float:
    """Training FLOPs per token: 6N, plus 12 x layers x hidden x seq_len with the attention products."""
    return 6.0 * params + (12.0 * layers * hidden * seq_len if attention else 0.0)


def steady_tokens_per_s(rows: list[dict], skip_steps: int) -> float | None:
    """Tokens/s over the log rows after step `skip_steps`: the harmonic mean of their rates (each row
    covers the same number of steps and, on full-length pieces, the same tokens: total tokens over
    total time). None without such rows."""
    rates = [float(r["tokens_per_s"]) for r in rows if int(r["step"]) > skip_steps and float(r["tokens_per_s"]) > 0]
    return len(rates) / sum(1.0 / r for r in rates) if rates else None


# ---- prepare ------------------------------------------------------------------------------------
def find_mirror(given: str | None) -> Path | None:
    """The data mirror: `given`, $GENEMASK_MIRROR, ../shared/data or ./shared/data (the first holding
    the demo genome)."""
    for m in (given, os.environ.get("GENEMASK_MIRROR"), ROOT.parent / "shared" / "data", ROOT / "shared" / "data"):
        if m and (Path(m) / DEMO_GENOME).is_file():
            return Path(m).resolve()
    return None


def prepare(dest: Path, mirror: Path) -> dict:
    """Build the inputs into `dest` (kept if `dest`/inputs.json exists: built before)."""
    from genemask.cli import main

    done = dest / "inputs.json"
    if done.is_file():
        return json.loads(done.read_text())
    fa = mirror / DEMO_GENOME
    (dest / "corpus").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for name, args in (("c0", ["--region", "chr2:1-300000", "--seed", "1"]),
                       ("c1", ["--region", "chr2:300001-600000", "--seed", "1"]),
                       ("full", ["--min-bp", "511", "--max-bp", "511"])):
        out = dest / "corpus" / name
        if not out.is_dir() and main(["corpus", str(fa), *args, "-o", str(out)]) != 0:
            raise SystemExit(f"gpu_check: genemask corpus {name} failed (see above)")
    shutil.copyfile(mirror / RANKING, dest / "ranking.csv")
    info = {"genome": str(fa), "ranking": str(mirror / RANKING), "seconds": round(time.perf_counter() - t0, 1),
            "full_pieces": json.loads((dest / "corpus" / "full" / "meta.json").read_text())["train_pieces"]}
    done.write_text(json.dumps(info, indent=1) + "\n")
    return info


# ---- measure ------------------------------------------------------------------------------------
class Report:
    """Lines appended to the report (and printed) at once; figures merged into its .json twin."""

    def __init__(self, path: Path):
        self.path, self.json = path, path.with_suffix(".json")

    def say(self, line: str) -> None:
        print(line, flush=True)
        with open(self.path, "a") as fh:
            fh.write(line + "\n")

    def record(self, key: str, value) -> None:
        data = json.loads(self.json.read_text()) if self.json.is_file() else {}
        data[key] = value
        self.json.write_text(json.dumps(data, indent=1) + "\n")


def model_size(config: dict) -> int:
    """Parameters of the model `genemask pretrain` builds from `config` (tied embeddings once)."""
    from genemask.pretrain import build_model

    model, _ = build_model(config, seed=0)
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


class Runner:
    """`genemask pretrain` runs of one model on the inputs' full-length corpus, in this process."""

    def __init__(self, inputs: Path, work: Path, model: str, config: dict):
        self.inputs, self.work, self.model, self.config = inputs, work, model, config
        self.config_path = work / f"{model}.json"
        self.config_path.write_text(json.dumps(config))

    def run(self, name: str, batch: int, accum: int, steps: int, log_every: int = 1) -> dict | None:
        """One run; its genemask.json, train_log.tsv rows and wall seconds, or None (failed: said on stderr)."""
        import torch

        from genemask.cli import main

        out = self.work / f"{self.model}-{name}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(out.with_name(out.name + ".ckpt"), ignore_errors=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        sets = {"steps": steps, "batch_size": batch, "grad_accum": accum, "log_every": log_every,
                "warmup_steps": 1, "eval_every": 10**9, "eval_batches": 1, "checkpoint_every": 10**9,
                "keep_checkpoints": "false", "bf16": "true"}
        t0 = time.perf_counter()
        rc = main(["pretrain", "--corpus", str(self.inputs / "corpus" / "full"), "--model-config",
                   str(self.config_path), "--scheme", "genemask", "--ranking", str(self.inputs / "ranking.csv"),
                   "-o", str(out), *[x for k, v in sets.items() for x in ("--set", f"{k}={v}")]])
        wall = time.perf_counter() - t0
        if rc != 0:
            return None
        import pandas as pd

        meta = json.loads((out / "genemask.json").read_text())
        rows = pd.read_csv(out / "train_log.tsv", sep="\t").to_dict("records")
        shutil.rmtree(out, ignore_errors=True)
        return {"meta": meta, "rows": rows, "wall_s": wall}


def measure(part: str, inputs: Path, work: Path, report: Report, smoke: bool) -> int:
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not smoke:
        report.say(f"{part}: no CUDA device (torch.cuda.is_available() is false)")
        return 2
    name = {"logo": "logo", "bert": "dnabert"}[part]
    label = {"logo": "LOGO", "bert": "BERT-base"}[part]
    config = json.loads((ROOT / "resources" / "models" / f"{'tiny' if smoke else name}.json").read_text())
    if smoke:
        label += " (cpu smoke: resources/models/tiny.json)"
    work.mkdir(parents=True, exist_ok=True)
    runner = Runner(inputs, work, part, config)
    n_params = model_size(config)
    dev = torch.cuda.get_device_name(0) if cuda else "cpu"
    total_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None
    peak = peak_tflops(dev) if cuda else None
    fpt = flops_per_token(n_params, config["num_hidden_layers"], config["hidden_size"], SEQ_TOKENS)
    fpt_attn = flops_per_token(n_params, config["num_hidden_layers"], config["hidden_size"], SEQ_TOKENS, True)
    fig: dict = {"model": name, "params": n_params, "device": dev, "memory_gib": total_gib, "peak_tflops": peak}

    # 1. peak memory per sequence: two short runs at small micro-batches
    b1, b2 = (2, 4) if smoke else {"logo": (16, 64), "bert": (8, 32)}[part]
    probes = [runner.run(f"probe{b}", b, 1, 3) for b in (b1, b2)]
    mem = None
    if all(probes) and all(p["meta"].get("peak_gpu_mem_gib") for p in probes):
        static, per_seq = memory_model(b1, probes[0]["meta"]["peak_gpu_mem_gib"], b2, probes[1]["meta"]["peak_gpu_mem_gib"])
        budget = MEMORY_SHARE * total_gib
        b_max = largest_micro_batch(budget, static, per_seq)
        mem = {"static_gib": round(static, 4), "per_seq_gib": round(per_seq, 5), "budget_gib": round(budget, 2),
               "largest_micro_batch": b_max, "probes": {str(b1): probes[0]["meta"]["peak_gpu_mem_gib"],
                                                       str(b2): probes[1]["meta"]["peak_gpu_mem_gib"]}}
        report.say(f"{label} memory: {per_seq:.4f} GiB ({per_seq * 1024:.1f} MiB) per sequence of {SEQ_TOKENS} tokens "
                   f"+ {static:.2f} GiB static (peaks {probes[0]['meta']['peak_gpu_mem_gib']:.2f} GiB at {b1}, "
                   f"{probes[1]['meta']['peak_gpu_mem_gib']:.2f} GiB at {b2} sequences per micro-batch)")
        report.say(f"{label} largest micro-batch within {MEMORY_SHARE:.0%} of {total_gib:.1f} GiB: {b_max}")
    else:
        b_max = 4 if smoke else 0
        report.say(f"{label} memory: not measured ({'no CUDA memory on a CPU' if not cuda else 'a probe run failed'}); "
                   f"largest micro-batch taken as {b_max}")
    rec = recommended(b_max)
    fig["memory"], fig["recommended"] = mem, rec
    if rec:
        report.say(f"{label} recommended config: batch_size {rec[0]}, grad_accum {rec[1]} on 1 GPU "
                   f"(batch_size x grad_accum x GPUs = {PER_STEP}; largest divisor of {PER_STEP} <= {b_max})")

    # 2. throughput: LOGO at 50 x 5 and at the recommended micro-batch; BERT-base at the largest
    # micro-batch and at the recommended one
    plan = []
    if part == "logo":
        plan.append(("50x5", 50, 5) if not smoke else ("4x2", 4, 2))
        if rec and rec[0] != plan[0][1]:
            plan.append((f"{rec[0]}x{rec[1]}", *rec))
        steps = 6 if smoke else 60
    else:
        if b_max:
            plan.append((f"{b_max}x1", b_max, 1))
        if rec and rec[0] != b_max:
            plan.append((f"{rec[0]}x{rec[1]}", *rec))
        steps = 4 if smoke else 10
    fig["runs"] = {}
    for tag, b, a in plan:
        if smoke:  # the same runs, cut: at most 2 micro-batches per step
            a = min(a, 2)
            tag = f"{b}x{a}"
        r = runner.run(tag, b, a, steps, log_every=1)
        if r is None:
            report.say(f"{label} {tag}: the run failed (its error is in the log)")
            continue
        m = r["meta"]
        tps = steady_tokens_per_s(r["rows"], skip_steps=max(1, steps // 5))
        tok_per_seq = m["tokens_seen"] / (m["steps"] * b * a)
        minutes_10k = 10_000 * PER_STEP * tok_per_seq / tps / 60 if tps else None
        run = {"batch_size": b, "grad_accum": a, "steps": steps, "tokens_per_s": tps and round(tps),
               "peak_gpu_mem_gib": m.get("peak_gpu_mem_gib"), "tokens_per_seq": round(tok_per_seq, 1),
               "minutes_10k_steps": minutes_10k and round(minutes_10k, 2), "wall_s": round(r["wall_s"], 1)}
        if peak and tps:
            run["mfu_6n"] = round(tps * fpt / (peak * 1e12), 4)
            run["mfu_with_attention"] = round(tps * fpt_attn / (peak * 1e12), 4)
        fig["runs"][tag] = run
        mfu = (f"MFU {run['mfu_6n']:.1%} (6N), {run['mfu_with_attention']:.1%} with attention" if "mfu_6n" in run
               else "MFU n/a (unknown peak: set GPU_PEAK_TFLOPS)" if cuda else "MFU n/a (cpu)")
        mem_txt = (f"peak {run['peak_gpu_mem_gib']:.2f} GiB ({run['peak_gpu_mem_gib'] / total_gib:.0%} of the GPU)"
                   if run["peak_gpu_mem_gib"] else "peak memory n/a")
        report.say(f"{label} {b} x {a}: {tps or 0:,.0f} tokens/s, {mfu}, {mem_txt}, {tok_per_seq:.0f} tokens "
                   f"per sequence; 10k paper steps ({PER_STEP} sequences each) "
                   + (f"{minutes_10k:.1f} min" if minutes_10k else "n/a") + f" [{steps} steps, {r['wall_s']:.0f} s]")
    # the goals of this check on one H200: BERT-base >= 350k tokens/s, LOGO's 10k paper steps <= 10 min
    done = {t: v for t, v in fig["runs"].items() if v["tokens_per_s"]}
    if done and not smoke:
        tag, best = max(done.items(), key=lambda kv: kv[1]["tokens_per_s"])
        if part == "bert":
            report.say(f"goal BERT-base >= 350,000 tokens/s: {'met' if best['tokens_per_s'] >= 350_000 else 'NOT met'} "
                       f"({best['tokens_per_s']:,} at {tag})")
        else:
            report.say(f"goal LOGO 10k paper steps <= 10 min: {'met' if best['minutes_10k_steps'] <= 10 else 'NOT met'} "
                       f"({best['minutes_10k_steps']:.1f} min at {tag})")
        report.say(f"{label} for genemask plan-study: --gpu-tokens-per-s {best['tokens_per_s']} --tokens-per-step "
                   f"{round(PER_STEP * best['tokens_per_seq'])} ({tag})")
    report.record(part, fig)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("dest")
    p.add_argument("--mirror", default=None)
    p = sub.add_parser("measure")
    p.add_argument("part", choices=["logo", "bert"])
    p.add_argument("--inputs", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--smoke", action="store_true", help="tiny models on the CPU: the same steps, no figures")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        mirror = find_mirror(args.mirror)
        if mirror is None:
            print(f"gpu_check: no data mirror with {DEMO_GENOME} (set GENEMASK_MIRROR)", file=sys.stderr)
            return 2
        info = prepare(Path(args.dest), mirror)
        print(f"inputs: {args.dest} ({info['full_pieces']:,} full-length pieces of {info['genome']}; "
              f"ranking {info['ranking']})")
        return 0
    return measure(args.part, Path(args.inputs), Path(args.work), Report(Path(args.report)), args.smoke)


if __name__ == "__main__":
    sys.exit(main())
