"""The warm worker: a run through it equals a run in its own process; exit codes, errors and
cancellation pass through; a private socket folder; the server goes away when idle. Hostile: a
folder planted by another local user (a real second user, when root), wrong modes and owners, an
impostor server, peers of another uid, malformed and stalled requests, a server killed mid-run,
Ctrl-C."""
from __future__ import annotations

import json
import os
import pwd
import secrets
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from conftest import GENEMASK
from genemask import worker
from genemask.tasks import prepare_task_data

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
    cmd = [GENEMASK, "finetune", "--model", str(d / "model"), "--train", str(d / "train.tsv"), "--test",
           str(d / "test.tsv"), "--task", "Prom-core", "--shot", "10", "--seed", str(seed), "--scheme", "none",
           "--settings", json.dumps({"epochs": epochs}), "-o", str(out), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _strip(p):
    return {k: v for k, v in json.loads(Path(p).read_text()).items() if k not in TIMING}


@pytest.mark.subprocess
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


@pytest.mark.subprocess
def test_worker_passes_errors_and_exit_codes(setup):
    d, sock = setup
    r = _finetune(d, sock, d / "bad.json", True, "--num-labels", "1")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "genemask finetune: error: --num-labels: must be >= 2, got 1"]
    assert not (d / "bad.json").exists()
    r = _finetune(d, sock, d / "bad2.json", True)  # argparse error (missing --num-labels) in the child
    assert r.returncode == 2 and "--num-labels" in r.stderr


@pytest.mark.subprocess
def test_cancelled_client_kills_its_run(setup):
    d, sock = setup
    _finetune(d, sock, d / "warm0.json", True, "--num-labels", "2")  # the server is up
    env = {**os.environ, "GENEMASK_WORKER": "1", "GENEMASK_THREADS": "1", "GENEMASK_WORKER_DIR": str(sock)}
    cmd = [GENEMASK, "finetune", "--model", str(d / "model"), "--train", str(d / "train.tsv"), "--test",
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


@pytest.mark.subprocess
@pytest.mark.slow  # starts worker servers: make test runs it, make test-fast does not
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
    """The server: a process running `genemask.worker_server serve SOCKET` whose parent does not (its
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


# ---- hostile: other local users, malformed and stalled clients, faults ------------------------
UID = os.getuid()


@pytest.fixture(scope="module")
def alone(setup):
    """The reference: the run of `_finetune`'s defaults in its own process."""
    d, sock = setup
    r = _finetune(d, sock, d / "reference.json", False, "--num-labels", "2")
    assert r.returncode == 0, r.stderr
    return d / "reference.json"


@pytest.fixture(scope="module")
def hostile_user():
    """A throwaway second local user (deleted afterwards); skips unless root with useradd."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a second local user")
    missing = [t for t in ("useradd", "userdel", "runuser") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"no {', '.join(missing)} to create a second local user")
    name = f"genemask-hostile-{secrets.token_hex(3)}"
    r = subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"useradd failed: {r.stderr.strip()}")
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def shared_tmp():
    """A folder every local user can write, sticky, like /tmp (tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="genemask-test-", dir="/tmp"))
    d.chmod(0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _as_user(user, *cmd, **kw):
    return subprocess.run(["runuser", "-u", user.pw_name, "--", *cmd], check=True, capture_output=True, text=True,
                          timeout=60, **kw)


def _assert_fell_back(r, out, alone, why):
    """Exit 0, the output of a run alone, and one stderr line saying why the worker was not used."""
    assert r.returncode == 0, r.stderr
    assert [ln for ln in r.stderr.splitlines() if "warm worker" in ln] == [
        f"genemask: warm worker disabled: {why}; running in this process"], r.stderr
    assert _strip(out) == _strip(alone)


@pytest.mark.subprocess
@pytest.mark.hostile
def test_symlinked_folder_planted_by_another_user_is_refused(setup, alone, hostile_user, shared_tmp, tmp_path):
    d, _ = setup
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    precious = victim / "precious.txt"
    precious.write_text("the victim's data\n")
    before = (precious.read_bytes(), precious.stat().st_size, precious.stat().st_mtime_ns, victim.stat().st_mode)
    link = shared_tmp / f"genemask-{UID}"
    _as_user(hostile_user, shutil.which("ln"), "-s", str(victim), str(link))
    assert link.is_symlink() and link.lstat().st_uid == hostile_user.pw_uid
    r = _finetune(d, shared_tmp, tmp_path / "out.json", True, "--num-labels", "2")
    _assert_fell_back(r, tmp_path / "out.json", alone, f"{link} is a symlink, not a private folder")
    assert os.listdir(victim) == ["precious.txt"]  # no socket, lock or log went through the link
    assert (precious.read_bytes(), precious.stat().st_size, precious.stat().st_mtime_ns,
            victim.stat().st_mode) == before
    assert link.is_symlink() and not _pids_with(link)  # left alone; no server started


@pytest.mark.subprocess
@pytest.mark.hostile
@pytest.mark.parametrize("kind", ["mode", "owner", "file"])
@pytest.mark.slow  # starts worker servers: make test runs it, make test-fast does not
def test_unsafe_folder_is_refused(setup, alone, shared_tmp, tmp_path, kind, request):
    d, _ = setup
    folder = shared_tmp / f"genemask-{UID}"
    if kind == "mode":
        folder.mkdir()
        folder.chmod(0o755)
        why = f"{folder} has mode 0755, not a private folder (0700)"
    elif kind == "owner":
        user = request.getfixturevalue("hostile_user")
        _as_user(user, shutil.which("mkdir"), "-m", "700", str(folder))
        why = f"{folder} is owned by uid {user.pw_uid}, not a private folder of uid {UID}"
    else:
        folder.write_text("")
        why = f"{folder} is not a folder"
    mode = folder.lstat().st_mode
    r = _finetune(d, shared_tmp, tmp_path / "out.json", True, "--num-labels", "2")
    _assert_fell_back(r, tmp_path / "out.json", alone, why)
    assert folder.lstat().st_mode == mode  # not "repaired" either
    assert not folder.is_dir() or not any(folder.iterdir())


@pytest.mark.hostile
def test_runtime_dir_is_preferred_over_temp_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("GENEMASK_WORKER_DIR", raising=False)
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    assert worker.base_dir() == str(run)
    path = worker.socket_path()
    assert path.parent == run / f"genemask-{UID}" and stat.S_IMODE(path.parent.lstat().st_mode) == 0o700
    run.chmod(0o777)  # a runtime dir others can write, or none at all: the temp dir
    assert worker.base_dir() == tempfile.gettempdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))
    assert worker.base_dir() == tempfile.gettempdir()


@pytest.mark.subprocess
@pytest.mark.hostile
@pytest.mark.slow  # starts worker servers: make test runs it, make test-fast does not
def test_client_sends_nothing_to_a_server_of_another_uid(setup, alone, hostile_user, shared_tmp, tmp_path,
                                                         monkeypatch):
    """An impostor listening on our socket (bound as root, listening as another user): the client
    sees its uid (SO_PEERCRED), sends it neither descriptors nor environment, runs in its process."""
    d, _ = setup
    monkeypatch.setenv("GENEMASK_WORKER_DIR", str(shared_tmp))
    path = worker.socket_path()  # the folder, made as the client makes it
    impostor = textwrap.dedent("""
        import array, os, socket, sys
        s = socket.socket(socket.AF_UNIX)
        s.bind(sys.argv[1])
        os.chmod(sys.argv[1], 0o666)
        os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[2]))
        s.listen(1)
        print("listening", flush=True)
        c, _ = s.accept()
        got, fds = b"", []
        while True:
            data, anc, _, _ = c.recvmsg(1 << 16, socket.CMSG_SPACE(64))
            for _, _, cdata in anc:
                fds += array.array("i", cdata[:len(cdata) - len(cdata) % 4])
            if not data:
                break
            got += data
        print(len(got), len(fds), flush=True)
    """)
    p = subprocess.Popen([sys.executable, "-c", impostor, str(path), str(hostile_user.pw_uid)],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "listening\n"
        r = _finetune(d, shared_tmp, tmp_path / "out.json", True, "--num-labels", "2")
        _assert_fell_back(r, tmp_path / "out.json", alone,
                          f"the server at {path} runs as uid {hostile_user.pw_uid}, not {UID}")
        assert p.communicate(timeout=30)[0] == "0 0\n"  # no byte, no descriptor reached it
    finally:
        p.kill()
        p.wait()


@pytest.mark.subprocess
@pytest.mark.hostile
@pytest.mark.slow  # starts worker servers: make test runs it, make test-fast does not
def test_server_refuses_a_peer_of_another_uid(setup, hostile_user, shared_tmp, tmp_path):
    """A socket another user can reach (folder and socket opened up by mistake): the server still
    refuses the peer (SO_PEERCRED) before reading anything; nothing runs."""
    d, _ = setup
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3 for the second user")
    assert _finetune(d, shared_tmp, tmp_path / "w.json", True, "--num-labels", "2", idle="30").returncode == 0
    sock, server = _live_socket(shared_tmp)
    folder = sock.parent
    hostile = textwrap.dedent("""
        import json, os, socket, struct, sys
        s = socket.socket(socket.AF_UNIX)
        s.connect(sys.argv[1])
        req = json.dumps({"argv": ["finetune", "--help"], "cwd": "/", "env": {}}).encode()
        try:
            socket.send_fds(s, [struct.pack("!I", len(req))], [0, 1, 2])
            s.sendall(req)
            reply = s.recv(64)
        except OSError:
            reply = b""
        print("status:" + reply.decode() if reply else "refused")
    """)
    try:
        folder.chmod(0o711)
        sock.chmod(0o666)
        out = _as_user(hostile_user, "/usr/bin/python3", "-c", hostile, str(sock)).stdout
    finally:
        folder.chmod(0o700)
        sock.chmod(0o600)
    assert out == "refused\n"  # no status, and no help text on the descriptors it sent
    log = next(folder.glob("*.log")).read_text()
    assert f"refused a connection from uid {hostile_user.pw_uid}" in log
    assert _alive(server) and not _children(server)
    os.kill(server, signal.SIGTERM)


def _live_socket(sock_root: Path) -> tuple[Path, int]:
    server = _server_pid(sock_root)
    (sock,) = [s for s in sock_root.glob("genemask-*/*.sock") if server in _pids_with(s)]
    return sock, server


def _start_long_run(d, sock, out, worker_on):
    """A fine-tuning of many epochs, returned once it trains (its stderr is being read)."""
    env = {**os.environ, "GENEMASK_WORKER": "1" if worker_on else "0", "GENEMASK_THREADS": "1",
           "GENEMASK_WORKER_DIR": str(sock), "GENEMASK_WORKER_IDLE": "20"}
    cmd = [GENEMASK, "finetune", "--model", str(d / "model"), "--train", str(d / "train.tsv"), "--test",
           str(d / "test.tsv"), "--task", "Prom-core", "--shot", "10", "--seed", "1", "--scheme", "none",
           "--num-labels", "2", "--settings", json.dumps({"epochs": 500}), "-o", str(out)]
    p = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    seen = []
    while not seen or "epoch 1/" not in seen[-1]:
        seen.append(p.stderr.readline())
        assert seen[-1] or p.poll() is None, "".join(seen)
    return p, seen


def _closed_by_server(s: socket.socket, timeout: float) -> bool:
    """Whether the server closes this connection within `timeout` s (end of file, or a reset when
    it closed with our bytes unread), having sent nothing."""
    s.settimeout(timeout)
    try:
        return s.recv(64) == b""
    except ConnectionResetError:
        return True


def _eof_within(fd: int, timeout: float) -> bool:
    """Whether reading the pipe end `fd` reports end of file within `timeout` seconds."""
    ready, _, _ = select.select([fd], [], [], timeout)
    return bool(ready) and os.read(fd, 4096) == b""


@pytest.mark.subprocess
@pytest.mark.hostile
def test_killed_server_takes_its_run_along(setup, tmp_path):
    d, sock = setup
    assert _finetune(d, sock, tmp_path / "w.json", True, "--num-labels", "2").returncode == 0  # server up
    out = tmp_path / "long.json"
    p, _ = _start_long_run(d, sock, out, True)
    server = _server_pid(sock)
    children = _children(server)
    assert children, "no child of the server is running the fine-tuning"
    os.kill(server, signal.SIGKILL)  # the OOM killer
    deadline = time.time() + 2
    while time.time() < deadline and any(_alive(c) for c in children):
        time.sleep(0.02)
    assert not any(_alive(c) for c in children)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 1 and "the warm worker's run ended without an exit status" in err
    time.sleep(1)
    assert not out.exists() and not list(tmp_path.glob(".long.json.tmp-*"))


def _request(argv=("finetune", "--help")) -> bytes:
    return json.dumps({"argv": list(argv), "cwd": "/", "env": {}}).encode()


MALFORMED = {  # name: (bytes after the header, header size, descriptors sent (copies of the pipe's write end))
    "bad-json": (b"{not json", None, 3),
    "not-a-dict": (b"[1, 2]", None, 3),
    "argv-not-a-list": (json.dumps({"argv": "finetune", "cwd": "/", "env": {}}).encode(), None, 3),
    "zero-size-header": (b"", 0, 3),
    "huge-header": (b"", 1 << 31, 3),
    "too-many-fds": (_request(), None, 4),
    "far-too-many-fds": (_request(), None, 40),
    "too-few-fds": (_request(), None, 1),
    "truncated": (_request()[:5], len(_request()), 3),
}


@pytest.mark.subprocess
@pytest.mark.hostile
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_request_closes_its_descriptors(setup, tmp_path, case):
    d, sock = setup
    assert _finetune(d, sock, tmp_path / "w.json", True, "--num-labels", "2").returncode == 0  # server up
    path, server = _live_socket(sock)
    body, size, nfds = MALFORMED[case]
    r, w = os.pipe()
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        socket.send_fds(s, [struct.pack("!I", len(body) if size is None else size)], [w] * nfds)
        os.close(w)  # the server's copies are now the only writers
        try:
            s.sendall(body)
        except OSError:
            pass  # already refused
        if case == "truncated":
            s.shutdown(socket.SHUT_WR)
        assert _closed_by_server(s, 10)  # refused: closed without an exit status
        assert _eof_within(r, 10), "the server kept a descriptor of the malformed request"
    os.close(r)
    assert _alive(server) and not _children(server)  # nothing ran; the server goes on
    assert _finetune(d, sock, tmp_path / "after.json", True, "--num-labels", "2").returncode == 0
    assert _server_pid(sock) == server


@pytest.mark.subprocess
@pytest.mark.hostile
@pytest.mark.slow  # starts worker servers: make test runs it, make test-fast does not
def test_stalled_clients_block_no_run(setup, alone, tmp_path):
    d, sock = setup
    assert _finetune(d, sock, tmp_path / "w.json", True, "--num-labels", "2").returncode == 0  # server up
    path, server = _live_socket(sock)
    silent = socket.socket(socket.AF_UNIX)
    silent.connect(str(path))  # connects, sends nothing
    half = socket.socket(socket.AF_UNIX)
    half.connect(str(path))
    r, w = os.pipe()
    socket.send_fds(half, [struct.pack("!I", 100)[:2]], [w, w, w])  # half a header, with descriptors
    os.close(w)
    time.sleep(0.2)
    t0 = time.monotonic()
    res = _finetune(d, sock, tmp_path / "out.json", True, "--num-labels", "2")
    took = time.monotonic() - t0
    assert res.returncode == 0 and "warm worker" not in res.stderr, res.stderr
    assert _strip(tmp_path / "out.json") == _strip(alone)
    for s in (silent, half):  # the run did not wait for them: they are still waiting for their deadline
        s.setblocking(False)
        with pytest.raises(BlockingIOError):
            s.recv(1)
    assert took < worker.REQUEST_TIMEOUT_S
    for s in (silent, half):  # then each is dropped at its deadline, with its descriptors
        assert _closed_by_server(s, worker.REQUEST_TIMEOUT_S + 10)
        s.close()
    assert _eof_within(r, 5)
    os.close(r)
    assert _alive(server)


@pytest.mark.subprocess
@pytest.mark.hostile
@pytest.mark.parametrize("worker_on", [False, True], ids=["own-process", "worker"])
@pytest.mark.slow  # starts worker servers: make test runs it, make test-fast does not
def test_ctrl_c_prints_one_line_and_exits_130(setup, tmp_path, worker_on):
    d, sock = setup
    if worker_on:
        assert _finetune(d, sock, tmp_path / "w.json", True, "--num-labels", "2").returncode == 0  # server up
    out = tmp_path / "long.json"
    p, seen = _start_long_run(d, sock, out, worker_on)
    children = _children(_server_pid(sock)) if worker_on else []
    assert children or not worker_on
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    lines = "".join(seen + [err]).splitlines()
    assert p.returncode == 130, err
    assert lines[-1] == "genemask: interrupted" and lines.count("genemask: interrupted") == 1, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert not out.exists() and not list(tmp_path.glob(".long.json.tmp-*"))
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(c) for c in children):
        time.sleep(0.05)
    assert not any(_alive(c) for c in children)
