"""Explaining a classifier: per-base attributions by in-silico saturation mutagenesis (ISM).

`explain_cli` (`genemask explain`) reads sequences as `genemask predict` does (`inference.read_input`:
FASTA, or a TSV/CSV whose sequence column holds raw bases or space-separated overlapping k-mers,
both read into the same bases) and scores every single-base substitution with a fine-tuned
classifier folder.

The quantity: for target class t (`--target-class`, default 1: the positive class of a binary task)
the model's log-odds of t, `f(x) = z_t - logsumexp(z_j, j != t)` = log p_t - log(1 - p_t), where z are
the classifier's logits for the sequence x ([CLS] k-mer tokens [SEP], as fine-tuning saw it). With
two classes that is z_t - z_other. (The raw logit z_t alone is not used: adding a constant to every
logit changes it but no probability.) For each position i and base b,
`ism[b, i] = f(x with base b at i) - f(x)`, so the reference base's entry is exactly 0 (it is set,
not computed). `centred[b, i] = ism[b, i] - mean over the 4 bases of ism[:, i]` (the "hypothetical
contribution" convention of ISM tools such as tangermeme's `saturation_mutagenesis`): each position
sums to 0 and the reference base's entry says how much it is preferred over the average base.
`score[i] = centred[reference base, i]` = -mean of the 3 substitutions' ism: the per-base
attribution (positive: the reference base supports class t).

A substitution at i changes every k-mer token covering i (up to k of them); each mutant's token ids
are recomputed from all of its bases, so this is exact. How it runs: all sequences' bases go to the
device once (int64, rows A C G T = 0..3); the rows to score (per sequence: the reference and its 3L
substitutions, sequences longest first) are formed there a batch of --batch-size at a time (only
per-record tensors are kept, so memory does not grow with the rows) by one gather of the bases and
one scatter of the substituted base, mapped to token ids by `codes_to_ids` (one unfold and one
weighted sum: id = N_SPECIAL + sum_j digit_j 4^(k-1-j), digits in kmers.py's A T C G order, the
ids `kmers.seq_to_ids` gives), padded with [PAD] and run under `torch.inference_mode`. No Python loop
runs per position or per token.

Limits, refused with one line naming the file and the record: a base other than A/C/G/T (either
case; N and the IUPAC codes have no substitutions to compare with: cut the record around them); a
record longer than one model window (max_position_embeddings - 2 k-mer tokens: W + k - 1 bp, 515 bp
for our models): explain scores each record as one window, so that every substitution sees the
whole record as predict does for one-window records; cut longer ones into pieces (predict's window
averaging is not used: a substitution would change only the windows covering it, and the averaged
log-odds would mix contexts). `--max-seqs N` explains the first N records only (ISM costs 3L + 1
forward passes per record of L bp).

Output `.npz` (written atomically, byte-identical for the same input and model; `np.load(f)` reads
it, no pickles): `ids` (str [n]), `sequence` (str [n], upper case), `lengths` (int64 [n], bp),
`ism`, `centred` (float32 [n, 4, Lmax], rows A C G T: `alphabet`), `score` (float32 [n, Lmax]) with
NaN past each record's length, `reference_logit` (float64 [n]: f, the target class's log-odds, of
each unmutated record: what the differences are taken from), and the scalars `alphabet` ("ACGT"), `k`, `target_class`,
`target_label`, `quantity` ("log-odds"), `model` (the folder as given).
`--bedgraph FILE`: the per-base `score` as a bedGraph (chrom, 0-based start, end, score; one line
per base, sorted by chrom then start) for records whose ids are regions `chrom:start-end` (1-based
inclusive, as `samtools faidx` names them; genome.parse_region); an id without coordinates, a
region whose length differs from the record's, or overlapping regions -> one-line error before
any model runs.

The one-hot view: `OneHotKmerModel` wraps a k-mer classifier as a model of one-hot input [B, 4, L]
(rows A C G T, the layout of one-hot attribution tools: tangermeme, captum, logomaker), computing
the k-mer ids inside with `onehot_to_ids` (a column that is not one base, e.g. all zero for N, makes
the k-mers covering it [UNK], as seq_to_ids does), so such tools can drive our models.

tangermeme (1.6.0, MIT; checked, not a dependency): its `saturation_mutagenesis(model, X,
raw_outputs=True)` takes a one-hot batch of equal-length sequences, builds each sequence's edits
on the CPU as int8 one-hot copies, runs them through its `predict` (each batch copied to the device
and cast to the model's float dtype), fills the identity edits from the reference prediction, and
optionally centres the differences per position; its `fast=True` path (fastISM via torch.export)
recomputes only the receptive fields of convolutions and gains nothing for attention. It drives
`OneHotKmerModel` correctly: tests/test_explain.py checks that its result equals ours where
tangermeme is installed. What we took from it: the conventions (identity entries from the
reference prediction, so exactly 0; per-position mean-centring as the "hypothetical" attribution;
one-hot rows A C G T). What we wrote: the loop itself, because our model reads tokens, not one-hot:
here the edits are int codes built on the device and batched across records of different lengths,
where tangermeme would build them on the CPU one record (one length) at a time and round-trip each
batch through float one-hot. Depending on it would pin tangermeme and figwig (its bigWig reader) in
pyproject.toml and envs/genemask.yaml for about 40 lines of batching, and add about 1 s of imports.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import torch

from .defaults import defaults as config_defaults
from .kmers import BASE_CODE, CLS, N_SPECIAL, PAD, SEP, UNK
from .modelfolder import check_vocab_size, choose_device, thread_scope
from .precision import autocast, float32_head, parse_setting, use_bf16
from .util import GeneMaskError, Progress, atomic_output

ALPHABET = "ACGT"  # row order of one-hot inputs and of the ism/centred arrays
KMER_DIGIT = np.array([BASE_CODE[ord(c)] for c in ALPHABET], dtype=np.int64)  # row -> kmers digit (A0 T1 C2 G3)
ROW_OF = np.full(256, 255, dtype=np.uint8)  # byte -> row 0..3 (A C G T, either case), 255 otherwise
for _i, _c in enumerate(ALPHABET):
    ROW_OF[ord(_c)] = ROW_OF[ord(_c.lower())] = _i
DEFAULTS = config_defaults("predict")  # batch_size, device, bf16: as predict
QUANTITY = "log-odds"


# ---------------------------------------------------------------------------------------------
# bases -> token ids on the device
# ---------------------------------------------------------------------------------------------
def codes_to_ids(rows, k: int):
    """Token ids [..., L-k+1] of base rows [..., L] (int tensor, A C G T = 0..3): for each window of k
    bases N_SPECIAL + sum_j digit_j * 4^(k-1-j) with kmers.py's digits (A0 T1 C2 G3), the id
    `kmers.seq_to_ids` gives. One unfold and one weighted sum on the tensor's device."""
    digit = torch.as_tensor(KMER_DIGIT, device=rows.device)[rows.long()]
    weight = 4 ** torch.arange(k - 1, -1, -1, device=rows.device, dtype=torch.int64)
    return (digit.unfold(-1, k, 1) * weight).sum(-1) + N_SPECIAL


def onehot_to_ids(x, k: int):
    """Token ids [B, L-k+1] of one-hot sequences [B, 4, L] (rows A C G T, any dtype); a k-mer covering
    a column that is not exactly one base (all zero for N, soft or several bases) is [UNK]."""
    ids = codes_to_ids(x.argmax(dim=1), k)
    bad = ((x != 0).sum(dim=1) != 1) | ((x == 1).sum(dim=1) != 1)
    return torch.where(bad.unfold(-1, k, 1).any(-1), torch.full_like(ids, UNK), ids)


class OneHotKmerModel(torch.nn.Module):
    """A k-mer sequence classifier as a model of one-hot input: forward(x [B, 4, L], rows A C G T)
    -> the classifier's logits [B, num_labels] of `[CLS] k-mers [SEP]` (all rows of a batch have L
    bases, so no padding). For one-hot attribution tools (tangermeme, captum)."""

    def __init__(self, classifier, k: int):
        super().__init__()
        self.classifier, self.k = classifier, int(k)

    def forward(self, x):
        ids = onehot_to_ids(x, self.k)
        b = ids.shape[0]
        cls = torch.full((b, 1), CLS, dtype=ids.dtype, device=ids.device)
        sep = torch.full((b, 1), SEP, dtype=ids.dtype, device=ids.device)
        return self.classifier(input_ids=torch.cat([cls, ids, sep], dim=1)).logits


def one_hot(seq: str | bytes):
    """float32 one-hot [4, L] (rows A C G T) of a sequence; any other letter is an all-zero column."""
    raw = np.frombuffer(seq.encode("ascii", "replace") if isinstance(seq, str) else bytes(seq), np.uint8)
    rows = ROW_OF[raw]
    out = torch.zeros(4, len(raw))
    ok = np.flatnonzero(rows < 4)
    out[torch.as_tensor(rows[ok], dtype=torch.long), torch.as_tensor(ok)] = 1
    return out


def log_odds(logits, target: int):
    """The target class's log-odds z_t - logsumexp(z_j, j != t) of logits [B, C], in float64."""
    z = logits.double()
    others = z.clone()
    others[:, target] = -torch.inf
    return z[:, target] - torch.logsumexp(others, dim=1)


# ---------------------------------------------------------------------------------------------
# ISM
# ---------------------------------------------------------------------------------------------
def check_sequences(ids: list[str], seqs: list[bytes], k: int, window: int, source: str) -> list[np.ndarray]:
    """Base rows (uint8, A C G T = 0..3) of each record; one-line GeneMaskError for a non-ACGT base,
    a record shorter than k or longer than one window of `window` tokens."""
    rows = []
    for rid, s in zip(ids, seqs):
        r = ROW_OF[np.frombuffer(s, np.uint8)]
        bad = np.flatnonzero(r > 3)
        if bad.size:
            c = s[bad[0]]
            ch = chr(c) if 32 < c < 127 else f"byte 0x{c:02x}"
            raise GeneMaskError(f"{source}: record {rid!r} has {ch!r} at base {bad[0] + 1} ({bad.size:,} non-ACGT "
                                f"bases): explain substitutes A/C/G/T only; cut the record around them")
        if not k <= len(r) <= window + k - 1:
            raise GeneMaskError(f"{source}: record {rid!r} has {len(r):,} bp; explain scores records of {k} to "
                                f"{window + k - 1} bp (one model window of {window} {k}-mer tokens): cut it into pieces")
        rows.append(r)
    return rows


class Mutants:
    """The rows to score, formed on the device a batch at a time: per record its reference (pos -1)
    then its 3L substitutions (position-major; at each position the 3 other bases, cyclically after
    the reference's in A C G T order); records longest first so that a batch pads little. Only
    per-record tensors are held, so memory does not grow with the number of rows."""

    def __init__(self, rows: list[np.ndarray], k: int, device):
        self.k, self.device = k, device
        self.length = torch.as_tensor([len(r) for r in rows], dtype=torch.int64, device=device)
        self.offset = torch.cumsum(self.length, 0) - self.length
        self.bases = torch.as_tensor(np.concatenate(rows), dtype=torch.int64, device=device)
        self.order = torch.as_tensor(np.argsort([-len(r) for r in rows], kind="stable"), device=device)
        self.end = torch.cumsum(3 * self.length[self.order] + 1, 0)  # row after each record's block
        self.n = int(self.end[-1])

    def batch(self, lo: int, hi: int):
        """(input_ids, attention_mask, record, pos, alt) of rows lo..hi-1: `[CLS] ids [SEP] [PAD]...`
        and which substitution each row is (pos -1: the reference)."""
        row = torch.arange(lo, hi, device=self.device)
        i = torch.searchsorted(self.end, row, right=True)
        s = self.order[i]
        j = row - (self.end[i] - 3 * self.length[s] - 1)  # row within the record's block
        pos = torch.where(j > 0, torch.div(j - 1, 3, rounding_mode="floor"), -1)
        start = self.offset[s]
        alt = (self.bases[start + pos.clamp(min=0)] + (j - 1) % 3 + 1) % 4  # unused where pos is -1
        length = self.length[s]
        col = torch.arange(int(length.max()), device=self.device)
        bases = self.bases[(start[:, None] + col).clamp(max=len(self.bases) - 1)]  # past the end: masked below
        r = torch.nonzero(pos >= 0).squeeze(1)
        bases[r, pos[r]] = alt[r]
        n_tok = length - self.k + 1
        ids = codes_to_ids(bases, self.k)
        ids = torch.where(col[: ids.shape[1]] < n_tok[:, None], ids, PAD)
        x = torch.full((len(row), ids.shape[1] + 2), PAD, dtype=torch.int64, device=self.device)
        x[:, 0] = CLS
        x[:, 1:-1] = ids
        x[torch.arange(len(row), device=self.device), n_tok + 1] = SEP
        return x, (x != PAD).long(), s, pos, alt


def padded_bases(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(bases int64 [n, Lmax], 0 past each end; past: bool [n, Lmax], True past each end)."""
    lengths = np.asarray([len(r) for r in rows], dtype=np.int64)
    past = np.arange(lengths.max())[None, :] >= lengths[:, None]
    base = np.zeros(past.shape, dtype=np.int64)
    base[~past] = np.concatenate(rows)
    return base, past


def saturation_mutagenesis(model, rows: list[np.ndarray], k: int, target: int, batch_size: int, device,
                           label: str = "explain", bf16: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(ism float64 [n, 4, Lmax], 0 at each reference base and past each record's end; reference
    log-odds [n]) of base rows (A C G T = 0..3) with a k-mer classifier (module docstring); batches
    of `batch_size` rows under inference_mode (and bf16 autocast with `bf16`; log-odds in float64)."""
    if batch_size < 1:
        raise GeneMaskError(f"--batch-size: must be >= 1, got {batch_size}")
    model.to(device)
    if bf16:
        float32_head(model)  # float32 logits: bf16 ones would zero the small effects
    mut = Mutants(rows, k, device)
    base, past = padded_bases(rows)
    f = torch.zeros((len(rows), 4, base.shape[1]), dtype=torch.float64, device=device)
    ref = torch.zeros(len(rows), dtype=torch.float64, device=device)
    prog = Progress(label, mut.n, "mutants")
    with torch.inference_mode(), autocast(device, bf16):
        for lo in range(0, mut.n, batch_size):
            hi = min(lo + batch_size, mut.n)
            x, mask, s, pos, alt = mut.batch(lo, hi)
            y = log_odds(model(input_ids=x, attention_mask=mask).logits, target)
            sub = pos >= 0
            ref[s[~sub]] = y[~sub]
            f[s[sub], alt[sub], pos[sub]] = y[sub]
            prog.update(hi - lo)
    prog.close(f"{len(rows)} sequences")
    ref = ref.cpu().numpy()
    ism = f.cpu().numpy() - ref[:, None, None]
    np.put_along_axis(ism, base[:, None, :], 0.0, axis=1)  # the reference base: exactly 0
    ism[np.broadcast_to(past[:, None, :], ism.shape)] = 0.0
    return ism, ref


def explain(folder, seqs: list[bytes | str], ids: list[str] | None = None, target_class: int = 1,
            batch_size: int = DEFAULTS["batch_size"], device: str = DEFAULTS["device"],
            source: str = "input", bf16=False) -> dict[str, np.ndarray]:
    """The arrays of the output .npz (module docstring) for raw-bp sequences with a fine-tuned
    classifier folder; ids name the records (default "1".."n"), source names the input in errors;
    bf16: auto, True or False (`precision.use_bf16`)."""
    from .inference import load_for_predict

    seqs = [s.encode("ascii", "replace") if isinstance(s, str) else bytes(s) for s in seqs]
    ids = list(ids) if ids is not None else [str(i + 1) for i in range(len(seqs))]
    if not seqs:
        raise GeneMaskError(f"{source}: no sequences to explain")
    dev = choose_device(device)
    on = use_bf16(parse_setting(bf16, "--bf16"), dev)
    model, k, labels = load_for_predict(folder)
    if len(labels) < 2 or not 0 <= target_class < len(labels):
        raise GeneMaskError(f"--target-class: {folder} has classes 0..{len(labels) - 1} ({', '.join(labels)}), "
                            f"got {target_class}")
    check_vocab_size(model.config.vocab_size, k, folder)
    rows = check_sequences(ids, seqs, k, int(model.config.max_position_embeddings) - 2, source)
    ism, ref = saturation_mutagenesis(model, rows, k, target_class, batch_size, dev, bf16=on)
    return pack(ids, rows, ism, ref, k=k, target_class=target_class, target_label=labels[target_class],
                model=str(folder), **provenance(folder))


PROVENANCE = {"task": "", "scheme": "", "shot": -1, "seed": -1, "pretrain_seed": -1, "pretrain_step": -1}


def provenance(folder) -> dict:
    """The classifier's run (its genemask.json: task, scheme, shot, seed, pretrain_seed, pretrain_step),
    stored in the .npz so attributions can be grouped and paired; "" / -1 where not recorded."""
    from .modelfolder import read_meta

    meta = read_meta(folder)
    return {key: default if meta.get(key) is None else type(default)(meta[key]) for key, default in PROVENANCE.items()}


def pack(ids: list[str], rows: list[np.ndarray], ism: np.ndarray, ref: np.ndarray, **scalars) -> dict[str, np.ndarray]:
    """The output arrays (module docstring) from `saturation_mutagenesis`'s: centred and score computed,
    NaN past each record's end; `scalars` added as 0-d arrays."""
    lengths = np.asarray([len(r) for r in rows], dtype=np.int64)
    base, past = padded_bases(rows)
    centred = ism - ism.mean(axis=1, keepdims=True)
    score = np.take_along_axis(centred, base[:, None, :], axis=1)[:, 0]
    ism, centred = ism.astype(np.float32), centred.astype(np.float32)
    for a in (ism, centred):
        a[np.broadcast_to(past[:, None, :], a.shape)] = np.nan
    score = np.where(past, np.nan, score).astype(np.float32)
    letters = np.frombuffer(ALPHABET.encode(), np.uint8)
    out = {"ids": np.asarray(ids, dtype=str), "sequence": np.asarray([letters[r].tobytes().decode() for r in rows]),
           "lengths": lengths, "ism": ism, "centred": centred, "score": score,
           "reference_logit": np.asarray(ref, dtype=np.float64), "alphabet": np.asarray(ALPHABET),
           "quantity": np.asarray(QUANTITY)}
    out.update({key: np.asarray(v) for key, v in scalars.items()})
    return out


# ---------------------------------------------------------------------------------------------
# outputs and command line
# ---------------------------------------------------------------------------------------------
def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """arrays as a compressed .npz (np.load reads it, no pickles), atomically; byte-identical for equal
    arrays (fixed member dates, unlike np.savez's)."""
    with atomic_output(path) as tmp:
        save_npz(tmp, arrays)
    return Path(path)


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """write_npz's file, written in place (the caller makes it atomic)."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, a in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.asanyarray(a), allow_pickle=False)


def bedgraph_regions(ids: list[str], lengths, source: str) -> list[tuple[str, int]]:
    """(chrom, 0-based start) of each record from its id `chrom:start-end` (1-based inclusive,
    genome.parse_region); one-line GeneMaskError for an id without coordinates, a region whose
    length is not the record's, or two overlapping regions."""
    from .genome import parse_region

    out = []
    for rid, n in zip(ids, lengths):
        chrom, start, end = parse_region(rid)
        if start is None:
            raise GeneMaskError(f"--bedgraph: record {rid!r} of {source} has no coordinates: a bedGraph needs ids "
                                f"chrom:start-end (1-based inclusive, as samtools faidx names regions)")
        if end - start != n:
            raise GeneMaskError(f"--bedgraph: record {rid!r} of {source} names {end - start:,} bp but has {n:,}")
        out.append((chrom, start))
    order = sorted(range(len(out)), key=lambda i: out[i])
    for a, b in zip(order, order[1:]):
        if out[a][0] == out[b][0] and out[b][1] < out[a][1] + lengths[a]:
            raise GeneMaskError(f"--bedgraph: records {ids[a]!r} and {ids[b]!r} of {source} overlap; a bedGraph "
                                f"holds one score per base: explain them into separate files")
    return out


def write_bedgraph(path: str | os.PathLike, regions: list[tuple[str, int]], score: np.ndarray, lengths) -> Path:
    """The per-base score as bedGraph lines `chrom start end score` (0-based half-open, one per base),
    sorted by chrom (byte order, as `sort -k1,1 -k2,2n`) then start; atomically."""
    with atomic_output(path) as tmp:
        save_bedgraph(tmp, regions, score, lengths)
    return Path(path)


def save_bedgraph(path: str | os.PathLike, regions: list[tuple[str, int]], score: np.ndarray, lengths) -> None:
    """write_bedgraph's file, written in place (the caller makes it atomic)."""
    import pandas as pd

    order = sorted(range(len(regions)), key=lambda i: regions[i])
    n = np.asarray(lengths, dtype=np.int64)[order]
    start = np.concatenate([regions[i][1] + np.arange(m) for i, m in zip(order, n)])
    df = pd.DataFrame({"chrom": np.repeat(np.asarray([regions[i][0] for i in order], dtype=object), n),
                       "start": start, "end": start + 1,
                       "score": np.concatenate([score[i, :m] for i, m in zip(order, n)]).astype(np.float64)})
    df.to_csv(path, sep="\t", header=False, index=False, float_format="%.6g")


def explain_cli(model: str, input: str, output: str, bedgraph: str | None = None, target_class: int = 1,
                max_seqs: int | None = None, batch_size: int = DEFAULTS["batch_size"],
                device: str = DEFAULTS["device"], label: int | None = None, bf16: str = "false") -> None:
    """`genemask explain`: the .npz of the module docstring, and the bedGraph of the per-base score.
    `label`: the input is a task file (sequence, label: tasks.read_task_file) and only its rows of
    that label are explained, ids = their 1-based file lines."""
    from .inference import read_input

    if not str(output).lower().endswith(".npz"):
        raise GeneMaskError(f"{output}: attributions are written as .npz; use a .npz name")
    if max_seqs is not None and max_seqs < 1:
        raise GeneMaskError(f"--max-seqs: must be >= 1, got {max_seqs}")
    if label is None:
        ids, seqs = read_input(input)
    else:
        from .tasks import read_task_file

        task = read_task_file(input)
        rows = [i for i, y in enumerate(task.labels) if y == label]
        if not rows:
            raise GeneMaskError(f"{input}: no row has label {label} (--label)")
        ids = [f"line{task.lines[i]}" for i in rows]
        seqs = [task.sequences[i].encode() for i in rows]
    if max_seqs is not None and len(seqs) > max_seqs:
        print(f"[explain] {input}: explaining the first {max_seqs} of {len(seqs)} sequences (--max-seqs)",
              file=sys.stderr, flush=True)
        ids, seqs = ids[:max_seqs], seqs[:max_seqs]
    print(f"[explain] {input}: {len(seqs)} sequences, {sum(map(len, seqs)):,} bp, {3 * sum(map(len, seqs)):,} "
          f"substitutions", file=sys.stderr, flush=True)
    regions = bedgraph_regions(ids, [len(s) for s in seqs], str(input)) if bedgraph else None
    with thread_scope():
        arrays = explain(model, seqs, ids, target_class=target_class, batch_size=batch_size, device=device,
                         source=str(input), bf16=bf16)
    with atomic_output(output) as tmp, contextlib.ExitStack() as stack:  # both outputs or neither
        save_npz(tmp, arrays)
        if bedgraph:
            save_bedgraph(stack.enter_context(atomic_output(bedgraph)), regions, arrays["score"], arrays["lengths"])
