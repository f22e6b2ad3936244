"""Model cards: the README.md of every model folder, generated from its genemask.json.

A Hugging Face model card is a README.md with a YAML header (library, tags, pipeline tag, licence)
that the Hub and `huggingface_hub.ModelCard` read, and a body for people. Every number in the card
comes from the folder's metadata (`genemask.json`), so the card and the metadata cannot disagree;
the card adds what a person needs and the metadata does not say: how to load the folder with the
Auto classes, and that the tokenizer reads space-separated k-mers (raw bases given to
`AutoTokenizer` become `[CLS] [UNK] [SEP]`), with the helper that k-merises them.
"""
from __future__ import annotations

import json

CODE_LICENSE = "mit"  # the pipeline's licence (pyproject.toml); the data keep their origin's licences
REPO_DOCS = "docs/data.md"  # where the data's origins and licences are listed


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, sort_keys=True) + "`"
    return str(v)


def _usage(kind: str, k: int) -> list[str]:
    auto = "AutoModelForSequenceClassification" if kind == "classifier" else "AutoModelForMaskedLM"
    lines = [
        "## How to use", "",
        f"The tokenizer reads **space-separated {k}-mers**, not raw bases: raw text such as `ACGTAC...` "
        "becomes `[CLS] [UNK] [SEP]`. Turn bases into k-mers first:", "",
        "```python",
        f"from transformers import AutoTokenizer, {auto}",
        "from genemask.tokenizer import kmerize",
        "",
        "folder = \"path/to/this/folder\"",
        "tok = AutoTokenizer.from_pretrained(folder)",
        f"model = {auto}.from_pretrained(folder)",
        f"inputs = tok(kmerize(\"ACGTACGTTAGCATCG\", k={k}), return_tensors=\"pt\")",
        "out = model(**inputs)",
        "```", "",
        "Or from the command line: `genemask predict --model FOLDER seqs.fa -o out.tsv` (classifiers) and "
        "`genemask embed --model FOLDER seqs.fa -o out.npy` (any folder), which k-merise and window long "
        "sequences themselves.", "",
    ]
    return lines


def card_text(meta: dict) -> str:
    """The README.md of a model folder from its genemask.json `meta` (pretrained step, classifier or
    baseline, told apart by `kind` / `baseline` / `pretrain_step`)."""
    k = int(meta.get("k", 6))
    if meta.get("kind") == "classifier":
        kind, pipeline = "classifier", "text-classification"
    elif "baseline" in meta:
        kind, pipeline = "baseline", "fill-mask"
    else:
        kind, pipeline = "pretrained", "fill-mask"
    scheme = meta.get("scheme")
    tags = ["genomics", "dna", f"{k}-mer", "genemask"] + ([f"masking-{scheme}"] if scheme else [])
    header = {"library_name": "transformers", "license": CODE_LICENSE, "pipeline_tag": pipeline, "tags": tags}
    import yaml

    lines = ["---", yaml.safe_dump(header, sort_keys=True).strip(), "---", ""]
    if kind == "classifier":
        lines += [f"# GeneMask classifier: {meta.get('task')}, {meta.get('shot')}-shot, seed {meta.get('seed')}", "",
                  f"A DNA sequence classifier fine-tuned by the GeneMask pipeline from `{meta.get('source_model')}`"
                  f" on the {meta.get('task')} task with {meta.get('shot')} examples per class (fine-tuning seed "
                  f"{meta.get('seed')}), labels {meta.get('labels')}.", ""]
        metrics = meta.get("metrics") or {}
        if metrics:
            lines += ["## Test metrics", "", "| metric | value |", "|---|---|"]
            lines += [f"| {m} | {_fmt(v)} |" for m, v in metrics.items()] + [""]
    elif kind == "baseline":
        lines += [f"# Baseline model: {meta.get('baseline')}", "",
                  f"An external model copied from `{meta.get('source')}` (revision {meta.get('revision')}), "
                  f"checked to use the pipeline's {k}-mer vocabulary.", ""]
    else:
        lines += [f"# GeneMask pretrained DNA model: {scheme} masking, step {meta.get('pretrain_step')}", "",
                  f"A BERT masked language model over overlapping {k}-mers, pretrained by the GeneMask pipeline "
                  f"with the `{scheme}` masking scheme (pretraining seed {meta.get('pretrain_seed')}).", "",
                  "## Training", "", "| what | value |", "|---|---|"]
        rows = [("pretraining step", meta.get("pretrain_step")), ("steps of the run", meta.get("steps")),
                ("tokens seen", meta.get("tokens_seen")), ("validation loss", meta.get("val_loss")),
                ("throughput (tokens/s)", meta.get("tokens_per_s")), ("device", meta.get("device")),
                ("precision", meta.get("precision")), ("dropout masks", meta.get("dropout")),
                ("world size", meta.get("world_size")), ("training pieces", meta.get("train_pieces")),
                ("training tokens", meta.get("train_tokens")), ("NPMI ranking sha256", meta.get("ranking_sha256")),
                ("corpus", meta.get("corpus")), ("settings", meta.get("settings"))]
        lines += [f"| {w} | {_fmt(v)} |" for w, v in rows if v is not None] + [""]
    if meta.get("weights_sha256"):
        lines += [f"Weights: `model.safetensors`, sha256 `{meta['weights_sha256']}` (checked on every load by "
                  "genemask).", ""]
    lines += _usage(kind, k)
    lines += ["## Limits", "",
              "Pretrained on the genome slice and budget named above, for comparing masking schemes; whether one "
              "scheme gives a better model is the question of the pipeline's study (`docs/study.md`, generated "
              "from its report), not a property of this folder. Data: the genome and task files keep the licences "
              f"of their origins ({REPO_DOCS}); the code is under the {CODE_LICENSE.upper()} licence.", ""]
    return "\n".join(lines)
