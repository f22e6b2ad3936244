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
def test_step_equals_todays_step_bit_for_bit(corpus, data_a, tmp_path, scheme, masking):
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
