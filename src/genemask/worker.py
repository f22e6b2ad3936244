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

- Socket: `$GENEMASK_WORKER_DIR` (default `$XDG_RUNTIME_DIR` when it is a folder of this user
  that others cannot write, else the temp dir) / `genemask-<uid>/<key>.sock`. The key hashes the
  interpreter, the package's source files (path, size, mtime), and `SLURM_JOB_ID`: an edited
  checkout or another venv gets its own server, and two SLURM jobs on one node never share one (a
  child runs in its server's cgroup, so it must be the caller's job).
- Protocol: the client sends its standard-stream descriptors (SCM_RIGHTS) and a JSON request
  {argv, cwd, env}; the server answers one line with the exit status. If the client goes away
  (Snakemake cancels the job), the server kills the child; a Ctrl-C of the client is forwarded to
  the child as SIGINT (the run prints `genemask: interrupted` and exits 130).
- The server exits after `GENEMASK_WORKER_IDLE` seconds (default 120) without a run.

Safety on a shared node (other local users, faults):
- The folder `genemask-<uid>` must be a real directory (not a symlink), owned by the user, mode
  0700; it is opened once without following links and verified on its descriptor (fstat), and
  everything inside (socket, lock, log) is reached through that descriptor (`dir_fd`, O_NOFOLLOW,
  the socket through /proc/self/fd/N). The lock file is never truncated. An unsafe folder disables
  the worker with one line on stderr; the command then runs in its own process.
- Both ends check the other's uid (SO_PEERCRED): the server refuses other users, the client sends
  its descriptors and environment only to a server of its own uid.
- Each connection must deliver its whole request within REQUEST_TIMEOUT_S; requests are read
  without blocking, so a stalled client delays no other run. A malformed request is refused and the
  descriptors it carried are closed on every path.
- A child dies with its server (PR_SET_PDEATHSIG=SIGKILL): a server killed mid-run (OOM killer)
  never leaves a run that writes its output after its caller failed.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import socket
import stat
import struct
import sys
import time
from pathlib import Path

from .util import GeneMaskError

ENV_SWITCH = "GENEMASK_WORKER"
ENV_CHILD = "GENEMASK_WORKER_CHILD"
COMMANDS = ("finetune",)  # the subcommands that go through the worker
PRELOAD = ("torch", "transformers", "transformers.models.bert.modeling_bert", "genemask.cli", "genemask.finetune",
           "genemask.tasks")
REQUEST_TIMEOUT_S = 10.0  # a connection's whole request (header, descriptors, JSON) must arrive by then
MAX_REQUEST = 1 << 24  # bytes of JSON (argv, cwd, environment)
N_FDS = 3  # stdin, stdout, stderr
INTERRUPT = b"\x03"  # client -> server while a run is going: forward SIGINT (Ctrl-C) to the run
_HEADER = struct.Struct("!I")
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_PR_SET_PDEATHSIG = 1


class UnsafeFolder(GeneMaskError):
    """The worker's folder is not a private folder of this user: the warm worker is not used."""


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


def base_dir() -> str:
    """Where the per-user folder lives: $GENEMASK_WORKER_DIR; else the per-user runtime folder
    $XDG_RUNTIME_DIR when it is a folder of this user that others cannot write (under `su` it may
    still name another user's); else the shared temp dir."""
    explicit = os.environ.get("GENEMASK_WORKER_DIR")
    if explicit:
        return explicit
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(xdg):
        try:
            st = os.stat(xdg)
        except OSError:
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022:
            return xdg
    import tempfile

    return tempfile.gettempdir()


def folder_path() -> Path:
    return Path(base_dir()) / f"genemask-{os.getuid()}"


def peer_uid(s: socket.socket) -> int:
    """The uid of the process at the other end of a connected AF_UNIX socket (SO_PEERCRED)."""
    return _UCRED.unpack(s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))[1]


class PrivateFolder:
    """This user's folder `<base>/genemask-<uid>` (created 0700 if absent), opened once without
    following links and verified on its descriptor: a real directory, owned by the user, mode
    0700 (else UnsafeFolder). The names inside are reached only through that descriptor."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        uid = os.getuid()
        os.makedirs(self.path.parent, mode=0o700, exist_ok=True)  # a $GENEMASK_WORKER_DIR not made yet
        base = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                os.mkdir(self.path.name, 0o700, dir_fd=base)
            except FileExistsError:
                pass
            st = os.stat(self.path.name, dir_fd=base, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise UnsafeFolder(f"{self.path} is a symlink, not a private folder")
            if not stat.S_ISDIR(st.st_mode):
                raise UnsafeFolder(f"{self.path} is not a folder")
            try:
                self.fd = os.open(self.path.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  dir_fd=base)
            except OSError as e:  # replaced since the lstat
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafeFolder(f"{self.path} is a symlink, not a private folder") from None
                raise
        finally:
            os.close(base)
        try:
            fst = os.fstat(self.fd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                raise UnsafeFolder(f"{self.path} was replaced while it was opened")
            if fst.st_uid != uid:
                raise UnsafeFolder(f"{self.path} is owned by uid {fst.st_uid}, not a private folder of uid {uid}")
            if stat.S_IMODE(fst.st_mode) & 0o077:
                raise UnsafeFolder(f"{self.path} has mode {stat.S_IMODE(fst.st_mode):04o}, not a private folder "
                                   f"(0700)")
            self._proc = os.path.isdir(f"/proc/self/fd/{self.fd}")
        except BaseException:
            os.close(self.fd)
            raise

    def at(self, name: str) -> str:
        """A path for `name` in this folder that cannot lead elsewhere, for bind/connect: through
        /proc/self/fd; without /proc, the folder's own path once it is checked to still be it."""
        if self._proc:
            return f"/proc/self/fd/{self.fd}/{name}"
        st, fst = os.lstat(self.path), os.fstat(self.fd)
        if (st.st_dev, st.st_ino) != (fst.st_dev, fst.st_ino):
            raise UnsafeFolder(f"{self.path} was replaced after it was checked")
        return str(self.path / name)

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=self.fd)

    def ino(self, name: str) -> int | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_ino
        except FileNotFoundError:
            return None

    def unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PrivateFolder:
        return self

    def __exit__(self, *_) -> None:
        self.close()


def socket_path() -> Path:
    """The server's socket for this environment and code version (its folder checked as above)."""
    with PrivateFolder(folder_path()) as f:
        return f.path / f"{_code_key()}.sock"


# ---------------------------------------------------------------------------------------------
# client
# ---------------------------------------------------------------------------------------------
def _connect(folder: PrivateFolder, name: str) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(folder.at(name))
        return s
    except OSError:
        s.close()
        return None


def _start_server(folder: PrivateFolder, name: str):
    import subprocess

    log = folder.open(name.removesuffix(".sock") + ".log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    env = {k: v for k, v in os.environ.items() if k != ENV_SWITCH}
    try:
        return subprocess.Popen([sys.executable, "-m", "genemask.worker", "serve", str(folder.path / name)], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                close_fds=True, cwd="/")
    finally:
        os.close(log)


def _connect_or_start(folder: PrivateFolder, name: str, timeout_s: float = 120.0) -> socket.socket | None:
    s = _connect(folder, name)
    if s is not None:
        return s
    proc = _start_server(folder, name)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s = _connect(folder, name)
        if s is not None:
            return s
        if proc.poll() not in (None, 0):  # 0: another client's server holds the lock; keep polling
            return None
        time.sleep(0.05)
    return None


def _fallback(why: str) -> None:
    print(f"genemask: {why}; running in this process", file=sys.stderr)


def run(argv: list[str]) -> int | None:
    """Run `genemask ARGV` in a child of the warm server; its exit status, or None (after one line
    on stderr saying why) when the command must run in this process."""
    try:
        folder = PrivateFolder(folder_path())
    except UnsafeFolder as e:
        _fallback(f"warm worker disabled: {e}")
        return None
    except OSError as e:
        _fallback(f"warm worker unavailable ({e})")
        return None
    name = f"{_code_key()}.sock"
    with folder:
        try:
            s = _connect_or_start(folder, name)
        except UnsafeFolder as e:  # replaced after it was checked (only without /proc)
            _fallback(f"warm worker disabled: {e}")
            return None
        except OSError as e:
            _fallback(f"warm worker unavailable ({e})")
            return None
        if s is None:
            _fallback(f"warm worker did not start (see {folder.path / name.removesuffix('.sock')}.log)")
            return None
    with s:
        uid = peer_uid(s)
        if uid != os.getuid():  # not our server: it gets neither our descriptors nor our environment
            _fallback(f"warm worker disabled: the server at {folder.path / name} runs as uid {uid}, not {os.getuid()}")
            return None
        req = json.dumps({"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
        sys.stdout.flush()
        sys.stderr.flush()
        socket.send_fds(s, [_HEADER.pack(len(req))], [0, 1, 2])
        s.sendall(req)
        reply = b""
        while not reply.endswith(b"\n"):
            try:
                chunk = s.recv(64)
            except ConnectionResetError:  # the server went away before it took the request
                chunk = b""
            except KeyboardInterrupt:  # Ctrl-C: the run gets it (it prints one line and exits 130)
                try:
                    s.sendall(INTERRUPT)
                except OSError:
                    raise KeyboardInterrupt from None
                continue
            if not chunk:
                print("genemask: the warm worker's run ended without an exit status", file=sys.stderr)
                return 1
            reply += chunk
    return int(reply)


# ---------------------------------------------------------------------------------------------
# server
# ---------------------------------------------------------------------------------------------
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

        want = (_HEADER.size if self.size is None else self.size) - len(self.buf)
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
            if len(self.buf) < _HEADER.size:
                return None
            (self.size,) = _HEADER.unpack(self.buf)
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
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
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

    torch.set_num_threads(1)
    build_parser()  # cached: the children parse with this one
    with tempfile.TemporaryDirectory() as d:
        toy = BertForMaskedLM(BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                         intermediate_size=8, max_position_embeddings=8))
        with quiet_transformers():
            toy.save_pretrained(d)
        clf = load_classifier(d, 2, 0.1)
        ids, lengths = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]]), torch.tensor([4, 3])
        train_classifier(clf, ids, lengths, [0, 1], {"batch_size": 2, "lr": 1e-4, "epochs": 1}, DEFAULT_SETTINGS,
                         0, torch.device("cpu"), label="warm-up")
        predict_proba(clf, ids, lengths, 2, torch.device("cpu"))
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
    sys.exit("usage: python -m genemask.worker serve SOCKET")
