"""Task data on the real few-shot files: conversion, leakage, Prom-300 proxy exclusion, input faults."""
from __future__ import annotations

import json

import numpy as np
import pytest

from genemask.cli import main
from genemask.tasks import prepare_task_data, read_task_file, stratified_subsample
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
