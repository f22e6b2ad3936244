"""Few-shot task files (spec section 7): read, validate, clean, de-leak and subsample.

Input formats accepted by `read_task_file`:
- TSV or CSV (chosen by the extension `.tsv`/`.csv`, a trailing `.gz` ignored, otherwise sniffed from
  the header line), plain or gzip, a regular file; read by `util.table_rows`, the one table reader;
- a header of exactly two columns, `sequence` (or `seq`) and `label`, in either order;
- fields may be quoted as in CSV, a quoted field may hold the delimiter (the GeneMask few-shot
  training files quote every field);
- the sequence is either space-separated overlapping k-mers (GeneMask's 6-mer format; converted back
  to raw bp) or raw bp (GUE proxy / recovered Cohn-enh CSVs); it is upper-cased; only A, C, G, T, N
  are accepted (N k-mers become [UNK]); with `k`, sequences shorter than k bp are refused;
- labels are integers in [0, num_labels) or, with `label_names=True` (local-file tasks), names on
  every row (sorted names -> 0..n-1, mapped by `prepare_task_data` from the training file).
Any fault raises `GeneMaskError` with one line `FILE:LINE: fault`. Blank lines are ignored.

`prepare_task_data` writes the cleaned train/test TSVs (`sequence<TAB>label`, raw upper-case bp)
and a stats JSON. Order of operations:
1. the test set minus every row whose sequence occurs in one of the `exclude` files
   (Prom-300: the GUE proxy test minus rows that are in the Prom-300 training files);
2. the training rows whose sequence occurs in that test set (leakage) are dropped and counted;
3. the test set is subsampled, stratified by label with the given seed, to `max_test` rows
   (0 = keep all), every class kept (a `max_test` below the number of classes is refused); the
   selected rows keep their original order.
Leakage is checked against the whole (post-exclusion) test set, not the subsample, so the training
set of a shot does not depend on `max_test`.

Degenerate data is refused, never scored: a one-class training or test file (also when only one
class is left after the steps above); a sequence with conflicting labels within the training file,
within the test set, or between the two (`on_conflict="drop"` removes such rows instead, counted).
Rows longer than the model window (`window_tokens` k-mers, i.e. window_tokens + k - 1 bp) are not an
error; their number is recorded (`train_truncated`, `test_truncated`). The sha256 of every input file
is recorded.

With `draw=K` (a local-file task) the training file is a labelled pool: after leakage removal and
dropping duplicate sequences (first kept) K rows per class are drawn (`draw_per_class`, seeded by
`draw_seed`; a class with fewer than K rows is an error naming the file, class and counts); the drawn
rows keep the pool's order and their 1-based pool lines are recorded in the stats (`draw.lines`).
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from .defaults import default as _schema_default
from .kmers import kmers_to_seq
from .util import GeneMaskError, atomic_output, read_json_object, shorten, table_rows

SEQ_NAMES = ("sequence", "seq")
LABEL_NAMES = ("label",)
_INT = re.compile(r"[+-]?\d+")
_BP = re.compile(r"[A-Za-z]+")
WINDOW_TOKENS = _schema_default("finetune.settings.max_length") - 2  # 510 k-mer tokens ([CLS] + [SEP]): 515 bp at k = 6
DEFAULT_K = _schema_default("corpus.k")  # 6
DNA_LETTERS = "ACGTN"  # accepted in sequences (upper-cased first); N k-mers become [UNK]
_DNA = re.compile(f"[{DNA_LETTERS}]+")


class TaskData:
    """Parsed task file: parallel lists of raw upper-case sequences, labels and 1-based file lines.

    `labels` are ints, or (`named`, only with `label_names=True`) the label strings as written."""

    def __init__(self, path: Path, sequences: list[str], labels: list, kmer_format: bool,
                 lines: list[int] | None = None, named: bool = False):
        self.path = path
        self.sequences = sequences
        self.labels = labels
        self.kmer_format = kmer_format
        self.lines = lines if lines is not None else list(range(2, len(sequences) + 2))
        self.named = named

    def __len__(self) -> int:
        return len(self.sequences)

    def label_counts(self) -> dict[str, int]:
        return {str(k): v for k, v in sorted(Counter(self.labels).items())}


def read_task_file(path: str | Path, num_labels: int | None = None, k: int | None = None,
                   label_names: bool = False) -> TaskData:
    """Read one task file (see module docstring); every fault -> GeneMaskError `FILE:LINE: fault`.

    `k`: refuse sequences shorter than k bp. `label_names`: accept label names (every label of the
    file a name; mapped to integers by `prepare_task_data`) besides integers."""
    path = Path(path)
    with table_rows(path, "task file", "a header 'sequence<TAB>label' and data rows") as rows:
        names, hline = rows.names, rows.header_line
        if len(names) != 2:
            raise GeneMaskError(f"{path}:{hline}: header has {len(names)} column(s) {names}; expected exactly two: "
                                f"sequence (or seq) and label")
        if names[0] in SEQ_NAMES and names[1] in LABEL_NAMES:
            si, li = 0, 1
        elif names[1] in SEQ_NAMES and names[0] in LABEL_NAMES:
            si, li = 1, 0
        else:
            raise GeneMaskError(f"{path}:{hline}: header columns {names}; expected sequence (or seq) and label")
        seqs, labels, linenos, int_line, name_line, kmer_rows = _task_rows(path, rows, si, li, num_labels, k,
                                                                            label_names)
    if not seqs:
        raise GeneMaskError(f"{path}:{hline}: empty file: a header but no data rows")
    if name_line and int_line:
        raise GeneMaskError(f"{path}:{max(name_line, int_line)}: labels mix integers (line {int_line}) and names "
                            f"(line {name_line}); use one or the other")
    return TaskData(path, seqs, labels, kmer_format=kmer_rows > 0, lines=linenos, named=name_line is not None)


def _task_rows(path, rows, si, li, num_labels, k, label_names):
    """The rows of a task file, checked one by one (see read_task_file)."""
    seqs: list[str] = []
    labels: list = []
    linenos: list[int] = []
    int_line = name_line = None  # first line with an integer label / a label name
    kmer_rows = 0
    k_seen: int | None = None
    for lineno, fields in rows:
        if len(fields) != 2:
            what = "missing column" if len(fields) < 2 else "extra column"
            raise GeneMaskError(f"{path}:{lineno}: {what}: {len(fields)} field(s), expected 2 (sequence, label)")
        seq, lab = fields[si], fields[li]
        if _INT.fullmatch(lab):
            label = int(lab)
            if num_labels is not None and not 0 <= label < num_labels:
                raise GeneMaskError(f"{path}:{lineno}: label {label} out of range [0, {num_labels})")
            int_line = int_line or lineno
        elif label_names and lab:
            label = lab
            name_line = name_line or lineno
        else:
            raise GeneMaskError(f"{path}:{lineno}: label {shorten(lab)} is not an integer")
        if not seq:
            raise GeneMaskError(f"{path}:{lineno}: empty sequence")
        if " " in seq:
            toks = seq.split()
            kk = len(toks[0])
            if k_seen is None:
                k_seen = kk
            elif kk != k_seen:
                raise GeneMaskError(f"{path}:{lineno}: {kk}-mers where earlier rows have {k_seen}-mers")
            if not all(_BP.fullmatch(t) for t in toks):
                bad = next(t for t in toks if not _BP.fullmatch(t))
                raise GeneMaskError(f"{path}:{lineno}: k-mer {shorten(bad)} has a character that is not a base letter")
            try:
                seq = kmers_to_seq(toks)
            except ValueError as e:
                raise GeneMaskError(f"{path}:{lineno}: k-mers do not overlap: {e}") from None
            kmer_rows += 1
        seq = seq.upper()
        if not _DNA.fullmatch(seq):
            bad = sorted(set(seq) - set(DNA_LETTERS))
            raise GeneMaskError(f"{path}:{lineno}: sequence has character(s) {', '.join(map(repr, bad))}: not a base "
                                f"letter of DNA ({', '.join(DNA_LETTERS)})")
        if k is not None and len(seq) < k:
            raise GeneMaskError(f"{path}:{lineno}: sequence of {len(seq)} bp is shorter than k = {k}")
        seqs.append(seq)
        labels.append(label)
        linenos.append(lineno)
    return seqs, labels, linenos, int_line, name_line, kmer_rows


def stratified_subsample(labels: list[int] | np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices (sorted) of `n` rows drawn without replacement, class shares kept (largest remainder)
    and every class kept: a class whose share rounds to 0 rows gets 1, taken from the largest
    classes. n smaller than the number of classes -> GeneMaskError (one class would go unscored)."""
    labels = np.asarray(labels)
    if n <= 0 or n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    if n < len(classes):
        raise GeneMaskError(f"--max-test: {n} test rows cannot keep each of the {len(classes)} classes "
                            f"{', '.join(map(str, classes))}; use at least {len(classes)} (or 0 = all)")
    exact = counts * n / len(labels)
    take = np.floor(exact).astype(int)
    rest = n - take.sum()
    if rest:
        # largest remainders first; ties broken by the seeded generator
        order = np.lexsort((rng.random(len(classes)), -(exact - take)))
        for j in order[:rest]:
            take[j] += 1
    for j in np.flatnonzero(take == 0):  # every class keeps a row, paid by the largest class
        take[j] = 1
        take[np.argmax(take)] -= 1
    picked = [rng.choice(np.flatnonzero(labels == c), size=t, replace=False) for c, t in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def draw_per_class(labels: list[int] | np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices (sorted) of `k` rows of every class: each row gets a seeded uniform key, the `k` smallest
    keys of each class are taken, so for one pool and seed a smaller K's draw is part of a larger K's."""
    labels = np.asarray(labels)
    key = np.random.default_rng(seed).random(len(labels))
    order = np.lexsort((key, labels))
    ranked = labels[order]
    rank = np.arange(len(ranked)) - np.searchsorted(ranked, ranked, side="left")
    return np.sort(order[rank < k])


def _write_tsv(path: Path, seqs: list[str], labels: list[int]) -> None:
    with atomic_output(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write("sequence\tlabel\n")
            fh.writelines(f"{s}\t{lab}\n" for s, lab in zip(seqs, labels))


def _frame(d: TaskData):
    import pandas as pd

    return pd.DataFrame({"seq": d.sequences, "label": d.labels, "line": d.lines})


def _one_class(labels, path, what: str = "every row has") -> None:
    classes = Counter(labels)
    if len(classes) < 2:
        (lab, n), = classes.items()
        raise GeneMaskError(f"{path}: one class only: {what} label {lab!r} ({n} rows); a classification task needs "
                            f"at least 2 classes")


def _conflicts(df, path, on_conflict: str):
    """Rows of `df` whose sequence has more than one label in it: error naming the first, or dropped."""
    bad = df.groupby("seq", sort=False)["label"].transform("nunique").to_numpy() > 1
    if bad.any() and on_conflict == "error":
        seq = df["seq"].to_numpy()[bad.argmax()]
        rows = df[df["seq"] == seq]
        raise GeneMaskError(f"{path}: conflicting labels for one sequence: lines {', '.join(map(str, rows['line']))} "
                            f"have labels {', '.join(map(str, rows['label']))} (sequence {shorten(seq)}); "
                            f"tasks.<name>.on_conflict: drop removes such rows")
    return df[~bad], int(bad.sum())


def _label_map(tr: TaskData, te: TaskData, num_labels: int) -> dict[str, int] | None:
    """Label names -> 0..n-1 in sorted order (from the training file); None for integer labels."""
    if not (tr.named or te.named):
        return None
    for d, other in ((tr, te), (te, tr)):
        if not d.named:
            raise GeneMaskError(f"{d.path}: integer labels, but {other.path} uses label names; use one or the other")
    mapping = {n: i for i, n in enumerate(sorted(set(tr.labels)))}
    if len(mapping) != num_labels:
        raise GeneMaskError(f"{tr.path}: {len(mapping)} label names {sorted(mapping)} but num_labels is {num_labels}")
    unknown = next((i for i, lab in enumerate(te.labels) if lab not in mapping), None)
    if unknown is not None:
        raise GeneMaskError(f"{te.path}:{te.lines[unknown]}: label {shorten(te.labels[unknown])} does not occur in "
                            f"{tr.path} (its labels: {sorted(mapping)})")
    return mapping


def prepare_task_data(task: str, train: str, test: str, exclude: list[str] | None, num_labels: int,
                      max_test: int, seed: int, out_train: str, out_test: str, out_stats: str, *,
                      k: int = DEFAULT_K, window_tokens: int = WINDOW_TOKENS, draw: int | None = None,
                      draw_seed: int = _schema_default("definitions.local_task.draw_seed"), label_names: bool = False,
                      on_conflict: str = _schema_default("definitions.catalogued_task.on_conflict")) -> dict:
    """Clean one shot file (or, with `draw`, draw K per class from a labelled pool) and its test set
    (see module docstring); returns the stats dict. The steps, in order: read the files (one-class
    files refused, label names mapped); 1. exclude from the test set; refuse or drop conflicting
    labels; 2. drop the training rows leaked into the test set; draw K per class (with `draw`);
    3. subsample the test set; record the stats; write the files."""
    _check_options(num_labels, max_test, draw, on_conflict)
    trf, tef, excluded, mapping = _read_inputs(train, test, exclude, num_labels, k, label_names)
    train_raw, test_raw = len(trf), len(tef)
    tef = _exclude(tef, excluded, test, exclude)
    test_set = tef["seq"]  # leakage is checked against every test row, conflicting ones included
    trf, tef, conflicts = _drop_conflicts(trf, tef, train, test, on_conflict)
    trf, leaked = _drop_leakage(trf, test_set, train, test)
    draw_stats = None
    if draw is not None:
        trf, draw_stats = _draw(trf, draw, draw_seed, num_labels, mapping, train, leaked)
    _one_class(tef["label"], test, "every test row left has")
    train_seqs, train_labels = _columns(trf)
    test_seqs, test_labels = _subsample_test(*_columns(tef), max_test, seed)
    stats = _stats(task, train, test, exclude, num_labels, max_test, seed, mapping, on_conflict, k, window_tokens,
                   train_raw=train_raw, test_raw=test_raw, test_excluded=test_raw - len(test_set), leaked=leaked,
                   conflicts=conflicts, train_rows=(train_seqs, train_labels), test_rows=(test_seqs, test_labels),
                   draw_stats=draw_stats)
    _write_outputs(stats, out_stats, out_train, out_test, (train_seqs, train_labels), (test_seqs, test_labels))
    _say_done(stats)
    return stats


def _check_options(num_labels: int, max_test: int, draw: int | None, on_conflict: str) -> None:
    if num_labels < 2:
        raise GeneMaskError(f"--num-labels: must be >= 2, got {num_labels}")
    if max_test < 0:
        raise GeneMaskError(f"--max-test: must be >= 0, got {max_test}")
    if draw is not None and draw < 1:
        raise GeneMaskError(f"--draw: K must be >= 1, got {draw}")
    if on_conflict not in ("error", "drop"):
        raise GeneMaskError(f"--on-conflict: must be error or drop, got {on_conflict!r}")


def _read_inputs(train: str, test: str, exclude: list[str] | None, num_labels: int, k: int, label_names: bool):
    """Read: the training and test files as frames (seq, label, line), one-class files refused, label
    names mapped to 0..n-1 (`_label_map`); and the set of sequences of the `exclude` files."""
    tr = read_task_file(train, num_labels, k, label_names)
    te = read_task_file(test, num_labels, k, label_names)
    excluded: set[str] = set()
    for ex in exclude or []:
        excluded.update(read_task_file(ex, num_labels, k, label_names).sequences)
    _one_class(tr.labels, train)
    _one_class(te.labels, test)
    mapping = _label_map(tr, te, num_labels)
    trf, tef = _frame(tr), _frame(te)
    if mapping is not None:
        trf["label"] = trf["label"].map(mapping)
        tef["label"] = tef["label"].map(mapping)
    return trf, tef, excluded, mapping


def _exclude(tef, excluded: set[str], test: str, exclude: list[str] | None):
    """Step 1: the test rows whose sequence is in none of the `exclude` files; none left is refused."""
    tef = tef[~tef["seq"].isin(excluded)]
    if tef.empty:
        raise GeneMaskError(f"{test}: no test rows left after removing the rows of {list(exclude or [])}")
    return tef


def _drop_conflicts(trf, tef, train: str, test: str, on_conflict: str):
    """A sequence with conflicting labels within the test set, within the training file, or between
    the two: refused (on_conflict error), or dropped (drop; a cross one leaves with the leakage).
    Returns (train, test, {"train": dropped, "test": dropped, "cross": training rows in conflict})."""
    tef, test_conflict = _conflicts(tef, test, on_conflict)
    trf, train_conflict = _conflicts(trf, train, on_conflict)
    cross = trf.merge(tef, on="seq", suffixes=("", "_test"))
    cross = cross[cross["label"] != cross["label_test"]]
    if len(cross) and on_conflict == "error":
        r = cross.iloc[0]
        raise GeneMaskError(f"{train}:{r['line']}: sequence {shorten(r['seq'])} has label {r['label']} here but label "
                            f"{r['label_test']} in {test}:{r['line_test']}; tasks.<name>.on_conflict: drop removes it")
    return trf, tef, {"train": train_conflict, "test": test_conflict, "cross": len(cross)}


def _drop_leakage(trf, test_set, train: str, test: str):
    """Step 2: the training rows whose sequence occurs in the test set dropped; (rows left, dropped).
    Refuses a training set left empty or with one class."""
    leak = trf["seq"].isin(test_set).to_numpy()
    trf = trf[~leak]
    if trf.empty:
        raise GeneMaskError(f"{train}: every training row also occurs in the test set {test}")
    _one_class(trf["label"], train, "every training row left has")
    return trf, int(leak.sum())


def _draw(trf, draw: int, draw_seed: int, num_labels: int, mapping: dict | None, train: str, leaked: int):
    """Draw (a local-file task): duplicate sequences dropped (first kept), then `draw` rows per class
    (`draw_per_class`); a class with fewer rows is refused. Returns (drawn rows, stats["draw"])."""
    dup = trf["seq"].duplicated().to_numpy()
    pool = trf[~dup]
    counts = pool["label"].value_counts().reindex(range(num_labels), fill_value=0)
    short = counts[counts < draw]
    if len(short):
        c = int(short.index[0])
        name = f"{c} ({next(n for n, i in mapping.items() if i == c)!r})" if mapping else str(c)
        raise GeneMaskError(f"{train}: cannot draw K = {draw} per class: class {name} has {int(short.iloc[0])} "
                            f"rows (after removing {leaked} rows in the test set and {int(dup.sum())} "
                            f"duplicates); class counts {dict(zip(map(int, counts.index), map(int, counts)))}")
    picked = draw_per_class(pool["label"].to_numpy(), draw, draw_seed)
    trf = pool.iloc[picked]
    return trf, {"per_class": draw, "seed": draw_seed, "pool_rows": len(pool), "pool_dropped_duplicate": int(dup.sum()),
                 "pool_label_counts": {str(c): int(n) for c, n in counts.items()},
                 "lines": [int(x) for x in trf["line"]]}


def _columns(df) -> tuple[list[str], list[int]]:
    return df["seq"].tolist(), [int(x) for x in df["label"]]


def _subsample_test(seqs: list[str], labels: list[int], max_test: int, seed: int) -> tuple[list[str], list[int]]:
    """Step 3: `max_test` test rows (0 = all), stratified by label (`stratified_subsample`), in order."""
    sel = stratified_subsample(labels, max_test, seed)
    return [seqs[i] for i in sel], [labels[i] for i in sel]


def _stats(task, train, test, exclude, num_labels, max_test, seed, mapping, on_conflict, k, window_tokens, *,
           train_raw, test_raw, test_excluded, leaked, conflicts, train_rows, test_rows, draw_stats) -> dict:
    """Record: the stats JSON (counts at each step, the window's truncated rows, the inputs' sha256)."""
    from .sources import sha256_of

    (train_seqs, train_labels), (test_seqs, test_labels) = train_rows, test_rows
    window_bp = window_tokens + k - 1
    return {
        "task": task,
        "train_file": str(train),
        "test_file": str(test),
        "exclude_files": [str(e) for e in exclude or []],
        "num_labels": num_labels,
        "train_rows_raw": train_raw,
        "train_dropped_leak": leaked,
        "train_rows": len(train_seqs),
        "train_label_counts": {str(c): n for c, n in sorted(Counter(train_labels).items())},
        "test_rows_raw": test_raw,
        "test_excluded": test_excluded,
        "test_rows": len(test_seqs),
        "test_label_counts": {str(c): n for c, n in sorted(Counter(test_labels).items())},
        "max_test": max_test,
        "seed": seed,
        "train_bp": sorted({len(s) for s in train_seqs})[:5],
        "test_bp": sorted({len(s) for s in test_seqs})[:5],
        "label_names": mapping,
        "on_conflict": on_conflict,
        "train_dropped_conflict": conflicts["train"],
        "test_dropped_conflict": conflicts["test"],
        "train_conflict_test": conflicts["cross"],
        "window": {"k": k, "tokens": window_tokens, "bp": window_bp},
        "train_truncated": sum(len(s) > window_bp for s in train_seqs),
        "test_truncated": sum(len(s) > window_bp for s in test_seqs),
        "sha256": {"train": sha256_of(train), "test": sha256_of(test), "exclude": [sha256_of(e) for e in exclude or []]},
        "draw": draw_stats,
    }


def _write_outputs(stats: dict, out_stats: str, out_train: str, out_test: str, train_rows, test_rows) -> None:
    """Write the stats JSON, the training and the test TSV: all three or none."""
    with atomic_output(out_stats) as tmp_stats:
        tmp_stats.write_text(json.dumps(stats, indent=1) + "\n")
        _write_tsv(Path(out_train), *train_rows)
        try:
            _write_tsv(Path(out_test), *test_rows)
        except BaseException:
            Path(out_train).unlink(missing_ok=True)
            raise


def _say_done(stats: dict) -> None:
    """One line on stderr: the rows kept, and dropped at each step."""
    st, d = stats, stats["draw"]
    drawn = f"drawn {d['per_class']} per class from {d['pool_rows']} pool rows, " if d else ""
    print(f"[task-data] {st['task']}: train {st['train_rows']} rows ({drawn}{st['train_dropped_leak']} dropped as "
          f"leakage, {st['train_dropped_conflict']} as conflicting), test {st['test_rows']} of {st['test_rows_raw']} "
          f"rows ({st['test_excluded']} excluded, {st['test_dropped_conflict']} conflicting), {st['train_truncated']} "
          f"train / {st['test_truncated']} test rows longer than the {st['window']['bp']} bp window", file=sys.stderr)


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_stats(path: str | Path, num_labels: int | None = None) -> dict:
    """A task's stats JSON (written by `prepare_task_data`), validated on read: an object with the
    keys below of the right types and ranges; any fault -> one line naming the file and the key.
    Returns it with `labels`: the label names by class id ("0".."n-1" when the task has none).
    `num_labels`: the caller's class count, which must equal the file's."""
    path = Path(path)
    stats = read_json_object(path, "task stats", ("task", "num_labels", "train_rows", "test_rows",
                                                   "train_label_counts", "test_label_counts", "label_names"))
    if not isinstance(stats["task"], str) or not stats["task"]:
        raise GeneMaskError(f"{path}: task stats key task must be a non-empty string, got {stats['task']!r}")
    n = stats["num_labels"]
    if not _count(n) or n < 2:
        raise GeneMaskError(f"{path}: task stats key num_labels must be an integer >= 2, got {n!r}")
    if num_labels is not None and n != num_labels:
        raise GeneMaskError(f"{path}: task stats say num_labels {n}, the run uses {num_labels}")
    for key in ("train_rows", "test_rows"):
        if not _count(stats[key]):
            raise GeneMaskError(f"{path}: task stats key {key} must be a non-negative integer, got {stats[key]!r}")
    for key in ("train_label_counts", "test_label_counts"):
        counts = stats[key]
        if not isinstance(counts, dict) or not all(_count(c) for c in counts.values()):
            raise GeneMaskError(f"{path}: task stats key {key} must map labels to non-negative integers, got {counts!r}")
        rows = "train_rows" if key.startswith("train") else "test_rows"
        if sum(counts.values()) != stats[rows]:
            raise GeneMaskError(f"{path}: task stats key {key} sums to {sum(counts.values())}, {rows} is {stats[rows]}")
    names = stats["label_names"]
    if names is None:
        labels = [str(i) for i in range(n)]
    else:
        if (not isinstance(names, dict) or not all(isinstance(x, str) and x for x in names)
                or sorted(v for v in names.values() if _count(v)) != list(range(n)) or len(names) != n):
            raise GeneMaskError(f"{path}: task stats key label_names must map {n} distinct names to the class ids "
                                f"0..{n - 1}, got {names!r}")
        labels = [name for name, _ in sorted(names.items(), key=lambda kv: kv[1])]
    return {**stats, "labels": labels}
