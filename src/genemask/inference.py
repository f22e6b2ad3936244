"""Using a model: predict classes and embed new sequences with a model folder (modelfolder.py
writes, loads and checks the folders: a fine-tuned classifier is saved by
`modelfolder.save_classifier`).

- `predict_cli` (`genemask predict`): class probabilities per sequence, TSV `id prob_<label>...
  predicted`.
- `embed_cli` (`genemask embed`): one vector per sequence from any of our model folders (pretrained
  MLM or fine-tuned classifier; the base encoder is loaded with AutoModel), [CLS] or mean pooling
  over the real tokens ([CLS], k-mers, [SEP]; [PAD] masked out) of a chosen hidden layer
  (0 = embedding output, 1..L = encoder layers, negative counts from the end; default -1 = last).
  `.npy` (float32 [n, hidden]) with the ids in `<stem>.ids.txt` beside it, or `.parquet` (`write_parquet`:
  one row per sequence, columns `id` (string) and `embedding` (list<float32> of length hidden), the
  form Hugging Face datasets, polars, DuckDB and vector stores read as one vector column; pandas:
  `np.stack(pd.read_parquet(f)["embedding"])`; schema metadata `genemask` = JSON of the model folder,
  pooling, layer, hidden).

Inputs: FASTA (`.fa .fasta .fna .fas`, plain or `.gz`; read with `genome.iter_fasta_validated`, so
a malformed file is a one-line error; ids = record names) or a table (`.tsv .csv`, plain or `.gz`;
header with a `sequence` (or `seq`) column, optionally an `id` (or `name`) column, other columns
ignored; sequences raw bp or space-separated k-mers as in the task files; ids = the id column or the
data row number, 1-based; read by `util.table_rows`, the one table reader: CSV quoting, gzip
streamed). Both kinds pass the one alphabet check, `genome.check_alphabet` (IUPAC DNA letters; RNA
and protein refused), and must be regular files. Every sequence is held in memory.

Windows: a sequence of L bp has n = L - k + 1 k-mer tokens; the model takes W = max_position_embeddings
- 2 of them at a time. A sequence with n <= W is one window (exactly the tokens fine-tuning uses).
A longer one is scored by windows of W tokens starting at 0, S, 2S, ... and a last window flush with
the end (start n - W), so every token is covered (`plan_windows`; S = --stride, default W // 2).
Predictions average the window logits, then softmax; [CLS] embeddings average the window vectors;
mean embeddings weight each window by its real tokens (sum of token vectors / number of tokens over
all windows). Windows are sorted by length and run in batches of --batch-size under
`torch.inference_mode`. Tokenisation is one vectorised `kmers.seq_to_ids` call over all sequences
joined (k-mers across a boundary are never gathered).

Precision: `bf16` (`auto`, `true`, `false`; default the schema's predict.bf16, `auto`) runs the
forward passes under bf16 autocast when `precision.use_bf16` says so (auto: CUDA with bf16, CPUs
with amx_bf16/avx512_bf16): the matrix products of the encoder in bf16, a classifier's output layer
in float32 (`precision.float32_head`); the hidden states a layer outputs are float32 (layer norms),
and logits and vectors are accumulated in float64 as before.
Same inputs, same machine: identical outputs in either precision.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from .defaults import defaults as config_defaults
from .kmers import PAD, kmers_to_seq, seq_to_ids
from .modelfolder import (
    check_vocab_size,
    choose_device,
    load_classifier,
    load_config,
    load_encoder,
    model_k,
    thread_scope,
)
from .precision import autocast, float32_head, parse_setting, use_bf16
from .tasks import SEQ_NAMES
from .training import padded_rows
from .util import GeneMaskError, Progress, atomic_output, check_regular_file, shorten, table_rows

FASTA_EXT = (".fa", ".fasta", ".fna", ".fas")
TABLE_EXT = (".tsv", ".csv")
DEFAULTS = config_defaults("predict")  # stride, batch_size, device, bf16: the config schema's
EMBED_DEFAULTS = config_defaults("predict.embed")  # pooling, layer
ID_NAMES = ("id", "name")


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def input_kind(path: str | os.PathLike) -> str:
    """'fasta' or 'table' from the file name (a trailing .gz allowed); anything else -> GeneMaskError."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix
    if suffix in FASTA_EXT:
        return "fasta"
    if suffix in TABLE_EXT:
        return "table"
    raise GeneMaskError(f"{path}: unknown input extension {suffix or '(none)'!r}; expected FASTA "
                        f"({' '.join(FASTA_EXT)}) or a table ({' '.join(TABLE_EXT)}), optionally .gz")


def read_input(path: str | os.PathLike) -> tuple[list[str], list[bytes]]:
    """(ids, sequences as bytes) of a FASTA or a sequence table (see the module docstring)."""
    path = Path(path)
    kind = input_kind(path)
    check_regular_file(path, "input")
    if kind == "fasta":
        from .genome import iter_fasta_validated

        ids, seqs = [], []
        for name, seq in iter_fasta_validated(path):
            ids.append(name)
            seqs.append(seq)
        return ids, seqs
    return _read_table(path)


def _read_table(path: Path) -> tuple[list[str], list[bytes]]:
    from .genome import check_alphabet

    ids: list[str] = []
    seqs: list[bytes] = []
    seen: set[str] = set()
    with table_rows(path, "sequence table", "a header with a 'sequence' column") as rows:
        names, first = rows.names, rows.header_line
        si = next((i for i, c in enumerate(names) if c in SEQ_NAMES), None)
        if si is None:
            raise GeneMaskError(f"{path}:{first}: header columns {names} have no 'sequence' (or 'seq') column")
        ii = next((i for i, c in enumerate(names) if c in ID_NAMES), None)
        for line, fields in rows:
            if len(fields) != len(names):
                raise GeneMaskError(f"{path}:{line}: {len(fields)} field(s), the header has {len(names)}")
            seq = fields[si]
            if " " in seq:
                try:
                    seq = kmers_to_seq(seq.split())
                except ValueError as e:
                    raise GeneMaskError(f"{path}:{line}: k-mers do not overlap: {e}") from None
            rid = fields[ii] if ii is not None else str(len(ids) + 1)
            if not rid or rid in seen:
                raise GeneMaskError(f"{path}:{line}: " + (f"duplicate id {rid!r}" if rid else "empty id"))
            if not seq:
                raise GeneMaskError(f"{path}:{line}: empty sequence")
            try:
                raw = seq.encode("ascii")
            except UnicodeEncodeError:
                raise GeneMaskError(f"{path}:{line}: sequence {shorten(seq)} has a character that is not a base "
                                    f"letter") from None
            check_alphabet(path, rid, raw, line, what="record")  # the FASTA path's check
            seen.add(rid)
            ids.append(rid)
            seqs.append(raw)
    if not seqs:
        raise GeneMaskError(f"{path}:{first}: a header but no data rows")
    return ids, seqs


# ---------------------------------------------------------------------------------------------
# windows and tokens
# ---------------------------------------------------------------------------------------------
def plan_windows(n_tokens, window: int, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows over sequences of n_tokens k-mer tokens each -> (sequence index, start, length).

    One window [0, n) when n <= window; otherwise starts 0, stride, 2*stride, ... < n - window and a
    last start n - window (flush with the end), each `window` tokens long. Vectorised.
    """
    n = np.asarray(n_tokens, dtype=np.int64)
    if window < 1 or not 1 <= stride <= window:
        raise GeneMaskError(f"--stride: must be in [1, {window}] (the window is {window} tokens), got {stride}")
    if (n < 1).any():
        raise GeneMaskError(f"sequence {int(np.flatnonzero(n < 1)[0]) + 1} has no k-mer token")
    over = np.maximum(n - window, 0)
    m = np.where(over > 0, -(-over // stride) + 1, 1)  # ceil(over / stride) + 1 windows
    seq = np.repeat(np.arange(len(n)), m)
    j = np.arange(int(m.sum())) - np.repeat(np.cumsum(m) - m, m)
    start = np.minimum(j * stride, over[seq])
    length = np.minimum(n, window)[seq]
    return seq, start, length


class Tokens:
    """Token ids of all sequences (one seq_to_ids call over the joined bytes) and their windows."""

    def __init__(self, ids: list[str], seqs: list[bytes], k: int, window: int, stride: int, source: str):
        bp = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        short = np.flatnonzero(bp < k)
        if short.size:
            i = int(short[0])
            raise GeneMaskError(f"{source}: record {ids[i]!r} has {bp[i]} bp, shorter than k={k}: "
                                f"no k-mer to score")
        self.n = len(seqs)
        self.offset = np.cumsum(bp) - bp  # token j of sequence i is tok[offset[i] + j]
        self.tok = seq_to_ids(b"".join(seqs), k)
        self.seq, start, self.length = plan_windows(bp - k + 1, window, stride)
        self.base = self.offset[self.seq] + start

    def batches(self, batch_size: int):
        """Yield (window indices, input_ids LongTensor [B, T], attention_mask) longest first."""
        order = np.argsort(-self.length, kind="stable")
        for b in range(0, len(order), batch_size):
            w = order[b : b + batch_size]
            length = self.length[w]
            rows = [self.tok[s : s + n] for s, n in zip(self.base[w], length)]  # one slice per window
            ids, _ = padded_rows(rows, int(length.max()) + 2)
            yield w, ids, (ids != PAD).long()


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def _window_size(cfg, folder: Path, k: int, window: int | None) -> int:
    check_vocab_size(cfg.vocab_size, k, folder)
    w_max = int(cfg.max_position_embeddings) - 2
    if window is None:
        return w_max
    if not 1 <= window <= w_max:
        raise GeneMaskError(f"window: must be in [1, {w_max}] tokens for {folder}, got {window}")
    return window


def load_for_predict(folder: str | os.PathLike):
    """(classifier in eval mode, k, label names) of a fine-tuned classifier folder."""
    folder = Path(folder)
    cfg = load_config(folder)
    if not any(a.endswith("ForSequenceClassification") for a in (cfg.architectures or [])):
        raise GeneMaskError(f"{folder}: not a fine-tuned classifier (architectures {cfg.architectures}); "
                            f"use `genemask embed` for a pretrained model")
    model = load_classifier(folder, int(cfg.num_labels), None)
    labels = [str(model.config.id2label[i]) for i in range(model.config.num_labels)]
    return model.eval(), model_k(folder), labels


# ---------------------------------------------------------------------------------------------
# predict / embed (Python API)
# ---------------------------------------------------------------------------------------------
def predict_logits(model, tokens: Tokens, batch_size: int, device, label: str = "predict",
                   bf16: bool = False) -> np.ndarray:
    """Window-averaged logits [n, num_labels] (float64); bf16: forward passes under bf16 autocast."""
    import torch

    if batch_size < 1:
        raise GeneMaskError(f"--batch-size: must be >= 1, got {batch_size}")
    model.to(device)
    if bf16:
        float32_head(model)
    total = np.zeros((tokens.n, model.config.num_labels), dtype=np.float64)
    prog = Progress(label, len(tokens.seq), "windows")
    with torch.inference_mode(), autocast(device, bf16):
        for w, x, mask in tokens.batches(batch_size):
            logits = model(input_ids=x.to(device), attention_mask=mask.to(device)).logits
            np.add.at(total, tokens.seq[w], logits.double().cpu().numpy())
            prog.update(len(w))
    prog.close(f"{tokens.n} sequences")
    return total / np.bincount(tokens.seq, minlength=tokens.n)[:, None]


def predict(folder, seqs: list[bytes | str], ids: list[str] | None = None, stride: int | None = None,
            batch_size: int = DEFAULTS["batch_size"], device: str = DEFAULTS["device"], window: int | None = None,
            source: str = "input", bf16=DEFAULTS["bf16"]) -> tuple[np.ndarray, list[str]]:
    """(class probabilities [n, num_labels] float64, label names) of raw-bp sequences.

    ids name the records in errors (default "1".."n"); source names the input; window: tokens per
    window (default and maximum: max_position_embeddings - 2); bf16: auto, True or False
    (`precision.use_bf16`)."""
    import torch

    dev = choose_device(device)
    on = use_bf16(parse_setting(bf16, "--bf16"), dev)
    if batch_size < 1:
        raise GeneMaskError(f"--batch-size: must be >= 1, got {batch_size}")
    model, k, labels = load_for_predict(folder)
    tokens = _tokens(model.config, folder, k, seqs, ids, stride, window, source)
    logits = predict_logits(model, tokens, batch_size, dev, bf16=on)
    return torch.softmax(torch.from_numpy(logits), dim=-1).numpy(), labels


def embed(folder, seqs: list[bytes | str], ids: list[str] | None = None, pooling: str = EMBED_DEFAULTS["pooling"],
          layer: int = EMBED_DEFAULTS["layer"], stride: int | None = None, batch_size: int = DEFAULTS["batch_size"],
          device: str = DEFAULTS["device"], window: int | None = None, source: str = "input",
          bf16=DEFAULTS["bf16"]) -> np.ndarray:
    """Per-sequence vectors [n, hidden] float32 (see the module docstring for pooling and windows;
    the other arguments as for `predict`)."""
    import torch

    if pooling not in ("cls", "mean"):
        raise GeneMaskError(f"--pooling: expected cls or mean, got {pooling!r}")
    if batch_size < 1:
        raise GeneMaskError(f"--batch-size: must be >= 1, got {batch_size}")
    dev = choose_device(device)
    on = use_bf16(parse_setting(bf16, "--bf16"), dev)
    model, k = load_encoder(folder)
    n_layers = int(model.config.num_hidden_layers)
    if not -(n_layers + 1) <= layer <= n_layers:
        raise GeneMaskError(f"--layer: {folder} has hidden states 0..{n_layers} (0 = embeddings; negative "
                            f"from the end, -1 = last), got {layer}")
    tokens = _tokens(model.config, folder, k, seqs, ids, stride, window, source)
    model.to(dev)
    total = np.zeros((tokens.n, int(model.config.hidden_size)), dtype=np.float64)
    weight = np.zeros(tokens.n, dtype=np.float64)
    prog = Progress("embed", len(tokens.seq), "windows")
    with torch.inference_mode(), autocast(dev, on):
        for w, x, mask in tokens.batches(batch_size):
            mask = mask.to(dev)
            h = model(input_ids=x.to(dev), attention_mask=mask, output_hidden_states=True).hidden_states[layer]
            if pooling == "cls":
                v, wt = h[:, 0], np.ones(len(w))
            else:
                v = (h * mask[..., None].to(h.dtype)).sum(dim=1)
                wt = mask.sum(dim=1).cpu().numpy()
            np.add.at(total, tokens.seq[w], v.double().cpu().numpy())
            np.add.at(weight, tokens.seq[w], wt)
            prog.update(len(w))
    prog.close(f"{tokens.n} sequences")
    return (total / weight[:, None]).astype(np.float32)


def _tokens(cfg, folder, k, seqs, ids, stride, window, source) -> Tokens:
    seqs = [s.encode("ascii", "replace") if isinstance(s, str) else s for s in seqs]
    ids = list(ids) if ids is not None else [str(i + 1) for i in range(len(seqs))]
    if not seqs:
        raise GeneMaskError(f"{source}: no sequences to score")
    w = _window_size(cfg, Path(folder), k, window)
    return Tokens(ids, seqs, k, w, w // 2 if stride is None else int(stride), source)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def _read_named(path) -> tuple[list[str], list[bytes]]:
    ids, seqs = read_input(path)
    print(f"[inference] {path}: {len(seqs)} sequences, {sum(map(len, seqs)):,} bp", file=sys.stderr, flush=True)
    return ids, seqs


def predict_cli(model: str, input: str, output: str, stride: int | None = None, batch_size: int = DEFAULTS["batch_size"],
                device: str = DEFAULTS["device"], bf16: str = DEFAULTS["bf16"]) -> None:
    """`genemask predict`: TSV id, prob_<label> per class, predicted (the label of the largest)."""
    import pandas as pd

    if not str(output).lower().endswith((".tsv", ".tsv.gz")):
        raise GeneMaskError(f"{output}: predictions are written as TSV; use a .tsv (or .tsv.gz) name")
    ids, seqs = _read_named(input)
    with thread_scope():
        prob, labels = predict(model, seqs, ids, stride=stride, batch_size=batch_size, device=device,
                               source=str(input), bf16=bf16)
    df = pd.DataFrame(prob, columns=[f"prob_{lab}" for lab in labels])
    df.insert(0, "id", ids)
    df["predicted"] = np.asarray(labels, dtype=object)[prob.argmax(axis=1)]
    with atomic_output(output) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format="%.6g",
                  compression="gzip" if str(output).endswith(".gz") else None)


def _need_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise GeneMaskError("writing .parquet needs pyarrow (a genemask dependency) and it is not installed; "
                            "write .npy instead") from None
    return pyarrow


def write_parquet(path: str | os.PathLike, ids: list[str], vec: np.ndarray, meta: dict | None = None) -> Path:
    """Embeddings as Parquet (atomically): columns `id` (string) and `embedding` (list<float32>, one
    vector per row); `meta` (JSON-able) is kept as the schema metadata key `genemask`."""
    pa = _need_pyarrow()
    import pyarrow.parquet as pq

    vec = np.ascontiguousarray(vec, dtype=np.float32)
    n, hidden = vec.shape
    big = n * hidden >= 2**31  # past int32 offsets: large_list<float32> (the same to pandas/polars)
    offsets = pa.array(np.arange(0, (n + 1) * hidden, hidden, dtype=np.int64 if big else np.int32))
    cls = pa.LargeListArray if big else pa.ListArray
    emb = cls.from_arrays(offsets, pa.array(vec.reshape(-1), type=pa.float32()))
    table = pa.table({"id": pa.array(list(ids), type=pa.string()), "embedding": emb})
    if meta:
        table = table.replace_schema_metadata({"genemask": json.dumps(meta, default=str)})
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def embed_cli(model: str, input: str, output: str, pooling: str = EMBED_DEFAULTS["pooling"],
              layer: int = EMBED_DEFAULTS["layer"], stride: int | None = None,
              batch_size: int = DEFAULTS["batch_size"], device: str = DEFAULTS["device"],
              bf16: str = DEFAULTS["bf16"]) -> None:
    """`genemask embed`: .npy [n, hidden] float32 + `<stem>.ids.txt`, or .parquet (id, embedding)."""
    out = Path(output)
    fmt = out.suffix.lower()
    if fmt not in (".npy", ".parquet"):
        raise GeneMaskError(f"{output}: unknown output extension {fmt or '(none)'!r}; expected .npy or .parquet")
    if fmt == ".parquet":
        _need_pyarrow()  # fail before the model runs
    ids, seqs = _read_named(input)
    with thread_scope():
        vec = embed(model, seqs, ids, pooling=pooling, layer=layer, stride=stride,
                    batch_size=batch_size, device=device, source=str(input), bf16=bf16)
    if fmt == ".npy":
        ids_path = ids_file(out)
        with atomic_output(out) as tmp, atomic_output(ids_path) as tmp_ids:
            with open(tmp, "wb") as fh:
                np.save(fh, vec)
            tmp_ids.write_text("".join(f"{i}\n" for i in ids))
    else:
        write_parquet(out, ids, vec, {"model": str(model), "pooling": pooling, "layer": layer,
                                      "hidden": int(vec.shape[1])})


def ids_file(npy: str | os.PathLike) -> Path:
    """The ids file written beside an embeddings .npy: `<stem>.ids.txt`."""
    p = Path(npy)
    return p.with_name(p.stem + ".ids.txt")

