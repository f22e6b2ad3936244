"""`genemask bench precision` on a tiny generated results folder: two pretrained models x two seeds."""
from __future__ import annotations

import base64
import json
import shlex

import numpy as np
import pandas as pd
import pytest
import torch

from genemask.cli import main
from genemask.finetune import finetune_cli

SETTINGS = {"epochs": 2, "bf16": False}  # what the "study" ran with (its float32 runs)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    monkeypatch.setenv("GENEMASK_THREADS", "1")


def _task_file(path, n, rng, length=60):
    rows = ["sequence\tlabel"]
    for i in range(n):
        gc = 0.7 if i % 2 else 0.3
        s = rng.choice(list("ATCG"), size=length, p=[(1 - gc) / 2, (1 - gc) / 2, gc / 2, gc / 2])
        rows.append("".join(s) + f"\t{i % 2}")
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """work/results/{models,tasks,finetune} as the pipeline lays them out, float32 runs stored, and
    Snakemake's record of each run's command line in work/.snakemake/metadata."""
    from transformers import BertConfig, BertForMaskedLM

    work = tmp_path_factory.mktemp("study")
    results = work / "results"
    rng = np.random.default_rng(0)
    task = results / "tasks" / "GC" / "10"
    task.mkdir(parents=True)
    _task_file(task / "train.tsv", 20, rng)
    _task_file(task / "test.tsv", 40, rng)
    meta = work / ".snakemake" / "metadata"
    meta.mkdir(parents=True)
    for pseed in (1, 2):
        folder = results / "models" / "genemask" / f"seed{pseed}" / "step10"
        torch.manual_seed(pseed)
        BertForMaskedLM(BertConfig(vocab_size=4101, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
        (folder / "genemask.json").write_text(json.dumps({"k": 6, "pretrain_seed": pseed, "pretrain_step": 10}))
        for seed in (1, 2):
            rel = f"results/finetune/GC/10/genemask/seed{pseed}/step10/seed{seed}.json"
            finetune_cli(model=str(folder), train=str(task / "train.tsv"), test=str(task / "test.tsv"), task="GC",
                         shot=10, seed=seed, scheme="genemask", num_labels=2, settings=SETTINGS,
                         output=str(work / rel))
            cmd = (f"GENEMASK_THREADS=1 GENEMASK_WORKER=1 genemask finetune --model {folder} --seed {seed} "
                   f"--settings {shlex.quote(json.dumps({'epochs': 2}))} -o {rel} 2> x.log")
            (meta / base64.urlsafe_b64encode(rel.encode()).decode()).write_text(json.dumps({"shellcmd": cmd}))
    return results


def test_pairs_reruns_and_summarises(study, tmp_path, capsys):
    out = tmp_path / "precision.tsv"
    assert main(["bench", "precision", str(study), "--fp32", "rerun", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    t = pd.read_csv(out, sep="\t")
    assert len(t) == 4 and set(t["model"]) == {"genemask/seed1/step10", "genemask/seed2/step10"}
    assert t["float32_reproduced"].all() and (t["settings_from"] == "snakemake record").all()
    stored = json.loads((study / "finetune/GC/10/genemask/seed1/step10/seed2.json").read_text())
    row = t[(t["pretrain_seed"] == 1) & (t["seed"] == 2)].iloc[0]
    assert row["accuracy_float32"] == pytest.approx(stored["accuracy"], abs=1e-6)
    bf16 = json.loads((tmp_path / "precision.runs/GC/10/genemask/seed1/step10/seed2.bf16.json").read_text())
    assert bf16["precision"] == "bf16" and bf16["epochs"] == 2 and bf16["seed"] == 2
    assert row["accuracy_bf16"] == pytest.approx(bf16["accuracy"], abs=1e-6)
    assert np.allclose(t["accuracy_diff"], t["accuracy_bf16"] - t["accuracy_float32"], atol=1e-6)
    for word in ("accuracy ", "macro_f1 ", "mcc ", "auroc ", "95% CI (t)", "95% CI (bootstrap)",
                 "float32 reruns equal to the stored JSONs: 4/4", "time per run", "verdict on accuracy"):
        assert word in printed, word
    assert not list(study.rglob("*bf16*"))  # nothing written under the results folder

    # a second call reuses the runs (resumable), here through two processes; a selection narrows it
    assert main(["bench", "precision", str(study), "--pretrain-seeds", "2", "--seeds", "1", "--jobs", "2",
                 "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "(reused)" in captured.err
    t2 = pd.read_csv(out, sep="\t")
    assert len(t2) == 1 and (t2["float32_from"] == "stored").all()
    assert t2.iloc[0]["accuracy_bf16"] == t[(t["pretrain_seed"] == 2) & (t["seed"] == 1)].iloc[0]["accuracy_bf16"]


def test_settings_must_match_the_stored_runs(study, tmp_path, capsys):
    out = str(tmp_path / "p.tsv")
    assert main(["bench", "precision", str(study), "--settings", '{"epochs": 3}', "-o", out]) == 2
    err = capsys.readouterr().err
    assert "the run trained with {'epochs': 2" in err and "'epochs': 3" in err
    assert main(["bench", "precision", str(study), "--tasks", "nope", "-o", out]) == 2
    assert "no fine-tuning run matches the selection" in capsys.readouterr().err
    assert main(["bench", "precision", str(study), "-o", str(study / "p.tsv")]) == 2
    assert "outside" in capsys.readouterr().err


def test_summary_intervals():
    from genemask.bench.precision import summarize

    rng = np.random.default_rng(0)
    rows = []
    for model in ("a", "b", "c", "d"):
        for seed in range(5):
            acc = 0.7 + rng.normal(0, 0.02)
            rows.append({"task": "T", "shot": 10, "model": model, "seed": seed, "accuracy_float32": acc,
                         "accuracy_bf16": acc + rng.normal(0, 0.004), "macro_f1_float32": 0.5, "macro_f1_bf16": 0.5,
                         "mcc_float32": 0.1, "mcc_bf16": 0.2, "auroc_float32": np.nan, "auroc_bf16": np.nan})
    s = {r["metric"]: r for r in summarize(pd.DataFrame(rows), 0.005, n_boot=2000)}
    acc = s["accuracy"]
    assert acc["n"] == 20 and acc["t_lo"] < acc["mean"] < acc["t_hi"] and acc["boot_lo"] < acc["boot_hi"]
    assert acc["t_holds_0"] and acc["within_margin"]
    assert s["macro_f1"]["mean"] == 0 and s["macro_f1"]["within_margin"]
    assert s["mcc"]["mean"] == pytest.approx(0.1) and not s["mcc"]["within_margin"] and not s["mcc"]["t_holds_0"]
    assert s["auroc"]["n"] == 0 and s["auroc"]["t_holds_0"] is None and s["auroc"]["within_margin"] is None
