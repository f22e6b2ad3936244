"""Shared plumbing: the user-facing error type, atomic outputs, progress lines, seeding."""
from __future__ import annotations

import contextlib
import contextvars
import fcntl
import os
import random
import shutil
import stat
import sys
import time
from pathlib import Path


class GeneMaskError(Exception):
    """An error caused by the user's input or config: the CLI prints it as one line and exits 2.

    The message must name the file (or config key) and what is wrong with it.
    """


MARKER = ".genemask-output"  # inside every folder atomic_output wrote: the folder's kind, one line
# The kinds of folder output (the MARKER's text): a folder is replaced only by a command of its kind.
CORPUS, PRETRAINING_RUN, CLASSIFIER, BASELINE_MODEL = "corpus", "pretraining run", "classifier", "baseline model"
RECEIVING = None  # check_output_target's kind for a folder that receives files (aggregate's --outdir)
_GUARDED: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("genemask_inputs", default=())
_HELD: dict[Path, int] = {}  # output path -> lock fd, for the locks this process holds


@contextlib.contextmanager
def guard_inputs(paths):
    """While the block runs, atomic_output refuses to write over any of `paths` (a command's inputs)
    or over a folder holding one of them."""
    resolved = tuple(Path(p).resolve() for p in paths)
    token = _GUARDED.set(_GUARDED.get() + resolved)
    try:
        yield
    finally:
        _GUARDED.reset(token)


def check_output_target(path: str | os.PathLike, is_dir: bool = False, kind: str | None = "output") -> None:
    """GeneMaskError unless writing `path` can only replace a previous output of the same kind.

    Refused: `.`, `..` or any ancestor of the working directory; a command's input (see guard_inputs)
    or a folder holding one; a symbolic link; a folder where a file is written; a file where a folder
    is written; a non-empty folder that does not carry this kind's marker (MARKER, written by
    atomic_output), i.e. a folder the pipeline did not make. kind RECEIVING: a folder that receives
    output files and is never replaced whole, so any folder will do.
    """
    path = Path(path)
    target = path.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise GeneMaskError(f"{path}: refusing to write over the working directory or a folder above it; "
                            f"name a new file or folder")
    for inp in _GUARDED.get():
        if target == inp or target in inp.parents:
            raise GeneMaskError(f"{path}: refusing to write over this command's input {inp}; name another output")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise GeneMaskError(f"{path}: is a symbolic link, not a previous output; remove it or name another output")
    if not is_dir:
        if stat.S_ISDIR(st.st_mode):
            raise GeneMaskError(f"{path}: is a folder, and this command writes a file; name a file")
        if not stat.S_ISREG(st.st_mode):
            raise GeneMaskError(f"{path}: is not a regular file; name a file")
        return
    if not stat.S_ISDIR(st.st_mode):
        raise GeneMaskError(f"{path}: is a file, and this command writes a folder; name a folder")
    if kind is RECEIVING:
        return
    marker = path / MARKER
    if marker.is_file() and not marker.is_symlink():
        found = marker.read_text(errors="replace").strip()
        if found == kind:
            return
        raise GeneMaskError(f"{path}: holds a genemask {found!r} output, and this command writes a {kind!r} "
                            f"folder; name another folder")
    if any(path.iterdir()):
        raise GeneMaskError(f"{path}: is a folder that genemask did not write (no {MARKER} in it); "
                            f"refusing to replace it: name a new folder")


@contextlib.contextmanager
def output_lock(path: str | os.PathLike):
    """Hold the lock of output `path` (`.NAME.lock` beside it) for the block: a second process
    writing the same output is refused with one line instead of racing. Reentrant in one process."""
    path = Path(path).absolute()
    if path in _HELD:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise GeneMaskError(f"{path}: another genemask process is writing this output "
                                f"(it holds {lock}); wait for it or name another output") from None
        try:  # the holder before us may have unlinked the file after we opened it: lock the live one
            same = os.fstat(fd).st_ino == os.lstat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    _HELD[path] = fd
    try:
        yield
    finally:
        del _HELD[path]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, is_dir: bool = False, kind: str = "output"):
    """Yield a temporary path next to `path`; move it into place only if the block succeeds.

    Only a previous output of the same kind is replaced (check_output_target), under the output's
    lock (output_lock). The temporary `.NAME.tmp-PID` belongs to this process; one left by a killed
    run (SIGKILL skips cleanup) is removed only when its process is gone. On any exception the
    temporary file/folder is removed, so no partial output is ever left behind. A folder output gets
    the MARKER file naming `kind`, by which a later run recognises it as its own.
    """
    path = Path(path)
    check_output_target(path, is_dir, kind)
    with output_lock(path):
        prefix = f".{path.name}.tmp-"
        for stale in path.parent.glob(prefix + "*"):
            pid = stale.name[len(prefix):]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                _remove(stale)
        tmp = path.parent / f"{prefix}{os.getpid()}"
        _remove(tmp)
        if is_dir:
            tmp.mkdir()
        try:
            yield tmp
            if is_dir:
                (tmp / MARKER).write_text(kind + "\n")
        except BaseException:
            _remove(tmp)
            raise
        check_output_target(path, is_dir, kind)  # the block may have taken long: look again
        _remove(path)
        os.replace(tmp, path)


def write_failure(path: str | os.PathLike, detail: str = "") -> OSError:
    """The OSError to raise for a failed write that came without an errno (htslib, samtools): ENOSPC
    when the file system holding `path` is (nearly) full, else EIO with `detail`."""
    import errno

    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        full = shutil.disk_usage(p).free < (1 << 20)
    except OSError:
        full = False
    if full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return OSError(errno.EIO, f"write failed{f' ({detail})' if detail else ''}", str(path))


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


class Progress:
    """A throttled progress line on stderr (works in Snakemake logs: one line per update, no \\r)."""

    def __init__(self, label: str, total: float | None = None, unit: str = "", every_s: float = 5.0,
                 fmt: str = "{:,.0f}"):
        self.label, self.total, self.unit, self.every_s, self.fmt = label, total, unit, every_s, fmt
        self.start = time.perf_counter()
        self.last = self.start  # first line after every_s, so short steps stay quiet
        self.done = 0.0

    def update(self, n: float = 1, force: bool = False, extra: str = "") -> None:
        self.done += n
        now = time.perf_counter()
        if not force and now - self.last < self.every_s:
            return
        self.last = now
        el = now - self.start
        rate = self.done / el if el > 0 else 0.0
        msg = f"[{self.label}] {self.done:,.0f}"
        if self.total:
            pct = 100.0 * self.done / self.total
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            msg += f"/{self.total:,.0f} {self.unit} ({pct:5.1f}%) {self.fmt.format(rate)} {self.unit}/s ETA {eta:,.0f}s"
        else:
            msg += f" {self.unit} {rate:,.0f} {self.unit}/s"
        if extra:
            msg += f" {extra}"
        print(msg, file=sys.stderr, flush=True)

    def close(self, extra: str = "") -> None:
        self.update(0, force=True, extra=extra + f" done in {time.perf_counter() - self.start:.1f}s")


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def read_settings(settings, what: str) -> tuple[dict, str]:
    """Settings given as a dict, a JSON string ('{...}', as the Snakemake rules pass them) or a
    JSON/YAML file -> (mapping, where it came from). `what` names them in errors, e.g. "fine-tuning"."""
    import json

    src = "--settings"
    if settings is None or settings == "":
        user = {}
    elif isinstance(settings, dict):
        user = settings
    else:
        s = str(settings).strip()
        if s.startswith("{"):  # never treated as a path: a long JSON string is no valid file name
            try:
                user = json.loads(s)
            except json.JSONDecodeError as e:
                raise GeneMaskError(f"--settings: not valid JSON ({e.msg} at char {e.pos})") from None
        else:
            p = Path(s)
            src = str(p)
            try:
                text = p.read_text()
            except OSError as e:
                raise GeneMaskError(f"{p}: cannot read {what} settings ({e.strerror})") from None
            try:
                if p.suffix.lower() in (".yaml", ".yml"):
                    import yaml

                    user = yaml.safe_load(text) or {}
                else:
                    user = json.loads(text)
            except Exception as e:  # noqa: BLE001 - parser errors of either library
                msg = str(e).replace("\n", " ")
                raise GeneMaskError(f"{p}: cannot parse {what} settings ({msg})") from None
    if not isinstance(user, dict):
        raise GeneMaskError(f"{src}: {what} settings must be a mapping, got {type(user).__name__}")
    return user, src


def read_tsv(path, what: str, columns=(), expected: str = "", **read_csv_kwargs):
    """A TSV with a header as a DataFrame; every fault -> one-line GeneMaskError naming the file.

    what: the table's name in messages ("training log"); columns: required column names;
    expected: the layout named in the messages (default: the required columns).
    """
    import pandas as pd

    path = Path(path)
    expected = expected or " ".join(columns)
    try:
        df = pd.read_csv(path, sep="\t", **read_csv_kwargs)
    except OSError as e:
        raise GeneMaskError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    except pd.errors.EmptyDataError:
        raise GeneMaskError(f"{path}: empty file; expected a {what} with the header '{expected}'") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise GeneMaskError(f"{path}: not a readable TSV {what} ({str(e).strip().splitlines()[-1]})") from None
    require_columns(df, path, what, columns, expected)
    return df


def require_columns(df, path, what: str, columns, expected: str = "") -> None:
    """GeneMaskError `FILE: WHAT lacks column(s) ...` unless every name in `columns` is a column of df."""
    lack = [c for c in columns if c not in df.columns]
    if lack:
        raise GeneMaskError(f"{path}: {what} lacks column(s) {', '.join(lack)} (expected {expected or ' '.join(columns)})")
