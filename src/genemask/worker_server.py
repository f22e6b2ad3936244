"""The warm worker's server (see `worker.py` for the design, the protocol and the safety rules).

`python -m genemask.worker_server serve SOCKET`: imports torch, transformers and the fine-tuning code
once, warms them up, then forks one child per request; each child becomes its caller (standard
streams, working directory, environment) and runs `cli.main(argv)`. The loop (`serve`) handles one
event at a time (`_Server`): a connection, bytes of a request, a client's Ctrl-C or hang-up, a child's
exit, a request's deadline.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from .worker import (
    ENV_CHILD,
    HEADER,
    INTERRUPT,
    MAX_REQUEST,
    N_FDS,
    PR_SET_PDEATHSIG,
    PRELOAD,
    REQUEST_TIMEOUT_S,
    PrivateFolder,
    UnsafeFolder,
    peer_uid,
)


class _Pending:
    """An accepted connection whose request is still arriving: read without blocking as it comes,
    refused after REQUEST_TIMEOUT_S. It owns the descriptors received so far (close() closes them)."""

    def __init__(self, conn: socket.socket):
        conn.setblocking(False)
        self.conn = conn
        self.deadline = time.monotonic() + REQUEST_TIMEOUT_S
        self.fds: list[int] = []
        self.size: int | None = None
        self.buf = b""

    def feed(self) -> tuple[dict, list[int]] | None:
        """Take what has arrived; the request and its descriptors once complete (the caller then
        owns them), else None. ValueError for a malformed one (the descriptors stay here)."""
        import array

        want = (HEADER.size if self.size is None else self.size) - len(self.buf)
        try:
            data, anc, flags, _ = self.conn.recvmsg(min(want, 1 << 16), socket.CMSG_SPACE(16 * 4))
        except (BlockingIOError, InterruptedError):
            return None
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(cdata[:len(cdata) - len(cdata) % fds.itemsize])
                self.fds.extend(fds)
        if flags & socket.MSG_CTRUNC or len(self.fds) > N_FDS:
            raise ValueError(f"{len(self.fds)}{'+' if flags & socket.MSG_CTRUNC else ''} descriptors, not {N_FDS}")
        if not data:
            raise ValueError("the client closed before its request was complete")
        self.buf += data
        if self.size is None:
            if len(self.buf) < HEADER.size:
                return None
            (self.size,) = HEADER.unpack(self.buf)
            self.buf = b""
            if not 0 < self.size <= MAX_REQUEST:
                raise ValueError(f"request size {self.size} out of range")
            if len(self.fds) != N_FDS:
                raise ValueError(f"{len(self.fds)} descriptors with the header, not {N_FDS}")
            return None
        if len(self.buf) < self.size:
            return None
        req = json.loads(self.buf)
        if not (isinstance(req, dict) and isinstance(req.get("argv"), list)
                and all(isinstance(a, str) for a in req["argv"]) and isinstance(req.get("cwd"), str)
                and isinstance(req.get("env"), dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in req["env"].items())):
            raise ValueError("the request is not {argv: [str], cwd: str, env: {str: str}}")
        fds, self.fds = self.fds, []
        return req, fds

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []
        self.conn.close()


def _default_threads() -> int:
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else max(1, len(os.sched_getaffinity(0)))


def _die_with_parent(prctl, parent: int) -> None:
    """In a forked child: be killed (SIGKILL) when the server dies, so that a run never outlives
    it (its caller has failed by then); if the server is already gone, leave now."""
    if prctl is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


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
    except KeyboardInterrupt:  # Ctrl-C before cli.main could catch it
        print("genemask: interrupted", file=sys.stderr)
        rc = 130
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
    from .finetune import DEFAULT_SETTINGS, compute_metrics, predict_proba, train_classifier
    from .modelfolder import load_classifier, quiet_transformers
    from .precision import use_bf16

    torch.set_num_threads(1)
    bf16 = use_bf16(DEFAULT_SETTINGS["bf16"], "cpu")  # warm the path the default settings take
    build_parser()  # cached: the children parse with this one
    with tempfile.TemporaryDirectory() as d:
        toy = BertForMaskedLM(BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                         intermediate_size=8, max_position_embeddings=8))
        with quiet_transformers():
            toy.save_pretrained(d)
        clf = load_classifier(d, 2, 0.1)
        ids, lengths = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]]), torch.tensor([4, 3])
        train_classifier(clf, ids, lengths, [0, 1], {"batch_size": 2, "lr": 1e-4, "epochs": 1}, DEFAULT_SETTINGS,
                         0, torch.device("cpu"), label="warm-up", bf16=bf16)
        predict_proba(clf, ids, lengths, 2, torch.device("cpu"), bf16=bf16)
    compute_metrics([0, 1, 0], [[0.2, 0.8], [0.3, 0.7], [0.9, 0.1]], 2)
    compute_metrics([0, 1, 2], [[0.2, 0.7, 0.1], [0.3, 0.6, 0.1], [0.1, 0.1, 0.8]], 3)


def _log(msg: str) -> None:
    print(f"genemask worker {os.getpid()}: {msg}", file=sys.stderr, flush=True)


def _prctl():
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


class _Server:
    """The server's state and one method per event of its loop (see `serve`)."""

    def __init__(self, folder: PrivateFolder, name: str, lock: int):
        import selectors

        self.folder, self.name, self.lock = folder, name, lock
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            self.srv.bind(folder.at(name))
        finally:
            os.umask(old_umask)
        self.ino = folder.ino(name)
        self.srv.listen(64)
        self.srv.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.srv, selectors.EVENT_READ)
        # a child's exit wakes the loop at once: SIGCHLD writes a byte into this pair (no polling)
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sel.register(self.wake_r, selectors.EVENT_READ)
        self.children: dict[int, socket.socket] = {}
        self.pending: dict[socket.socket, _Pending] = {}
        self.prctl, self.me, self.uid = None, os.getpid(), os.getuid()
        self.last = time.monotonic()  # the last run's end (serve resets it when it starts serving)

    def busy(self, idle_s: float) -> bool:
        return bool(self.children or self.pending or time.monotonic() - self.last < idle_s)

    def timeout(self) -> float:
        now = time.monotonic()
        return max(0.0, min([1.0] + [p.deadline - now for p in self.pending.values()]))

    def drain_wakeups(self) -> None:
        try:
            while self.wake_r.recv(256):
                pass
        except BlockingIOError:
            pass

    def accept(self) -> None:
        """A new connection: kept as pending only when its peer is this user."""
        import selectors

        try:
            conn, _ = self.srv.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        other = peer_uid(conn)
        if other != self.uid:
            _log(f"refused a connection from uid {other}")
            conn.close()
            return
        self.pending[conn] = _Pending(conn)
        self.sel.register(conn, selectors.EVENT_READ, None)

    def drop(self, p: _Pending, why: str) -> None:
        _log(f"bad request ({why})")
        self.sel.unregister(p.conn)
        del self.pending[p.conn]
        p.close()

    def receive(self, conn: socket.socket) -> None:
        """Bytes of a pending request; a complete one starts its run, a malformed one is dropped."""
        p = self.pending[conn]
        try:
            got = p.feed()
        except Exception as e:  # noqa: BLE001 - whatever a client sent, refuse it and go on
            self.drop(p, f"{type(e).__name__}: {e}")
            return
        if got is not None:
            self.sel.unregister(conn)
            del self.pending[conn]
            self.fork_run(conn, *got)

    def fork_run(self, conn: socket.socket, req: dict, fds: list[int]) -> None:
        """Fork the run's child: it drops every descriptor of the server's, then runs the command."""
        import selectors

        conn.setblocking(True)
        pid = os.fork()
        if pid == 0:
            try:
                _die_with_parent(self.prctl, self.me)
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                self.sel.close()
                for c in (self.srv, conn, self.wake_r, self.wake_w, *self.children.values()):
                    c.close()
                for q in self.pending.values():
                    q.close()
                os.close(self.lock)
                self.folder.close()
            except BaseException:  # noqa: BLE001
                os._exit(1)
            _child(req, fds)
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn
        self.sel.register(conn, selectors.EVENT_READ, pid)

    def from_client(self, conn: socket.socket, pid: int) -> None:
        """The client of a run sent Ctrl-C (forwarded) or went away (a cancelled job: its run is killed)."""
        try:
            data = conn.recv(64)
        except OSError:
            data = b""
        try:
            if not data:
                self.sel.unregister(conn)
                os.kill(pid, signal.SIGKILL)
            elif INTERRUPT in data:
                os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def expire(self) -> None:
        now = time.monotonic()
        for p in [p for p in self.pending.values() if p.deadline <= now]:
            self.drop(p, f"no complete request within {REQUEST_TIMEOUT_S:g} s")

    def reap(self) -> None:
        """Every finished child: its exit status to its client (128 + signal for a killed one)."""
        while self.children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            rc = os.waitstatus_to_exitcode(status)
            try:
                conn.sendall(f"{rc if rc >= 0 else 128 - rc}\n".encode())
            except OSError:
                pass
            if conn.fileno() >= 0:
                try:
                    self.sel.unregister(conn)
                except (KeyError, ValueError):
                    pass
            conn.close()
            self.last = time.monotonic()

    def close(self) -> None:
        for p in self.pending.values():
            p.close()
        try:
            if self.ino is not None and self.folder.ino(self.name) == self.ino:  # still ours (not a successor's)
                self.folder.unlink(self.name)
                self.folder.unlink(self.name.removesuffix(".sock") + ".log")
                self.folder.unlink(f"{self.name}.lock")
        except OSError:
            pass
        self.srv.close()
        signal.set_wakeup_fd(-1)
        self.wake_r.close()
        self.wake_w.close()
        os.close(self.lock)
        self.folder.close()


def serve(path: str | Path, idle_s: float | None = None) -> int:
    """Serve runs on the socket `path` until `idle_s` seconds pass without one (0: another server
    for this key is alive; 1: its folder is unsafe)."""
    import fcntl
    import importlib

    path = Path(path)
    idle_s = float(os.environ.get("GENEMASK_WORKER_IDLE", "120")) if idle_s is None else idle_s
    try:
        folder = PrivateFolder(path.parent)
    except UnsafeFolder as e:
        _log(f"not serving: {e}")
        return 1
    lock = folder.open(f"{path.name}.lock", os.O_CREAT | os.O_RDWR)  # never truncated: it only carries the flock
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock)
        folder.close()
        return 0  # another server for this key is alive
    folder.unlink(path.name)
    server = _Server(folder, path.name, lock)
    try:
        for mod in PRELOAD:
            importlib.import_module(mod)
        _warm_up()
        server.prctl = _prctl()
        print(f"genemask worker {server.me} serving {path}", file=sys.stderr, flush=True)
        server.last = time.monotonic()  # idle from here: the imports and warm-up can outlast idle_s
        while server.busy(idle_s):
            for key, _ in server.sel.select(timeout=server.timeout()):
                if key.fileobj is server.wake_r:
                    server.drain_wakeups()
                elif key.fileobj is server.srv:
                    server.accept()
                elif key.data is None:
                    server.receive(key.fileobj)
                else:
                    server.from_client(key.fileobj, key.data)
            server.expire()
            server.reap()
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2]))
    sys.exit("usage: python -m genemask.worker_server serve SOCKET")
