"""Model cards (genemask.modelcard): generated from genemask.json, read back by huggingface_hub."""
from __future__ import annotations

import re

from huggingface_hub import ModelCard

from genemask.modelcard import card_text

PRETRAINED = {"scheme": "genemask", "k": 6, "settings": {"steps": 300, "lr": 0.0008, "seed": 42},
              "ranking_sha256": "ab" * 32, "corpus": ["results/corpus/c0000"], "train_pieces": 4000,
              "train_tokens": 2020000, "steps": 300, "tokens_seen": 768000, "world_size": 1, "device": "cpu",
              "pretrain_step": 300, "pretrain_seed": 42, "val_loss": 7.912345, "tokens_per_s": 5321.7,
              "precision": "bf16 autocast (auto: cpu with avx512_bf16)", "dropout": "numpy PCG64 masks (bf16 on CPU)",
              "weights_sha256": "cd" * 32}
CLASSIFIER = {"kind": "classifier", "k": 6, "task": "Prom-core", "shot": 10, "seed": 2, "num_labels": 2,
              "labels": ["non-promoter", "promoter"], "source_model": "results/models/genemask/seed42/step300",
              "metrics": {"accuracy": 0.6125, "macro_f1": 0.6, "mcc": 0.23, "auroc": 0.66},
              "weights_sha256": "ef" * 32}
BASELINE = {"baseline": "dnabert6", "source": "some/folder", "revision": "main", "k": 6, "weights_sha256": "01" * 32}


def _card(meta, tmp_path) -> ModelCard:
    (tmp_path / "README.md").write_text(card_text(meta))
    return ModelCard.load(tmp_path / "README.md")


def test_pretrained_card_parses_and_its_numbers_are_the_metadata(tmp_path):
    card = _card(PRETRAINED, tmp_path)
    d = card.data.to_dict()
    assert d["library_name"] == "transformers" and d["pipeline_tag"] == "fill-mask" and d["license"] == "mit"
    assert {"genomics", "dna", "6-mer", "masking-genemask"} <= set(d["tags"])
    text = card.text
    for what, v in (("tokens seen", "768000"), ("validation loss", "7.912"), ("throughput (tokens/s)", "5322"),
                    ("pretraining step", "300"), ("NPMI ranking sha256", "ab" * 32),
                    ("precision", "bf16 autocast (auto: cpu with avx512_bf16)"),
                    ("dropout masks", "numpy PCG64 masks (bf16 on CPU)")):
        assert f"| {what} | {v} |" in text, what
    assert "sha256 `" + "cd" * 32 + "`" in text
    assert "space-separated 6-mers" in text and "kmerize" in text and "AutoModelForMaskedLM" in text


def test_classifier_and_baseline_cards(tmp_path):
    card = _card(CLASSIFIER, tmp_path)
    assert card.data.to_dict()["pipeline_tag"] == "text-classification"
    rows = dict(re.findall(r"^\| (\w+) \| ([\d.]+) \|$", card.text, re.M))
    assert {k: float(v) for k, v in rows.items()} == CLASSIFIER["metrics"]
    assert "Prom-core, 10-shot, seed 2" in card.text and "AutoModelForSequenceClassification" in card.text
    (tmp_path / "b").mkdir()
    card = _card(BASELINE, tmp_path / "b")
    assert "dnabert6" in card.text and card.data.to_dict()["pipeline_tag"] == "fill-mask"
