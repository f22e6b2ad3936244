"""Task data on the real few-shot files: conversion, leakage, Prom-300 proxy exclusion, input faults."""
from __future__ import annotations

import json

import numpy as np
import pytest

from genemask.cli import main
from genemask.sources import sha256_of
from genemask.tasks import draw_per_class, prepare_task_data, read_task_file, stratified_subsample
from genemask.util import GeneMaskError


def _prepare(tmp_path, train, test, num_labels, exclude=(), max_test=0, seed=0, task="t"):
    out = {n: tmp_path / f"out_{n}" for n in ("train.tsv", "test.tsv", "stats.json")}
    stats = prepare_task_data(task=task, train=str(train), test=str(test), exclude=[str(e) for e in exclude],
                              num_labels=num_labels, max_test=max_test, seed=seed,
                              out_train=out["train.tsv"], out_test=out["test.tsv"], out_stats=out["stats.json"])
    return stats, out


def _rows(path):
    lines = path.read_text().splitlines()
    assert lines[0] == "sequence\tlabel"
    return [tuple(ln.split("\t")) for ln in lines[1:]]


# ---- format conversion ---------------------------------------------------------------------------
@pytest.mark.parametrize("rel, bp, n", [
    ("Prom-core/10/train.tsv", 70, 20),
    ("Prom-300/10/train.tsv", 300, 20),
    ("Cohn-enh/10/train.tsv", 500, 20),
    ("Splice-40/10/train_splice40_10.tsv", 40, 300),
    ("Prom-core/test.tsv", 70, 5920),
])
def test_kmers_to_bp_lengths_and_round_trip(fewshot, rel, bp, n):
    path = fewshot / rel
    d = read_task_file(path, num_labels=3)
    assert len(d) == n and d.kmer_format
    assert {len(s) for s in d.sequences} == {bp}
    # round trip against the raw file: the first data row's 6-mers are the bp's overlapping windows
    raw = path.read_text().splitlines()[1].split("\t")[0].strip('"').split()
    s = d.sequences[0]
    assert [s[i : i + 6] for i in range(len(s) - 5)] == raw
    assert set("".join(d.sequences)) <= set("ACGTN")


def test_quotes_stripped_and_labels_balanced(fewshot, tmp_path):
    src = fewshot / "Prom-core" / "10" / "train.tsv"
    assert src.read_text().startswith('"sequence"\t"label"')
    d = read_task_file(src, num_labels=2)
    assert all('"' not in s for s in d.sequences)
    assert d.label_counts() == {"0": 10, "1": 10}
    stats, out = _prepare(tmp_path, src, fewshot / "Prom-core" / "test.tsv", 2, max_test=50)
    assert '"' not in out["train.tsv"].read_text()
    assert all(len(s) == 70 and lab in ("0", "1") for s, lab in _rows(out["train.tsv"]))


def test_raw_bp_csv_inputs(mirror):
    cohn = read_task_file(mirror / "recovered" / "Cohn-enh" / "test_human_enhancers_cohn.csv", 2)  # seq,label
    assert len(cohn) == 6948 and not cohn.kmer_format
    assert {len(s) for s in cohn.sequences} == {500}
    assert cohn.label_counts() == {"0": 3474, "1": 3474}
    gue = read_task_file(mirror / "proxies" / "GUE" / "prom" / "prom_300_all" / "test.csv", 2)  # sequence,label
    assert len(gue) == 5920 and {len(s) for s in gue.sequences} == {300}
    assert all(s == s.upper() for s in gue.sequences[:100])


def test_sniffs_delimiter_without_extension(tmp_path):
    p = tmp_path / "noext"
    p.write_text("seq,label\nacgtacgt,1\nAAAACCCC,0\n")
    d = read_task_file(p, 2)
    assert d.sequences == ["ACGTACGT", "AAAACCCC"] and d.labels == [1, 0]
    q = tmp_path / "noext2"
    q.write_text('"label"\t"sequence"\n0\t"AAAAAA AAAAAC"\n')
    assert read_task_file(q, 2).sequences == ["AAAAAAC"]


# ---- leakage and exclusion -------------------------------------------------------------------------
@pytest.mark.parametrize("task, rel, test_rel, num_labels, dropped, rows", [
    ("Prom-core", "Prom-core/10/train.tsv", "Prom-core/test.tsv", 2, 0, 20),
    ("Prom-core", "Prom-core/1000/train.tsv", "Prom-core/test.tsv", 2, 1, 2000),
    ("Splice-40", "Splice-40/10/train_splice40_10.tsv", "Splice-40/test.tsv", 3, 0, 300),
    ("Splice-40", "Splice-40/50/train_splice40_50.tsv", "Splice-40/test.tsv", 3, 1, 1500),
    ("Splice-40", "Splice-40/100/train_splice40_100.tsv", "Splice-40/test.tsv", 3, 3, 3000),
    ("Splice-40", "Splice-40/500/train_splice40_500.tsv", "Splice-40/test.tsv", 3, 8, 15000),
])
def test_leakage_dropped(fewshot, tmp_path, task, rel, test_rel, num_labels, dropped, rows):
    stats, out = _prepare(tmp_path, fewshot / rel, fewshot / test_rel, num_labels, task=task)
    assert stats["train_rows_raw"] == rows  # Splice-40 "K" files hold 10*K per class
    assert stats["train_dropped_leak"] == dropped
    assert stats["train_rows"] == rows - dropped
    train = _rows(out["train.tsv"])
    test = {s for s, _ in _rows(out["test.tsv"])}
    assert len(train) == rows - dropped
    assert not any(s in test for s, _ in train)
    assert json.loads(out["stats.json"].read_text()) == stats
    assert stats["test_excluded"] == 0 and stats["test_rows"] == stats["test_rows_raw"]


def test_prom300_proxy_exclusion(fewshot, mirror, tmp_path):
    shots = [fewshot / "Prom-300" / str(k) / "train.tsv" for k in (10, 50, 100, 500, 1000)]
    gue = mirror / "proxies" / "GUE" / "prom" / "prom_300_all" / "test.csv"
    stats, out = _prepare(tmp_path, shots[0], gue, 2, exclude=shots, task="Prom-300")
    assert stats["test_rows_raw"] == 5920
    assert stats["test_excluded"] == 166
    assert stats["test_rows"] == 5920 - 166
    assert stats["train_dropped_leak"] == 0 and stats["train_rows"] == 20
    union = set()
    for p in shots:
        union.update(read_task_file(p, 2).sequences)
    test = _rows(out["test.tsv"])
    assert len(test) == 5754 and not any(s in union for s, _ in test)


def test_cohn_enh_recovered_test_no_leak(fewshot, mirror, tmp_path):
    stats, _ = _prepare(tmp_path, fewshot / "Cohn-enh" / "10" / "train.tsv",
                        mirror / "recovered" / "Cohn-enh" / "test_human_enhancers_cohn.csv", 2, task="Cohn-enh")
    assert stats["test_rows"] == 6948 and stats["train_dropped_leak"] == 0


def test_test_subsample_stratified_and_seeded(fewshot, tmp_path):
    test = fewshot / "Prom-core" / "test.tsv"  # labels 0: 2926, 1: 2994
    s1, o1 = _prepare(tmp_path / "a", fewshot / "Prom-core" / "10" / "train.tsv", test, 2, max_test=200, seed=3)
    s2, o2 = _prepare(tmp_path / "b", fewshot / "Prom-core" / "10" / "train.tsv", test, 2, max_test=200, seed=3)
    s3, o3 = _prepare(tmp_path / "c", fewshot / "Prom-core" / "10" / "train.tsv", test, 2, max_test=200, seed=4)
    assert s1["test_rows"] == 200 and s1["test_rows_raw"] == 5920
    assert s1["test_label_counts"] == {"0": 99, "1": 101}
    assert o1["test.tsv"].read_bytes() == o2["test.tsv"].read_bytes()
    assert o1["test.tsv"].read_bytes() != o3["test.tsv"].read_bytes()
    full = read_task_file(test, 2).sequences
    sub = [s for s, _ in _rows(o1["test.tsv"])]
    pos = [full.index(s) for s in sub]
    assert pos == sorted(pos)  # original order kept


def test_stratified_subsample_edge_cases():
    y = np.array([0] * 7 + [1] * 2 + [2] * 1)
    assert list(stratified_subsample(y, 0, 0)) == list(range(10))
    assert list(stratified_subsample(y, 50, 0)) == list(range(10))
    idx = stratified_subsample(y, 5, 1)
    assert len(idx) == 5 and len(set(idx)) == 5
    assert np.bincount(y[idx], minlength=3)[0] in (3, 4)


# ---- malformed inputs -------------------------------------------------------------------------------
GOOD = '"sequence"\t"label"\n"AAAAAA AAAAAC AAAACG"\t0\n"CCCCCC CCCCCA"\t1\n'


@pytest.mark.parametrize("name, content, line, fault", [
    ("missing_col.tsv", GOOD + '"AAAAAA AAAAAT"\n', 4, "missing column"),
    ("extra_col.tsv", GOOD + '"AAAAAA AAAAAT"\t1\t7\n', 4, "extra column"),
    ("bad_label.tsv", GOOD + '"AAAAAA AAAAAT"\tone\n', 4, "not an integer"),
    ("float_label.tsv", GOOD + '"AAAAAA AAAAAT"\t1.0\n', 4, "not an integer"),
    ("range_label.tsv", GOOD + '"AAAAAA AAAAAT"\t2\n', 4, "out of range"),
    ("neg_label.tsv", GOOD + '"AAAAAA AAAAAT"\t-1\n', 4, "out of range"),
    ("empty.tsv", "", 1, "empty file"),
    ("header_only.tsv", '"sequence"\t"label"\n', 1, "no data rows"),
    ("no_overlap.tsv", GOOD + '"AAAAAA CCCCCC GGGGGG"\t0\n', 4, "do not overlap"),
    ("mixed_k.tsv", GOOD + '"AAAAA AAAAC"\t0\n', 4, "5-mers"),
    ("bad_header.tsv", '"sequence"\t"class"\n"AAAAAA"\t0\n', 1, "header"),
    ("three_cols_header.tsv", 'sequence\tlabel\tname\nAAAAAA\t0\tx\n', 1, "header has 3 column"),
    ("bad_char.csv", "seq,label\nACGT-ACGT,0\n", 2, "not a base letter"),
    ("empty_seq.csv", "seq,label\nACGTACGT,0\n,1\n", 3, "empty sequence"),
])
def test_malformed_input_one_line_error_no_output(tmp_path, name, content, line, fault):
    bad = tmp_path / name
    bad.write_text(content)
    out = tmp_path / "out"
    good_train, good_test = tmp_path / "train.tsv", tmp_path / "test.csv"
    good_train.write_text(GOOD)
    good_test.write_text("sequence,label\nACGTACGTAC,0\nGGGGGGCCCC,1\n")
    for role in ("train", "test", "exclude"):
        files = {"train": good_train, "test": good_test}
        exclude = []
        if role == "exclude":
            exclude = [bad]
        else:
            files[role] = bad
        with pytest.raises(GeneMaskError) as ei:
            _prepare(out, files["train"], files["test"], 2, exclude=exclude)
        msg = str(ei.value)
        assert "\n" not in msg
        assert f"{bad}:{line}:" in msg, msg
        assert fault in msg, msg
        assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_cli_error_is_one_line_exit_2(fewshot, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text(GOOD + '"AAAAAA AAAAAT"\t5\n')
    o = tmp_path / "o"
    rc = main(["task-data", "--task", "Prom-core", "--train", str(bad), "--test", str(fewshot / "Prom-core" / "test.tsv"),
               "--num-labels", "2", "--out-train", str(o / "tr.tsv"), "--out-test", str(o / "te.tsv"),
               "--out-stats", str(o / "st.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("genemask task-data: error: ") and f"{bad}:4:" in err[0]
    assert not o.exists() or not any(o.iterdir())


def test_cli_task_data_ok(fewshot, tmp_path):
    o = tmp_path / "o"
    rc = main(["task-data", "--task", "Splice-40", "--train", str(fewshot / "Splice-40" / "50" / "train_splice40_50.tsv"),
               "--test", str(fewshot / "Splice-40" / "test.tsv"), "--num-labels", "3", "--max-test", "300",
               "--seed", "1", "--out-train", str(o / "tr.tsv"), "--out-test", str(o / "te.tsv"),
               "--out-stats", str(o / "st.json")])
    assert rc == 0
    st = json.loads((o / "st.json").read_text())
    assert (st["task"], st["train_rows"], st["train_dropped_leak"], st["test_rows_raw"], st["test_rows"]) == \
        ("Splice-40", 1499, 1, 3000, 300)
    assert sorted(p.name for p in o.iterdir()) == ["st.json", "te.tsv", "tr.tsv"]


# ---- catalogued outputs unchanged ------------------------------------------------------------------
@pytest.mark.parametrize("rel, test_rel, num_labels, train_sha, test_sha", [
    ("Prom-core/10/train.tsv", "Prom-core/test.tsv", 2,
     "fc3663124b7b602b0f636ff0a9085b1cce9290e7f4a7943ed3798286f68e0005",
     "5b562fced03c6ca3fecc2cb4e11447959de518f5ea59a741cd92c865cb464b23"),
    ("Prom-core/50/train.tsv", "Prom-core/test.tsv", 2,
     "74d994591420f8fabcac3ab8318a8a2f2dd43143c4cd9a7af705cc61eccc16b4",
     "5b562fced03c6ca3fecc2cb4e11447959de518f5ea59a741cd92c865cb464b23"),
    ("Splice-40/10/train_splice40_10.tsv", "Splice-40/test.tsv", 3,
     "6db3219506850a12e775e69c24993419064c6ed2adf4cb70d61d8836f8f22964",
     "be9b7a1391e0b3e8b8558bfaf103caae86124cb0a012115ad78759c97dff91f6"),
])
def test_catalogued_task_data_digests_pinned(fewshot, tmp_path, rel, test_rel, num_labels, train_sha, test_sha):
    """The demo's task_data (max_test 300, seed 0) gives the same bytes as before local tasks existed."""
    stats, out = _prepare(tmp_path, fewshot / rel, fewshot / test_rel, num_labels, max_test=300)
    assert sha256_of(out["train.tsv"]) == train_sha
    assert sha256_of(out["test.tsv"]) == test_sha
    assert stats["draw"] is None and stats["label_names"] is None
    assert stats["sha256"]["train"] == sha256_of(fewshot / rel)  # provenance of the inputs
    assert stats["window"] == {"k": 6, "tokens": 510, "bp": 515} and stats["train_truncated"] == 0


# ---- local-file tasks: the K-shot draw -------------------------------------------------------------
def _draw(tmp_path, train, test, k_shot, num_labels=2, draw_seed=0, on_conflict="drop", **kw):
    out = {n: tmp_path / f"out_{n}" for n in ("train.tsv", "test.tsv", "stats.json")}
    stats = prepare_task_data(task="L", train=str(train), test=str(test), exclude=[], num_labels=num_labels,
                              max_test=kw.pop("max_test", 0), seed=0, out_train=out["train.tsv"],
                              out_test=out["test.tsv"], out_stats=out["stats.json"], draw=k_shot,
                              draw_seed=draw_seed, label_names=True, on_conflict=on_conflict, **kw)
    return stats, out


def test_gue_draw_stratified_seeded_disjoint_nested(mirror, tmp_path):
    gue = mirror / "proxies" / "GUE" / "prom" / "prom_core_all"
    pool_lines = (gue / "train.csv").read_text().splitlines()
    test_seqs = set(read_task_file(gue / "test.csv").sequences)
    drawn = {}
    for k_shot in (10, 50):
        stats, out = _draw(tmp_path / f"k{k_shot}", gue / "train.csv", gue / "test.csv", k_shot)
        rows = _rows(out["train.tsv"])
        assert stats["train_label_counts"] == {"0": k_shot, "1": k_shot} and len(rows) == 2 * k_shot
        assert len({s for s, _ in rows}) == 2 * k_shot and not any(s in test_seqs for s, _ in rows)
        # the recorded lines are the pool file's lines of the drawn rows, in the output's order
        assert stats["draw"]["lines"] == sorted(stats["draw"]["lines"])
        assert [tuple(pool_lines[n - 1].split(",")) for n in stats["draw"]["lines"]] == rows
        assert (stats["draw"]["seed"], stats["draw"]["per_class"]) == (0, k_shot)
        assert stats["train_rows_raw"] == 47356 and stats["train_dropped_leak"] == 42
        assert (stats["train_dropped_conflict"], stats["test_dropped_conflict"], stats["train_conflict_test"]) == \
            (80, 2, 6)
        assert stats["draw"]["pool_rows"] == 47356 - 80 - 42 - 108 == 47126
        assert stats["draw"]["pool_label_counts"] == {"0": 23634, "1": 23492}
        # the pool's sha256 is the one the source catalogue pins for this file
        assert stats["sha256"]["train"] == "a36e0bbf2b59e01479bb904534d310041b493fec9221ccd74b518893d74054ed"
        drawn[k_shot] = set(rows)
    assert drawn[10] < drawn[50]  # nested: the 10-shot set is part of the 50-shot set
    again, out2 = _draw(tmp_path / "again", gue / "train.csv", gue / "test.csv", 10)
    assert out2["train.tsv"].read_bytes() == (tmp_path / "k10" / "out_train.tsv").read_bytes()
    other, out3 = _draw(tmp_path / "seed1", gue / "train.csv", gue / "test.csv", 10, draw_seed=1)
    assert set(_rows(out3["train.tsv"])) != drawn[10]


def test_gue_conflicting_labels_refused_by_default(mirror, tmp_path):
    gue = mirror / "proxies" / "GUE" / "prom" / "prom_core_all"
    with pytest.raises(GeneMaskError) as ei:
        _draw(tmp_path, gue / "train.csv", gue / "test.csv", 10, on_conflict="error")
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{gue / 'test.csv'}: conflicting labels for one sequence: lines ")
    assert "have labels 0, 1" in msg or "have labels 1, 0" in msg
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_draw_per_class_exact_nested_deterministic():
    y = np.array([0] * 30 + [1] * 12 + [2] * 7)
    a = draw_per_class(y, 5, 3)
    assert list(np.bincount(y[a])) == [5, 5, 5] and list(a) == sorted(a)
    assert list(a) == list(draw_per_class(y, 5, 3))
    assert set(a) < set(draw_per_class(y, 7, 3))
    assert list(a) != list(draw_per_class(y, 5, 4))


def _write(path, rows, header="sequence,label"):
    path.write_text(header + "\n" + "".join(f"{s},{lab}\n" for s, lab in rows))
    return path


def _pool(n=8, bp=12, seed=0, names=("neg", "pos")):
    rng = np.random.default_rng(seed)
    seqs = ["".join(rng.choice(list("ACGT"), bp)) for _ in range(n * len(names))]
    return [(s, names[i % len(names)]) for i, s in enumerate(seqs)]


def test_label_names_mapped_and_recorded(tmp_path):
    rows = _pool(n=10)
    train = _write(tmp_path / "train.csv", rows[:14])
    test = _write(tmp_path / "test.tsv", [(s, lab) for s, lab in rows[14:]], header="sequence\tlabel")
    test.write_text(test.read_text().replace(",", "\t"))
    stats, out = _draw(tmp_path / "o", train, test, 3)
    assert stats["label_names"] == {"neg": 0, "pos": 1}
    written = _rows(out["train.tsv"])
    want = {s: str(["neg", "pos"].index(lab)) for s, lab in rows}
    assert len(written) == 6 and all(want[s] == lab for s, lab in written)
    assert all(want[s] == lab for s, lab in _rows(out["test.tsv"]))
    assert json.loads(out["stats.json"].read_text())["label_names"] == {"neg": 0, "pos": 1}
    assert stats["sha256"] == {"train": sha256_of(train), "test": sha256_of(test), "exclude": []}


def test_label_name_faults(tmp_path):
    rows = _pool(n=6)
    train = _write(tmp_path / "train.csv", rows[:8])
    cases = [
        (_write(tmp_path / "unknown.csv", rows[8:10] + [("ACGTACGTACGT", "maybe")]), "unknown.csv:4: label 'maybe' "
         "does not occur in"),
        (_write(tmp_path / "ints.csv", [(s, 0 if lab == "neg" else 1) for s, lab in rows[8:]]), "ints.csv: integer "
         "labels, but"),
        (_write(tmp_path / "mixed.csv", rows[8:10] + [("ACGTACGTACGT", 1)]), "mixed.csv:4: labels mix integers"),
    ]
    for test, fault in cases:
        with pytest.raises(GeneMaskError) as ei:
            _draw(tmp_path / "o", train, test, 2)
        assert "\n" not in str(ei.value) and fault in str(ei.value), str(ei.value)
    three = _write(tmp_path / "three.csv", _pool(n=3, names=("a", "b", "c")))
    with pytest.raises(GeneMaskError, match=r"three.csv: 3 label names \['a', 'b', 'c'\] but num_labels is 2"):
        _draw(tmp_path / "o", three, _write(tmp_path / "t.csv", rows[8:]), 1)


def test_draw_k_above_smallest_class_names_file_class_counts(tmp_path):
    rows = _pool(n=6)
    neg, pos = [r for r in rows if r[1] == "neg"], [r for r in rows if r[1] == "pos"]
    train = _write(tmp_path / "train.csv", neg[:4] + pos[:3])  # neg 4, pos 3
    test = _write(tmp_path / "test.csv", neg[4:] + pos[4:] + [pos[0]])  # one pos training row leaks
    with pytest.raises(GeneMaskError) as ei:
        _draw(tmp_path / "o", train, test, 3)
    msg = str(ei.value)
    assert msg == (f"{train}: cannot draw K = 3 per class: class 1 ('pos') has 2 rows (after removing 1 rows in the "
                   f"test set and 0 duplicates); class counts {{0: 4, 1: 2}}"), msg
    stats, _ = _draw(tmp_path / "o", train, test, 2)
    assert stats["train_label_counts"] == {"0": 2, "1": 2} and stats["train_dropped_leak"] == 1


# ---- degenerate task data, catalogued or local -----------------------------------------------------
A, B, C, D = "ACGTACGTAA", "CCGGTTAACC", "GGGTTTAAAC", "TTTACGCGAT"


@pytest.mark.parametrize("train_rows, test_rows, where, fault", [
    ([(A, 1), (B, 1)], [(C, 0), (D, 1)], "train:", "one class only: every row has label 1 (2 rows)"),
    ([(A, 0), (B, 1)], [(C, 1), (D, 1)], "test:", "one class only: every row has label 1 (2 rows)"),
    ([(A, 0), (B, 1)], [(B, 1), (C, 0)], "train:", "one class only: every training row left has label 0 (1 rows)"),
    ([(A, 0), (B, 1), (A, 1)], [(C, 0), (D, 1)], "train:", "conflicting labels for one sequence: lines 2, 4 have "
     "labels 0, 1"),
    ([(A, 0), (B, 1)], [(C, 0), (D, 1), (C, 1)], "test:", "conflicting labels for one sequence: lines 2, 4 have "
     "labels 0, 1"),
    ([(A, 0), (B, 1), (C, 1)], [(C, 0), (D, 1)], "train:4:", f"sequence '{C}' has label 1 here but label 0 in"),
    ([(A, 0), (B, 1), ("ACGT", 0)], [(C, 0), (D, 1)], "train:4:", "sequence of 4 bp is shorter than k = 6"),
    ([(A, 0), ("ACGUACGUAA", 1)], [(C, 0), (D, 1)], "train:3:", "character(s) 'U': not a base letter of DNA"),
    ([(A, 0), (B, 1)], [(C, 0), ("MKTAYIAKQR", 1)], "test:3:", "character(s) 'I', 'K', 'M', 'Q', 'R', 'Y': not a "
     "base letter"),
])
def test_degenerate_task_data_one_line_error(tmp_path, train_rows, test_rows, where, fault):
    train = _write(tmp_path / "train", train_rows)
    test = _write(tmp_path / "test", test_rows)
    named = {"train:": train, "test:": test}
    for draw in (None, 1):  # a catalogued shot file and a local pool alike
        out = tmp_path / "out"
        with pytest.raises(GeneMaskError) as ei:
            prepare_task_data("t", str(train), str(test), [], 2, 0, 0, out / "a", out / "b", out / "c", draw=draw)
        msg = str(ei.value)
        file, _, line = where.partition(":")
        assert "\n" not in msg and msg.startswith(f"{named[file + ':']}:{line}"), msg
        assert fault in msg, msg
        assert not out.exists()


def test_conflicts_dropped_on_request_and_counted(tmp_path):
    train = _write(tmp_path / "train", [(A, 0), (B, 1), (A, 1), (D, 0), (C, 1), ("ACGTTTTTTT", 0)])
    test = _write(tmp_path / "test", [(C, 0), (D, 0), ("GGGGGGCCCC", 1)])
    out = tmp_path / "o"
    stats = prepare_task_data("t", str(train), str(test), [], 2, 0, 0, out / "a", out / "b", out / "c",
                              on_conflict="drop")
    # A (both labels) dropped as conflicting; C (1 here, 0 in test) conflicts across, D leaks: both leave as leakage
    assert (stats["train_dropped_conflict"], stats["train_conflict_test"], stats["train_dropped_leak"]) == (2, 1, 2)
    assert _rows(out / "a") == [(B, "1"), ("ACGTTTTTTT", "0")]
    with pytest.raises(GeneMaskError, match="conflicting labels for one sequence: lines 2, 4 have labels 0, 1"):
        prepare_task_data("t", str(train), str(test), [], 2, 0, 0, out / "a", out / "b", out / "c")


def test_long_sequences_counted_as_truncated_not_refused(tmp_path):
    rng = np.random.default_rng(0)
    seq = lambda n: "".join(rng.choice(list("ACGT"), n))  # noqa: E731
    train = _write(tmp_path / "train", [(seq(515), 0), (seq(516), 1), (seq(600), 0), (seq(100), 1)])
    test = _write(tmp_path / "test", [(seq(520), 0), (seq(50), 1)])
    out = tmp_path / "o"
    stats = prepare_task_data("t", str(train), str(test), [], 2, 0, 0, out / "a", out / "b", out / "c")
    assert stats["window"] == {"k": 6, "tokens": 510, "bp": 515}
    assert (stats["train_truncated"], stats["test_truncated"]) == (2, 1)
    small = prepare_task_data("t", str(train), str(test), [], 2, 0, 0, out / "a", out / "b", out / "c", k=4,
                              window_tokens=126)
    assert small["window"]["bp"] == 129 and (small["train_truncated"], small["test_truncated"]) == (3, 1)


def test_cli_task_data_draw(mirror, tmp_path):
    gue = mirror / "proxies" / "GUE" / "prom" / "prom_core_all"
    o = tmp_path / "o"
    rc = main(["task-data", "--task", "GUE-prom-core", "--train", str(gue / "train.csv"), "--test",
               str(gue / "test.csv"), "--num-labels", "2", "--max-test", "200", "--draw", "10", "--draw-seed", "0",
               "--label-names", "--on-conflict", "drop", "--out-train", str(o / "tr.tsv"), "--out-test",
               str(o / "te.tsv"), "--out-stats", str(o / "st.json")])
    assert rc == 0
    st = json.loads((o / "st.json").read_text())
    assert (st["train_rows"], st["test_rows"], st["draw"]["per_class"]) == (20, 200, 10)
    assert st["train_label_counts"] == {"0": 10, "1": 10} and st["test_label_counts"] == {"0": 100, "1": 100}


# ---- the plan: local-file task keys ----------------------------------------------------------------
def _cfg(root, **task):
    import yaml

    cfg = yaml.safe_load(open(root / "config" / "demo.yaml"))
    cfg["tasks"] = {"Mine": task}
    cfg["finetune"]["tasks"] = ["Mine", "Prom-core"]
    return cfg


def test_plan_local_task_runs_paths_and_args(root, mirror, tmp_path, monkeypatch):
    from genemask import plan

    gue = mirror / "proxies" / "GUE" / "prom" / "prom_core_all"
    monkeypatch.setenv("GUE", str(gue))
    (tmp_path / "test.csv").write_text((gue / "test.csv").read_text())
    monkeypatch.chdir(tmp_path)
    cfg = plan.resolve(_cfg(root, num_labels=2, train="$GUE/train.csv", test="test.csv", shots=[10, 100],
                            draw_seed=3))
    t = cfg["tasks"]["Mine"]
    assert (t["train"], t["test"]) == (str(gue / "train.csv"), str(tmp_path / "test.csv"))  # expanded, absolute
    assert plan.is_local(cfg, "Mine") and not plan.is_local(cfg, "Prom-core")
    assert plan.task_shots(cfg, "Mine") == [10, 100] and plan.task_shots(cfg, "Prom-core") == [10, 50]
    runs = {(r["task"], r["shot"]) for r in plan.runs(cfg)}
    assert runs == {("Mine", 10), ("Mine", 100), ("Prom-core", 10), ("Prom-core", 50)}
    assert len(plan.runs(cfg)) == 4 * 3 * 2 and plan.missing(cfg) == []
    assert " ".join(plan.task_data_args(cfg, "Mine", 100)) == \
        "--k 6 --window-tokens 510 --on-conflict error --draw 100 --draw-seed 3 --label-names"
    assert " ".join(plan.task_data_args(cfg, "Prom-core", 10)) == "--k 6 --window-tokens 510 --on-conflict error"
    assert plan.window(cfg) == (6, 510)
    # no task `shots`: finetune.shots; a local entry replaces a catalogued task of the same name whole
    c2 = _cfg(root, num_labels=2, train=str(gue / "train.csv"), test=str(gue / "test.csv"))
    c2["tasks"] = {"Prom-core": c2["tasks"]["Mine"]}
    c2["finetune"]["tasks"] = ["Prom-core"]
    r2 = plan.resolve(c2)
    assert plan.task_shots(r2, "Prom-core") == [10, 50] and "exclude" not in r2["tasks"]["Prom-core"]
    assert "shots" not in r2["tasks"]["Prom-core"]


@pytest.mark.parametrize("task, key, fault", [
    ({"num_labels": 2, "train": "nope.csv", "test": "T"}, "tasks.Mine.train", "no such file 'nope.csv'"),
    ({"num_labels": 2, "train": "T", "test": "missing/test.csv"}, "tasks.Mine.test", "no such file"),
    ({"num_labels": 2, "train": "T", "test": "T", "exclude": ["T", "x.tsv"]}, "tasks.Mine.exclude.1", "no such file"),
    ({"num_labels": 2, "train": "T", "test": "T", "shots": {"10": "x"}}, "tasks.Mine.shots", "is not of type 'array'"),
    ({"num_labels": 2, "train": "T", "test": "T", "shots": [0]}, "tasks.Mine.shots.0", "less than the minimum"),
    ({"num_labels": 2, "train": "T", "test": "T", "draw_seed": "0"}, "tasks.Mine.draw_seed", "not of type 'integer'"),
    ({"num_labels": 2, "train": "T", "test": "T", "url": "x"}, "tasks.Mine", "unknown key(s) ('url' was unexpected)"),
    ({"num_labels": 2, "train": "T"}, "tasks.Mine", "'test' is a required property"),
    ({"num_labels": 2, "train": "T", "test": "T", "on_conflict": "keep"}, "tasks.Mine.on_conflict", "is not one of"),
    ({"num_labels": 2, "test": "prom_core_test", "shots": {"10": "prom_core_10"}, "draw_seed": 1}, "tasks.Mine",
     "unknown key(s) ('draw_seed' was unexpected)"),  # a catalogued task has no draw
])
def test_plan_local_task_errors_name_the_key(root, mirror, tmp_path, task, key, fault):
    from genemask import plan

    real = str(mirror / "proxies" / "GUE" / "prom" / "prom_core_all" / "test.csv")
    task = {k: ([real if x == "T" else x for x in v] if isinstance(v, list) and k == "exclude"
                else real if v == "T" else v) for k, v in task.items()}
    with pytest.raises(GeneMaskError) as ei:
        plan.resolve(_cfg(root, **task), where="c.yaml")
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"c.yaml: key '{key}'") and fault in msg, msg
