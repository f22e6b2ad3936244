"""Twin code paths agree and memory is declared (issue 20, points 4 and 5): every fault a hostile
tester found is refused with one line naming the file or key, on real generated files and real
commands (`genemask.cli.main`, or a subprocess where htslib or the memory peak must be seen)."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ENV, ROOT, SNAKEMAKE
from genemask import plan
from genemask.cli import main
from genemask.inference import read_input
from genemask.tasks import read_task_file, stratified_subsample
from genemask.util import GeneMaskError

pytestmark = pytest.mark.hostile

RNG = np.random.default_rng(20)


def _dna(n: int) -> str:
    return "".join(RNG.choice(list("ACGT"), n))


def _error_line(capsys, command: str) -> str:
    """The command's stderr: exactly one line, `genemask COMMAND: error: ...`."""
    err = capsys.readouterr().err.strip().splitlines()
    err = [ln for ln in err if not ln.startswith("[")]  # progress lines ([inference] ...) are not errors
    assert len(err) == 1 and err[0].startswith(f"genemask {command}: error: "), err
    return err[0]


def _task_files(tmp_path: Path, test_labels: list[int], train_rows: int = 10) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    train, test = tmp_path / "train.tsv", tmp_path / "test.tsv"
    train.write_text("sequence\tlabel\n" + "".join(f"{_dna(30)}\t{i % 2}\n" for i in range(train_rows)))
    test.write_text("sequence\tlabel\n" + "".join(f"{_dna(30)}\t{lab}\n" for lab in test_labels))
    return train, test


def _task_data(tmp_path: Path, train, test, *extra) -> int:
    out = tmp_path / "out"
    return main(["task-data", "--task", "T", "--train", str(train), "--test", str(test), "--num-labels", "2",
                 *extra, "--out-train", str(out / "train.tsv"), "--out-test", str(out / "test.tsv"),
                 "--out-stats", str(out / "stats.json")])


# ---------------------------------------------------------------------------------------------
# 1. one alphabet check: a table and a FASTA of the same letters get the same verdict
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("letters, fault", [("ACGU", "is RNA, not DNA"), ("MKVLAEEWQRSTP", "invalid sequence character")])
@pytest.mark.parametrize("command", ["predict", "embed"])
def test_table_and_fasta_inputs_share_the_alphabet_check(tmp_path, capsys, letters, fault, command):
    seq = "".join(RNG.choice(list(letters), 60))
    fasta, table = tmp_path / "in.fa", tmp_path / "in.csv"
    fasta.write_text(f">r1\n{seq}\n")
    table.write_text(f"id,sequence\nr1,{seq}\n")
    out = tmp_path / ("out.tsv" if command == "predict" else "out.npy")
    lines = []
    for path in (fasta, table):
        assert main([command, "--model", str(tmp_path / "no-model"), str(path), "-o", str(out)]) == 2
        lines.append(_error_line(capsys, command))
        assert fault in lines[-1] and str(path) in lines[-1] and "'r1'" in lines[-1], lines[-1]
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# 2. one table reader: CSV quoting, gzip streamed and bounded, regular files only
# ---------------------------------------------------------------------------------------------
def test_csv_with_a_quoted_comma_is_read(tmp_path):
    s1, s2 = _dna(40), _dna(40)
    table = tmp_path / "in.csv"
    table.write_text(f'id,sequence,note\n"chr1:1-40, plus",{s1},"a, b"\nplain,"{s2}",x\n')
    assert read_input(table) == (["chr1:1-40, plus", "plain"], [s1.encode(), s2.encode()])
    task = tmp_path / "task.csv"
    task.write_text(f'sequence,label\n{s1},"enhancer, strong"\n{s2},"weak"\n')
    d = read_task_file(task, label_names=True)
    assert d.sequences == [s1, s2] and d.labels == ["enhancer, strong", "weak"] and d.lines == [2, 3]


def test_gzip_table_is_streamed_and_read_like_the_plain_one(tmp_path):
    rows = [(f"s{i}", _dna(50)) for i in range(200)]
    text = "id\tsequence\n" + "".join(f"{i}\t{s}\n" for i, s in rows)
    plain, gz = tmp_path / "in.tsv", tmp_path / "in.tsv.gz"
    plain.write_text(text)
    gz.write_bytes(gzip.compress(text.encode()))
    assert read_input(gz) == read_input(plain)


# The peak from VmHWM (this process's own high-water mark): getrusage's ru_maxrss keeps the maximum
# across exec, i.e. a child of a large pytest process reports pytest's size.
_PEAK = """
import sys
from genemask.cli import main
rc = main(sys.argv[1:])
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(rc, int(hwm.split()[1]) // 1024)
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("content", [b"\0", b"A"], ids=["zeros", "one-line"])
def test_gzip_bomb_refused_in_bounded_memory(tmp_path, content):
    """300 MiB inflating from a ~300 KiB gzip: refused at the first (over-long or binary) line, with a
    memory peak far below the inflated size (it used to be inflated whole first)."""
    bomb = tmp_path / "train.tsv.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as fh:
        fh.write(b"sequence\tlabel\n")
        block = content * (1 << 20)
        for _ in range(300):
            fh.write(block)
    assert bomb.stat().st_size < 2 << 20
    _, test = _task_files(tmp_path, [0, 1] * 5)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", _PEAK, "task-data", "--task", "T", "--train", str(bomb), "--test",
                        str(test), "--num-labels", "2", "--out-train", str(out / "a.tsv"), "--out-test",
                        str(out / "b.tsv"), "--out-stats", str(out / "s.json")],
                       env=ENV, capture_output=True, text=True, timeout=300)
    rc, peak_mb = map(int, r.stdout.split())
    err = r.stderr.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(bomb) in err[0], err
    assert ":2: line longer than 64 MiB" in err[0], err
    assert peak_mb < 250, f"peak {peak_mb} MB for a 300 MiB bomb"
    assert not out.exists()


def test_binary_table_refused_with_its_line(tmp_path, capsys):
    _, test = _task_files(tmp_path, [0, 1] * 5)
    bad = tmp_path / "train.tsv"
    bad.write_bytes(b"sequence\tlabel\nACGTACGT\t0\nAC\0GT\x00\x01\t1\n")
    assert _task_data(tmp_path, bad, test) == 2
    assert f"{bad}:3: binary data (NUL bytes), not a text task file" in _error_line(capsys, "task-data")


def test_task_data_refuses_dev_zero(tmp_path, capsys):
    _, test = _task_files(tmp_path, [0, 1] * 5)
    assert _task_data(tmp_path, "/dev/zero", test) == 2
    line = _error_line(capsys, "task-data")
    assert "/dev/zero: task file must be a regular file, got a device" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["task-data", "predict", "aggregate-missing"])
def test_fifo_refused_without_blocking(tmp_path, capsys, command):
    fifo = tmp_path / "pipe.tsv"
    os.mkfifo(fifo)  # opening it to read would block forever: nothing writes to it
    if command == "task-data":
        _, test = _task_files(tmp_path, [0, 1] * 5)
        rc = _task_data(tmp_path, test, fifo)
    elif command == "predict":
        rc = main(["predict", "--model", str(tmp_path), str(fifo), "-o", str(tmp_path / "p.tsv")])
    else:
        run = tmp_path / "run.json"
        run.write_text(json.dumps(_run("T1", 10, "dnabert", 0)))
        command = "aggregate"
        rc = main(["aggregate", str(run), "--missing", str(fifo), "--outdir", str(tmp_path / "rep")])
    assert rc == 2
    assert "must be a regular file, got a FIFO (named pipe)" in _error_line(capsys, command)


# ---------------------------------------------------------------------------------------------
# 3. names fully matched: a trailing newline is no part of a legal name
# ---------------------------------------------------------------------------------------------
def _config_with(tmp_path: Path, extra: dict) -> Path:
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    for key, value in extra.items():
        cfg[key] = {**(cfg.get(key) or {}), **value}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("extra, key", [
    ({"tasks": {"mine\n": {"num_labels": 2, "train": "{t}", "test": "{t}", "shots": [2]}},
      "finetune": {"tasks": ["mine\n"]}}, "finetune.tasks"),
    ({"baselines": {"dnabert6\n": {"model": "some/folder"}}}, "baselines"),
    ({"predict": {"inputs": {"mine\n": "{t}"}}}, "predict.inputs"),
], ids=["task", "baseline", "predict-input"])
def test_trailing_newline_names_refused_at_config_time(tmp_path, capsys, extra, key):
    t = tmp_path / "t.tsv"
    t.write_text("sequence\tlabel\n" + "".join(f"{_dna(30)}\t{i % 2}\n" for i in range(8)))
    extra = json.loads(json.dumps(extra).replace("{t}", str(t)))
    path = _config_with(tmp_path, extra)
    assert main(["check-config", str(path)]) == 2
    line = _error_line(capsys, "check-config")
    assert f"key '{key}" in line and "\\n" in line, line


def test_schema_pattern_dollar_is_the_end_of_the_string():
    from genemask.defaults import anchored

    assert anchored("^[a-z]+$") == r"^[a-z]+\Z" and anchored(r"^a\$") == r"^a\$"
    with pytest.raises(GeneMaskError, match="key 'genome.contigs'"):
        plan._check_names({"sources": {}, "genome": {"contigs": ["chr1\n"]}, "pretrain": {"model": "tiny"}}, "cfg")


# ---------------------------------------------------------------------------------------------
# 4./5. aggregate: HTML escaped, non-finite metrics and absurd values refused
# ---------------------------------------------------------------------------------------------
def _run(task, shot, scheme, seed, acc=0.6, **over):
    rec = {"task": task, "shot": shot, "seed": seed, "scheme": scheme, "n_train": 20, "n_test": 100,
           "num_labels": 2, "accuracy": acc, "macro_f1": acc, "mcc": 0.2, "auroc": 0.7, "train_seconds": 1.0,
           "eval_seconds": 0.1}
    return {**rec, **over}


def _write_runs(tmp_path: Path, recs: list[dict]) -> list[str]:
    d = tmp_path / "runs"
    d.mkdir(exist_ok=True)
    paths = []
    for i, r in enumerate(recs):
        p = d / f"run{i}.json"
        p.write_text(json.dumps(r))  # NaN/Infinity written as JSON's NaN/Infinity tokens
        paths.append(str(p))
    return paths


def test_report_html_escapes_a_script_scheme(tmp_path):
    evil = "<script>alert(1)</script>"
    recs = [_run("T1", 10, s, seed, 0.6 + seed / 100) for s in ("dnabert", evil) for seed in range(3)]
    out = tmp_path / "rep"
    assert main(["aggregate", *_write_runs(tmp_path, recs), "--outdir", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.parametrize("key, value", [("accuracy", float("nan")), ("auroc", float("inf")),
                                        ("train_seconds", float("-inf"))])
def test_aggregate_refuses_non_finite_values(tmp_path, capsys, key, value):
    recs = [_run("T1", 10, "dnabert", seed) for seed in range(3)]
    recs[1][key] = value
    paths = _write_runs(tmp_path, recs)
    assert main(["aggregate", *paths, "--outdir", str(tmp_path / "rep")]) == 2
    line = _error_line(capsys, "aggregate")
    assert f"{paths[1]}: '{key}'" in line and "not a finite number" in line, line
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("over, fault", [
    ({"shot": 99999999999999999999}, "'shot' = 99999999999999999999 is outside"),
    ({"shot": 0}, "'shot' = 0 is outside"),
    ({"seed": 1e300}, "'seed' = 1e+300 is outside"),
    ({"task": "T$^$"}, "'task' 'T$^$' must be letters"),
    ({"task": "a$\\x$b"}, "must be letters"),
    ({"scheme": "m$\\x$"}, "'scheme' 'm$\\\\x$' has a '$'"),
], ids=["huge-shot", "zero-shot", "huge-seed", "dollar-task", "mathtext-task", "dollar-scheme"])
def test_aggregate_absurd_values_one_line(tmp_path, capsys, over, fault):
    recs = [{**_run("T1", 10, "dnabert", seed), **over} for seed in range(2)]
    paths = _write_runs(tmp_path, recs)
    assert main(["aggregate", *paths, "--outdir", str(tmp_path / "rep")]) == 2
    line = _error_line(capsys, "aggregate")
    assert paths[0] in line and fault in line, line


def test_aggregate_missing_table_absurd_shot(tmp_path, capsys):
    missing = tmp_path / "missing.tsv"
    missing.write_text("task\tshot\treason\nT1\t99999999999999999999\tnot released\n")
    paths = _write_runs(tmp_path, [_run("T1", 10, "dnabert", s) for s in range(2)])
    assert main(["aggregate", *paths, "--missing", str(missing), "--outdir", str(tmp_path / "rep")]) == 2
    assert "shot '99999999999999999999' is not an integer in [1, 2^53]" in _error_line(capsys, "aggregate")


# ---------------------------------------------------------------------------------------------
# 6. --save-steps past the last step
# ---------------------------------------------------------------------------------------------
def test_pretrain_save_steps_past_the_last_step_refused(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["pretrain", "--corpus", str(tmp_path / "corpus"), "--model-config",
               str(ROOT / "resources" / "models" / "tiny.json"), "--scheme", "random", "--set", "steps=5",
               "--save-steps", "2", "7", "-o", str(out)])
    assert rc == 2
    line = _error_line(capsys, "pretrain")
    assert "--save-steps: step(s) 7 outside the run's 0..5" in line, line
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# 7. max_test keeps every class
# ---------------------------------------------------------------------------------------------
def test_max_test_subset_keeps_every_class(tmp_path):
    _, test = _task_files(tmp_path, [0] * 98 + [1] * 2)
    train, _ = _task_files(tmp_path / "tr", [0, 1])  # no row shared with the test set
    assert _task_data(tmp_path, train, test, "--max-test", "10") == 0
    labels = [ln.split("\t")[1] for ln in (tmp_path / "out" / "test.tsv").read_text().splitlines()[1:]]
    assert len(labels) == 10 and sorted(set(labels)) == ["0", "1"], labels
    # the shares are kept otherwise: 3 classes 60/30/10 of 100 -> 6/3/1 of 10
    sel = stratified_subsample([0] * 60 + [1] * 30 + [2] * 10, 10, 0)
    assert np.bincount(np.repeat([0, 1, 2], [60, 30, 10])[sel]).tolist() == [6, 3, 1]


def test_max_test_below_the_class_count_refused(tmp_path, capsys):
    _, test = _task_files(tmp_path, [0, 1] * 10)
    train, _ = _task_files(tmp_path / "tr", [0, 1])  # no row shared with the test set
    assert _task_data(tmp_path, train, test, "--max-test", "1") == 2
    assert "--max-test: 1 test rows cannot keep each of the 2 classes" in _error_line(capsys, "task-data")
    path = _config_with(tmp_path, {"finetune": {"max_test": 1}})
    assert main(["check-config", str(path)]) == 2
    assert "key 'finetune.max_test': 1 test rows cannot keep each" in _error_line(capsys, "check-config")


# ---------------------------------------------------------------------------------------------
# 8. a truncated gzip FASTA: one line, no htslib noise
# ---------------------------------------------------------------------------------------------
@pytest.mark.subprocess
def test_truncated_gzip_fasta_one_line(tmp_path):
    seq = _dna(100_000)
    data = gzip.compress((">c1\n" + "\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)) + "\n").encode())
    fa = tmp_path / "cut.fa.gz"
    fa.write_bytes(data[: len(data) // 2])
    for args in (["ngrams", str(fa), "--max-order", "3", "-o", str(tmp_path / "n.npz")],
                 ["predict", "--model", str(tmp_path), str(fa), "-o", str(tmp_path / "p.tsv")]):
        r = subprocess.run([sys.executable, "-m", "genemask.cli", *args], env=ENV, capture_output=True, text=True)
        err = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("[inference]")]
        assert r.returncode == 2 and len(err) == 1, r.stderr
        assert str(fa) in err[0] and "truncated or corrupt gzip" in err[0], err


# ---------------------------------------------------------------------------------------------
# 9. task_data's memory comes from the config and its input size
# ---------------------------------------------------------------------------------------------
def _task_data_mem(tmp_path: Path, pool_mb: int, key: int | None) -> list[int]:
    pool, test = tmp_path / "pool.csv", tmp_path / "test.csv"
    pool.write_text("sequence,label\n" + "".join(f"{_dna(30)},{i % 2}\n" for i in range(40)))
    os.truncate(pool, pool_mb << 20)  # sparse: the dry run only stats it
    test.write_text("sequence,label\n" + "".join(f"{_dna(30)},{i % 2}\n" for i in range(40)))
    cfg = {"tasks": {"Mine": {"num_labels": 2, "train": str(pool), "test": str(test), "shots": [5]}},
           "finetune": {"tasks": ["Mine"], **({"task_data_mem_mb": key} if key else {})}}
    path = _config_with(tmp_path, cfg)
    work = tmp_path / "work"
    r = subprocess.run([*SNAKEMAKE, "-n", "--directory",
                        str(work), "--configfile", str(path), "--until", "task_data"],
                       cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-3000:]
    out = r.stdout + r.stderr
    blocks = [b for b in out.split("rule ")[1:] if b.startswith("task_data:")]
    assert blocks, out[-3000:]
    return [int(b.split("mem_mb=")[1].split(",")[0]) for b in blocks]


@pytest.mark.subprocess
def test_task_data_memory_from_config_key(tmp_path):
    assert _task_data_mem(tmp_path, 0, 3000) == [3000]
    (tmp_path / "default").mkdir()
    assert _task_data_mem(tmp_path / "default", 0, None) == [1000]


@pytest.mark.subprocess
def test_task_data_memory_scales_with_the_input(tmp_path):
    (mem,) = _task_data_mem(tmp_path, 300, None)
    want = plan.task_data_mem_mb({"finetune": {"task_data_mem_mb": 1000}}, 300.0)
    assert mem >= 8 * 300 and want <= mem <= want + 10, mem  # + the small test file
