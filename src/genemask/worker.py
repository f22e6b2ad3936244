"""The warm worker: fine-tuning runs without the per-run start-up tax.

A fine-tuning run of the few-shot grid trains for one or two seconds, but a fresh process spends
several seconds importing torch and transformers before it starts. The warm worker pays that
once: one long-lived process per (Python environment, code version, SLURM job) imports the heavy
modules and then forks one child per run. Each child is a fresh copy-on-write process that
runs exactly the `genemask` command it was given (`cli.main(argv)`) with the caller's working
directory, environment and standard streams, and exits; its exit status is handed back to the
caller. So every run is still its own Snakemake job, with its own log, metrics JSON, exit status
and incremental-rerun semantics, and its arithmetic is that of a run started alone (a child shares
no torch state with other runs: the server never runs a torch operation, it only imports).

Use: `GENEMASK_WORKER=1 genemask finetune ...` (the fine-tuning rule sets it from
`finetune.worker`, default true). The first such command starts the server (`python -m
genemask.worker serve SOCKET`, detached); later ones connect to it. Without the variable, or if
the server cannot be reached, the command runs in its own process as before.

- Socket: `$GENEMASK_WORKER_DIR` (default `$XDG_RUNTIME_DIR`, else the temp dir) /
  `genemask-<uid>/<key>.sock`, folder mode 0700. The key hashes the interpreter, the package's
  source files (path, size, mtime), and `SLURM_JOB_ID`: an edited checkout or another venv gets
  its own server, and two SLURM jobs on one node never share one (a child runs in its server's
  cgroup, so it must be the caller's job).
- Protocol: the client sends its standard-stream descriptors (SCM_RIGHTS) and a JSON request
  {argv, cwd, env}; the server answers one line with the exit status. If the client goes away
  (Snakemake cancels the job), the server kills the child.
- The server exits after `GENEMASK_WORKER_IDLE` seconds (default 120) without a run.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path

ENV_SWITCH = "GENEMASK_WORKER"
ENV_CHILD = "GENEMASK_WORKER_CHILD"
COMMANDS = ("finetune",)  # the subcommands that go through the worker
PRELOAD = ("torch", "transformers", "transformers.models.bert.modeling_bert", "genemask.cli", "genemask.finetune",
           "genemask.tasks")
_HEADER = struct.Struct("!I")


def enabled(command: str) -> bool:
    return (command in COMMANDS and os.environ.get(ENV_SWITCH, "0") not in ("", "0", "false")
            and ENV_CHILD not in os.environ and hasattr(socket, "send_fds"))


def _code_key() -> str:
    pkg = Path(__file__).resolve().parent
    h = hashlib.sha256(f"{sys.executable}\0{sys.prefix}\0{os.environ.get('SLURM_JOB_ID', '')}".encode())
    for p in sorted(pkg.rglob("*.py")):
        st = p.stat()
        h.update(f"\0{p.relative_to(pkg)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def socket_path() -> Path:
    """The server's socket for this environment and code version (its folder made 0700 if absent)."""
    import tempfile

    base = os.environ.get("GENEMASK_WORKER_DIR") or os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    d = Path(base) / f"genemask-{os.getuid()}"
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = d.stat()
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(f"{d}: must be owned by uid {os.getuid()} with mode 0700")
    return d / f"{_code_key()}.sock"


# ---------------------------------------------------------------------------------------------
# client
# ---------------------------------------------------------------------------------------------
def _connect(path: Path) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
        return s
    except OSError:
        s.close()
        return None


def _start_server(path: Path):
    import subprocess

    log = open(path.with_suffix(".log"), "ab")
    env = {k: v for k, v in os.environ.items() if k != ENV_SWITCH}
    try:
        return subprocess.Popen([sys.executable, "-m", "genemask.worker", "serve", str(path)], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                close_fds=True, cwd="/")
    finally:
        log.close()


def _connect_or_start(path: Path, timeout_s: float = 120.0) -> socket.socket | None:
    s = _connect(path)
    if s is not None:
        return s
    proc = _start_server(path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s = _connect(path)
        if s is not None:
            return s
        if proc.poll() not in (None, 0):  # 0: another client's server holds the lock; keep polling
            return None
        time.sleep(0.05)
    return None


def run(argv: list[str]) -> int | None:
    """Run `genemask ARGV` in a child of the warm server; its exit status, or None if no server."""
    try:
        path = socket_path()
        s = _connect_or_start(path)
    except OSError as e:
        print(f"genemask: warm worker unavailable ({e}); running in this process", file=sys.stderr)
        return None
    if s is None:
        print(f"genemask: warm worker did not start (see {path.with_suffix('.log')}); running in this process",
              file=sys.stderr)
        return None
    with s:
        req = json.dumps({"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        sys.stdout.flush()
        sys.stderr.flush()
        socket.send_fds(s, [_HEADER.pack(len(req))], [0, 1, 2])
        s.sendall(req)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(64)
            if not chunk:
                print("genemask: the warm worker's run ended without an exit status", file=sys.stderr)
                return 1
            reply += chunk
    return int(reply)


# ---------------------------------------------------------------------------------------------
# server
# ---------------------------------------------------------------------------------------------
def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    conn.settimeout(10)
    head, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
    if len(head) != _HEADER.size or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise OSError("malformed request")
    (n,) = _HEADER.unpack(head)
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise OSError("truncated request")
        buf += chunk
    conn.settimeout(None)
    return json.loads(buf), fds


def _default_threads() -> int:
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else max(1, len(os.sched_getaffinity(0)))


def _child(req: dict, fds: list[int]) -> None:
    """In the forked child: become the caller (streams, cwd, environment) and run its command."""
    rc = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        os.environ[ENV_CHILD] = "1"
        if "GENEMASK_THREADS" not in os.environ:  # the server ran on one thread; restore torch's default
            import torch

            torch.set_num_threads(_default_threads())
        from . import cli

        rc = cli.main(req["argv"])
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - report anything, then leave with status 1
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(rc if isinstance(rc, int) else 1)


def _warm_up() -> None:
    """Pay the first-call costs (transformers' lazy imports, from_pretrained's first load, a first
    fine-tuning step and scoring pass, the metrics' first call, building the CLI parser) once,
    here, on one thread: with one thread torch runs no OpenMP parallel region, so no thread pool
    exists that a forked child could inherit half-alive. The child sets its own thread count
    (GENEMASK_THREADS, else torch's default) before any work."""
    import tempfile

    import torch
    from transformers import BertConfig, BertForMaskedLM

    from .cli import build_parser
    from .finetune import DEFAULT_SETTINGS, compute_metrics, load_classifier, predict_proba, train_classifier

    torch.set_num_threads(1)
    build_parser()  # cached: the children parse with this one
    with tempfile.TemporaryDirectory() as d:
        BertForMaskedLM(BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                   intermediate_size=8, max_position_embeddings=8)).save_pretrained(d)
        clf = load_classifier(d, 2, 0.1)
        ids, lengths = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]]), torch.tensor([4, 3])
        train_classifier(clf, ids, lengths, [0, 1], {"batch_size": 2, "lr": 1e-4, "epochs": 1}, DEFAULT_SETTINGS,
                         0, torch.device("cpu"), label="warm-up")
        predict_proba(clf, ids, lengths, 2, torch.device("cpu"))
    compute_metrics([0, 1, 0], [[0.2, 0.8], [0.3, 0.7], [0.9, 0.1]], 2)
    compute_metrics([0, 1, 2], [[0.2, 0.7, 0.1], [0.3, 0.6, 0.1], [0.1, 0.1, 0.8]], 3)


def serve(path: str | Path, idle_s: float | None = None) -> int:
    import fcntl
    import importlib
    import selectors

    path = Path(path)
    idle_s = float(os.environ.get("GENEMASK_WORKER_IDLE", "120")) if idle_s is None else idle_s
    lock = open(f"{path}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another server for this key is alive
    path.unlink(missing_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        srv.bind(str(path))
    finally:
        os.umask(old_umask)
    ino = os.stat(path).st_ino
    srv.listen(64)
    for name in PRELOAD:
        importlib.import_module(name)
    _warm_up()
    print(f"genemask worker {os.getpid()} serving {path}", file=sys.stderr, flush=True)

    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    # a child's exit wakes the loop at once: SIGCHLD writes a byte into this pair (no polling)
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel.register(wake_r, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    last = time.monotonic()
    try:
        while children or time.monotonic() - last < idle_s:
            for key, _ in sel.select(timeout=1.0):
                if key.fileobj is wake_r:
                    try:
                        while wake_r.recv(256):
                            pass
                    except BlockingIOError:
                        pass
                elif key.fileobj is srv:
                    conn, _ = srv.accept()
                    try:
                        req, fds = _recv_request(conn)
                    except (OSError, ValueError) as e:
                        print(f"genemask worker: bad request ({e})", file=sys.stderr, flush=True)
                        conn.close()
                        continue
                    pid = os.fork()
                    if pid == 0:
                        signal.set_wakeup_fd(-1)
                        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                        sel.close()
                        for c in (srv, conn, wake_r, wake_w, *children.values()):
                            c.close()
                        _child(req, fds)
                    for fd in fds:
                        os.close(fd)
                    children[pid] = conn
                    sel.register(conn, selectors.EVENT_READ, pid)
                else:  # the client closed its end (cancelled job): stop its run
                    try:
                        gone = key.fileobj.recv(1) == b""
                    except OSError:
                        gone = True
                    if gone:
                        sel.unregister(key.fileobj)
                        try:
                            os.kill(key.data, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                conn = children.pop(pid, None)
                if conn is None:
                    continue
                rc = os.waitstatus_to_exitcode(status)
                try:
                    conn.sendall(f"{rc if rc >= 0 else 128 - rc}\n".encode())
                except OSError:
                    pass
                if conn.fileno() >= 0:
                    try:
                        sel.unregister(conn)
                    except (KeyError, ValueError):
                        pass
                conn.close()
                last = time.monotonic()
    finally:
        try:
            if os.stat(path).st_ino == ino:  # still ours (not a successor's)
                path.unlink()
                path.with_suffix(".log").unlink(missing_ok=True)
                Path(f"{path}.lock").unlink(missing_ok=True)
        except OSError:
            pass
        srv.close()
        signal.set_wakeup_fd(-1)
        wake_r.close()
        wake_w.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2]))
    sys.exit("usage: python -m genemask.worker serve SOCKET")
