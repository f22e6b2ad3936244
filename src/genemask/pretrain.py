"""Masked-language-model pretraining with one masking scheme: the whole loop, top to bottom.

Reads like nanoGPT: settings -> data -> model -> optimiser -> loop (masking, accumulation,
clipping, schedule) -> evaluation -> checkpoints -> a Hugging Face folder. No callbacks. `pretrain`
is that loop; its named steps: `setup` (distributed, device, threads), `build` (data, model, masker,
optimiser, schedule), `resume_point`, `train_step`, `validation` (`evaluate`), `Checkpoints.save`,
`export_run`.

The step never waits on the host and the host never waits on the device inside it: each
micro-batch is assembled, masked and turned into the head's slots ahead of the step in a
background thread (`Feed`), copied from pinned memory without waiting; the masked-token head takes
precomputed slot indices, so no shape depends on the data (`MaskedLMLoss`); the loss sum and the
per-rank counts stay on the device and are read at log steps and checkpoints (`step_loss`,
`RankCounts`). With settings.compile the forward (and with it the backward) is one
torch.compile(fullgraph=True) graph: every micro-batch padded to one width, the head with a fixed
number of slots (`slot_count`). settings.bf16 (auto|true|false, `precision.py`) runs the forward
under bf16 autocast with float32 master weights.

Dropout is torch's own (nn.Dropout and the attention kernel's), seeded per global micro-batch
with torch.manual_seed as before, so a float32 run is bit for bit what it was. In bf16 on a CPU
(not compiled) training's attention is the math attention in bf16 and every dropout mask comes
from numpy instead (`cpu_bf16_training`: fine-tuning's `fused_adamw_dropout.HostDropout` for the
hidden states, `fused_adamw_dropout.cpu_training_attention` for the attention, one PCG64 reseeded
per global micro-batch like torch's): torch's CPU attention with dropout cannot use its fused
kernel, and falls back to float32 products with a mask drawn by bernoulli_ (10 x 12 x 508 x 508
draws per BERT-base layer), which cost as much as the rest of the bf16 step, and without dropout
its fused kernel's bf16 backward is slow. Compiled, inductor draws every dropout mask inside the
fused kernels (Philox seeded from torch's generator: still per micro-batch), without the separate
draw-then-multiply passes.

Determinism and resumption: the data order is a pure function of (seed, step) (a seeded
permutation per epoch), and each micro-batch's masking and dropout are seeded from
(seed, step, global micro-batch index), so a run restarted from a checkpoint (model, optimiser,
scheduler, the torch/numpy/python RNG states, the step) continues exactly as if it had never
stopped, and a DDP run with N ranks sees the same global batches and masks as one process.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .corpus import Corpus
from .defaults import check as check_settings
from .defaults import defaults as config_defaults
from .kmers import PAD, SEP, SUPPORTED_K, vocab_size
from .masking import IGNORE, make_masker, rank_table
from .precision import autocast as bf16_autocast
from .precision import describe as describe_precision
from .precision import use_bf16
from .prefetch import Prefetch
from .training import linear_schedule, padded_rows, param_groups
from .util import PRETRAINING_RUN, GeneMaskError, Progress, atomic_output, output_lock, read_json_object, read_settings

# The paper's settings (spec section 6) are the defaults: the config schema's pretrain.settings
# defaults (one home: genemask.defaults), plus `threads`, no config key (the rule sets it from
# pretrain.threads): torch CPU threads, 0 = torch's default.
DEFAULTS = {**config_defaults("pretrain.settings"), "threads": 0}

LOG_COLUMNS = ["step", "lr", "loss", "val_loss", "val_ppl", "tokens_per_s"]


def load_settings(settings: str | dict | None, overrides: list[str] = ()) -> dict:
    s = json.loads(json.dumps(DEFAULTS))
    given, _ = read_settings(settings, "pretraining")
    for key, val in list(given.items()) + [_parse_override(o) for o in overrides]:
        if key not in DEFAULTS:
            raise GeneMaskError(f"pretrain settings: unknown key {key!r} (known: {', '.join(DEFAULTS)})")
        s[key] = val
    # the config schema's rules, one line naming the key (a config's settings are checked by the same)
    check_settings({k: v for k, v in s.items() if k != "threads"}, "pretrain.settings",
                   "pretrain settings", prefix="setting")
    return s


def _parse_override(text: str):
    import yaml

    if "=" not in text:
        raise GeneMaskError(f"--set {text!r}: expected KEY=VALUE")
    k, v = text.split("=", 1)
    v = yaml.safe_load(v)
    if isinstance(v, str):  # YAML 1.1 reads 8e-4 (no dot) as a string
        try:
            v = float(v)
        except ValueError:
            pass
    return k, v


def build_model(model_config: dict, seed: int):
    from transformers import BertConfig, BertForMaskedLM

    cfg = dict(model_config)
    k = cfg.pop("k", 6)
    cfg.pop("name", None)
    config = BertConfig(vocab_size=vocab_size(k), pad_token_id=PAD, **cfg)
    torch.manual_seed(seed)
    return BertForMaskedLM(config), k


class MaskedLMLoss(torch.nn.Module):
    """MLM loss computing the vocabulary head only at the masked positions, given as slots.

    Hugging Face's BertForMaskedLM projects every token onto the 4101-word vocabulary; only the
    ~15% masked ones carry a label, so projecting just those is the same loss at a fraction of the
    cost (measured 9x faster per step for the demo model on CPU). The wrapped model is unchanged
    and is saved as a regular BertForMaskedLM.

    The masked positions come made on the host with the batch (`as_slots`): `slots`, their flat
    indices into the [B, W] batch in row-major order (the order of `hidden[labels != -100]`), and
    `targets`, their labels. So the forward has no data-dependent shape and reads nothing back from
    the device. With a static number of slots (torch.compile: `slot_count`) the slots past the
    masked count point at position 0 with target -100 and the loss ignores them. The loss is the
    summed cross entropy over the number of real targets (1 if none: loss 0, graph kept), which is
    cross_entropy's mean bit for bit (the same summation, the same float32 division). The attention
    mask is passed as the 4-D boolean mask Hugging Face's sdpa path makes of a padding mask (same
    values, same outputs), so HF's test whether it may drop the mask (a `.all()` read of the device)
    never runs; `full` (known on the host: no row is padded) drops it as that test would (the
    attention kernel is faster without one), except in a compiled step, which keeps one graph.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, slots, targets, full: bool = False):
        B, W = input_ids.shape
        keep = input_ids != PAD
        four_d = self.model.config._attn_implementation != "eager"  # sdpa, or cpu_training_attention
        mask = None if full else keep[:, None, None, :].expand(B, 1, W, W) if four_d else keep
        hidden = self.model.bert(input_ids=input_ids, attention_mask=mask).last_hidden_state
        logits = self.model.cls(hidden.reshape(B * W, -1).index_select(0, slots))
        total = torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="sum")
        return total / (targets != IGNORE).sum().clamp(min=1)


# The static head's prediction slots per micro-batch, as a share of its B x W positions. Every
# scheme masks 14-15.3 % of the real tokens with its default options; for the paper's 10 x 508
# micro-batch the masked count's standard deviation is about 1 % of the positions, so a quarter
# is many standard deviations above it. A micro-batch with more masked tokens (a small batch, a
# larger `p`) gets B x W slots, every position: a second shape (one more compilation), never a
# dropped label.
SLOT_FRACTION = 0.25


def slot_count(rows: int, width: int, n_masked: int) -> int:
    """Slots of the static head for a [rows, width] micro-batch with n_masked masked tokens."""
    fixed = max(1, math.ceil(SLOT_FRACTION * rows * width))
    return fixed if n_masked <= fixed else rows * width


@dataclass
class MicroBatch:
    """One micro-batch as the step takes it, made on the host (in the prefetch thread): masked
    input ids [B, W], the head's slots and targets [S] (see `MaskedLMLoss`), the unmasked ids
    (for the rank counts; None without a ranking), the masked count, whether no row is padded
    (`full`, never set for a static shape) and the tokens (not [PAD]) of the whole optimiser step
    it belongs to, all ranks."""

    inp: torch.Tensor
    slots: torch.Tensor
    targets: torch.Tensor
    ids: torch.Tensor | None
    n_masked: int
    full: bool = False
    step_tokens: int = 0

    def to(self, device: torch.device) -> MicroBatch:
        """On `device`: copies from pinned memory that do not wait (the CPU: itself)."""
        if device.type == "cpu":
            return self
        go = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return MicroBatch(go(self.inp), go(self.slots), go(self.targets), go(self.ids), self.n_masked, self.full,
                          self.step_tokens)


def as_slots(batch: torch.Tensor, inp: torch.Tensor, labels: torch.Tensor, width: int | None = None,
             static: bool = False, ranked: bool = False, pin: bool = False) -> MicroBatch:
    """A masked batch (the masker's `inp`, `labels` of `batch`) as a `MicroBatch`: padded on the right
    to `width` (a fixed shape for torch.compile), with exactly as many slots as masked tokens, or
    `slot_count` slots when `static`; `pin`: in pinned memory, for copies that do not wait."""
    if width is not None and width > batch.shape[1]:
        more = (0, width - batch.shape[1])
        batch = torch.nn.functional.pad(batch, more, value=PAD)
        inp = torch.nn.functional.pad(inp, more, value=PAD)
        labels = torch.nn.functional.pad(labels, more, value=IGNORE)
    B, W = batch.shape
    flat_labels = labels.reshape(-1).numpy()
    flat = np.flatnonzero(flat_labels != IGNORE)
    n = len(flat)
    S = slot_count(B, W, n) if static else n
    slots = np.zeros(S, dtype=np.int64)
    slots[:n] = flat
    targets = np.full(S, IGNORE, dtype=np.int64)
    targets[:n] = flat_labels[flat]
    full = not static and bool((batch[:, -1] != PAD).all())  # rows are [CLS] ... [SEP] [PAD]...
    mb = MicroBatch(inp, torch.from_numpy(slots), torch.from_numpy(targets), batch if ranked else None, n, full)
    if pin:
        mb = MicroBatch(*(None if t is None else t.pin_memory() for t in (mb.inp, mb.slots, mb.targets, mb.ids)),
                        n, full)
    return mb


def make_batch(corpus: Corpus, idx: np.ndarray, max_len: int) -> torch.Tensor:
    """[CLS] tokens [SEP] [PAD]... for the pieces `idx`, padded to the longest in the batch."""
    return padded_rows([corpus.piece(int(i)) for i in idx], max_len)[0]


def sample_indices(n: int, seed: int, start: int, count: int) -> np.ndarray:
    """Global sample positions [start, start+count) -> piece indices; a fresh permutation per epoch."""
    pos = np.arange(start, start + count)
    epochs = pos // n
    out = np.empty(count, dtype=np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng([seed, int(e)]).permutation(n)
        sel = epochs == e
        out[sel] = perm[pos[sel] % n]
    return out


def micro_seed(seed: int, step: int, micro: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{step}/{micro}".encode()).digest()[:8], "little") >> 1


def micro_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """Masking randomness of one global micro-batch: independent of world size and of restarts."""
    g = torch.Generator()
    g.manual_seed(micro_seed(seed, step, micro))
    return g


def sha256_file(path: str | Path | None) -> str | None:
    if not path:
        return None
    from .sources import sha256_of

    return sha256_of(path)


def pretrain(corpus_dirs: list[str], model_config: dict, scheme: str, output: str | Path,
             ranking_path: str | None = None, settings: dict | None = None,
             save_steps: list[int] | tuple[int, ...] = ()) -> dict:
    """Pretrain one run and write `output/`: one Hugging Face folder `step{N}/` per N in
    `save_steps` and the last step, plus the run's train_log.tsv, mask_ranks.tsv, genemask.json.

    Checkpoints (model, optimiser, schedule, RNG states, masker state) are kept beside the run, in
    `<output>.ckpt/<fingerprint>/step{N}.pt` with a sha256 sidecar, at every checkpoint_every step,
    at every saved step, and on SIGTERM/SIGINT. The fingerprint hashes everything that determines
    the run's arithmetic (scheme, settings but threads/logging/checkpoint cadence, model config,
    ranking and corpus checksums, total steps), so a changed config never resumes an old
    checkpoint; an intact matching one is resumed from. A rerun that asks for a step it already
    passed (a new entry in eval_steps) exports it from its checkpoint, or trains only from the
    nearest earlier checkpoint to it: never from zero (unless keep_checkpoints is false).
    """
    s = settings or load_settings(None)
    output, steps = Path(output), int(s["steps"])
    targets = save_targets(save_steps, steps)
    proc = setup(s)
    run = build(corpus_dirs, model_config, scheme, ranking_path, s, proc)
    done_as = {**s, "bf16": bf16_key(run.bf16, proc.device, run.host_rng is not None)}
    ckpts = Checkpoints(output, *fingerprint(scheme, done_as, model_config, ranking_path, corpus_dirs,
                                             {**run.train.sha256, **run.valid.sha256}))
    if proc.master:
        _say_other_fingerprints(ckpts.dir, ckpts.blob, bool(ckpts.kept))
    state, missing = resume_point(ckpts, targets, run, proc)
    end = max(missing) if missing else state["step"]  # train up to the last target not checkpointed yet
    counts = RankCounts(run.token_ranks, state, proc.device) if run.token_ranks is not None else None

    prog = Progress(f"pretrain {scheme}", steps, "steps", every_s=10, fmt="{:,.2f}")
    prog.done = state["step"]
    speed = Throughput(state["tokens_seen"])
    run.train_forward.train()
    stop = _StopSignals()  # SIGTERM (SLURM pre-emption / time limit) or SIGINT: checkpoint, then exit
    if state["step"] == 0 and 0 in missing and proc.master and steps > 0:
        ckpts.save(0, run, state)
    if proc.master and state["step"] < end:
        how = describe_precision(s["bf16"], proc.device) + (", compiled" if s["compile"] else "") + (
            ", math attention, dropout masks from numpy" if run.host_rng is not None else "")
        print(f"pretrain {scheme}: training from step {state['step']} to {end} of {steps} (checkpoints in "
              f"{ckpts.dir}; {how})", file=sys.stderr, flush=True)
    feed, loss = None, float("nan")
    try:
        while state["step"] < end:
            if feed is None or state["step"] >= feed.stop:  # batches made ahead up to the next evaluation
                if feed is not None:
                    feed.close()
                feed = Feed(run, s, proc, state["step"], window_end(state["step"], s, end))
            loss_sum, tokens = train_step(run, state, s, proc, feed, counts)
            step = state["step"]
            speed.add(tokens)
            row = None
            if step % int(s["log_every"]) == 0 or step == steps or step % int(s["eval_every"]) == 0:
                loss = step_loss(loss_sum, s, proc)  # the loop's one read of the device
                row = {"step": step, "lr": run.sched.get_last_lr()[0], "loss": loss, "val_loss": "", "val_ppl": "",
                       "tokens_per_s": speed.since_last()}
            if step % int(s["eval_every"]) == 0 or step == steps:
                validation(run, state, row, s, proc, scheme)
            if row is not None:
                state["log"].append(row)
            prog.update(1, extra=f"loss {loss:.3f}" + (f" tok/s {row['tokens_per_s']:,.0f}" if row else ""))
            if proc.master and (step % int(s["checkpoint_every"]) == 0 or step in targets or stop.signal):
                ckpts.save(step, run, state, counts)
            if stop.signal:
                raise GeneMaskError(f"{stop.name} at step {step}: checkpoint {ckpts.path(step)} written; "
                                    f"run the same command again to continue from it")
    finally:
        if feed is not None:
            feed.close()
    if counts is not None:
        counts.store(state)
    stop.restore()
    prog.close()
    peak_gib = speed.finish(f"pretrain {scheme}", state["tokens_seen"], proc)

    if proc.master:
        meta = {"scheme": scheme, "k": run.k, "settings": s, "model_config": model_config,
                "ranking": str(ranking_path) if ranking_path else None,
                "ranking_sha256": sha256_file(ranking_path), "corpus": [str(c) for c in corpus_dirs],
                "train_pieces": len(run.train), "train_tokens": run.train.n_tokens(), "steps": steps,
                "tokens_seen": state["tokens_seen"], "world_size": proc.world, "device": str(proc.device),
                "peak_gpu_mem_gib": peak_gib, "precision": describe_precision(s["bf16"], proc.device),
                "dropout": "numpy PCG64 masks (bf16 on CPU)" if run.host_rng is not None else "torch",
                "switch_step": run.masker.switch_step if run.masker is not None else None}  # cm_gems; else null
        export_run(output, run.model, run.k, meta, state, {t: ckpts.path(t) for t in targets}, proc.device)
        if not s["keep_checkpoints"]:
            import shutil

            shutil.rmtree(ckpts.dir, ignore_errors=True)
    teardown(proc)
    return state


def save_targets(save_steps, steps: int) -> list[int]:
    """The steps saved as model folders: every one of `save_steps` and the last; a step outside the
    run (0..steps) would be missing without a word, so it is refused."""
    late = [int(t) for t in save_steps if not 0 <= int(t) <= steps]
    if late:
        raise GeneMaskError(f"--save-steps: step(s) {', '.join(map(str, late))} outside the run's 0..{steps} "
                            f"(settings.steps)")
    return sorted({int(t) for t in save_steps} | {steps})


# ---- step: setup --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Process:
    """This process's place in the run: world size, rank (torchrun's WORLD_SIZE/RANK) and device."""

    world: int
    rank: int
    device: torch.device

    @property
    def master(self) -> bool:
        """Rank 0: the one that prints, checkpoints and exports."""
        return self.rank == 0


def setup(s: dict) -> Process:
    """Distributed setup (torchrun sets WORLD_SIZE/RANK/LOCAL_RANK), the device, torch's CPU threads."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if s["threads"]:
        torch.set_num_threads(int(s["threads"]))
    return Process(world, rank, device)


def teardown(proc: Process) -> None:
    """Wait for every rank, then leave the process group (a single process has none)."""
    if proc.world > 1:
        dist.barrier()
        dist.destroy_process_group()


# ---- step: build --------------------------------------------------------------------------------
@dataclass
class Run:
    """What `build` makes. One name per model role:

    model: the bare Hugging Face BertForMaskedLM: optimised, clipped, checkpointed and saved;
    loss_model: `MaskedLMLoss` over `model`, eager: evaluation's forward;
    train_forward: training's forward: `loss_model` through torch.compile(fullgraph=True) when
      settings.compile, wrapped by DistributedDataParallel with more than one process (`no_sync`
      while gradients accumulate);
    bf16: whether the forward passes run under bf16 autocast (`precision.use_bf16` of settings.bf16
      on this device), `autocast` that context (else a null context);
    host_rng: bf16 on a CPU, not compiled: the numpy Generator every dropout mask of the model is
      drawn from (`cpu_bf16_training`), reseeded per micro-batch; else None (torch's dropout);
    width: settings.compile: the one batch width every micro-batch is padded to (the longest
      training piece + 2, at most max_len), so the compiled step sees one shape; else None."""

    k: int
    train: Corpus
    valid: Corpus
    model: torch.nn.Module
    loss_model: torch.nn.Module
    train_forward: torch.nn.Module
    masker: object | None  # None for a 0-step run (scheme none: the untrained baseline)
    token_ranks: torch.Tensor | None  # rank by token id (mask_ranks.tsv); None without a ranking
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    bf16: bool
    autocast: object
    width: int | None
    host_rng: np.random.Generator | None = None


def build(corpus_dirs: list[str], model_config: dict, scheme: str, ranking_path: str | None, s: dict,
          proc: Process) -> Run:
    """Data, model, masker, optimiser and schedule, in this order (the model's initial weights are
    the first draws from torch's seeded RNG)."""
    steps = int(s["steps"])
    model, k = build_model(model_config, s["seed"])
    train = Corpus(corpus_dirs, "train", k)  # verified (corpus.open_split), with the sha256 of each .bin
    valid = Corpus(corpus_dirs, "valid", k)
    if steps > 0 and len(train) == 0:
        raise GeneMaskError(f"corpus {corpus_dirs[0]}...: no training pieces")
    model.to(proc.device)
    ranking = None
    if ranking_path:
        from .npmi import load_ranking

        ranking = load_ranking(ranking_path, k)
    masker = None
    if steps > 0:
        masker = make_masker(scheme, k=k, ranking=ranking, **s["masking"])
    bf16 = use_bf16(s["bf16"], proc.device)
    host_rng = cpu_bf16_training(model, s) if bf16 and proc.device.type == "cpu" and not s["compile"] else None
    loss_model = MaskedLMLoss(model)
    train_forward = torch.compile(loss_model, fullgraph=True, dynamic=False) if s["compile"] else loss_model
    if proc.world > 1:
        device_ids = [proc.device.index] if proc.device.type == "cuda" else None
        train_forward = torch.nn.parallel.DistributedDataParallel(train_forward, device_ids=device_ids)
    opt = torch.optim.AdamW(param_groups(model, s["weight_decay"]), lr=s["lr"], betas=tuple(s["betas"]), eps=s["eps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(int(s["warmup_steps"]), steps, warmup_offset=1))
    token_ranks = rank_table(ranking, k) if ranking is not None else None
    width = None
    if s["compile"] and len(train):
        width = min(int(s["max_len"]), int((train.ends - train.starts).max()) + 2)
    return Run(k, train, valid, model, loss_model, train_forward, masker, token_ranks, opt, sched, bf16,
               bf16_autocast(proc.device, bf16), width, host_rng)


def cpu_bf16_training(model, s: dict) -> np.random.Generator:
    """Training's attention the math attention in bf16, and every dropout mask of `model` (hidden
    states and attention probabilities) from one numpy Generator (`fused_adamw_dropout`:
    HostDropout, cpu_training_attention), returned for `accumulate` to reseed per micro-batch.
    Used for bf16 on a CPU, where torch's attention is slower in training, and its dropout would
    cost as much as the bf16 arithmetic: with dropout its CPU attention cannot take the fused
    kernel and falls back to float32 products with a bernoulli_ mask (BERT-base: most of a bf16
    step). float32 keeps torch's attention and dropout (today's arithmetic bit for bit); a compiled
    step keeps them too (inductor draws the masks inside its kernels; a numpy draw would break the
    graph)."""
    from .fused_adamw_dropout import use_cpu_training_attention, use_host_dropout

    rng = np.random.Generator(np.random.PCG64(s["seed"]))
    use_host_dropout(model, rng)
    use_cpu_training_attention(model)
    return rng


def bf16_key(bf16: bool, device: torch.device, cpu_training: bool = False):
    """settings.bf16 as the checkpoint fingerprint holds it: what it did on `device`. False: float32;
    True: bf16 autocast on a GPU (what `true` always meant there); "cpu": bf16 autocast on the CPU
    (new: `true` used to mean float32 on a CPU, so such a checkpoint is never resumed in bf16);
    "cpu, cpu_bf16_training": that with the attention and dropout masks of `cpu_bf16_training`, so
    a checkpoint made with torch's is never continued with these."""
    if not bf16:
        return False
    if device.type != "cpu":
        return True
    return "cpu, cpu_bf16_training" if cpu_training else "cpu"


def new_state(k: int) -> dict:
    """The checkpointed training state at step 0 (the masker's state joins it at the first evaluation)."""
    n_rank_bins = 4**k + 2
    return {"step": 0, "log": [], "masked_rank_counts": np.zeros(n_rank_bins, np.int64),
            "all_rank_counts": np.zeros(n_rank_bins, np.int64), "tokens_seen": 0}


# ---- steps: checkpoint and resume point ---------------------------------------------------------
class Checkpoints:
    """This run's checkpoints, `<output>.ckpt/<fingerprint>/step{N}.pt` (see `pretrain`), with the
    record of what the fingerprint hashes (fingerprint.json, for `_say_other_fingerprints`)."""

    def __init__(self, output: Path, fp: str, blob: dict):
        self.dir = output.with_name(output.name + ".ckpt") / fp
        self.blob = blob
        self.kept = checkpoints(self.dir)  # {step: path} found at the start

    def path(self, step: int) -> Path:
        return self.dir / f"step{step}.pt"

    def save(self, step: int, run: Run, state: dict, counts: RankCounts | None = None) -> None:
        """Checkpoint the model, optimiser, schedule, RNG states and `state` (with the rank counts,
        read from the device) at `step`."""
        if counts is not None:
            counts.store(state)
        save_checkpoint(self.path(step), run.model, run.opt, run.sched, state)
        if not (self.dir / "fingerprint.json").exists():
            with atomic_output(self.dir / "fingerprint.json") as tmp:
                tmp.write_text(json.dumps(self.blob, indent=1, sort_keys=True) + "\n")


def resume_point(ckpts: Checkpoints, targets: list[int], run: Run, proc: Process) -> tuple[dict, list[int]]:
    """(the state to start from, the target steps not checkpointed yet). The start is the latest kept
    checkpoint at or before the first missing target (none: step 0), or, every target kept, the last
    one (nothing to train: the run is exported from its checkpoints)."""
    state = new_state(run.k)
    missing = [t for t in targets if t not in ckpts.kept]
    start = max((c for c in ckpts.kept if c <= missing[0]), default=None) if missing else max(ckpts.kept)
    if start is not None:
        state = resume(ckpts.kept[start], run.model, run.opt, run.sched, proc.device)
        if run.masker is not None:
            run.masker.load_state_dict(state.get("masker"))  # cm_gems: its plateau rule and switch step
        if proc.master:
            print(f"pretrain: resumed from {ckpts.kept[start]} at step {state['step']}", file=sys.stderr)
    return state, missing


# ---- step: one training step --------------------------------------------------------------------
class Feed:
    """This rank's micro-batches of the steps [start, stop), assembled (`make_batch`), masked and
    turned into head slots (`as_slots`) ahead of the step in a background thread
    (`prefetch.Prefetch`, at most grad_accum + 1 micro-batches ahead; pinned memory on a GPU).

    The micro-batches are exactly the ones the step would make itself, in the same order: the data
    order is a function of (seed, step), each micro-batch's masks of its own generator
    (`micro_generator`), and the masker's state changes only at an evaluation (cm_gems's switch),
    which `stop` never passes (`window_end`). Each micro-batch carries the token count of its whole
    optimiser step, all ranks (from the pieces' lengths: no device read, no communication)."""

    def __init__(self, run: Run, s: dict, proc: Process, start: int, stop: int):
        self.run, self.s, self.proc, self.stop = run, s, proc, stop
        A = int(s["grad_accum"])
        self._step_idx: tuple[int, np.ndarray, int] | None = None
        self._prefetch = Prefetch(self._make, [(t, m) for t in range(start, stop) for m in range(A)], depth=A + 1)

    def _make(self, key: tuple[int, int]) -> MicroBatch:
        step, m = key
        s, run, proc = self.s, self.run, self.proc
        B, A = int(s["batch_size"]), int(s["grad_accum"])
        if self._step_idx is None or self._step_idx[0] != step:
            per_step = B * A * proc.world
            idx = sample_indices(len(run.train), s["seed"], step * per_step, per_step)
            n = np.minimum(run.train.ends[idx] - run.train.starts[idx], int(s["max_len"]) - 2) + 2
            self._step_idx = (step, idx, int(n.sum()))
        _, idx, tokens = self._step_idx
        g_micro = proc.rank * A + m
        batch = make_batch(run.train, idx[g_micro * B : (g_micro + 1) * B], s["max_len"])
        inp, lab = run.masker(batch, micro_generator(s["seed"], step, g_micro), step=step, total_steps=int(s["steps"]))
        mb = as_slots(batch, inp, lab, width=run.width, static=run.width is not None,
                      ranked=run.token_ranks is not None, pin=proc.device.type == "cuda")
        mb.step_tokens = tokens
        return mb

    def get(self, step: int, m: int) -> MicroBatch:
        return self._prefetch.get((step, m))

    def close(self) -> None:
        self._prefetch.close()


def window_end(step: int, s: dict, end: int) -> int:
    """How far batches may be made ahead from `step`: up to the next evaluation (after which
    cm_gems's masking may switch), at most `end`."""
    every = int(s["eval_every"])
    return min(end, (step // every + 1) * every)


def train_step(run: Run, state: dict, s: dict, proc: Process, feed: Feed,
               counts: RankCounts | None = None) -> tuple[torch.Tensor, int]:
    """One optimiser step from state["step"]: this rank's micro-batches of the global batch
    (`accumulate`), clipping, optimiser, schedule. Advances state (step, tokens_seen); returns (the
    sum of this rank's micro-batch losses, a float64 device tensor that `step_loss` reads at log
    steps; the step's tokens, all ranks)."""
    step = state["step"]
    loss_sum, tokens = accumulate(run, s, proc, feed, counts, step)
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), s["grad_clip"])
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    state["step"] = step + 1
    state["tokens_seen"] += tokens
    return loss_sum, tokens


def accumulate(run: Run, s: dict, proc: Process, feed: Feed, counts: RankCounts | None,
               step: int) -> tuple[torch.Tensor, int]:
    """The micro-batch loop of `step`: gradients accumulated over this rank's grad_accum micro-batches
    (data order, masking and dropout seeded per global micro-batch, so any world size sees the same;
    DDP synchronises on the last one). Nothing in it waits on the device: the micro-batches come
    made and masked from `feed`, copied without waiting, and the loss sum and rank counts stay on
    the device. Returns (the loss sum on the device, the step's tokens, all ranks)."""
    A, world = int(s["grad_accum"]), proc.world
    loss_sum = torch.zeros((), dtype=torch.float64, device=proc.device)
    tokens = 0
    for m in range(A):
        g_micro = proc.rank * A + m
        mb = feed.get(step, m).to(proc.device)
        dropout_seed = micro_seed(s["seed"] + 1, step, g_micro)  # dropout, seeded like the masks
        torch.manual_seed(dropout_seed)
        if run.host_rng is not None:
            run.host_rng.bit_generator.state = np.random.PCG64(dropout_seed).state
        if counts is not None:
            counts.add(mb)
        sync = nullcontext() if (world == 1 or m == A - 1) else run.train_forward.no_sync()
        with sync:
            with run.autocast:
                loss = run.train_forward(mb.inp, mb.slots, mb.targets, mb.full)
            (loss / A).backward()
        loss_sum += loss.detach().double()
        tokens = mb.step_tokens
    return loss_sum, tokens


def step_loss(loss_sum: torch.Tensor, s: dict, proc: Process) -> float:
    """The mean micro-batch loss of a step as one process would see it (the mean over ranks): one
    read of the device (and one all-reduce with DDP), at log steps only."""
    if proc.world > 1:
        loss_sum = loss_sum.clone()
        dist.all_reduce(loss_sum)
        return loss_sum.item() / proc.world / int(s["grad_accum"])
    return loss_sum.item() / int(s["grad_accum"])


class RankCounts:
    """Masked tokens and real (k-mer) tokens per NPMI rank (mask_ranks.tsv), counted on the device:
    `index_add_` of ones at each token's rank (a fixed-size scatter: bincount's output size would be
    read from the device), so nothing is read back until `store` copies them into the checkpointed
    state (at checkpoints and at the end)."""

    def __init__(self, token_ranks: torch.Tensor, state: dict, device: torch.device):
        self.ranks = token_ranks.to(device)
        self.masked = torch.tensor(state["masked_rank_counts"], dtype=torch.int64, device=device)
        self.all = torch.tensor(state["all_rank_counts"], dtype=torch.int64, device=device)

    def add(self, mb: MicroBatch) -> None:
        """Count a micro-batch: its masked tokens (the head's targets) and its real tokens (> [SEP]: the
        k-mers; [UNK] and [PAD] are not counted)."""
        self.masked.index_add_(0, self.ranks.index_select(0, mb.targets.clamp(min=0)), (mb.targets != IGNORE).long())
        ids = mb.ids.reshape(-1)
        self.all.index_add_(0, self.ranks.index_select(0, ids), (ids > SEP + 1).long())

    def store(self, state: dict) -> None:
        state["masked_rank_counts"] = self.masked.cpu().numpy().copy()
        state["all_rank_counts"] = self.all.cpu().numpy().copy()


class Throughput:
    """Tokens per second since the last log row (train_log.tsv's tokens_per_s) and over this session."""

    def __init__(self, tokens_seen: int):
        self.start = self.last = time.perf_counter()
        self.tokens_start, self.tokens = tokens_seen, 0

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def since_last(self) -> float:
        """Tokens per second since the previous call (or the start); restarts the count."""
        now = time.perf_counter()
        rate = self.tokens / max(now - self.last, 1e-9)
        self.last, self.tokens = now, 0
        return rate

    def finish(self, label: str, tokens_seen: int, proc: Process) -> float | None:
        """One line on this session's throughput (master, if it trained); the peak GPU memory [GiB] or None."""
        elapsed = time.perf_counter() - self.start
        peak_gib = torch.cuda.max_memory_allocated(proc.device) / 2**30 if proc.device.type == "cuda" else None
        if proc.master and tokens_seen > self.tokens_start:
            done = tokens_seen - self.tokens_start
            print(f"{label}: {done:,} tokens in {elapsed:.1f}s = {done / max(elapsed, 1e-9):,.0f} tokens/s "
                  f"({proc.world} x {proc.device.type}" + (f", peak GPU memory {peak_gib:.2f} GiB" if peak_gib else "")
                  + ")", file=sys.stderr)
        return peak_gib


# ---- step: evaluation ---------------------------------------------------------------------------
def evaluate(run: Run, s: dict, step: int, device: torch.device) -> float:
    """Mean masked-LM loss over the first eval_batches batches of the validation split: no dropout,
    masks seeded by (seed, -1, row) so every evaluation masks alike; nan if nothing was masked.
    The batch losses stay on the device until the end (one read)."""
    B = int(s["batch_size"])
    run.loss_model.eval()
    losses = []
    n_val = min(len(run.valid), int(s["eval_batches"]) * B)
    with torch.inference_mode(), run.autocast:
        for j in range(0, n_val, B):
            batch = make_batch(run.valid, np.arange(j, min(j + B, n_val)), s["max_len"])
            inp, lab = run.masker(batch, micro_generator(s["seed"], -1, j), step=step, total_steps=int(s["steps"]))
            mb = as_slots(batch, inp, lab)
            if mb.n_masked:
                mb = mb.to(device)
                losses.append(run.loss_model(mb.inp, mb.slots, mb.targets, mb.full).float())
    run.loss_model.train()
    return float(np.mean(torch.stack(losses).tolist())) if losses else float("nan")


def validation(run: Run, state: dict, row: dict, s: dict, proc: Process, scheme: str) -> None:
    """Evaluate at state["step"] into the log `row` (val_loss, val_ppl); the masker observes the
    perplexity (cm_gems switches to global_pmi on a plateau) and its state joins `state`."""
    step = state["step"]
    vl = evaluate(run, s, step, proc.device)
    row["val_loss"], row["val_ppl"] = vl, math.exp(vl) if vl == vl else float("nan")
    if run.masker.observe_validation(step, row["val_ppl"]) and proc.master:  # cm_gems: global_pmi from now on
        print(f"pretrain {scheme}: validation plateau, masking switches to global_pmi at step {step}",
              file=sys.stderr)
    state["masker"] = run.masker.state_dict()


class _StopSignals:
    """SIGTERM/SIGINT set a flag that the loop reads after the current step (then checkpoints)."""

    def __init__(self):
        import signal
        import threading

        self.signal, self.name, self._old = None, "", {}
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        import signal

        self.signal, self.name = signum, signal.Signals(signum).name

    def restore(self):
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)


def fingerprint(scheme: str, settings: dict, model_config: dict, ranking_path, corpus_dirs,
                known: dict[str, str] | None = None) -> tuple[str, dict]:
    """(16 hex digits, the hashed record) of everything that determines a run's arithmetic (see `pretrain`).

    The corpus enters by content: the sha256 of every file of each folder (`known`: {path: sha256}
    already computed, e.g. `Corpus.sha256` from the verifying pass, so no .bin is read twice)."""
    inert = {"threads", "log_every", "checkpoint_every", "keep_checkpoints"}
    known = known or {}
    corpus = []
    for d in corpus_dirs:
        d = Path(d)
        corpus.append([(f.name, f.stat().st_size, known.get(str(f)) or sha256_file(f))
                       for f in sorted(d.iterdir()) if f.is_file()])
    blob = {"scheme": scheme, "settings": {k: v for k, v in settings.items() if k not in inert},
            "model_config": model_config, "ranking_sha256": sha256_file(ranking_path), "corpus": corpus}
    blob = json.loads(json.dumps(blob, sort_keys=True, default=str))
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16], blob


def _flat(d, prefix=""):
    out = {}
    for k, v in (d.items() if isinstance(d, dict) else []):
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _say_other_fingerprints(ckpt_dir: Path, blob: dict, found: bool) -> None:
    """One line for checkpoints of this run's folder made with other settings: never resumed."""
    if found or not ckpt_dir.parent.is_dir():
        return
    now = _flat(blob)
    for other in sorted(ckpt_dir.parent.glob("*/fingerprint.json")):
        try:
            then = _flat(json.loads(other.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
        diff = [f"{k} {then.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(now) | set(then))
                if then.get(k) != now.get(k)]
        shown = "; ".join(d[:80] for d in diff[:4]) + (f"; {len(diff) - 4} more" if len(diff) > 4 else "")
        print(f"pretrain: not resuming {other.parent} (made with other settings: {shown}); starting from "
              f"step 0; delete that folder to free its space", file=sys.stderr)


def checkpoints(folder: Path) -> dict[int, Path]:
    """{step: path} of the kept checkpoints `step{N}.pt` in `folder` (only those with a sha256 sidecar)."""
    out = {}
    if folder.is_dir():
        for p in folder.glob("step*.pt"):
            n = p.stem[4:]
            if n.isdigit() and p.with_name(p.name + ".sha256").exists():
                out[int(n)] = p
    return out


def save_checkpoint(path: Path, model, opt, sched, state: dict) -> None:
    blob = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "state": state,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
    side = path.with_name(path.name + ".sha256")
    side.unlink(missing_ok=True)
    with atomic_output(path) as tmp:
        try:
            torch.save(blob, tmp)
        except RuntimeError as e:  # torch reports a failed write (disk full) as RuntimeError
            from .util import write_failure

            raise write_failure(path, f"cannot write the checkpoint: {str(e)[:120]}") from None
    with atomic_output(side) as tmp:
        tmp.write_text(sha256_file(path) + "\n")


def _load_checkpoint(path: Path, device) -> dict:
    side = path.with_name(path.name + ".sha256")
    want = side.read_text().strip() if side.exists() else None
    got = sha256_file(path)
    if want != got:
        raise GeneMaskError(f"{path}: damaged checkpoint (sha256 {got[:12]}..., recorded {str(want)[:12]}...); "
                            f"delete it and rerun to continue from the checkpoint before it")
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # noqa: BLE001 - a damaged checkpoint: say so, do not silently restart
        raise GeneMaskError(f"{path}: checkpoint cannot be read ({e}); delete it to restart from step 0") from None


def resume(path: Path, model, opt, sched, device) -> dict:
    blob = _load_checkpoint(path, device)
    model.load_state_dict(blob["model"])
    opt.load_state_dict(blob["opt"])
    sched.load_state_dict(blob["sched"])
    torch.set_rng_state(blob["rng"]["torch"].cpu())
    np.random.set_state(blob["rng"]["numpy"])
    random.setstate(blob["rng"]["python"])
    if blob["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
    return blob["state"]


def export_run(output: Path, model, k: int, meta: dict, state: dict, step_ckpts: dict[int, Path], device) -> None:
    """The run folder: `step{N}/` model folders (from the model in memory where it is at that
    step, else from the step's checkpoint) and the run's log, masked-rank counts and metadata."""
    from .modelfolder import save_model

    last, current = max(step_ckpts), state["step"]
    if current != last:  # the run's files describe the whole run: take the last step's state
        state = _load_checkpoint(step_ckpts[last], device)["state"]
        meta = {**meta, "tokens_seen": state["tokens_seen"]}
    final = {n: p.detach().clone() for n, p in model.state_dict().items()}
    with atomic_output(output, is_dir=True, kind=PRETRAINING_RUN) as tmp:
        for step in sorted(step_ckpts):
            model.load_state_dict(final if step == current else _load_checkpoint(step_ckpts[step], device)["model"])
            # config, weights, the k-mer tokenizer and genemask.json with the weights' sha256
            save_model(model, tmp / f"step{step}", k, {**meta, "pretrain_step": step,
                                                       "pretrain_seed": meta["settings"]["seed"],
                                                       **step_summary(state["log"], step)})
        write_run_files(tmp, meta, state)
    model.load_state_dict(final)


def step_summary(log: list[dict], step: int) -> dict:
    """What the training log says of the model at `step`: the last validation loss at or before it
    (and its step) and the mean logged throughput up to it (None where nothing was logged)."""
    upto = [r for r in log if r["step"] <= step]
    val = [r for r in upto if r["val_loss"] != "" and r["val_loss"] == r["val_loss"]]
    tps = [r["tokens_per_s"] for r in upto if r["tokens_per_s"] == r["tokens_per_s"]]
    return {"val_loss": float(val[-1]["val_loss"]) if val else None, "val_loss_step": val[-1]["step"] if val else None,
            "tokens_per_s": float(np.mean(tps)) if tps else None}


def write_run_files(folder: Path, meta: dict, state: dict) -> None:
    """genemask.json, train_log.tsv and mask_ranks.tsv of a run."""
    (folder / "genemask.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    with open(folder / "train_log.tsv", "w") as fh:
        fh.write("\t".join(LOG_COLUMNS) + "\n")
        for row in state["log"]:
            fh.write("\t".join(_fmt(row[c]) for c in LOG_COLUMNS) + "\n")
    mr, ar = state["masked_rank_counts"], state["all_rank_counts"]
    with open(folder / "mask_ranks.tsv", "w") as fh:
        fh.write("rank\tmasked_count\tall_count\n")
        for r in np.flatnonzero((mr > 0) | (ar > 0)):
            fh.write(f"{r}\t{mr[r]}\t{ar[r]}\n")


def read_run_meta(path: str | Path) -> dict:
    """A run folder's genemask.json (written by `write_run_files`), validated on read: an object with
    scheme (a string), steps (an integer >= 0) and switch_step (null or an integer in [0, steps]);
    any fault -> one line naming the file and the key."""
    path = Path(path)
    meta = read_json_object(path, "run metadata", ("scheme", "steps", "switch_step"))
    if not isinstance(meta["scheme"], str) or not meta["scheme"]:
        raise GeneMaskError(f"{path}: run metadata key scheme must be a non-empty string, got {meta['scheme']!r}")
    steps, sw = meta["steps"], meta["switch_step"]
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise GeneMaskError(f"{path}: run metadata key steps must be an integer >= 0, got {steps!r}")
    if sw is not None and (not isinstance(sw, int) or isinstance(sw, bool) or not 0 <= sw <= steps):
        raise GeneMaskError(f"{path}: run metadata key switch_step must be null or an integer in [0, {steps}], "
                            f"got {sw!r}")
    return meta


def _fmt(v) -> str:
    if v == "" or v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def pretrain_cli(corpus, model_config, scheme, output, ranking=None, settings=None, overrides=(), save_steps=()):
    try:
        mc = json.loads(Path(model_config).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GeneMaskError(f"{model_config}: cannot read model configuration ({e})") from None
    if not isinstance(mc, dict):
        raise GeneMaskError(f"{model_config}: model configuration must be a JSON object, got {type(mc).__name__}")
    if mc.get("k", 6) not in SUPPORTED_K or isinstance(mc.get("k"), bool):
        raise GeneMaskError(f"{model_config}: model configuration key k must be one of {SUPPORTED_K}, got {mc.get('k')!r}")
    s = load_settings(settings, overrides)
    with output_lock(output) if int(os.environ.get("RANK", "0")) == 0 else nullcontext():  # one writer
        pretrain(corpus, mc, scheme, output, ranking_path=ranking, settings=s, save_steps=save_steps or ())
