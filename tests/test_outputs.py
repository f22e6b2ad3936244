"""Outputs never destroy what is not theirs (util.atomic_output, check_output_target, output_lock).

A command replaces an existing output only when it is a previous output of the same kind: a file
where it writes a file, a folder carrying its kind's marker where it writes a folder. `.`, `..`, an
ancestor of the working directory, the command's input or a folder holding it, a symbolic link, a
folder given for a file: one line, exit 2, nothing touched. A second writer of the same output is
refused by a lock, not raced. Every case runs the real command."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import GENEMASK
from genemask.cli import main
from genemask.util import MARKER, atomic_output, output_lock

pytestmark = pytest.mark.hostile


def _fasta(path: Path, n: int = 3, length: int = 3000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        for i in range(n):
            s = "".join(rng.choice(list("ACGT"), length))
            fh.write(f">c{i}\n" + "\n".join(s[j : j + 60] for j in range(0, length, 60)) + "\n")
    return path


def _indexed(tmp_path: Path) -> Path:
    """A bgzipped, faidx-indexed genome (what `genemask chunks` reads)."""
    assert main(["index", str(_fasta(tmp_path / "raw.fa")), "-o", str(tmp_path / "g.fa.gz")]) == 0
    return tmp_path / "g.fa.gz"


def _tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` (links included, not followed) -> sha256 of its bytes (or of its link)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(folder))] = "link:" + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p.relative_to(folder))] = "dir"
    return out


def _refused(argv, capsys, *needles) -> str:
    capsys.readouterr()  # what earlier commands printed
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


# ---- data loss: '.', '..', the input, the working directory's ancestors ----------------------
@pytest.mark.parametrize("out", [".", "..", "./", "../.."])
def test_corpus_into_the_working_directory_or_above_touches_nothing(tmp_path, monkeypatch, capsys, out):
    proj = tmp_path / "a" / "b" / "myproject"
    proj.mkdir(parents=True)
    _fasta(proj / "small.fa")
    (proj / "notes.txt").write_text("my notes\n")
    before = _tree(tmp_path)
    monkeypatch.chdir(proj)
    _refused(["corpus", "small.fa", "-o", out, "--k", "6"], capsys, "working directory")
    assert _tree(tmp_path) == before


def test_output_equal_to_the_input_or_holding_it_is_refused(tmp_path, capsys):
    data = tmp_path / "mydata"
    data.mkdir()
    fa = _indexed(data)
    before = _tree(tmp_path)
    _refused(["chunks", str(fa), "--size", "1000", "-o", str(fa)], capsys, "this command's input")  # the file itself
    _refused(["corpus", str(fa), "-o", str(data)], capsys, "this command's input")  # the folder holding it
    assert _tree(tmp_path) == before


# ---- a folder given for a file, a file for a folder, a folder genemask did not write -----------
def test_chunks_onto_a_folder_of_files_is_refused(tmp_path, capsys):
    fa = _indexed(tmp_path)
    mydata = tmp_path / "mydata"
    mydata.mkdir()
    (mydata / "keep.tsv").write_text("a\tb\n")
    before = _tree(tmp_path)
    _refused(["chunks", str(fa), "--size", "1000", "-o", str(mydata)], capsys, "is a folder")
    assert _tree(tmp_path) == before


def test_chunks_replace_their_own_previous_file(tmp_path):
    fa = _indexed(tmp_path)
    out = tmp_path / "chunks.tsv"
    assert main(["chunks", str(fa), "--size", "1000", "-o", str(out)]) == 0
    first = out.read_text()
    assert main(["chunks", str(fa), "--size", "500", "-o", str(out)]) == 0
    assert out.read_text() != first and len(out.read_text().splitlines()) > len(first.splitlines())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunks.tsv", "g.fa.gz", "g.fa.gz.fai", "g.fa.gz.gzi",
                                                          "raw.fa"]  # no lock, no tmp left


def test_corpus_replaces_its_own_folder_but_not_a_foreign_or_other_kind_one(tmp_path, capsys):
    fa = _fasta(tmp_path / "g.fa")
    out = tmp_path / "corpus"
    assert main(["corpus", str(fa), "-o", str(out), "--seed", "1"]) == 0
    assert (out / MARKER).read_text().strip() == "corpus"
    assert main(["corpus", str(fa), "-o", str(out), "--seed", "2"]) == 0  # its own kind: replaced
    assert json.loads((out / "meta.json").read_text())["seed"] == 2

    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("\\section{Intro}\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / MARKER).write_text("pretraining run\n")
    (other / "genemask.json").write_text("{}")
    before = _tree(tmp_path)
    _refused(["corpus", str(fa), "-o", str(foreign)], capsys, "did not write")
    _refused(["corpus", str(fa), "-o", str(other)], capsys, "'pretraining run'")
    _refused(["corpus", str(fa), "-o", str(fa)], capsys, "this command's input")
    assert _tree(tmp_path) == before

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["corpus", str(fa), "-o", str(empty)]) == 0  # an empty folder holds nothing to lose
    assert (empty / MARKER).exists()


def test_a_file_where_a_folder_is_written_and_a_symlink_output_are_refused(tmp_path, capsys):
    fa = _indexed(tmp_path)
    (tmp_path / "corpus").write_text("not a folder\n")
    victim = tmp_path / "victim.tsv"
    victim.write_text("precious\n")
    (tmp_path / "link.tsv").symlink_to(victim)
    before = _tree(tmp_path)
    _refused(["corpus", str(fa), "-o", str(tmp_path / "corpus")], capsys, "is a file")
    _refused(["chunks", str(fa), "--size", "1000", "-o", str(tmp_path / "link.tsv")], capsys, "symbolic link")
    assert _tree(tmp_path) == before


def test_predict_and_embed_onto_a_folder_are_refused(tmp_path, capsys, root):
    """`genemask predict ... -o results.tsv` where results.tsv/ is a folder: exit 2, folder kept."""
    from genemask.modelfolder import load_classifier, save_classifier
    from genemask.pretrain import build_model
    from genemask.tokenizer import build_tokenizer, save_tokenizer

    pre = tmp_path / "pre"
    model, k = build_model(json.loads((root / "resources" / "models" / "tiny.json").read_text()), seed=0)
    model.save_pretrained(pre)
    save_tokenizer(build_tokenizer(k), pre)
    (pre / "genemask.json").write_text(json.dumps({"k": k, "scheme": "random"}))
    clf = save_classifier(load_classifier(pre, 2, None), tmp_path / "clf", {"source_model": str(pre)})
    assert (clf / MARKER).read_text().strip() == "classifier"
    fa = _fasta(tmp_path / "g.fa", n=2, length=200)
    res = tmp_path / "results.tsv"
    res.mkdir()
    (res / "old_run.tsv").write_text("id\tp\n")
    before = _tree(tmp_path)
    _refused(["predict", "--model", str(clf), str(fa), "-o", str(res)], capsys, "is a folder")
    _refused(["embed", "--model", str(pre), str(fa), "-o", str(res)], capsys, "is a folder")
    _refused(["predict", "--model", str(clf), str(fa), "-o", str(clf)], capsys, "this command's input")
    assert _tree(tmp_path) == before
    assert main(["predict", "--model", str(clf), str(fa), "-o", str(tmp_path / "p.tsv")]) == 0


# ---- one writer per output: a lock, and temporary files owned per process ---------------------
@pytest.mark.subprocess
def test_a_second_writer_of_the_same_output_is_refused(tmp_path, capsys):
    fa = _indexed(tmp_path)
    out = tmp_path / "chunks.tsv"
    with output_lock(out):  # this process writes chunks.tsv; a real second command must not race it
        r = subprocess.run([GENEMASK, "chunks", str(fa), "--size", "1000", "-o", str(out)], capture_output=True, text=True)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "another genemask process is writing" in r.stderr
        assert not out.exists()
    assert main(["chunks", str(fa), "--size", "1000", "-o", str(out)]) == 0  # released: it goes through
    assert not (tmp_path / ".chunks.tsv.lock").exists()


@pytest.mark.subprocess
def test_temporaries_of_live_processes_are_kept_and_of_dead_ones_removed(tmp_path):
    out = tmp_path / "x.tsv"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f".x.tsv.tmp-{sleeper.pid}"
        live.write_text("another process's half-written output\n")
        dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True).stdout.strip()
        dead = tmp_path / f".x.tsv.tmp-{dead_pid}"
        dead.write_text("left by a SIGKILLed run\n")
        with atomic_output(out) as tmp:
            tmp.write_text("mine\n")
        assert out.read_text() == "mine\n"
        assert live.read_text() == "another process's half-written output\n"
        assert not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.subprocess
def test_two_pretraining_runs_with_the_same_output_do_not_race(tmp_path, hg38_slice, data_a):
    """The second run is refused at once; the first finishes with its checkpoints and folder intact.
    The first is stopped (SIGSTOP) while it holds its output's lock and continued once the second was
    refused, so it is certainly mid-run without having to be a long run."""
    tiny = {"k": 6, "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 512}
    (tmp_path / "tiny.json").write_text(json.dumps(tiny))
    assert main(["corpus", str(hg38_slice), "--region", "chr2:1-200000", "-o", str(tmp_path / "c0")]) == 0
    out = tmp_path / "run"
    cmd = [GENEMASK, "pretrain", "--corpus", str(tmp_path / "c0"), "--model-config", str(tmp_path / "tiny.json"),
           "--scheme", "genemask", "--ranking", str(data_a), "-o", str(out), "--set", "steps=10",
           "--set", "batch_size=4", "--set", "grad_accum=1", "--set", "checkpoint_every=5", "--set", "threads=1",
           "--set", "warmup_steps=2"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / ".run.lock"
        deadline = time.monotonic() + 60
        while not lock.exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.002)
        first.send_signal(signal.SIGSTOP)  # holds the lock, does nothing until SIGCONT
        assert first.poll() is None and lock.exists(), "the first run never took its output's lock"
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert "another genemask process is writing" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    finally:
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert "10/10 steps" in err and sorted(p.name for p in (tmp_path / "run.ckpt").glob("*/step*.pt")) == \
        ["step10.pt", "step5.pt"], err  # it trained to the end, checkpoints included
    assert (out / "step10" / "model.safetensors").is_file() and (out / MARKER).read_text().strip() == "pretraining run"
    assert not lock.exists()


# ---- every command, before any work: the same refusals -----------------------------------------
def _argv(command: str, d: Path, out: str) -> list[str]:
    """A command line of `command` whose inputs exist (their content does not matter: outputs are
    checked before any input is read) and whose output is `out`."""
    f, fa, npz, tsv = str(d / "in.txt"), str(d / "in.fa"), str(d / "in.npz"), str(d / "in.tsv")
    return {
        "fetch": ["fetch", "--mirror-path", "x.fa", "-o", out],
        "index": ["index", fa, "-o", out],
        "chunks": ["chunks", fa, "--size", "100", "-o", out],
        "ngrams": ["ngrams", fa, "-o", out],
        "merge": ["merge", npz, npz, "-o", out],
        "npmi": ["npmi", npz, "-o", out],
        "corpus": ["corpus", fa, "-o", out],
        "pretrain": ["pretrain", "--corpus", str(d), "--model-config", f, "--scheme", "dnabert", "-o", out],
        "baseline": ["baseline", "--name", "b", "--model", str(d), "-o", out],
        "task-data": ["task-data", "--task", "T", "--train", tsv, "--test", tsv, "--num-labels", "2",
                      "--out-train", out, "--out-test", str(d / "te.tsv"), "--out-stats", str(d / "st.json")],
        "finetune": ["finetune", "--model", str(d), "--train", tsv, "--test", tsv, "--task", "T", "--shot", "10",
                     "--seed", "1", "--scheme", "dnabert", "--num-labels", "2", "-o", out],
        "predict": ["predict", "--model", str(d), fa, "-o", out],
        "embed": ["embed", "--model", str(d), fa, "-o", out],
        "explain": ["explain", "--model", str(d), fa, "-o", out],
        "explain --bedgraph": ["explain", "--model", str(d), fa, "-o", str(d.parent / "e.npz"), "--bedgraph", out],
        "explain-motifs": ["explain-motifs", npz, "-o", out],
        "explain-motifs --seqlets": ["explain-motifs", npz, "-o", str(d.parent / "m.tsv"), "--seqlets", out],
        "explain-motifs --reliance": ["explain-motifs", npz, "-o", str(d.parent / "m.tsv"), "--reliance", out],
        "explain-motifs --logos": ["explain-motifs", npz, "-o", str(d.parent / "m.tsv"), "--logos", out],
        "aggregate": ["aggregate", "--outdir", out, f],
        "plot-loss": ["plot-loss", tsv, "-o", out],
        "plot-mask-ranks": ["plot-mask-ranks", "--stats", tsv, "-o", out],
        "motifs": ["motifs", "--ranking", tsv, "-o", out],
        "write-missing": ["write-missing", "-o", out],
        "study-doc": ["study-doc", "--config", f, "--command", "make study", "-o", out],
        "probe": ["probe", "--model", str(d), "--task", "T", "--scheme", "dnabert", "--num-labels", "2",
                  "--shot", "10", tsv, tsv, "--seeds", "1", "-o", out],
        "bench-doc": ["bench-doc", f, "-o", out],
    }[command]


FILE_COMMANDS = ["fetch", "index", "chunks", "ngrams", "merge", "npmi", "task-data", "finetune", "predict", "embed",
                 "explain", "explain --bedgraph", "explain-motifs", "explain-motifs --seqlets",
                 "explain-motifs --reliance", "explain-motifs --logos",
                 "plot-loss", "plot-mask-ranks", "motifs", "write-missing", "study-doc", "bench-doc",
                 "probe"]
FOLDER_COMMANDS = ["corpus", "pretrain", "baseline"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    d = tmp_path / "inputs"
    d.mkdir()
    for name in ("in.txt", "in.fa", "in.npz", "in.tsv"):
        (d / name).write_text("x\n")
    mine = tmp_path / "mine"  # a user's folder of files
    mine.mkdir()
    (mine / "keep.txt").write_text("precious\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command", FILE_COMMANDS + FOLDER_COMMANDS + ["aggregate"])
def test_every_command_refuses_the_working_directory_and_a_users_folder(command, workdir, capsys):
    before = _tree(workdir)
    _refused(_argv(command, workdir / "inputs", "."), capsys, "working directory")
    if command != "aggregate":  # aggregate writes files into its --outdir: any folder receives them
        _refused(_argv(command, workdir / "inputs", "mine"), capsys, "is a folder" if command in FILE_COMMANDS
                 else "did not write")
    if command not in ("fetch", "write-missing", "aggregate"):  # the folder holding the inputs
        _refused(_argv(command, workdir / "inputs", "inputs"), capsys, "refusing to write over this command's input")
    assert _tree(workdir) == before


def test_aggregate_writes_into_a_folder_holding_its_inputs_but_never_over_one(tmp_path, capsys):
    """results/report/ holds aggregate's missing.tsv and receives its outputs: allowed; a file it would
    write over its own input is still refused (the pipeline's layout, and the fault it must catch)."""
    run = {"task": "Prom-core", "shot": 10, "seed": 1, "scheme": "dnabert", "n_train": 20, "n_test": 40,
           "accuracy": 0.6, "macro_f1": 0.6, "mcc": 0.2, "auroc": 0.6, "train_seconds": 1.0, "eval_seconds": 0.1}
    metrics = []
    for seed in (1, 2, 3):
        p = tmp_path / f"seed{seed}.json"
        p.write_text(json.dumps({**run, "seed": seed}))
        metrics.append(str(p))
    report = tmp_path / "report"
    report.mkdir()
    (report / "missing.tsv").write_text("task\tshot\treason\n")
    assert main(["aggregate", *metrics, "--missing", str(report / "missing.tsv"), "--outdir", str(report)]) == 0
    assert (report / "runs.tsv").is_file() and (report / "missing.tsv").read_text() == "task\tshot\treason\n"
    (report / "runs.tsv").rename(report / "mine.tsv")
    (report / "runs.tsv").symlink_to(report / "mine.tsv")
    _refused(["aggregate", *metrics, "--missing", str(report / "missing.tsv"), "--outdir", str(report)], capsys,
             "symbolic link")
