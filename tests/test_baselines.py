"""External baselines: a local Hugging Face folder (as the published DNABERT-6 would be) is checked
for our k-mer vocabulary, copied, fine-tuned as its own model (no pretraining seed or step), and a
folder whose vocabulary or k does not match fails with one line. No network: folders built here."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import ENV, GENEMASK, ROOT, SNAKEMAKE
from genemask import plan
from genemask.baselines import prepare_baseline
from genemask.kmers import SPECIAL_TOKENS, all_kmers
from genemask.modelfolder import check_vocabulary
from genemask.util import GeneMaskError


def _folder(d: Path, k: int = 6, vocab: list[str] | None = None, genemask_json: bool = False) -> Path:
    """A BERT MLM folder like DNABERT's release: config, weights, vocab.txt (no genemask.json)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    n = len(SPECIAL_TOKENS) + 4**k
    BertForMaskedLM(BertConfig(vocab_size=n, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=512)).save_pretrained(d)
    (d / "vocab.txt").write_text("\n".join(vocab or SPECIAL_TOKENS + all_kmers(k)) + "\n")
    if genemask_json:
        (d / "genemask.json").write_text(json.dumps({"k": k}))
    return d


def test_dnabert_style_folder_accepted_and_copied(tmp_path):
    src = _folder(tmp_path / "dnabert6")
    assert check_vocabulary(src) == 6
    meta = prepare_baseline("dnabert6", str(src), tmp_path / "out")
    assert meta["k"] == 6 and (tmp_path / "out" / "model.safetensors").is_file()
    saved = json.loads((tmp_path / "out" / "genemask.json").read_text())
    assert saved["baseline"] == "dnabert6" and len(saved["weights_sha256"]) == 64
    assert "pretrain_seed" not in saved  # the report's rule: an external baseline records no seed/step


@pytest.mark.subprocess
@pytest.mark.parametrize("fault, message", [
    ("swapped", "vocabulary differs from the 6-mer vocabulary at id 5"),
    ("k4", "vocabulary differs from the 4-mer vocabulary"),
    ("novocab", "no vocab.txt"),
])
def test_mismatched_vocabulary_one_line(tmp_path, fault, message):
    d = tmp_path / fault
    if fault == "swapped":  # two k-mers swapped: ids would mean other k-mers
        v = SPECIAL_TOKENS + all_kmers(6)
        v[5], v[6] = v[6], v[5]
        _folder(d, vocab=v)
    elif fault == "k4":  # claims k 6 in genemask.json but ships a 4-mer vocabulary
        _folder(d, k=4, genemask_json=False)
        (d / "genemask.json").write_text(json.dumps({"k": 4}))
        (d / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + all_kmers(4)[::-1]) + "\n")
    else:
        _folder(d)
        (d / "vocab.txt").unlink()
        (d / "genemask.json").write_text(json.dumps({"k": 6}))
    with pytest.raises(GeneMaskError, match=message) as e:
        prepare_baseline(fault, str(d), tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()
    r = subprocess.run([GENEMASK, "baseline", "--name", "x", "--model", str(d), "-o",
                        str(tmp_path / "o2")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and message in r.stderr


def test_unknown_local_path_or_hub_id_without_cache(tmp_path, monkeypatch):
    with pytest.raises(GeneMaskError, match="no such model folder"):
        prepare_baseline("x", str(tmp_path / "nope" / "deeper"), tmp_path / "out")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(GeneMaskError, match="cannot fetch the hub model"):
        prepare_baseline("x", "zhihan1996/DNA_bert_6", tmp_path / "out")


@pytest.mark.subprocess
def test_baselines_in_the_plan_and_dag(tmp_path, mirror):
    """One baseline: its own model id and a row per task x shot x seed; the DAG prepares it once."""
    src = _folder(tmp_path / "dnabert6")
    cfg = yaml.safe_load(open(ROOT / "config/demo.yaml"))
    cfg["baselines"] = {"dnabert6": {"model": str(src)}}
    resolved = plan.resolve(cfg)
    base = [m for m in plan.models(resolved) if m.get("baseline")]
    assert base == [{"id": "baseline/dnabert6", "scheme": "dnabert6", "pretrain_seed": None, "pretrain_step": None,
                     "baseline": "dnabert6"}]
    runs = plan.runs(resolved)
    n_cells = len({(r["task"], r["shot"]) for r in runs})
    assert sum(r["scheme"] == "dnabert6" for r in runs) == n_cells * len(cfg["finetune"]["seeds"])
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([*SNAKEMAKE, "-n", "-p", "--configfile", str(p), "--directory", str(tmp_path / "w")], cwd=ROOT,
                       env={**ENV, "GENEMASK_MIRROR": str(mirror)}, capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-2000:]
    assert "rule baseline:" in out and f"--model {src}" in out
    assert out.count("results/finetune/Prom-core/10/baseline/dnabert6/seed") >= len(cfg["finetune"]["seeds"])
    cfg["baselines"] = {"genemask": {"model": str(src)}}
    with pytest.raises(GeneMaskError, match="key 'baselines.genemask': the name of a masking scheme"):
        plan.resolve(cfg)
