"""training.py, the primitives pretraining and fine-tuning share: padded rows, AdamW parameter groups,
the learning-rate schedule. Values pinned to what the two training paths computed before they shared
them (the per-step learning rates of both, the padded rows of the real Prom-core and hg38 inputs)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from genemask import finetune, pretrain
from genemask.corpus import Corpus, build_corpus
from genemask.kmers import CLS, PAD, SEP
from genemask.tasks import read_task_file
from genemask.tokenizer import encode_sequences
from genemask.training import linear_schedule, padded_rows, param_groups

TINY = {"k": 6, "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 512}


def _sha(t: torch.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(t.numpy()).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def prom_core_seqs(fewshot):
    return read_task_file(str(fewshot / "Prom-core" / "10" / "train.tsv"), 2)


@pytest.fixture(scope="module")
def corpus(hg38_slice, tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus") / "c"
    build_corpus(hg38_slice, d, region="chr2:1-60000", seed=1)
    return d


class StepLRs:
    """The learning rate of every parameter group at every optimiser step (a global pre-step hook)."""

    def __enter__(self):
        self.lrs = []
        self._h = register_optimizer_step_pre_hook(
            lambda opt, args, kwargs: self.lrs.append([g["lr"] for g in opt.param_groups]))
        return self

    def __exit__(self, *exc):
        self._h.remove()


# ---- padded rows -------------------------------------------------------------------------------

def test_padded_rows_by_hand():
    rows = [np.array([7, 8, 9]), np.array([10], dtype=np.uint16), np.array([], dtype=np.int64)]
    ids, n = padded_rows(rows, max_length=4)
    assert ids.dtype == torch.int64 and n.dtype == torch.int64
    assert ids.tolist() == [[CLS, 7, 8, SEP], [CLS, 10, SEP, PAD], [CLS, SEP, PAD, PAD]]
    assert n.tolist() == [4, 3, 2]
    ids, n = padded_rows(rows, max_length=10, width=7)
    assert ids.tolist() == [[CLS, 7, 8, 9, SEP, PAD, PAD], [CLS, 10, SEP, PAD, PAD, PAD, PAD],
                            [CLS, SEP, PAD, PAD, PAD, PAD, PAD]]
    assert n.tolist() == [5, 3, 2]
    ids, n = padded_rows([], max_length=8)
    assert tuple(ids.shape) == (0, 2) and n.tolist() == []


def test_padded_rows_equal_a_loop_on_random_rows():
    rng = np.random.default_rng(3)
    for _ in range(20):
        rows = [rng.integers(5, 4101, size=int(rng.integers(0, 30))).astype(np.uint16) for _ in range(7)]
        ml = int(rng.integers(2, 40))
        ids, n = padded_rows(rows, ml)
        cut = [r[: ml - 2] for r in rows]
        want = np.full((7, max(len(r) for r in cut) + 2), PAD)
        for i, r in enumerate(cut):
            want[i, : len(r) + 2] = [CLS, *r.tolist(), SEP]
        np.testing.assert_array_equal(ids.numpy(), want)
        assert n.tolist() == [len(r) + 2 for r in cut]
        assert torch.equal((ids != PAD).sum(1), n)  # the attention mask is ids != PAD


def test_the_three_callers_give_todays_rows(prom_core_seqs, corpus):
    seqs = prom_core_seqs.sequences
    ids, lengths = finetune.encode(seqs, 6, 64)
    assert tuple(ids.shape) == (20, 64)
    assert _sha(ids) == "105b228d3b13e897063cee264bd8107212d131536599a31fbc10f82baf0015a8"
    assert _sha(lengths) == "7239501a8b5eb0e8d967955b47f804badafbf03af17efcfbfe06f12e14bab2f5"
    assert torch.equal(encode_sequences(6, seqs, 64)["input_ids"], ids)
    e = encode_sequences(6, seqs, 100, "max_length")
    assert tuple(e["input_ids"].shape) == (20, 100)
    assert _sha(e["input_ids"]) == "7ade13b96d8b3989f330ca34cdee73b710879a0e9520a6c17420cbfc4d80c409"
    assert torch.equal(e["attention_mask"].sum(1), finetune.encode(seqs, 6, 100)[1])
    b = pretrain.make_batch(Corpus([str(corpus)], "train"), np.arange(0, 12, 2), 40)
    assert tuple(b.shape) == (6, 40)
    assert _sha(b) == "bf6c4e30e26e884d1fc882c18c57fc5775bc53cc19c1c053fc8eaf349b2afd1e"


# ---- parameter groups ----------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["BertForMaskedLM", "BertForSequenceClassification"])
def test_param_groups_are_both_former_rules(head):
    import transformers

    cfg = transformers.BertConfig(vocab_size=4101, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64)
    torch.manual_seed(0)
    model = getattr(transformers, head)(cfg)
    model.bert.embeddings.token_type_embeddings.weight.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.01)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.01, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    got_decay = [names[id(p)] for p in decay["params"]]
    got_no = [names[id(p)] for p in no_decay["params"]]
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    # fine-tuning's former rule (by name) and pretraining's (by shape or name), in parameter order
    ft_no = [n for n, _ in trainable if n.endswith("bias") or "LayerNorm" in n or "layer_norm" in n]
    pt_no = [n for n, p in trainable if p.ndim < 2 or "LayerNorm" in n or n.endswith(".bias")]
    assert got_no == ft_no == pt_no
    assert got_decay == [n for n, _ in trainable if n not in set(ft_no)]
    assert "bert.embeddings.token_type_embeddings.weight" not in got_decay + got_no
    assert "bert.embeddings.word_embeddings.weight" in got_decay
    assert len(got_no) == (26 if head == "BertForMaskedLM" else 24)  # 10 per layer + 2 + head


# ---- the schedule ----------------------------------------------------------------------------------

def test_schedule_values_pinned():
    ft = linear_schedule(3, 8)  # fine-tuning: Hugging Face's linear schedule, step 0 at lr 0
    assert [ft(t) for t in range(9)] == [0.0, 1 / 3, 2 / 3, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    pt = linear_schedule(3, 8, warmup_offset=1)  # pretraining: warm-up one step ahead
    assert [pt(t) for t in range(9)] == [1 / 3, 2 / 3, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    assert linear_schedule(0, 4)(0) == 1.0 and linear_schedule(0, 4, 1)(3) == 0.25  # no warm-up
    assert linear_schedule(4, 4)(3) == 0.75 and linear_schedule(4, 4, 1)(3) == 1.0  # warm-up only
    assert linear_schedule(2, 5)(9) == 0.0  # past the end: 0, never negative


def test_finetune_schedule_is_hugging_faces():
    from transformers import get_linear_schedule_with_warmup

    for warmup, total in ((3, 8), (0, 5), (5, 5), (1, 12), (7, 30)):
        w = torch.zeros(1, requires_grad=True)
        opt = torch.optim.SGD([w], lr=1.0)
        sched = get_linear_schedule_with_warmup(opt, warmup, total)
        hf = []
        for _ in range(total):
            hf.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        f = linear_schedule(warmup, total)
        assert [f(t) for t in range(total)] == pytest.approx(hf, abs=1e-15), (warmup, total)


def test_finetune_step_lrs_pinned(prom_core_seqs):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=4101, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, num_labels=2)
    model = BertForSequenceClassification(cfg)
    ids, lengths = finetune.encode(prom_core_seqs.sequences, 6, 128)
    regime = {"batch_size": 5, "epochs": 2, "lr": 1e-4}
    settings = finetune.load_settings({"warmup_ratio": 0.375})
    with StepLRs() as rec:
        info = finetune.train_classifier(model, ids, lengths, prom_core_seqs.labels, regime, settings, 0, "cpu")
    assert (info["steps"], info["warmup_steps"]) == (8, 3)
    want = [0.0, 3.3333333333333335e-05, 6.666666666666667e-05, 0.0001, 8e-05, 6e-05, 4e-05, 2e-05]
    assert rec.lrs == [[v, v] for v in want]


def test_pretrain_step_lrs_pinned(corpus, tmp_path):
    s = pretrain.load_settings(None, ["steps=8", "warmup_steps=3", "batch_size=2", "grad_accum=1", "eval_every=8",
                                      "eval_batches=1", "log_every=1", "threads=1", "max_len=64"])
    s["lr"] = 8e-4  # (a float: YAML reads --set lr=8e-4 as a string)
    with StepLRs() as rec:
        pretrain.pretrain([str(corpus)], TINY, "dnabert", tmp_path / "run", settings=s)
    want = [0.0002666666666666667, 0.0005333333333333334, 0.0008, 0.0008, 0.00064, 0.00048, 0.00032, 0.00016]
    assert rec.lrs == [[v, v] for v in want]
    # train_log.tsv's lr column is the scheduler's lr after the step: that of the next step
    log = [line.split("\t") for line in (tmp_path / "run" / "train_log.tsv").read_text().splitlines()[1:]]
    assert [float(r[1]) for r in log] == pytest.approx(want[1:] + [0.0], rel=1e-5)
    assert json.loads((tmp_path / "run" / "genemask.json").read_text())["steps"] == 8


def test_pretrain_settings_are_checked_by_the_schema():
    """--set values parse like YAML (8e-4 is a number), and a bad setting is one line naming it."""
    from genemask.pretrain import load_settings
    from genemask.util import GeneMaskError

    assert load_settings(None, ["lr=8e-4", "steps=5"])["lr"] == 8e-4
    for override, message in ((["steps=-1"], "setting 'steps': -1 is less than the minimum of 0"),
                              (["lr=abc"], "setting 'lr': 'abc' is not of type 'number'")):
        with pytest.raises(GeneMaskError, match=message):
            load_settings(None, override)


# ---- the lean fine-tuning step: fused AdamW and host dropout (fused_adamw_dropout.py) -----------
def _tiny_classifier(seed=0, dropout=0.1):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=4101, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_labels=3, hidden_dropout_prob=dropout, attention_probs_dropout_prob=0.1))


def test_fused_adamw_is_torchs_fused_adamw_bit_for_bit():
    """Same kernel, one call per group, one shared step counter: parameters equal torch's exactly,
    with the clip as grad_scale (> 1, = 1, absent) and a changing learning rate."""
    from genemask.fused_adamw_dropout import FusedAdamW

    a, b = _tiny_classifier(), _tiny_classifier()
    ref = torch.optim.AdamW(param_groups(a, 0.01), lr=1e-3, eps=1e-8, fused=True)
    ours = FusedAdamW(param_groups(b, 0.01), lr=1e-3, eps=1e-8)
    gen = torch.Generator().manual_seed(1)
    scales = [None, torch.tensor(3.0), torch.tensor(1.0), torch.tensor(1.7), None, torch.tensor(12.5)]
    for t, scale in enumerate(scales):
        for pa, pb in zip(a.parameters(), b.parameters()):
            g = torch.randn(pa.shape, generator=gen) * 0.1
            pa.grad, pb.grad = g.clone(), g.clone()
        for opt in (ref, ours):
            for group in opt.param_groups:
                group["lr"] = 1e-3 * (1 - t / 10)
            opt.grad_scale = scale
        ref.step()
        ours.step()
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters()))
    moved = sum(not torch.equal(p, q) for p, q in zip(a.parameters(), _tiny_classifier().parameters()))
    assert moved == len(list(a.parameters()))


def test_clip_scale_is_clip_grad_norm():
    from genemask.fused_adamw_dropout import clip_scale

    m = _tiny_classifier()
    gen = torch.Generator().manual_seed(2)
    params = list(m.parameters())
    for size, max_norm in ((1.0, 1.0), (0.001, 1.0), (0.3, 0.5)):
        grads = [torch.randn(p.shape, generator=gen) * size for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
        for t, g in zip(twins, grads):
            t.grad = g.clone()
        norm = torch.nn.utils.clip_grad_norm_(twins, max_norm)  # torch's clip, in place on the twins
        want = [t.grad for t in twins]
        s = clip_scale(params, max_norm)
        assert s.ndim == 0 and float(s) >= 1.0
        if float(norm) < max_norm:
            assert float(s) == 1.0  # no clip: the gradients are divided by exactly 1
        for p, w in zip(params, want):
            assert torch.allclose(p.grad / s, w, rtol=1e-5, atol=0)


def test_host_dropout_statistics_scaling_and_gradient():
    from genemask.fused_adamw_dropout import HostDropout

    d = HostDropout(0.1, np.random.default_rng(0))
    x = torch.ones(1000, 1000, requires_grad=True)
    y = d(x)
    kept = y != 0
    frac = 1 - kept.float().mean().item()
    assert abs(frac - 0.1) < 4 * (0.1 * 0.9 / 1e6) ** 0.5  # P(drop) = p, within 4 sigma
    assert torch.equal(y[kept], torch.full((int(kept.sum()),), np.float32(1 / 0.9)))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # d(x * m)/dx = m
    d.eval()
    z = torch.randn(7, 5)
    assert d(z) is z
    assert HostDropout(0.0, np.random.default_rng(0))(z) is z
    with pytest.raises(ValueError):
        HostDropout(1.0, np.random.default_rng(0))


def test_use_host_dropout_replaces_modules_and_is_seeded():
    from genemask.fused_adamw_dropout import HostDropout, use_host_dropout

    def masks(seed):
        m = _tiny_classifier()
        n_torch = sum(type(x) is torch.nn.Dropout for x in m.modules())
        assert use_host_dropout(m, seed) == n_torch == 8  # embeddings, 3 per layer x 2, classifier
        assert not any(type(x) is torch.nn.Dropout for x in m.modules())
        assert sum(type(x) is HostDropout for x in m.modules()) == 8
        assert m.bert.encoder.layer[0].attention.self.dropout.p == 0.1  # the attention kernel reads p
        m.train()
        ids = torch.randint(5, 4101, (4, 20), generator=torch.Generator().manual_seed(3))
        return [m(input_ids=ids).logits.detach() for _ in range(2)]

    a, b, c = masks(5), masks(5), masks(6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # same seed, same masks
    assert not torch.equal(a[0], a[1])  # a fresh mask every call
    assert not torch.equal(a[0], c[0])  # another seed, other masks


def _attention_inputs(seed=0, B=3, H=2, L=9, D=4):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, L, D, generator=g) for _ in range(3))
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[1, 6:] = False  # a padded row: its last 3 keys masked out
    return q, k, v, keep[:, None, None, :].expand(B, 1, L, L)


def test_cpu_training_attention_is_math_attention_with_the_host_mask():
    """Training, p = 0.25, a padded row: softmax(q k^T / sqrt(d), masked) with the HostDropout's
    dropped probabilities zeroed, times v, times 1/(1-p), as float64 arithmetic gives it; the mask is
    the HostDropout's next draw (same seed, same mask)."""
    from genemask.fused_adamw_dropout import HostDropout, cpu_training_attention

    q, k, v, mask = _attention_inputs()
    p = 0.25
    module = torch.nn.Module()
    module.dropout = HostDropout(p, np.random.default_rng(7))
    out, weights = cpu_training_attention(module, q, k, v, mask, scaling=0.5, dropout=p)
    keep = HostDropout(p, np.random.default_rng(7)).keep((3, 2, 9, 9))
    s = (q.double() @ k.double().transpose(-1, -2) * 0.5).masked_fill(~mask, float("-inf"))
    ref = (torch.softmax(s, dim=-1) * keep / (1 - p)) @ v.double()
    assert weights is None and out.shape == (3, 9, 2, 4)  # [B, L, heads, d], as transformers' attention returns
    torch.testing.assert_close(out.double(), ref.transpose(1, 2), rtol=1e-6, atol=1e-6)
    assert 0.15 < 1 - keep.float().mean().item() < 0.35  # about p of 486 draws dropped
    again, _ = cpu_training_attention(module, q, k, v, mask, scaling=0.5, dropout=p)
    assert not torch.equal(out, again)  # a fresh mask every call
    no_drop, _ = cpu_training_attention(module, q, k, v, mask, scaling=0.5, dropout=0.0)
    torch.testing.assert_close(no_drop.double(), (torch.softmax(s, dim=-1) @ v.double()).transpose(1, 2),
                               rtol=1e-6, atol=1e-6)
    module.dropout = torch.nn.Dropout(p)
    with pytest.raises(TypeError, match="HostDropout"):
        cpu_training_attention(module, q, k, v, mask, scaling=0.5, dropout=p)


def test_cpu_training_attention_in_evaluation_is_sdpa_bit_for_bit():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from genemask.fused_adamw_dropout import HostDropout, cpu_training_attention

    q, k, v, mask = _attention_inputs(1)
    module = torch.nn.Module()
    module.dropout = HostDropout(0.1, np.random.default_rng(0))
    module.eval()
    ours, _ = cpu_training_attention(module, q, k, v, mask, scaling=0.5, dropout=0.0)
    sdpa, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.5, dropout=0.0)
    assert torch.equal(ours, sdpa)


def _tiny_mlm(seed):
    from transformers import BertConfig, BertForMaskedLM

    from genemask.fused_adamw_dropout import use_cpu_training_attention, use_host_dropout

    torch.manual_seed(0)
    m = BertForMaskedLM(BertConfig(vocab_size=4101, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1))
    use_host_dropout(m, seed)
    use_cpu_training_attention(m)
    return m.train()


def test_cpu_training_attention_model_is_seeded_and_saves_a_plain_folder(tmp_path):
    """A BertForMaskedLM with every mask from one numpy Generator: the same seed gives the same
    logits in training; its saved folder names no attention implementation and loads with the Auto
    classes (transformers' default attention), equal to the model in evaluation."""
    from transformers import AutoModelForMaskedLM

    from genemask.fused_adamw_dropout import CPU_TRAINING_ATTENTION

    ids = torch.randint(5, 4101, (2, 12), generator=torch.Generator().manual_seed(3))
    a, b, c = _tiny_mlm(5), _tiny_mlm(5), _tiny_mlm(6)
    assert a.config._attn_implementation == CPU_TRAINING_ATTENTION
    la, lb, lc = (m(input_ids=ids).logits.detach() for m in (a, b, c))
    assert torch.equal(la, lb) and not torch.equal(la, lc)
    a.save_pretrained(tmp_path)
    assert CPU_TRAINING_ATTENTION not in (tmp_path / "config.json").read_text()
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    assert loaded.config._attn_implementation == "sdpa"
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, a.eval()(input_ids=ids).logits, rtol=0, atol=1e-6)


def test_cpu_training_attention_masks_padding_given_as_a_2d_mask():
    """Fine-tuning hands the model a [B, L] padding mask: in training without dropout the logits equal
    sdpa's (transformers makes no mask at all for an attention it does not know, so a padded row
    would attend to its padding)."""
    from transformers import BertConfig, BertForSequenceClassification

    from genemask.fused_adamw_dropout import use_cpu_training_attention

    torch.manual_seed(0)
    m = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=2, intermediate_size=64, hidden_dropout_prob=0.0,
                                                 attention_probs_dropout_prob=0.0)).train()
    ids = torch.randint(5, 50, (3, 9), generator=torch.Generator().manual_seed(1))
    am = torch.ones(3, 9, dtype=torch.long)
    am[1, 5:] = 0
    sdpa = m(input_ids=ids, attention_mask=am).logits
    use_cpu_training_attention(m)
    ours = m(input_ids=ids, attention_mask=am).logits
    torch.testing.assert_close(ours, sdpa, rtol=0, atol=1e-6)
    ids[1, 5:] = 7  # what sits under the padding must not matter
    torch.testing.assert_close(m(input_ids=ids, attention_mask=am).logits, sdpa, rtol=0, atol=1e-6)
