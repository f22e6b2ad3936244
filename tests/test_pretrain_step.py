"""The pretraining step (issue 22): batches assembled and masked ahead of the step, no host
synchronisation in the micro-batch loop, the masked-position head with a static number of slots,
bf16 where the hardware has it, the whole step through torch.compile(fullgraph=True).

The reference is today's step written out plainly (`_reference_run`: the batch assembled and masked
in the loop, the head on `hidden[labels != -100]`, the loss read with `.item()` every micro-batch):
in float32 on CPU the new step must give the same masked sets, losses, validation losses, rank counts
and final weights, bit for bit."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from genemask.corpus import Corpus, build_corpus
from genemask.kmers import PAD, SEP
from genemask.masking import make_masker, rank_table
from genemask.npmi import load_ranking
from genemask.pretrain import (
    build_model,
    load_settings,
    make_batch,
    micro_generator,
    micro_seed,
    pretrain,
    sample_indices,
)
from genemask.training import linear_schedule, param_groups

# the tiny model, with both dropouts on (the contract covers them: seeded per global micro-batch)
TINY = {"k": 6, "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512}
SETTINGS = {"steps": 6, "batch_size": 4, "grad_accum": 2, "warmup_steps": 3, "eval_every": 2, "eval_batches": 1,
            "log_every": 1, "checkpoint_every": 1000, "keep_checkpoints": False, "bf16": False}
# cm_gems with a threshold no perplexity change reaches: it switches to global_pmi at the second
# evaluation (step 4), so batches prefetched past that evaluation would be masked by the wrong branch
CM_GEMS_SWITCH = {"threshold": 1e9}


@pytest.fixture(scope="module")
def corpus(hg38_slice, tmp_path_factory):
    d = tmp_path_factory.mktemp("step")
    build_corpus(hg38_slice, d / "c0", region="chr2:1-300000", seed=1)
    return d / "c0"


@pytest.fixture
def on_cpu(monkeypatch):
    """pretrain() on the CPU even where a GPU is present: the float32 CPU contract is the one checked."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _settings(**more):
    return load_settings({**SETTINGS, **more})


def _reference_run(corpus_dir, scheme, ranking_path, s):
    """Today's pretraining loop, plainly (one process, float32): (log losses, validation losses by
    step, masked-rank counts, all-rank counts, tokens seen, final state_dict, masker switch step)."""
    steps, B, A = int(s["steps"]), int(s["batch_size"]), int(s["grad_accum"])
    model, k = build_model(TINY, s["seed"])
    train, valid = Corpus([corpus_dir], "train", k), Corpus([corpus_dir], "valid", k)
    ranking = load_ranking(ranking_path, k)
    masker = make_masker(scheme, k=k, ranking=ranking, **s["masking"])
    ranks = rank_table(ranking, k)
    masked_counts, all_counts = np.zeros(4**k + 2, np.int64), np.zeros(4**k + 2, np.int64)
    opt = torch.optim.AdamW(param_groups(model, s["weight_decay"]), lr=s["lr"], betas=tuple(s["betas"]), eps=s["eps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(int(s["warmup_steps"]), steps, warmup_offset=1))

    def head_loss(inp, batch, lab):
        hidden = model.bert(input_ids=inp, attention_mask=(batch != PAD)).last_hidden_state
        sel = lab != -100
        return torch.nn.functional.cross_entropy(model.cls(hidden[sel]).float(), lab[sel])

    def evaluate(step):
        model.eval()
        losses, n_val = [], min(len(valid), int(s["eval_batches"]) * B)
        with torch.inference_mode():
            for j in range(0, n_val, B):
                batch = make_batch(valid, np.arange(j, min(j + B, n_val)), s["max_len"])
                inp, lab = masker(batch, micro_generator(s["seed"], -1, j), step=step, total_steps=steps)
                if (lab != -100).any():
                    losses.append(head_loss(inp, batch, lab).float().item())
        model.train()
        return float(np.mean(losses)) if losses else float("nan")

    model.train()
    log, val, tokens_seen = [], {}, 0
    for step in range(steps):
        idx = sample_indices(len(train), s["seed"], step * B * A, B * A)
        loss_sum = 0.0
        for m in range(A):
            batch = make_batch(train, idx[m * B : (m + 1) * B], s["max_len"])
            inp, lab = masker(batch, micro_generator(s["seed"], step, m), step=step, total_steps=steps)
            torch.manual_seed(micro_seed(s["seed"] + 1, step, m))
            masked_counts += torch.bincount(ranks[batch[lab != -100]], minlength=len(masked_counts)).numpy()
            all_counts += torch.bincount(ranks[batch[batch > SEP + 1]], minlength=len(all_counts)).numpy()
            loss = head_loss(inp, batch, lab)
            (loss / A).backward()
            loss_sum += loss.detach().float().item()
            tokens_seen += int((batch != PAD).sum())
        torch.nn.utils.clip_grad_norm_(model.parameters(), s["grad_clip"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        log.append(loss_sum / A)
        if (step + 1) % int(s["eval_every"]) == 0 or step + 1 == steps:
            val[step + 1] = evaluate(step + 1)
            masker.observe_validation(step + 1, float(np.exp(val[step + 1])))
    state = {n: t.detach().clone() for n, t in model.state_dict().items()}
    return log, val, masked_counts, all_counts, tokens_seen, state, masker.switch_step


def _ours(corpus_dir, scheme, ranking_path, s, out):
    mc = out.parent / "tiny.json"
    mc.write_text(json.dumps(TINY))
    state = pretrain([str(corpus_dir)], TINY, scheme, out, ranking_path=str(ranking_path), settings=s)
    meta = json.loads((out / "genemask.json").read_text())
    return state, load_file(out / f"step{s['steps']}" / "model.safetensors"), meta


@pytest.mark.parametrize("scheme, masking", [("genemask", {}), ("cm_gems", CM_GEMS_SWITCH)])
def test_step_equals_todays_step_bit_for_bit(corpus, data_a, tmp_path, scheme, masking, on_cpu):
    """float32 on CPU: losses, validation losses, rank counts, tokens and final weights equal the plain
    loop's exactly; with cm_gems the switch at an evaluation step is seen by the batches after it."""
    s = _settings(masking=masking)
    log, val, mr, ar, seen, weights, switch = _reference_run(corpus, scheme, data_a, s)
    state, got, meta = _ours(corpus, scheme, data_a, s, tmp_path / "run")
    assert [r["loss"] for r in state["log"]] == log
    assert {r["step"]: r["val_loss"] for r in state["log"] if r["val_loss"] != ""} == val
    assert np.array_equal(state["masked_rank_counts"], mr) and np.array_equal(state["all_rank_counts"], ar)
    assert state["tokens_seen"] == seen
    assert got.keys() <= weights.keys()
    assert all(torch.equal(got[n], weights[n]) for n in got), [n for n in got if not torch.equal(got[n], weights[n])]
    assert meta["switch_step"] == switch
    if scheme == "cm_gems":
        assert switch == 4


# ---- the masked-token head: slots ---------------------------------------------------------------
def _batch(seed=0, B=4, W=60, lengths=(60, 41, 23, 60), rate=0.15):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 4101, (B, W), generator=g)
    ids[:, 0] = 2
    for b, n in enumerate(lengths):
        ids[b, n - 1], ids[b, n:] = SEP, PAD
    sel = (torch.rand(B, W, generator=g) < rate) & (ids > SEP + 1)
    lab = torch.full((B, W), -100).masked_scatter(sel, ids[sel])
    return ids, torch.where(sel, torch.full_like(ids, 4), ids), lab


def _grads(loss_fn, seed=0):
    model, _ = build_model(TINY, 0)
    model.train()
    torch.manual_seed(seed)
    loss = loss_fn(model)
    (loss / 2).backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lengths", [(60, 41, 23, 60), (60, 60, 60, 60)])  # with padding, and none (HF drops the mask)
def test_slot_head_equals_the_boolean_head(lengths):
    """Exact slots: the loss and every gradient equal today's head on hidden[labels != -100] bit for bit.
    A static number of slots changes only the padding: the same loss bit for bit; the gradients that sum
    over the slots (the head's weights, the tied word embeddings) to float32 rounding (the matrix
    product's blocking follows the row count), every other gradient bit for bit."""
    from genemask.pretrain import MaskedLMLoss, as_slots

    ids, inp, lab = _batch(lengths=lengths)

    def today(model):
        hidden = model.bert(input_ids=inp, attention_mask=(ids != PAD)).last_hidden_state
        sel = lab != -100
        return torch.nn.functional.cross_entropy(model.cls(hidden[sel]).float(), lab[sel])

    def ours(static):
        mb = as_slots(ids, inp, lab, static=static)
        assert mb.n_masked == int((lab != -100).sum()) and (mb.slots.numel() > mb.n_masked) == static
        assert mb.full == (not static and min(lengths) == 60)
        return lambda model: MaskedLMLoss(model)(mb.inp, mb.slots, mb.targets, mb.full)

    ref_loss, ref = _grads(today)
    loss, exact = _grads(ours(False))
    assert torch.equal(loss, ref_loss) and all(torch.equal(exact[n], ref[n]) for n in ref)
    loss, padded = _grads(ours(True))
    assert torch.equal(loss, ref_loss)
    summed = {n for n in ref if n.startswith("cls.") or n == "bert.embeddings.word_embeddings.weight"}
    assert all(torch.equal(padded[n], ref[n]) for n in ref if n not in summed)
    for n in summed:
        torch.testing.assert_close(padded[n], ref[n], rtol=1e-5, atol=1e-8)


def test_more_masked_tokens_than_slots_take_every_position():
    from genemask.pretrain import as_slots, slot_count

    ids, inp, lab = _batch(rate=0.6)
    n = int((lab != -100).sum())
    assert n > slot_count(*ids.shape, 0)
    mb = as_slots(ids, inp, lab, static=True)
    assert mb.slots.numel() == ids.numel() and mb.n_masked == n
    assert torch.equal(mb.targets[:n], lab[lab != -100]) and (mb.targets[n:] == -100).all()
    wide = as_slots(ids, inp, lab, width=64, static=True)  # padded to a fixed width: same tokens, new positions
    assert wide.inp.shape == (4, 64) and (wide.inp[:, 60:] == PAD).all()
    assert torch.equal(wide.targets[:n], mb.targets[:n]) and torch.equal(wide.slots[:n] // 64, mb.slots[:n] // 60)


# ---- the step waits on nothing ------------------------------------------------------------------
class _DeviceReads:
    """A dispatch mode recording the ops that read a tensor's value on the host or give it a shape
    that depends on its data: each a host synchronisation on a GPU."""

    READS = {"aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.is_nonzero", "aten.equal",
             "aten.unique", "aten._unique2"}

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode

        class Mode(TorchDispatchMode):
            seen = []

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = str(func.overloadpacket)
                if name in cls.READS or (name == "aten.index" and any(
                        isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)):
                    self.seen.append(name)
                return func(*args, **(kwargs or {}))
        return Mode()


def test_the_micro_batch_loop_reads_nothing_from_the_device(corpus, data_a, tmp_path, monkeypatch):
    """No op in the micro-batch loop (forward, backward, rank counts, loss sum) reads a value back or
    has a data-dependent shape: today's loop did (checked below, so the probe sees such reads)."""
    from genemask import pretrain as P

    ids, inp, lab = _batch()
    with _DeviceReads() as probe:  # today's head: a boolean index (nonzero) and the .item() read
        model, _ = build_model(TINY, 0)
        hidden = model.bert(input_ids=inp, attention_mask=(ids != PAD)).last_hidden_state
        torch.nn.functional.cross_entropy(model.cls(hidden[lab != -100]), lab[lab != -100]).item()
    assert {"aten.index", "aten._local_scalar_dense"} <= set(probe.seen)

    seen, loops = [], []
    accumulate = P.accumulate

    def probed(*args):
        with _DeviceReads() as mode:
            out = accumulate(*args)
        seen.extend(mode.seen)
        loops.append(1)
        return out

    monkeypatch.setattr(P, "accumulate", probed)
    _ours(corpus, "genemask", data_a, _settings(steps=3, bf16="auto"), tmp_path / "run")
    assert len(loops) == 3 and seen == []


# ---- background batches -------------------------------------------------------------------------
def test_prefetch_in_order_bounded_and_raises_where_it_failed():
    import time

    from genemask.prefetch import Prefetch

    made = []
    with Prefetch(lambda k: made.append(k) or 10 * k, range(5), depth=2) as p:
        assert [p.get(k) for k in range(5)] == [0, 10, 20, 30, 40]
        with pytest.raises(RuntimeError, match="after the last key"):
            p.get(5)
    made.clear()
    p = Prefetch(lambda k: made.append(k) or k, range(100), depth=2)
    time.sleep(0.3)
    assert len(made) <= 3  # two waiting, one made and waiting for room
    p.close()
    with pytest.raises(RuntimeError, match="asked for 1, next made is 0"):
        with Prefetch(lambda k: k, range(3)) as p:
            p.get(1)

    def make(k):
        if k == 2:
            raise ValueError("piece 2 is damaged")
        return k

    with Prefetch(make, range(5)) as p:
        assert p.get(0) == 0 and p.get(1) == 1
        with pytest.raises(ValueError, match="piece 2 is damaged"):
            p.get(2)


# ---- bf16 ---------------------------------------------------------------------------------------
def test_bf16_on_cpu_runs_and_same_seed_gives_the_same_weights(corpus, data_a, tmp_path, on_cpu):
    a_state, a, a_meta = _ours(corpus, "genemask", data_a, _settings(steps=4, bf16=True), tmp_path / "a")
    b_state, b, _ = _ours(corpus, "genemask", data_a, _settings(steps=4, bf16=True), tmp_path / "b")
    _, f, f_meta = _ours(corpus, "genemask", data_a, _settings(steps=4, bf16=False), tmp_path / "f")
    assert all(torch.equal(a[n], b[n]) for n in a) and a_state["log"][-1]["loss"] == b_state["log"][-1]["loss"]
    assert all(a[n].dtype == torch.float32 for n in a)  # float32 master weights
    assert not all(torch.equal(a[n], f[n]) for n in a)  # and bf16 did run
    assert a_meta["precision"].startswith("bf16 autocast (bf16=True)") and f_meta["precision"].startswith("float32")
    assert a_meta["dropout"].startswith("numpy") and f_meta["dropout"] == "torch"  # bf16 on CPU: host masks


def test_fingerprint_holds_what_bf16_did_on_the_device():
    from genemask.pretrain import bf16_key

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert bf16_key(False, cpu) is False and bf16_key(False, gpu) is False  # float32: as `false` always was
    assert bf16_key(True, gpu) is True  # `true` on a GPU: what it always meant
    assert bf16_key(True, cpu) == "cpu"  # `true` on a CPU was float32: such a checkpoint is not resumed in bf16
    assert bf16_key(True, cpu, cpu_training=True) == "cpu, cpu_bf16_training"  # not resumed from torch's masks
    assert bf16_key(True, gpu) is True and bf16_key(False, cpu, cpu_training=False) is False


# ---- torch.compile: one graph -------------------------------------------------------------------
@pytest.mark.slow  # compiling on CPU: about a minute with a cold inductor cache (see the report in the log)
def test_compiled_steps_are_one_graph_without_breaks_or_recompiles(corpus, data_a, tmp_path):
    """20 compiled steps (40 micro-batches: every one padded to one width, a fixed number of head
    slots, dropout on): dynamo captures one graph, breaks none and never recompiles."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    s = _settings(steps=20, compile=True, eval_every=1000, bf16="auto")
    with torch._dynamo.config.patch(error_on_recompile=True):
        state, weights, meta = _ours(corpus, "genemask", data_a, s, tmp_path / "compiled")
    print(f"dynamo counters after 20 compiled steps: stats {dict(counters['stats'])}, "
          f"graph breaks {dict(counters['graph_break'])}, recompiles {dict(counters['recompiles'])}")
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert len(state["log"]) == 20 and all(np.isfinite(r["loss"]) for r in state["log"])
    assert all(torch.isfinite(w).all() for w in weights.values())
    torch._dynamo.reset()
