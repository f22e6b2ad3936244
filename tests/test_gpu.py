"""On a CUDA GPU (`pytest -m gpu`; scripts/gpu_check.sh runs them): pretraining in bf16 resumed from a
checkpoint equals the uninterrupted run bitwise, torchrun with the GPUs present equals one process,
FusedAdamW equals torch's fused AdamW, fine-tuning runs and is deterministic, predict/embed match the
CPU. Mostly the CPU tests of test_pretrain/test_training/test_finetune with device cuda.

Without CUDA (torch.cuda.is_available() false) every test is skipped with that reason, unless
GENEMASK_GPU_TESTS_ON_CPU=1: then they run on the CPU at tiny sizes, a check of the tests themselves
(scripts/gpu_check.sh --cpu-smoke), not of a GPU.

Bitwise on CUDA needs deterministic kernels: the bitwise tests run under
torch.use_deterministic_algorithms(True) (strict: with warn_only=True the memory-efficient attention
backward that BERT's SDPA takes with a padding mask stays non-deterministic and only warns) with
CUBLAS_WORKSPACE_CONFIG set (below, before cuBLAS starts). Without them kernels that accumulate with
atomics make two identical runs differ in the last bits; an op with no deterministic kernel raises,
naming itself. Inputs: GENEMASK_GPU_INPUTS (`scripts/gpu_check.sh
--prepare DIR`: corpora and ranking built where pysam and the data mirror are), else built here from
the mirror. About 1-2 minutes on one H200.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts: deterministic cuBLAS

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from conftest import ENV, ROOT  # noqa: E402
from genemask.training import param_groups  # noqa: E402
from test_finetune import _synthetic  # noqa: E402
from test_pretrain import _here, _same, _weights  # noqa: E402
from test_training import _tiny_classifier  # noqa: E402

CUDA = torch.cuda.is_available()
ON_CPU = not CUDA and os.environ.get("GENEMASK_GPU_TESTS_ON_CPU") == "1"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not (CUDA or ON_CPU), reason="no CUDA device (torch.cuda.is_available() is false); "
                                 "GENEMASK_GPU_TESTS_ON_CPU=1 runs these tests on the CPU")]
DEVICE = "cuda" if CUDA else "cpu"
# on CUDA a model whose kernels are the real ones (head dim 32, dropout in both places); on the CPU
# (a check of the tests) the tiny one
MODEL = ({"k": 6, "num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 4, "intermediate_size": 512,
          "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512} if CUDA else
         {"k": 6, "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
          "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512})
BATCH = 16 if CUDA else 4


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """corpus/c0, corpus/c1 (tests/test_pretrain.py's regions) and ranking.csv (Data-A)."""
    if os.environ.get("GENEMASK_GPU_INPUTS"):
        return Path(os.environ["GENEMASK_GPU_INPUTS"])
    gc = _gpu_check()
    mirror = gc.find_mirror(None)
    if mirror is None:
        pytest.fail("no data mirror (set GENEMASK_MIRROR) and no GENEMASK_GPU_INPUTS (scripts/gpu_check.sh --prepare DIR)")
    d = tmp_path_factory.mktemp("gpu_inputs")
    gc.prepare(d, mirror)
    return d


@pytest.fixture(scope="module")
def model_json(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("gpu_model") / "model.json"
    p.write_text(json.dumps(MODEL))
    return p


def _cmd(inputs, model_json, out, *sets, launcher=("genemask",)):
    """`genemask pretrain` on the two corpora with the genemask scheme, bf16, one thread."""
    args = [*launcher, "pretrain", "--corpus", str(inputs / "corpus" / "c0"), str(inputs / "corpus" / "c1"),
            "--model-config", str(model_json), "--scheme", "genemask", "--ranking", str(inputs / "ranking.csv"),
            "-o", str(out)]
    for s in ("warmup_steps=3", "log_every=1", "eval_every=8", "eval_batches=2", "threads=1", "bf16=true", *sets):
        args += ["--set", s]
    return args


@contextmanager
def deterministic():
    """torch.use_deterministic_algorithms(True), strict (see the module docstring), restored afterwards."""
    before, warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn)


def test_bf16_pretraining_resumed_from_half_way_equals_uninterrupted_bitwise(inputs, model_json, tmp_path, capfd):
    """16 steps straight, then the same run again from its step-8 checkpoint (the run folder and the
    step-16 checkpoint removed): identical weights and losses (model, AdamW, schedule, RNG states on
    the GPU too, data position)."""
    steps = ["steps=16", f"batch_size={BATCH}", "grad_accum=2", "checkpoint_every=8"]
    out = tmp_path / "run"
    with deterministic():
        assert _here(_cmd(inputs, model_json, out, *steps)) == 0
        meta = json.loads((out / "genemask.json").read_text())
        assert meta["device"].startswith(DEVICE) and meta["settings"]["bf16"] is True
        assert (meta["peak_gpu_mem_gib"] or 0) > 0 or not CUDA
        straight, log = _weights(out / "step16"), pd.read_csv(out / "train_log.tsv", sep="\t")
        (ck,) = (tmp_path / "run.ckpt").iterdir()
        for f in ("step16.pt", "step16.pt.sha256"):
            (ck / f).unlink()
        shutil.rmtree(out)
        capfd.readouterr()
        assert _here(_cmd(inputs, model_json, out, *steps)) == 0
    err = capfd.readouterr().err
    assert "resumed from" in err and "at step 8" in err, err
    assert _same(straight, _weights(out / "step16"))
    resumed = pd.read_csv(out / "train_log.tsv", sep="\t")
    assert np.array_equal(log["loss"].to_numpy(), resumed["loss"].to_numpy())


@pytest.mark.subprocess
def test_torchrun_with_the_gpus_present_equals_one_process(inputs, model_json, tmp_path):
    """torchrun with one rank per GPU (NCCL; 1 GPU: world 1) x 1 micro-batch == one process x one
    micro-batch per GPU: the same global batches and masks; losses and weights within 1e-3 (gradients
    summed in another order)."""
    n = max(1, torch.cuda.device_count())
    common = ["steps=8", f"batch_size={BATCH}"]
    one, many = tmp_path / "one", tmp_path / "many"
    assert _here(_cmd(inputs, model_json, one, *common, f"grad_accum={n}")) == 0
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", "genemask.cli"]
    r = subprocess.run(_cmd(inputs, model_json, many, *common, "grad_accum=1", launcher=torchrun),
                       env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((many / "genemask.json").read_text())
    assert meta["world_size"] == n and meta["device"].startswith(DEVICE)
    la, lb = pd.read_csv(one / "train_log.tsv", sep="\t"), pd.read_csv(many / "train_log.tsv", sep="\t")
    np.testing.assert_allclose(la["loss"], lb["loss"], rtol=0, atol=1e-3)
    a, b = _weights(one / "step8"), _weights(many / "step8")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-3


def test_fused_adamw_equals_torchs_fused_adamw_bitwise():
    """Our FusedAdamW on the device == torch.optim.AdamW(fused=True) there, tolerance 0: the same
    kernel on the same inputs, with the clip as grad_scale (> 1, = 1, absent) and a changing lr."""
    from genemask.fused_adamw_dropout import FusedAdamW

    a, b = _tiny_classifier().to(DEVICE), _tiny_classifier().to(DEVICE)
    ref = torch.optim.AdamW(param_groups(a, 0.01), lr=1e-3, eps=1e-8, fused=True)
    ours = FusedAdamW(param_groups(b, 0.01), lr=1e-3, eps=1e-8)
    gen = torch.Generator().manual_seed(1)
    scales = [None, 3.0, 1.0, 1.7, None, 12.5]
    for t, scale in enumerate(scales):
        for pa, pb in zip(a.parameters(), b.parameters()):
            g = (torch.randn(pa.shape, generator=gen) * 0.1).to(DEVICE)
            pa.grad, pb.grad = g.clone(), g.clone()
        for opt in (ref, ours):
            for group in opt.param_groups:
                group["lr"] = 1e-3 * (1 - t / 10)
            opt.grad_scale = None if scale is None else torch.tensor(scale, device=DEVICE)
        ref.step()
        ours.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=0, atol=0)
    start = _tiny_classifier().to(DEVICE)
    assert all(not torch.equal(p, q) for p, q in zip(a.parameters(), start.parameters()))


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    """A pretrained-style folder (BertForMaskedLM + tokenizer + genemask.json) of MODEL, seed 0."""
    from genemask.pretrain import build_model
    from genemask.tokenizer import build_tokenizer, save_tokenizer

    d = tmp_path_factory.mktemp("gpu_folder") / "pretrained"
    model, k = build_model(MODEL, seed=0)
    model.save_pretrained(d)
    save_tokenizer(build_tokenizer(k), d)
    (d / "genemask.json").write_text(json.dumps({"k": k, "scheme": "random"}))
    return d


def test_finetune_on_the_device_learns_and_is_deterministic(model_folder, tmp_path):
    """Two runs with one seed on the device (deterministic kernels): equal metrics and loss; the easy
    GC-rich vs AT-rich task is learnt."""
    from genemask.finetune import finetune_cli

    rng = np.random.default_rng(0)
    _synthetic(tmp_path / "train.tsv", 160, rng)
    _synthetic(tmp_path / "test.tsv", 200, rng)
    settings = {"regimes": [{"max_shot": None, "batch_size": 10, "lr": 1e-3, "epochs": 6}], "device": DEVICE}
    runs = []
    with deterministic():
        for name in ("a", "b"):
            runs.append(finetune_cli(model=str(model_folder), train=str(tmp_path / "train.tsv"),
                                     test=str(tmp_path / "test.tsv"), task="synthetic", shot=80, seed=3,
                                     scheme="random", num_labels=2, settings=settings, output=str(tmp_path / f"{name}.json")))
    a, b = runs
    assert a["device"].startswith(DEVICE)
    keys = ("accuracy", "macro_f1", "mcc", "auroc", "final_train_loss")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    assert a["accuracy"] > 0.75, a


def _cpu_and_device(fn, **kw):
    """fn on the CPU and on the device, both in float32 (bf16=False where the function has the
    setting), and in bf16 on the device where it has it (None otherwise)."""
    fp32 = {"bf16": False} if "bf16" in inspect.signature(fn).parameters else {}
    bf16 = fn(**kw, device=DEVICE, bf16=True) if fp32 and CUDA else None
    return fn(**kw, device="cpu", **fp32), fn(**kw, device=DEVICE, **fp32), bf16


def test_predict_and_embed_on_the_device_match_the_cpu(model_folder, tmp_path):
    """Class probabilities and embeddings (mean and [CLS], windows of a 1,500 bp sequence) on the
    device within 1e-3 of the CPU in float32 (TF32 or another kernel order); in bf16, 5e-2."""
    from genemask.inference import embed, predict
    from genemask.modelfolder import load_classifier, save_classifier

    torch.manual_seed(0)
    clf = load_classifier(model_folder, 2, None).eval()
    with torch.no_grad():
        clf.classifier.weight.mul_(30)  # probabilities spread away from 0.5: the comparison is sharp
    folder = save_classifier(clf, tmp_path / "clf", {"task": "synthetic", "shot": 10, "seed": 0,
                                                      "source_model": str(model_folder), "metrics": {},
                                                      "labels": ["at", "gc"]})
    rng = np.random.default_rng(5)
    seqs = ["".join(rng.choice(list("ACGT"), size=n)) for n in (1500, 300, 60, 7)]
    cpu, dev, bf16 = _cpu_and_device(predict, folder=folder, seqs=seqs, batch_size=2)
    assert np.abs(cpu[0] - dev[0]).max() < 1e-3 and cpu[1] == dev[1]
    assert np.abs(cpu[0][:, 1] - 0.5).max() > 0.05  # the probabilities are not all 0.5
    if bf16 is not None:
        assert np.abs(cpu[0] - bf16[0]).max() < 5e-2
    for pooling in ("mean", "cls"):
        cpu, dev, bf16 = _cpu_and_device(embed, folder=model_folder, seqs=seqs, pooling=pooling, batch_size=2)
        scale = max(1.0, float(np.abs(cpu).max()))
        assert np.abs(cpu - dev).max() < 1e-3 * scale, pooling
        if bf16 is not None:
            assert np.abs(cpu - bf16).max() < 5e-2 * scale, pooling
