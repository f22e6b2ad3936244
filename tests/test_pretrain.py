"""Pretraining: Hugging Face output folder, exact resume after SIGKILL, DDP == one process."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from genemask.corpus import build_corpus

TINY = {"k": 6, "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 512}
BIN = os.path.join(os.path.dirname(sys.executable), "genemask")


@pytest.fixture(scope="module")
def setup(hg38_slice, tmp_path_factory):
    d = tmp_path_factory.mktemp("pre")
    build_corpus(hg38_slice, d / "c0", region="chr2:1-300000", seed=1)
    build_corpus(hg38_slice, d / "c1", region="chr2:300001-600000", seed=1)
    (d / "tiny.json").write_text(json.dumps(TINY))
    return d


def _cmd(d, out, ranking, *sets, launcher=(BIN,)):
    args = [*launcher, "pretrain", "--corpus", str(d / "c0"), str(d / "c1"), "--model-config", str(d / "tiny.json"),
            "--scheme", "genemask", "--ranking", str(ranking), "-o", str(out),
            "--set", "warmup_steps=3", "--set", "log_every=1", "--set", "eval_every=10", "--set", "eval_batches=2",
            "--set", "threads=1"]
    for s in sets:
        args += ["--set", s]
    return args


def test_output_folder_loads_with_auto_classes(setup, data_a):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    out = setup / "m"
    subprocess.run(_cmd(setup, out, data_a, "steps=6", "batch_size=4", "grad_accum=2"), check=True)
    model = AutoModelForMaskedLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == 4101 and len(tok) == 4101
    ids = tok("AAAAAA AAAAAT", return_tensors="pt")["input_ids"]
    assert ids.tolist() == [[2, 5, 6, 3]]
    assert model(ids).logits.shape == (1, 4, 4101)
    meta = json.loads((out / "genemask.json").read_text())
    assert meta["scheme"] == "genemask" and len(meta["ranking_sha256"]) == 64 and meta["settings"]["steps"] == 6
    log = pd.read_csv(out / "train_log.tsv", sep="\t")
    assert list(log.columns) == ["step", "lr", "loss", "val_loss", "val_ppl", "tokens_per_s"]
    assert log["step"].tolist() == [1, 2, 3, 4, 5, 6] and log["loss"].between(5, 10).all()
    assert not (setup / "m.ckpt").exists()  # the checkpoint is removed once the model is saved
    ranks = pd.read_csv(out / "mask_ranks.tsv", sep="\t")
    assert ranks["masked_count"].sum() > 0 and ranks["all_count"].sum() > ranks["masked_count"].sum()


def test_sigkill_then_rerun_equals_uninterrupted_run(setup, data_a):
    """Bitwise equal weights on CPU: model, optimiser, scheduler, RNG states and data position resume."""
    steps = ["steps=16", "batch_size=4", "grad_accum=2", "checkpoint_every=4"]
    ref = setup / "ref"
    subprocess.run(_cmd(setup, ref, data_a, *steps), check=True)

    out = setup / "killed"
    ckpt = setup / "killed.ckpt" / "state.pt"
    proc = subprocess.Popen(_cmd(setup, out, data_a, *steps), stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)  # right after the first checkpoint (step 4 of 16)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists() and ckpt.exists()
    step_at_kill = torch.load(ckpt, weights_only=False)["state"]["step"]
    assert 0 < step_at_kill < 16
    r = subprocess.run(_cmd(setup, out, data_a, *steps), check=True, capture_output=True, text=True)
    assert f"resumed from {ckpt} at step {step_at_kill}" in r.stderr
    a, b = load_file(ref / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = pd.read_csv(ref / "train_log.tsv", sep="\t"), pd.read_csv(out / "train_log.tsv", sep="\t")
    assert np.array_equal(la["loss"].to_numpy(), lb["loss"].to_numpy())


def test_ddp_two_processes_match_one_process(setup, data_a):
    """2 gloo ranks x 1 micro-batch == 1 process x 2 micro-batches (same global batch and masks)."""
    one, two = setup / "one", setup / "two"
    common = ["steps=8", "batch_size=4"]
    subprocess.run(_cmd(setup, one, data_a, *common, "grad_accum=2"), check=True)
    torchrun = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--standalone", "--nproc_per_node=2",
                "-m", "genemask.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cmd(setup, two, data_a, *common, "grad_accum=1", launcher=torchrun), check=True, env=env)
    la, lb = pd.read_csv(one / "train_log.tsv", sep="\t"), pd.read_csv(two / "train_log.tsv", sep="\t")
    np.testing.assert_allclose(la["loss"], lb["loss"], rtol=0, atol=1e-4)
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
    assert json.loads((two / "genemask.json").read_text())["world_size"] == 2


def test_settings_as_long_json_string():
    """The rule passes settings as one JSON string; at paper scale it is longer than a file name may
    be, so it must never be tried as a path (that raised 'File name too long')."""
    from genemask.pretrain import load_settings
    from genemask.util import GeneMaskError

    cfg = {"steps": 10000, "batch_size": 10, "grad_accum": 25, "lr": 0.0008, "betas": [0.9, 0.98],
           "eps": 1e-6, "weight_decay": 0.01, "grad_clip": 1.0, "warmup_steps": 500, "eval_every": 500,
           "checkpoint_every": 1000, "seed": 42, "log_every": 10, "eval_batches": 20, "max_len": 512,
           "masking": {"high_rule": "all_if_le8"}}
    text = json.dumps(cfg, sort_keys=True)
    assert len(text) > 255
    s = load_settings(text, ["threads=2"])
    assert s["grad_accum"] == 25 and s["masking"] == {"high_rule": "all_if_le8"} and s["threads"] == 2
    with pytest.raises(GeneMaskError, match="unknown key 'stpes'"):
        load_settings('{"stpes": 1}')
