"""Pretraining: run folders with a model per eval step, exact resume after SIGKILL/SIGTERM, fingerprinted
and checksummed checkpoints, DDP == one process."""
import json
import os
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import BIN, GENEMASK
from genemask.cli import main
from genemask.corpus import build_corpus

TINY = {"k": 6, "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512}


@pytest.fixture(scope="module")
def setup(hg38_slice, tmp_path_factory):
    d = tmp_path_factory.mktemp("pre")
    build_corpus(hg38_slice, d / "c0", region="chr2:1-300000", seed=1)
    build_corpus(hg38_slice, d / "c1", region="chr2:300001-600000", seed=1)
    (d / "tiny.json").write_text(json.dumps(TINY))
    return d


def _cmd(d, out, ranking, *sets, launcher=(GENEMASK,)):
    args = [*launcher, "pretrain", "--corpus", str(d / "c0"), str(d / "c1"), "--model-config", str(d / "tiny.json"),
            "--scheme", "genemask", "--ranking", str(ranking), "-o", str(out),
            "--set", "warmup_steps=3", "--set", "log_every=1", "--set", "eval_every=10", "--set", "eval_batches=2",
            "--set", "threads=1"]
    for s in sets:
        args += ["--set", s]
    return args


def _here(args) -> int:
    """Run the `genemask pretrain` command line of `_cmd` in this process: a tiny run spends most
    of its time starting Python and importing torch + transformers, which this process has done.
    Used for the runs that are references or plain runs; the runs that are killed, signalled,
    resumed or launched by torchrun stay processes. torch's thread count (threads=1 sets it) is
    restored afterwards."""
    n = torch.get_num_threads()
    try:
        return main(args[1:])
    finally:
        torch.set_num_threads(n)


# bf16 on a CPU: every dropout mask (hidden and attention) from numpy, reseeded per micro-batch;
# the resumed runs must equal the uninterrupted one bitwise on that path too
STEPS16 = ["steps=16", "batch_size=4", "grad_accum=2", "bf16=true"]


@pytest.fixture(scope="module")
def ref16(setup, data_a):
    """The uninterrupted 16-step run that the SIGKILL and SIGTERM reruns must equal bitwise
    (checkpoint_every 4; the SIGTERM runs use 1000: where checkpoints fall must not change training)."""
    ref = setup / "ref"
    assert _here(_cmd(setup, ref, data_a, *STEPS16, "checkpoint_every=4")) == 0
    assert json.loads((ref / "genemask.json").read_text())["dropout"].startswith("numpy")
    return ref



def test_output_folder_loads_with_auto_classes(setup, data_a):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    out = setup / "m"
    assert _here(_cmd(setup, out, data_a, "steps=6", "batch_size=4", "grad_accum=2")) == 0
    model = AutoModelForMaskedLM.from_pretrained(out / "step6")
    tok = AutoTokenizer.from_pretrained(out / "step6")
    assert model.config.vocab_size == 4101 and len(tok) == 4101
    ids = tok("AAAAAA AAAAAT", return_tensors="pt")["input_ids"]
    assert ids.tolist() == [[2, 5, 6, 3]]
    assert model(ids).logits.shape == (1, 4, 4101)
    meta = json.loads((out / "genemask.json").read_text())
    assert meta["scheme"] == "genemask" and len(meta["ranking_sha256"]) == 64 and meta["settings"]["steps"] == 6
    log = pd.read_csv(out / "train_log.tsv", sep="\t")
    assert list(log.columns) == ["step", "lr", "loss", "val_loss", "val_ppl", "tokens_per_s"]
    assert log["step"].tolist() == [1, 2, 3, 4, 5, 6] and log["loss"].between(5, 10).all()
    assert sorted(p.name for p in out.iterdir()) == [".genemask-output", "genemask.json", "mask_ranks.tsv", "step6",
                                                     "train_log.tsv"]
    step = json.loads((out / "step6" / "genemask.json").read_text())
    assert step["pretrain_step"] == 6
    # the step's summary of the log, and the model card made from it
    last_val = log.dropna(subset=["val_loss"]).iloc[-1]
    assert step["val_loss"] == pytest.approx(last_val["val_loss"]) and step["val_loss_step"] == last_val["step"]
    assert step["tokens_per_s"] == pytest.approx(log["tokens_per_s"].mean())
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "step6" / "README.md")
    assert f"| tokens seen | {step['tokens_seen']} |" in card.text and f"| validation loss | {step['val_loss']:.4g} |" \
        in card.text and card.data.to_dict()["tags"][-1] == "masking-genemask"
    ranks = pd.read_csv(out / "mask_ranks.tsv", sep="\t")
    assert ranks["masked_count"].sum() > 0 and ranks["all_count"].sum() > ranks["masked_count"].sum()


def _ckpt_dir(run):
    (d,) = run.with_name(run.name + ".ckpt").iterdir()  # one fingerprint folder
    return d


def _weights(folder):
    return load_file(folder / "model.safetensors")


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.subprocess
def test_sigkill_then_rerun_equals_uninterrupted_run(setup, data_a, ref16, capfd):
    """Bitwise equal weights on CPU: model, optimiser, scheduler, RNG states and data position resume."""
    steps = [*STEPS16, "checkpoint_every=4"]
    ref = ref16

    out = setup / "killed"
    proc = subprocess.Popen(_cmd(setup, out, data_a, *steps), stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    ck = setup / "killed.ckpt"
    while not list(ck.glob("*/step4.pt.sha256")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)  # right after the first checkpoint (step 4 of 16)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    step_at_kill = max(int(p.name[4:-10]) for p in _ckpt_dir(out).glob("step*.pt.sha256"))
    assert 0 < step_at_kill < 16
    capfd.readouterr()
    assert _here(_cmd(setup, out, data_a, *steps)) == 0  # the rerun (in this process) resumes
    err = capfd.readouterr().err
    assert f"at step {step_at_kill}" in err and "resumed from" in err, err
    assert _same(_weights(ref / "step16"), _weights(out / "step16"))
    la, lb = pd.read_csv(ref / "train_log.tsv", sep="\t"), pd.read_csv(out / "train_log.tsv", sep="\t")
    assert np.array_equal(la["loss"].to_numpy(), lb["loss"].to_numpy())


@pytest.mark.subprocess
def test_sigterm_checkpoints_now_and_rerun_is_bitwise_equal(setup, data_a, ref16, capfd):
    """SIGTERM (SLURM pre-emption) mid-run: a checkpoint at the current step, exit non-zero, and the
    resubmitted job finishes bitwise equal to an uninterrupted run."""
    steps = [*STEPS16, "checkpoint_every=1000"]
    ref = ref16
    out = setup / "termed"
    proc = subprocess.Popen(_cmd(setup, out, data_a, *steps), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    line = ""
    while "training from step" not in line and time.time() < deadline:  # the loop has begun
        line = proc.stderr.readline()
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 2 and "SIGTERM at step" in err and "checkpoint" in err, err
    assert not out.exists()
    capfd.readouterr()
    assert _here(_cmd(setup, out, data_a, *steps)) == 0  # the resubmitted job (in this process) resumes
    assert "resumed from" in capfd.readouterr().err
    assert _same(_weights(ref / "step16"), _weights(out / "step16"))


def test_eval_steps_saved_and_new_step_needs_no_retraining(setup, data_a, capfd):
    """step<N>/ per eval step; adding a passed step to the list exports it from its checkpoint."""
    steps = ["steps=8", "batch_size=4", "grad_accum=1", "checkpoint_every=2"]
    out = setup / "budgets"
    assert _here(_cmd(setup, out, data_a, *steps) + ["--save-steps", "4"]) == 0
    assert {p.name for p in out.glob("step*")} == {"step4", "step8"}
    assert not _same(_weights(out / "step4"), _weights(out / "step8"))
    first = {n: _weights(out / n) for n in ("step4", "step8")}
    import shutil

    shutil.rmtree(out)  # what snakemake does before rerunning the job with the new eval_steps
    capfd.readouterr()
    assert _here(_cmd(setup, out, data_a, *steps) + ["--save-steps", "4", "6"]) == 0
    err = capfd.readouterr().err
    assert "resumed from" in err and "tokens in" not in err, err  # nothing trained
    assert {p.name for p in out.glob("step*")} == {"step4", "step6", "step8"}
    assert all(_same(first[n], _weights(out / n)) for n in first)
    assert json.loads((out / "step6" / "genemask.json").read_text())["pretrain_step"] == 6


def test_changed_setting_or_damaged_checkpoint_never_resumed(setup, data_a, capfd):
    """Another lr is another fingerprint (fresh run); a checkpoint with flipped bytes is one line."""
    steps = ["steps=6", "batch_size=4", "grad_accum=1", "checkpoint_every=2"]
    out = setup / "fp"
    assert _here(_cmd(setup, out, data_a, *steps)) == 0
    import shutil

    shutil.rmtree(out)
    capfd.readouterr()
    assert _here(_cmd(setup, out, data_a, *steps, "lr=0.001")) == 0
    err = capfd.readouterr().err
    assert "resumed from" not in err
    said = [line for line in err.splitlines() if "not resuming" in line]
    assert len(said) == 1 and "settings.lr 0.0008 -> 0.001" in said[0], err
    assert len(list((setup / "fp.ckpt").iterdir())) == 2  # two fingerprints side by side
    shutil.rmtree(out)
    ck = next(p for p in (setup / "fp.ckpt").iterdir() if (p / "step6.pt").exists() and p != _newest(setup / "fp.ckpt"))
    blob = bytearray((ck / "step6.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (ck / "step6.pt").write_bytes(bytes(blob))
    rc = _here(_cmd(setup, out, data_a, *steps))
    err = capfd.readouterr().err
    assert rc == 2 and "damaged checkpoint" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def _newest(folder):
    return max(folder.iterdir(), key=lambda p: p.stat().st_mtime)


@pytest.mark.slow  # torchrun and two ranks: three more interpreters importing torch (make test runs it)
@pytest.mark.subprocess
def test_ddp_two_processes_match_one_process(setup, data_a):
    """2 gloo ranks x 1 micro-batch == 1 process x 2 micro-batches (same global batch and masks,
    the dropout masks from numpy: bf16 on a CPU)."""
    one, two = setup / "one", setup / "two"
    common = ["steps=8", "batch_size=4", "bf16=true"]
    assert _here(_cmd(setup, one, data_a, *common, "grad_accum=2")) == 0
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2",
                "-m", "genemask.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cmd(setup, two, data_a, *common, "grad_accum=1", launcher=torchrun), check=True, env=env)
    la, lb = pd.read_csv(one / "train_log.tsv", sep="\t"), pd.read_csv(two / "train_log.tsv", sep="\t")
    np.testing.assert_allclose(la["loss"], lb["loss"], rtol=0, atol=1e-4)
    a, b = load_file(one / "step8" / "model.safetensors"), load_file(two / "step8" / "model.safetensors")
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
