"""The model folder (modelfolder.py): what a folder holds, its metadata and weights check, the vocabulary
checks, loading and saving with real transformers models, and quiet job logs: a real save and load
print no progress bar of transformers or huggingface_hub."""
from __future__ import annotations

import json
import re

import pytest
import torch

from genemask import modelfolder as mf
from genemask.kmers import SPECIAL_TOKENS, all_kmers, vocab_size
from genemask.util import MARKER, GeneMaskError

BAR = re.compile(r"it/s|s/it|\d+%\||Writing model shards|Loading weights")


def _mlm(k: int = 6, seed: int = 0):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    return BertForMaskedLM(BertConfig(vocab_size=vocab_size(k), hidden_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=32, max_position_embeddings=64))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    d = tmp_path_factory.mktemp("mf") / "step1"
    meta = mf.save_model(_mlm(), d, 6, {"k": 6, "scheme": "random", "pretrain_step": 1})
    assert meta["weights_sha256"] == mf.weights_sha256(d)
    return d


def test_folder_format(pretrained):
    names = sorted(p.name for p in pretrained.iterdir())
    assert names == ["README.md", "config.json", "genemask.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json", "vocab.txt"]
    # the model card is generated from the metadata and parses as one
    from huggingface_hub import ModelCard

    card = ModelCard.load(pretrained / mf.CARD)
    assert card.data.to_dict()["pipeline_tag"] == "fill-mask" and mf.read_meta(pretrained)["weights_sha256"] in card.text
    text = (pretrained / mf.META).read_text()
    assert text == json.dumps(mf.read_meta(pretrained), indent=1) + "\n"  # the writers' one format
    assert list(mf.read_meta(pretrained)) == ["k", "scheme", "pretrain_step", "weights_sha256"]  # sha256 last
    assert mf.model_k(pretrained) == 6
    assert mf.check_vocabulary(pretrained) == 6
    mf.verify_weights(pretrained)


def test_meta_defaults_and_faults(tmp_path):
    assert mf.read_meta(tmp_path) == {} and mf.model_k(tmp_path) == mf.DEFAULT_K
    mf.write_meta(tmp_path, {"k": 4, "path": tmp_path})  # not JSON-able: written as str
    assert mf.read_meta(tmp_path) == {"k": 4, "path": str(tmp_path)} and mf.model_k(tmp_path) == 4
    (tmp_path / mf.META).write_text("[1]")
    with pytest.raises(GeneMaskError, match="must be a JSON object"):
        mf.read_meta(tmp_path)
    (tmp_path / mf.META).write_text('{"k": "six"}')
    with pytest.raises(GeneMaskError, match="key k must be a positive integer"):
        mf.model_k(tmp_path)


def test_not_a_model_folder_one_line(tmp_path):
    for fn in (mf.check_vocabulary, mf.load_config, mf.load_encoder, lambda d: mf.load_classifier(d, 2, None)):
        with pytest.raises(GeneMaskError, match=r"not a model folder \(no config.json\)"):
            fn(tmp_path)


def test_vocab_size_check():
    mf.check_vocab_size(vocab_size(6), 6, "x")
    with pytest.raises(GeneMaskError, match=r"x: vocab_size 100 is smaller than the 6-mer vocabulary \(4101 = 5 "):
        mf.check_vocab_size(100, 6, "x")


def test_check_vocabulary_refuses_other_tokens(pretrained, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text((pretrained / "config.json").read_text())
    v = SPECIAL_TOKENS + all_kmers(6)
    v[5], v[6] = v[6], v[5]
    (d / "vocab.txt").write_text("\n".join(v) + "\n")
    with pytest.raises(GeneMaskError, match="differs from the 6-mer vocabulary at id 5"):
        mf.check_vocabulary(d)


def test_device_choice():
    assert mf.choose_device("cpu") == torch.device("cpu")
    assert mf.choose_device("auto").type in ("cpu", "cuda")
    with pytest.raises(GeneMaskError, match="--device: expected cpu, cuda or auto"):
        mf.choose_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(GeneMaskError, match="--settings: device: cuda requested"):
            mf.choose_device("cuda", "--settings: device")


def test_thread_scope_sets_and_restores(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("GENEMASK_THREADS", "1")
    with mf.thread_scope() as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    monkeypatch.setenv("GENEMASK_THREADS", "0")
    with pytest.raises(GeneMaskError, match="GENEMASK_THREADS: must be a positive integer"):
        with mf.thread_scope():
            pass
    assert torch.get_num_threads() == before


def test_save_and_load_print_no_progress_bars(pretrained, tmp_path, capfd):
    """A real save and load of each kind; stderr (the job log) carries no bar and no transformers warning."""
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as hf_logging

    capfd.readouterr()
    _mlm().save_pretrained(tmp_path / "loud")  # the check sees a bar where nothing quiets it
    assert BAR.search(capfd.readouterr().err)

    verbosity = hf_logging.get_verbosity()
    clf = mf.load_classifier(pretrained, 2, None)  # new pooler/head: a warning unless quieted
    folder = mf.save_classifier(clf, tmp_path / "clf", {"source_model": str(pretrained), "labels": ["a", "b"]})
    again = mf.load_classifier(folder, 2, None)
    enc, k = mf.load_encoder(folder)
    mf.save_model(enc, tmp_path / "enc", k, {"k": k})
    err = capfd.readouterr().err
    assert not BAR.search(err) and "newly initialized" not in err.lower() and "load report" not in err.lower(), err
    # settings restored after each block
    assert hf_logging.get_verbosity() == verbosity
    assert hf_logging.is_progress_bar_enabled() and not hub_utils.are_progress_bars_disabled()

    assert again.config.id2label == {0: "a", 1: "b"} and k == 6
    assert (folder / MARKER).is_file() and (folder / "tokenizer.json").read_bytes() == (
        pretrained / "tokenizer.json").read_bytes()
    meta = mf.read_meta(folder)
    assert meta["kind"] == "classifier" and meta["labels"] == ["a", "b"] and list(meta)[-1] == "weights_sha256"
    mf.verify_weights(folder)


def test_quiet_block_restores_after_an_error():
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    with pytest.raises(RuntimeError):
        with mf.quiet_transformers():
            assert not hf_logging.is_progress_bar_enabled()
            raise RuntimeError
    assert hf_logging.get_verbosity() == verbosity and hf_logging.is_progress_bar_enabled()


def test_damaged_weights_refused_by_every_loader(pretrained, tmp_path):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(pretrained, d)
    data = bytearray((d / mf.WEIGHTS).read_bytes())
    data[-1] ^= 1
    (d / mf.WEIGHTS).write_bytes(bytes(data))
    for fn in (mf.verify_weights, mf.load_encoder, lambda x: mf.load_classifier(x, 2, None)):
        with pytest.raises(GeneMaskError, match="damaged weights"):
            fn(d)
