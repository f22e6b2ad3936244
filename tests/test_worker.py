"""The warm worker: a run through it equals a run in its own process; exit codes, errors and
cancellation pass through; a private socket folder; the server goes away when idle."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genemask import worker
from genemask.tasks import prepare_task_data

BIN = os.path.join(os.path.dirname(sys.executable), "genemask")
TIMING = ("train_seconds", "eval_seconds")


@pytest.fixture(scope="module")
def setup(fewshot, tmp_path_factory):
    import torch
    from transformers import BertConfig, BertForMaskedLM

    d = tmp_path_factory.mktemp("worker")
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=4101, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=512)).save_pretrained(d / "model")
    (d / "model" / "genemask.json").write_text(json.dumps({"k": 6}))
    prepare_task_data(task="Prom-core", train=str(fewshot / "Prom-core" / "10" / "train.tsv"),
                      test=str(fewshot / "Prom-core" / "test.tsv"), exclude=[], num_labels=2, max_test=100, seed=0,
                      out_train=d / "train.tsv", out_test=d / "test.tsv", out_stats=d / "stats.json")
    sock = d / "sock"
    sock.mkdir(mode=0o700)
    return d, sock


def _finetune(d, sock, out, worker_on, *extra, seed=3, epochs=2, idle="20"):
    env = {**os.environ, "GENEMASK_WORKER": "1" if worker_on else "0", "GENEMASK_THREADS": "1",
           "GENEMASK_WORKER_DIR": str(sock), "GENEMASK_WORKER_IDLE": idle}
    cmd = [BIN, "finetune", "--model", str(d / "model"), "--train", str(d / "train.tsv"), "--test",
           str(d / "test.tsv"), "--task", "Prom-core", "--shot", "10", "--seed", str(seed), "--scheme", "none",
           "--settings", json.dumps({"epochs": epochs}), "-o", str(out), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _strip(p):
    return {k: v for k, v in json.loads(Path(p).read_text()).items() if k not in TIMING}


def test_worker_run_equals_own_process_run(setup):
    d, sock = setup
    a = _finetune(d, sock, d / "alone.json", False, "--num-labels", "2")
    b = _finetune(d, sock, d / "warm1.json", True, "--num-labels", "2")
    c = _finetune(d, sock, d / "warm2.json", True, "--num-labels", "2")  # the second one finds the server
    for r in (a, b, c):
        assert r.returncode == 0, r.stderr
    assert _strip(d / "alone.json") == _strip(d / "warm1.json") == _strip(d / "warm2.json")
    assert "accuracy" in c.stderr  # the run's log reached the caller's stderr
    assert list(sock.iterdir()) and all(p.stat().st_mode & 0o077 == 0 for p in sock.iterdir())


def test_worker_passes_errors_and_exit_codes(setup):
    d, sock = setup
    r = _finetune(d, sock, d / "bad.json", True, "--num-labels", "1")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "genemask finetune: error: --num-labels: must be >= 2, got 1"]
    assert not (d / "bad.json").exists()
    r = _finetune(d, sock, d / "bad2.json", True)  # argparse error (missing --num-labels) in the child
    assert r.returncode == 2 and "--num-labels" in r.stderr


def test_cancelled_client_kills_its_run(setup):
    d, sock = setup
    _finetune(d, sock, d / "warm0.json", True, "--num-labels", "2")  # the server is up
    env = {**os.environ, "GENEMASK_WORKER": "1", "GENEMASK_THREADS": "1", "GENEMASK_WORKER_DIR": str(sock)}
    cmd = [BIN, "finetune", "--model", str(d / "model"), "--train", str(d / "train.tsv"), "--test",
           str(d / "test.tsv"), "--task", "Prom-core", "--shot", "10", "--seed", "1", "--scheme", "none",
           "--num-labels", "2", "--settings", json.dumps({"epochs": 500}), "-o", str(d / "long.json")]
    p = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    line = ""
    while "epoch 1/" not in line:  # the child is training
        line = p.stderr.readline()
        assert line or p.poll() is None
    server = _server_pid(sock)
    children = _children(server)
    assert children, "no child of the server is running the fine-tuning"
    p.send_signal(signal.SIGTERM)  # what snakemake does to a cancelled job
    p.wait(timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(c) for c in children):
        time.sleep(0.05)
    assert not any(_alive(c) for c in children)
    assert not (d / "long.json").exists()


def test_server_exits_when_idle(setup, tmp_path):
    d, _ = setup
    sock = tmp_path / "s"
    sock.mkdir(mode=0o700)
    assert _finetune(d, sock, tmp_path / "x.json", True, "--num-labels", "2", idle="1").returncode == 0
    pid = _server_pid(sock)
    deadline = time.time() + 30
    while time.time() < deadline and _alive(pid):
        time.sleep(0.2)
    assert not _alive(pid)
    assert not list(sock.glob("*/*.sock"))  # socket, lock and log removed


def test_enabled_only_for_listed_commands(monkeypatch):
    monkeypatch.setenv("GENEMASK_WORKER", "1")
    monkeypatch.delenv("GENEMASK_WORKER_CHILD", raising=False)
    assert worker.enabled("finetune") and not worker.enabled("pretrain")
    monkeypatch.setenv("GENEMASK_WORKER", "0")
    assert not worker.enabled("finetune")


def _server_pid(sock_root: Path) -> int:
    """The server: a process running `genemask.worker serve SOCKET` whose parent does not (its
    forked children show the same command line)."""
    (folder,) = sock_root.glob("genemask-*")
    for sock in folder.glob("*.sock"):
        pids = _pids_with(sock)
        servers = [p for p in pids if _ppid(p) not in pids]
        if servers:
            return servers[0]
    raise AssertionError("no worker server found")


def _pids_with(sock) -> set[int]:
    out = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if str(sock).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.add(int(pid))
            except OSError:
                pass
    return out


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _children(pid: int) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if _ppid(int(p)) == pid:
                    out.append(int(p))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
