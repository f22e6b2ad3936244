"""Few-shot task files (spec section 7): read, validate, clean, de-leak and subsample.

Input formats accepted by `read_task_file`:
- TSV or CSV (chosen by the extension `.tsv`/`.csv`, otherwise sniffed from the header line);
- a header of exactly two columns, `sequence` (or `seq`) and `label`, in either order;
- fields may be wrapped in double quotes (the GeneMask few-shot training files quote every field);
- the sequence is either space-separated overlapping k-mers (GeneMask's 6-mer format; converted back
  to raw bp) or raw bp (GUE proxy / recovered Cohn-enh CSVs); it is upper-cased; letters other than
  ACGT are kept (the tokeniser maps their k-mers to [UNK]);
- labels are integers in [0, num_labels).
Any fault raises `GeneMaskError` with one line `FILE:LINE: fault`. Blank lines are ignored.

`prepare_task_data` writes the cleaned train/test TSVs (`sequence<TAB>label`, raw upper-case bp)
and a stats JSON. Order of operations:
1. the test set minus every row whose sequence occurs in one of the `exclude` files
   (Prom-300: the GUE proxy test minus rows that are in the Prom-300 training files);
2. the training rows whose sequence occurs in that test set (leakage) are dropped and counted;
3. the test set is subsampled, stratified by label with the given seed, to `max_test` rows
   (0 = keep all); the selected rows keep their original order.
Leakage is checked against the whole (post-exclusion) test set, not the subsample, so the training
set of a shot does not depend on `max_test`.
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from .kmers import kmers_to_seq
from .util import GeneMaskError, atomic_output

SEQ_NAMES = ("sequence", "seq")
LABEL_NAMES = ("label",)
_INT = re.compile(r"[+-]?\d+")
_BP = re.compile(r"[A-Za-z]+")


class TaskData:
    """Parsed task file: parallel lists of raw upper-case sequences and integer labels."""

    def __init__(self, path: Path, sequences: list[str], labels: list[int], kmer_format: bool):
        self.path = path
        self.sequences = sequences
        self.labels = labels
        self.kmer_format = kmer_format

    def __len__(self) -> int:
        return len(self.sequences)

    def label_counts(self) -> dict[str, int]:
        return {str(k): v for k, v in sorted(Counter(self.labels).items())}


def _short(s: str, n: int = 40) -> str:
    s = s.replace("\n", " ").replace("\r", " ")
    return repr(s if len(s) <= n else s[:n] + "...")


def _unquote(field: str) -> str:
    f = field.strip()
    if len(f) >= 2 and f[0] == '"' and f[-1] == '"':
        f = f[1:-1].replace('""', '"').strip()
    return f


def _delimiter(path: Path, header: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return "\t"
    if suffix == ".csv":
        return ","
    if "\t" in header:
        return "\t"
    if "," in header:
        return ","
    raise GeneMaskError(f"{path}:1: cannot tell TSV from CSV: the header {_short(header)} has neither a tab "
                        f"nor a comma (expected two columns: sequence, label)")


def read_task_file(path: str | Path, num_labels: int | None = None) -> TaskData:
    """Read one task file (see module docstring); every fault -> GeneMaskError `FILE:LINE: fault`."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise GeneMaskError(f"{path}: cannot read task file ({e.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise GeneMaskError(f"{path}:{line}: not UTF-8/ASCII text") from None
    lines = text.splitlines()
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        raise GeneMaskError(f"{path}:1: empty file (expected a header 'sequence<TAB>label' and data rows)")
    header = lines[first]
    delim = _delimiter(path, header)
    names = [_unquote(f).lower() for f in header.split(delim)]
    hline = first + 1
    if len(names) != 2:
        raise GeneMaskError(f"{path}:{hline}: header has {len(names)} column(s) {names}; expected exactly two: "
                            f"sequence (or seq) and label")
    if names[0] in SEQ_NAMES and names[1] in LABEL_NAMES:
        si, li = 0, 1
    elif names[1] in SEQ_NAMES and names[0] in LABEL_NAMES:
        si, li = 1, 0
    else:
        raise GeneMaskError(f"{path}:{hline}: header columns {names}; expected sequence (or seq) and label")

    seqs: list[str] = []
    labels: list[int] = []
    kmer_rows = 0
    k_seen: int | None = None
    for i in range(first + 1, len(lines)):
        ln = lines[i]
        if not ln.strip():
            continue
        lineno = i + 1
        fields = ln.split(delim)
        if len(fields) != 2:
            what = "missing column" if len(fields) < 2 else "extra column"
            raise GeneMaskError(f"{path}:{lineno}: {what}: {len(fields)} field(s), expected 2 (sequence, label)")
        seq, lab = _unquote(fields[si]), _unquote(fields[li])
        if not _INT.fullmatch(lab):
            raise GeneMaskError(f"{path}:{lineno}: label {_short(lab)} is not an integer")
        label = int(lab)
        if num_labels is not None and not 0 <= label < num_labels:
            raise GeneMaskError(f"{path}:{lineno}: label {label} out of range [0, {num_labels})")
        if not seq:
            raise GeneMaskError(f"{path}:{lineno}: empty sequence")
        if " " in seq:
            toks = seq.split()
            k = len(toks[0])
            if k_seen is None:
                k_seen = k
            elif k != k_seen:
                raise GeneMaskError(f"{path}:{lineno}: {k}-mers where earlier rows have {k_seen}-mers")
            if not all(_BP.fullmatch(t) for t in toks):
                bad = next(t for t in toks if not _BP.fullmatch(t))
                raise GeneMaskError(f"{path}:{lineno}: k-mer {_short(bad)} has a character that is not a base letter")
            try:
                seq = kmers_to_seq(toks)
            except ValueError as e:
                raise GeneMaskError(f"{path}:{lineno}: k-mers do not overlap: {e}") from None
            kmer_rows += 1
        elif not _BP.fullmatch(seq):
            bad = next(c for c in seq if not c.isalpha())
            raise GeneMaskError(f"{path}:{lineno}: sequence has a character {bad!r} that is not a base letter")
        seqs.append(seq.upper())
        labels.append(label)
    if not seqs:
        raise GeneMaskError(f"{path}:{hline}: empty file: a header but no data rows")
    return TaskData(path, seqs, labels, kmer_format=kmer_rows > 0)


def stratified_subsample(labels: list[int] | np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices (sorted) of `n` rows drawn without replacement, class shares kept (largest remainder)."""
    labels = np.asarray(labels)
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * n / len(labels)
    take = np.floor(exact).astype(int)
    rest = n - take.sum()
    if rest:
        # largest remainders first; ties broken by the seeded generator
        order = np.lexsort((rng.random(len(classes)), -(exact - take)))
        for j in order[:rest]:
            take[j] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), size=t, replace=False) for c, t in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def _write_tsv(path: Path, seqs: list[str], labels: list[int]) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write("sequence\tlabel\n")
            fh.writelines(f"{s}\t{lab}\n" for s, lab in zip(seqs, labels))


def prepare_task_data(task: str, train: str, test: str, exclude: list[str] | None, num_labels: int,
                      max_test: int, seed: int, out_train: str, out_test: str, out_stats: str) -> dict:
    """Clean one shot file and its test set (see module docstring); returns the stats dict."""
    if num_labels < 2:
        raise GeneMaskError(f"--num-labels: must be >= 2, got {num_labels}")
    if max_test < 0:
        raise GeneMaskError(f"--max-test: must be >= 0, got {max_test}")
    tr = read_task_file(train, num_labels)
    te = read_task_file(test, num_labels)
    excluded: set[str] = set()
    for ex in exclude or []:
        excluded.update(read_task_file(ex, num_labels).sequences)

    keep_test = [i for i, s in enumerate(te.sequences) if s not in excluded]
    test_seqs = [te.sequences[i] for i in keep_test]
    test_labels = [te.labels[i] for i in keep_test]
    test_set = set(test_seqs)
    if not test_seqs:
        raise GeneMaskError(f"{test}: no test rows left after removing the rows of {list(exclude or [])}")

    keep_train = [i for i, s in enumerate(tr.sequences) if s not in test_set]
    if not keep_train:
        raise GeneMaskError(f"{train}: every training row also occurs in the test set {test}")
    train_seqs = [tr.sequences[i] for i in keep_train]
    train_labels = [tr.labels[i] for i in keep_train]

    sel = stratified_subsample(test_labels, max_test, seed)
    test_seqs = [test_seqs[i] for i in sel]
    test_labels = [test_labels[i] for i in sel]

    stats = {
        "task": task,
        "train_file": str(train),
        "test_file": str(test),
        "exclude_files": [str(e) for e in exclude or []],
        "num_labels": num_labels,
        "train_rows_raw": len(tr),
        "train_dropped_leak": len(tr) - len(train_seqs),
        "train_rows": len(train_seqs),
        "train_label_counts": {str(k): v for k, v in sorted(Counter(train_labels).items())},
        "test_rows_raw": len(te),
        "test_excluded": len(te) - len(keep_test),
        "test_rows": len(test_seqs),
        "test_label_counts": {str(k): v for k, v in sorted(Counter(test_labels).items())},
        "max_test": max_test,
        "seed": seed,
        "train_bp": sorted({len(s) for s in train_seqs})[:5],
        "test_bp": sorted({len(s) for s in test_seqs})[:5],
    }
    with atomic_output(out_stats) as tmp_stats:
        tmp_stats.write_text(json.dumps(stats, indent=1) + "\n")
        _write_tsv(Path(out_train), train_seqs, train_labels)
        try:
            _write_tsv(Path(out_test), test_seqs, test_labels)
        except BaseException:
            Path(out_train).unlink(missing_ok=True)
            raise
    print(f"[task-data] {task}: train {stats['train_rows']} rows ({stats['train_dropped_leak']} dropped as "
          f"leakage), test {stats['test_rows']} of {stats['test_rows_raw']} rows "
          f"({stats['test_excluded']} excluded)", file=sys.stderr)
    return stats
