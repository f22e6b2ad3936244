"""scripts/gpu_check.sh and its helper scripts/gpu_check.py on a machine without a GPU: the arithmetic
(memory per sequence, the largest and the recommended micro-batch, MFU), the configs' GPU micro-batch
derived from the cited H200 figures, the one-line refusal without a GPU, and the CPU rehearsal
(--cpu-smoke: the same steps, tiny)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import pytest
import torch
import yaml

from conftest import ENV, ROOT

spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
gc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gc)

# The peak memory measured on one H200 for the LOGO model (bf16, the README's table from commit
# b87524a): 0.44 GiB at 10 and 1.31 GiB at 50 sequences per micro-batch. The memory torch reports for
# an H200 (143,771 MiB): 140.4 GiB.
LOGO_PEAKS = (10, 0.44, 50, 1.31)
H200_GIB = 143_771 / 1024


def test_memory_model_and_micro_batches_from_the_h200_figures():
    static, per_seq = gc.memory_model(*LOGO_PEAKS)
    assert per_seq == pytest.approx(0.02175) and static == pytest.approx(0.2225)
    b_max = gc.largest_micro_batch(0.6 * H200_GIB, static, per_seq)
    assert b_max == 3862
    assert gc.recommended(b_max) == (250, 1)
    assert gc.recommended(100) == (50, 5) and gc.recommended(9) == (5, 50) and gc.recommended(1) == (1, 250)
    assert gc.recommended(0) is None
    assert gc.recommended(100, gpus=2) == (25, 5) and gc.recommended(125, gpus=2) == (125, 1)
    assert gc.recommended(100, gpus=3) is None  # 250 sequences do not split over 3 GPUs
    assert gc.largest_micro_batch(1.0, 2.0, 0.1) == 0
    assert gc.largest_micro_batch(0.2225 + 3 * 0.02175, 0.2225, 0.02175) == 3  # no float shortfall at the edge
    with pytest.raises(ValueError):
        gc.memory_model(10, 0.4, 10, 0.5)
    with pytest.raises(ValueError):
        gc.largest_micro_batch(10, 1, 0)


def test_gpu_configs_keep_250_sequences_per_step_at_the_derived_micro_batch():
    """config.yaml and study-gpu.yaml: batch_size x grad_accum x GPUs = 250, the micro-batch the one
    recommended from the cited figures for 60 % of any GPU of >= 10 GiB, and the comment citing them."""
    static, per_seq = gc.memory_model(*LOGO_PEAKS)
    for name in ("config.yaml", "study-gpu.yaml"):
        text = (ROOT / "config" / name).read_text()
        p = yaml.safe_load(text)["pretrain"]
        s = p["settings"]
        assert p["model"] == "logo" and p["gpus"] == 1, name
        assert s["batch_size"] * s["grad_accum"] * p["gpus"] == gc.PER_STEP, name
        for gib in (10, 80 * 0.931, H200_GIB):  # a 10 GiB card, an 80 GB one, an H200
            assert gc.recommended(gc.largest_micro_batch(0.6 * gib, static, per_seq)) == (s["batch_size"], s["grad_accum"])
        words = " ".join(text.replace("#", " ").split())  # the comment's words, wherever its lines break
        assert "0.022 GiB per sequence" in words and "b87524a" in words, name
    assert "# cost: generated into docs/study.md" in (ROOT / "config" / "study-gpu.yaml").read_text()


def test_mfu_arithmetic_and_gpu_peaks():
    assert gc.peak_tflops("NVIDIA H200", env={}) == 989.0
    assert gc.peak_tflops("NVIDIA H100 80GB HBM3", env={}) == 989.0
    assert gc.peak_tflops("NVIDIA H100 PCIe", env={}) == 756.0
    assert gc.peak_tflops("NVIDIA A100-SXM4-80GB", env={}) == 312.0
    assert gc.peak_tflops("Some GPU", env={}) is None
    assert gc.peak_tflops("NVIDIA H200", env={"GPU_PEAK_TFLOPS": "500"}) == 500.0
    assert gc.flops_per_token(100, 2, 8, 10) == 600
    assert gc.flops_per_token(100, 2, 8, 10, attention=True) == 600 + 12 * 2 * 8 * 10
    # BERT-base (89.2M parameters with the 4,101-word vocabulary) at 350k tokens/s on an H200: ~19 % MFU
    mfu = 350_000 * gc.flops_per_token(89_196_549, 12, 768, 508) / 989e12
    assert 0.18 < mfu < 0.20
    rows = [{"step": s, "tokens_per_s": v} for s, v in ((1, 10.0), (2, 100.0), (3, 200.0), (4, 0.0))]
    assert gc.steady_tokens_per_s(rows, skip_steps=1) == pytest.approx(2 / (1 / 100 + 1 / 200))
    assert gc.steady_tokens_per_s(rows, skip_steps=4) is None


def test_measure_on_a_pretend_h200(tmp_path, monkeypatch):
    """The GPU path of `measure` (lines, figures, the runs it plans) with torch.cuda and the runs faked:
    peaks on the line static + B x per_seq, 1M (LOGO) or 300k (BERT-base) tokens/s."""
    from types import SimpleNamespace

    lines = {"logo": (0.2225, 0.02175, 1e6), "bert": (1.48, 0.215, 3e5)}
    planned = []

    def run(self, name, batch, accum, steps, log_every=1):
        static, per_seq, tps = lines[self.model]
        planned.append((self.model, name, batch, accum))
        meta = {"peak_gpu_mem_gib": static + batch * per_seq, "tokens_seen": steps * batch * accum * 508, "steps": steps}
        return {"meta": meta, "rows": [{"step": i, "tokens_per_s": tps} for i in range(1, steps + 1)], "wall_s": 1.0}

    monkeypatch.setattr(gc.Runner, "run", run)
    monkeypatch.setattr(gc, "model_size", lambda config: 4_933_125 if config["hidden_size"] == 256 else 89_196_549)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: SimpleNamespace(total_memory=143_771 * 2**20))
    monkeypatch.delenv("GPU_PEAK_TFLOPS", raising=False)
    report = gc.Report(tmp_path / "gpu_check.txt")
    for part in ("logo", "bert"):
        assert gc.measure(part, tmp_path / "inputs", tmp_path / "work", report, smoke=False) == 0
    assert planned == [("logo", "probe16", 16, 1), ("logo", "probe64", 64, 1), ("logo", "50x5", 50, 5),
                       ("logo", "250x1", 250, 1), ("bert", "probe8", 8, 1), ("bert", "probe32", 32, 1),
                       ("bert", "384x1", 384, 1), ("bert", "250x1", 250, 1)]
    text = report.path.read_text()
    for line in ("LOGO memory: 0.0217 GiB (22.3 MiB) per sequence of 508 tokens + 0.22 GiB static",
                 "LOGO largest micro-batch within 60% of 140.4 GiB: 3862",
                 "LOGO recommended config: batch_size 250, grad_accum 1 on 1 GPU",
                 "LOGO 50 x 5: 1,000,000 tokens/s, MFU 3.0% (6N), 3.3% with attention, peak 1.31 GiB (1% of the GPU)",
                 "10k paper steps (250 sequences each) 21.2 min",
                 "goal LOGO 10k paper steps <= 10 min: NOT met (21.2 min at 50x5)",
                 "LOGO for genemask plan-study: --gpu-tokens-per-s 1000000 --tokens-per-step 127000 (50x5)",
                 "BERT-base memory: 0.2150 GiB", "BERT-base largest micro-batch within 60% of 140.4 GiB: 384",
                 "BERT-base 384 x 1: 300,000 tokens/s, MFU 16.2% (6N)",
                 "goal BERT-base >= 350,000 tokens/s: NOT met (300,000 at 384x1)"):
        assert line in text, (line, text)
    figures = json.loads(report.json.read_text())
    assert figures["bert"]["memory"]["largest_micro_batch"] == 384 and figures["bert"]["recommended"] == [250, 1]
    assert figures["logo"]["runs"]["250x1"]["mfu_6n"] == pytest.approx(0.0299, abs=1e-4)


@pytest.mark.subprocess
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script would run the whole check")
def test_without_a_gpu_the_script_fails_in_one_line(tmp_path):
    env = {**ENV, "OUT": str(tmp_path)}
    env.pop("GPU_CHECK_DRY_RUN", None)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == "", r
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("gpu_check: no CUDA GPU") and "--cpu-smoke" in line
    assert not list(tmp_path.iterdir())  # nothing written
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--bogus"], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # about 2-3 minutes on 2 busy cores: the gpu tests on the CPU, then the tiny runs
@pytest.mark.subprocess
def test_cpu_smoke_runs_every_step_and_writes_the_report(tmp_path):
    env = {**ENV, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu-smoke"], env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = (tmp_path / "gpu_check.txt").read_text()
    assert "CPU SMOKE RUN" in report and "every part passed" in report, report
    assert "pytest -m gpu: 5 passed" in report, report
    for part in ("inputs", "pytest", "logo", "bert"):
        assert f"{part}: rc 0" in report, part
    assert "LOGO (cpu smoke" in report and "BERT-base (cpu smoke" in report
    assert "recommended config: batch_size 2, grad_accum 125" in report
    figures = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(figures) == {"logo", "bert"}
    assert all(run["tokens_per_s"] > 0 for part in figures.values() for run in part["runs"].values())
    assert sorted(os.listdir(tmp_path / "gpu_check-logs")) == ["bert.log", "inputs.log", "logo.log", "pytest.log"]
