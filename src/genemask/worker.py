"""The warm worker: fine-tuning runs without the per-run start-up tax (its folder, protocol and client;
the server is `worker_server.py`, which `cli` never imports).

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
genemask.worker_server serve SOCKET`, detached; `worker_server.py`); later ones connect to it. Without the variable, or if
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
HEADER = struct.Struct("!I")
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
PR_SET_PDEATHSIG = 1


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
        return subprocess.Popen([sys.executable, "-m", "genemask.worker_server", "serve", str(folder.path / name)], env=env,
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
    name = f"{_code_key()}.sock"
    try:
        with PrivateFolder(folder_path()) as folder:
            s = _connect_or_start(folder, name)  # UnsafeFolder too when replaced after the check (no /proc)
    except UnsafeFolder as e:
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
        socket.send_fds(s, [HEADER.pack(len(req))], [0, 1, 2])
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
