"""The model folder: the one place that writes, reads and checks our Hugging Face model folders.

Every model the pipeline keeps (a pretraining step `results/pretrain/<scheme>/seed<P>/step<S>/`, a
fine-tuned classifier `<run>.model/`, a baseline copy `results/baselines/<name>/`) is one folder
that the Hugging Face Auto classes load as it is:

    config.json            the model configuration (a classifier's has id2label / label2id)
    model.safetensors      the weights (WEIGHTS): the only weights file a folder may hold
    tokenizer.json, tokenizer_config.json, vocab.txt (+ special_tokens_map.json when a source had
                           one): the k-mer tokenizer (`tokenizer.save_tokenizer`), or a baseline's own
    genemask.json          our metadata (META): "k" (the k-mer size, default 6 when absent),
                           "weights_sha256" (the sha256 of WEIGHTS, checked on every load), and what
                           the writer adds: a pretraining step its settings, scheme, pretrain_seed
                           and pretrain_step; a classifier "kind": "classifier", num_labels, labels,
                           task, shot, seed, source_model, metrics; a baseline its name and source.
                           A pretraining step also carries val_loss (the last validation at or
                           before it), val_loss_step and tokens_per_s (mean logged throughput).
    README.md              the model card (CARD), generated from genemask.json by `seal`
                           (modelcard.card_text): YAML header for the Hub, how to load it, the k-mers
    .genemask-output       the marker of a folder this pipeline wrote (util.atomic_output)

Writing: `save_model` (a model in memory, with its tokenizer, sealed), `save_classifier` (a
fine-tuned classifier, atomically), `seal` (genemask.json with the weights' sha256, for a folder
whose files are already in place; it writes the model card too). Reading: `read_meta`, `model_k`, `load_config`,
`load_classifier`, `load_encoder`; every loader runs `verify_weights` first. Checking:
`verify_weights`, `check_vocabulary` (a foreign folder speaks our k-mer tokens),
`check_vocab_size` (a config's vocab_size covers the k-mer vocabulary).

Running a model: `quiet_transformers` (transformers' warnings and the progress bars of transformers
and huggingface_hub off for a block: job logs carry our lines only), `choose_device` (cpu, cuda or
auto) and `thread_scope` (GENEMASK_THREADS for one call, torch's thread count restored after).
torch and transformers are imported inside the functions, so importing this module stays cheap.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .kmers import N_SPECIAL, SPECIAL_TOKENS, SUPPORTED_K, all_kmers, vocab_size
from .util import CLASSIFIER, GeneMaskError, atomic_output, read_json_object

META = "genemask.json"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
CARD = "README.md"  # the model card (modelcard.py), generated from META by `seal`
# Any of these in a model folder is a weights file (or the index of sharded ones) that Hugging Face
# could load instead of, or besides, WEIGHTS: only WEIGHTS, whose sha256 genemask.json records, is.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ckpt", ".pkl", ".pickle",
                   ".gguf", ".onnx", ".index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
DEFAULT_K = 6


# ---------------------------------------------------------------------------------------------
# metadata and weights
# ---------------------------------------------------------------------------------------------
def read_meta(folder: str | os.PathLike) -> dict:
    """A model folder's genemask.json ({} when absent); a file that is not a JSON object -> one line."""
    p = Path(folder) / META
    return read_json_object(p, "model metadata") if p.exists() else {}


def write_meta(folder: str | os.PathLike, meta: dict) -> None:
    """Write genemask.json (indented JSON; values that are not JSON-able as str)."""
    (Path(folder) / META).write_text(json.dumps(meta, indent=1, default=str) + "\n")


def model_k(folder: str | os.PathLike) -> int:
    """k of a model folder: genemask.json key "k" (DEFAULT_K when the file or key is absent)."""
    k = read_meta(folder).get("k", DEFAULT_K)
    if not isinstance(k, int) or k < 1:
        raise GeneMaskError(f"{Path(folder) / META}: key k must be a positive integer, got {k!r}")
    return k


def weights_sha256(folder: str | os.PathLike) -> str:
    """The sha256 of the folder's WEIGHTS (what genemask.json's weights_sha256 records)."""
    from .sources import sha256_of

    return sha256_of(Path(folder) / WEIGHTS)


def seal(folder: str | os.PathLike, meta: dict) -> dict:
    """genemask.json = meta + weights_sha256 of the WEIGHTS now in the folder, and README.md, the
    model card generated from it (modelcard.card_text); returns the metadata written."""
    from .modelcard import card_text

    meta = {**meta, "weights_sha256": weights_sha256(folder)}
    write_meta(folder, meta)
    (Path(folder) / CARD).write_text(card_text(json.loads(json.dumps(meta, default=str))))
    return meta


def verify_weights(folder: str | os.PathLike) -> None:
    """The one check of a model folder's weights, run by every loader (fine-tuning, predict, embed):
    exactly one weights file, WEIGHTS, and when genemask.json records `weights_sha256` (every folder
    the pipeline writes does) those very bytes. Another weights file besides or instead of it
    (pytorch_model.bin, *.pt, *.h5, sharded *.safetensors, ...) would be loaded unchecked by Hugging
    Face; flipped bytes in WEIGHTS load without complaint and would score as a real model."""
    folder = Path(folder)
    try:
        names = sorted(f.name for f in folder.iterdir() if f.is_file() or f.is_symlink())
    except OSError as e:
        raise GeneMaskError(f"{folder}: cannot list the model folder ({e.strerror or e})") from None
    others = [n for n in names if n != WEIGHTS and n.lower().endswith(WEIGHT_SUFFIXES)]
    if others:
        raise GeneMaskError(f"{folder}: holds weights file(s) {', '.join(others)} besides {WEIGHTS}; only "
                            f"{WEIGHTS} (its sha256 in {META}) is loaded: remove them or rebuild the folder")
    if WEIGHTS not in names or not (folder / WEIGHTS).is_file():
        raise GeneMaskError(f"{folder}: no {WEIGHTS} (the model folder's weights)")
    want = read_meta(folder).get("weights_sha256")
    if want is None:
        return
    if not (isinstance(want, str) and len(want) == 64 and all(c in "0123456789abcdef" for c in want)):
        raise GeneMaskError(f"{folder / META}: weights_sha256 must be 64 lower-case hex digits, got {want!r}")
    got = weights_sha256(folder)
    if got != want:
        raise GeneMaskError(f"{folder / WEIGHTS}: damaged weights (sha256 {got[:12]}..., "
                            f"{META} records {want[:12]}...); rebuild the model folder")


# ---------------------------------------------------------------------------------------------
# vocabulary
# ---------------------------------------------------------------------------------------------
def require_config(folder: str | os.PathLike) -> Path:
    """The folder's config.json path; a folder without one -> "not a model folder"."""
    p = Path(folder) / CONFIG
    if not p.is_file():
        raise GeneMaskError(f"{folder}: not a model folder (no {CONFIG})")
    return p


def check_vocab_size(n: Any, k: int, where: str | os.PathLike) -> None:
    """A configuration's vocab_size `n` must cover the k-mer vocabulary (N_SPECIAL specials + 4^k)."""
    if int(n) < vocab_size(k):
        raise GeneMaskError(f"{where}: vocab_size {n} is smaller than the {k}-mer vocabulary "
                            f"({vocab_size(k)} = {N_SPECIAL} specials + 4^{k})")


def check_vocabulary(folder: str | os.PathLike) -> int:
    """k of a model folder (e.g. a foreign one) whose tokens are ours; one-line error naming the
    folder otherwise. Its vocab.txt must be exactly our vocabulary for its k (the specials, then the
    4^k k-mers in DNABERT's order) and config.json's vocab_size must cover it. k comes from its
    genemask.json, else from the length of the k-mer tokens in vocab.txt."""
    folder = Path(folder)
    cfg_path = require_config(folder)
    cfg = read_json_object(cfg_path, "model configuration")
    vocab_file = folder / "vocab.txt"
    vocab = vocab_file.read_text().split("\n") if vocab_file.is_file() else None
    if vocab is not None:
        while vocab and vocab[-1] == "":
            vocab.pop()
    k = None
    if (folder / META).is_file():
        try:
            k = json.loads((folder / META).read_text()).get("k")
        except (OSError, json.JSONDecodeError, AttributeError):
            k = None
    if k is None and vocab is not None and len(vocab) > len(SPECIAL_TOKENS):
        k = len(vocab[len(SPECIAL_TOKENS)])
    if k not in SUPPORTED_K:
        raise GeneMaskError(f"{folder}: cannot tell a k-mer size in {SUPPORTED_K} (no {META} k, "
                            f"no k-mer vocab.txt); got {k!r}")
    if vocab is None:
        raise GeneMaskError(f"{folder}: no vocab.txt: cannot check that its token ids are our {k}-mers")
    want = SPECIAL_TOKENS + all_kmers(k)
    if vocab != want:
        i = next((i for i, (a, b) in enumerate(zip(vocab, want)) if a != b), min(len(vocab), len(want)))
        got = vocab[i] if i < len(vocab) else "(end)"
        raise GeneMaskError(f"{vocab_file}: vocabulary differs from the {k}-mer vocabulary at id {i} "
                            f"({got!r}, expected {want[i] if i < len(want) else '(end)'!r}; "
                            f"{len(vocab)} tokens, expected {len(want)})")
    if not isinstance(cfg.get("vocab_size", 0), int) or isinstance(cfg.get("vocab_size"), bool):
        raise GeneMaskError(f"{cfg_path}: vocab_size must be an integer, got {cfg.get('vocab_size')!r}")
    check_vocab_size(cfg.get("vocab_size", 0), k, cfg_path)
    return int(k)


# ---------------------------------------------------------------------------------------------
# running a model: logs, device, threads
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet_transformers():
    """For the block: transformers' warnings (e.g. "newly initialised pooler/classifier", expected
    here) and the progress bars of transformers ("Writing model shards", "Loading weights") and
    huggingface_hub off; every setting is restored after. They would clutter the job logs."""
    import huggingface_hub.utils as hub_utils
    from transformers.utils import logging as hf_logging

    prev, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hub_bars = not hub_utils.are_progress_bars_disabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        hf_logging.set_verbosity(prev)
        if bars:
            hf_logging.enable_progress_bar()
        if hub_bars:
            hub_utils.enable_progress_bars()


def choose_device(name: str, what: str = "--device"):
    """torch.device of "cpu", "cuda" or "auto" (cuda when available); `what` names the setting in errors."""
    import torch

    if name not in ("cpu", "cuda", "auto"):
        raise GeneMaskError(f"{what}: expected cpu, cuda or auto, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise GeneMaskError(f"{what}: cuda requested but no CUDA device is available")
    return torch.device(name)


def set_threads() -> int:
    """Apply GENEMASK_THREADS (if set: a positive integer) to torch; returns torch's thread count."""
    import torch

    env = os.environ.get("GENEMASK_THREADS")
    if env:
        try:
            n = int(env)
            if n < 1:
                raise ValueError
        except ValueError:
            raise GeneMaskError(f"GENEMASK_THREADS: must be a positive integer, got {env!r}") from None
        torch.set_num_threads(n)
    return torch.get_num_threads()


@contextlib.contextmanager
def thread_scope():
    """GENEMASK_THREADS for the block (`set_threads`; yields the thread count); torch's thread
    count before it is restored after, so a call in a long-lived process leaves no trace."""
    import torch

    prev = torch.get_num_threads()
    try:
        yield set_threads()
    finally:
        torch.set_num_threads(prev)


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def load_config(folder: str | os.PathLike):
    """The folder's configuration (AutoConfig, local files only)."""
    from transformers import AutoConfig

    folder = Path(folder)
    require_config(folder)
    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise GeneMaskError(f"{folder}: cannot read {CONFIG} ({str(e).splitlines()[0][:200]})") from None


def load_classifier(folder: str | os.PathLike, num_labels: int, hidden_dropout: float | None):
    """A sequence classifier (BertForSequenceClassification via the Auto class) from any of our model
    folders: a pretrained one gets a new pooler/head (seed torch before calling), a fine-tuned one
    its own. hidden_dropout: the config's hidden_dropout_prob (None: the folder's)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = Path(folder)
    require_config(folder)
    verify_weights(folder)
    kw: dict[str, Any] = {"num_labels": num_labels}
    if hidden_dropout is not None:
        kw["hidden_dropout_prob"] = hidden_dropout
    try:
        cfg = AutoConfig.from_pretrained(folder, local_files_only=True, **kw)
        with quiet_transformers():
            return AutoModelForSequenceClassification.from_pretrained(folder, config=cfg, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        msg = str(e).replace("\n", " ")[:300]
        raise GeneMaskError(f"{folder}: cannot load the model as a sequence classifier ({msg})") from None


def load_encoder(folder: str | os.PathLike):
    """(base encoder, e.g. BertModel without pooler, in eval mode, k) of any of our model folders."""
    from transformers import AutoModel

    folder = Path(folder)
    load_config(folder)
    verify_weights(folder)
    try:
        with quiet_transformers():  # MLM/classifier heads left unused are expected here
            try:
                model = AutoModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False)
            except TypeError:  # an encoder class without a pooler option
                model = AutoModel.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise GeneMaskError(f"{folder}: cannot load the encoder ({str(e).replace(chr(10), ' ')[:300]})") from None
    return model.eval(), model_k(folder)


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------
def save_model(model, folder: str | os.PathLike, k: int, meta: dict, tokenizer_from: Path | None = None) -> dict:
    """Write a model in memory into `folder` (created; the caller makes it atomic): config.json and
    WEIGHTS (save_pretrained), the tokenizer files of `tokenizer_from` when it has a tokenizer.json
    (else the k-mer tokenizer built for k) and genemask.json = meta + weights_sha256 (`seal`).
    Returns the metadata written."""
    from .tokenizer import build_tokenizer, save_tokenizer

    folder = Path(folder)
    with quiet_transformers():
        model.save_pretrained(folder)  # safetensors (model.safetensors)
    copied = [f for f in TOKENIZER_FILES if tokenizer_from is not None and (tokenizer_from / f).is_file()]
    for f in copied:
        shutil.copyfile(tokenizer_from / f, folder / f)
    if "tokenizer.json" not in copied:  # no source tokenizer: build it for k (tokenizer.json + vocab.txt)
        save_tokenizer(build_tokenizer(int(k)), folder)
    return seal(folder, meta)


def save_classifier(model, folder: str | os.PathLike, meta: dict) -> Path:
    """Write a fine-tuned sequence classifier as a model folder (atomically); returns it.

    meta: written to genemask.json (JSON-able values; others via str). Keys read here, all optional:
    `labels` (list of num_labels class names; default "0".."n-1"), `source_model` (the pretrained
    folder: its tokenizer files are copied and its k is the default for `k`), `k` (default: the
    source's k, else 6). Suggested: task, shot, seed, scheme, metrics. Sets model.config.id2label
    and label2id to the label names; `AutoModelForSequenceClassification.from_pretrained(folder)`
    loads the folder.
    """
    folder = Path(folder)
    meta = dict(meta)
    n = int(model.config.num_labels)
    labels = [str(x) for x in meta.get("labels") or range(n)]
    if len(labels) != n or len(set(labels)) != n:
        raise GeneMaskError(f"{folder}: meta labels {labels} must be {n} distinct names (the model has {n} classes)")
    src = Path(meta["source_model"]) if meta.get("source_model") else None
    k = meta.get("k")
    if k is None:
        k = model_k(src) if src is not None else DEFAULT_K
    meta.update({"kind": "classifier", "k": int(k), "num_labels": n, "labels": labels})
    if src is not None:
        meta["source_model"] = str(src)
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {lab: i for i, lab in enumerate(labels)}
    with atomic_output(folder, is_dir=True, kind=CLASSIFIER) as tmp:
        save_model(model, tmp, int(k), meta, tokenizer_from=src)
    return folder
