"""Shared plumbing: the user-facing error type, atomic outputs, progress lines, seeding."""
from __future__ import annotations

import contextlib
import contextvars
import csv
import fcntl
import gzip
import os
import shutil
import stat
import sys
import time
import zlib
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
    output files and is never replaced whole, so any folder will do, also one holding inputs (as
    results/report/ holds aggregate's missing.tsv): each file written into it is checked itself.
    """
    path = Path(path)
    target = path.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise GeneMaskError(f"{path}: refusing to write over the working directory or a folder above it; "
                            f"name a new file or folder")
    for inp in _GUARDED.get():  # a receiving folder may hold inputs: its files are checked one by one
        if target == inp or (kind is not RECEIVING and target in inp.parents):
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


def read_json_object(path, what: str, keys=(), hint: str = "") -> dict:
    """A JSON file holding an object, with `keys` present; every fault is a one-line GeneMaskError
    naming the file and `what` it should be ("run metadata"); `hint` ends the unreadable-file message."""
    import json

    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except OSError as e:
        raise GeneMaskError(f"{path}: cannot read {what} ({e.strerror or e}){hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GeneMaskError(f"{path}: {what} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise GeneMaskError(f"{path}: {what} must be a JSON object, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise GeneMaskError(f"{path}: {what} lacks key(s) {', '.join(missing)}")
    return obj


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


# ---------------------------------------------------------------------------------------------
# Tables: one reader for every TSV/CSV input (task files, sequence tables, logs, missing shots).
# ---------------------------------------------------------------------------------------------
MAX_LINE_BYTES = 1 << 26  # 64 MiB: a longer line (a gzip bomb of one "line", a binary file) is refused


def shorten(s: str, n: int = 40) -> str:
    """repr of `s` on one line, cut to n characters (for messages)."""
    s = s.replace("\n", " ").replace("\r", " ")
    return repr(s if len(s) <= n else s[:n] + "...")


def check_regular_file(path, what: str) -> Path:
    """`path` if it is a regular file (a symlink to one is fine); a FIFO, device, socket or folder
    -> one-line GeneMaskError (reading /dev/zero or a FIFO would never end or block)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise GeneMaskError(f"{path}: cannot read {what} ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a regular file")
        raise GeneMaskError(f"{path}: {what} must be a regular file, got {kind}")
    return path


@contextlib.contextmanager
def open_table(path, what: str):
    """A binary stream of a regular file, gunzipped while read when it starts with the gzip magic
    (never inflated whole); gzip faults while reading -> one-line GeneMaskError naming the file."""
    path = check_regular_file(path, what)
    try:
        with open(path, "rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as fh:
            yield fh
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise GeneMaskError(f"{path}: truncated or corrupt gzip {what} ({e})") from None
    except OSError as e:
        raise GeneMaskError(f"{path}: cannot read {what} ({e.strerror or e})") from None


def table_delimiter(path, header: str, named_as=None) -> str:
    """Tab for .tsv, comma for .csv (a trailing .gz ignored; `named_as` names the file instead),
    else sniffed from the header line."""
    name = Path(named_as or path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".tsv"):
        return "\t"
    if name.endswith(".csv"):
        return ","
    if "\t" in header:
        return "\t"
    if "," in header:
        return ","
    raise GeneMaskError(f"{path}:1: cannot tell TSV from CSV: the header {shorten(header)} has neither a tab "
                        f"nor a comma")


class TableRows:
    """Rows of a text table read by `table_rows`: `header_line` (1-based), `names` (lower-case column
    names), `delimiter`, and iteration over (line, stripped fields) of the non-blank data rows; `line`
    is the file line where the row ends (a quoted field may span lines)."""

    def __init__(self, path: Path, stream, what: str, expected: str, named_as=None):
        self.path, self.what, self._stream = path, what, stream
        self._line = 0
        self._lines = self._text_lines()
        header = next((ln for ln in self._lines if ln.strip()), None)
        if header is None:
            raise GeneMaskError(f"{path}:1: empty file (expected {expected})")
        self.header_line = self._line
        self.delimiter = table_delimiter(path, header, named_as)
        if csv.field_size_limit() < MAX_LINE_BYTES:  # default 128 KiB: a long sequence is one field
            csv.field_size_limit(MAX_LINE_BYTES)
        self._reader = csv.reader(self._chain(header), delimiter=self.delimiter, quotechar='"',
                                  skipinitialspace=True, strict=False)
        self.names = [f.strip().lower() for f in self._next_row()]

    def _chain(self, first: str):
        yield first
        yield from self._lines

    def _text_lines(self):
        readline = self._stream.readline
        while True:
            raw = readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            self._line += 1
            if len(raw) > MAX_LINE_BYTES:
                raise GeneMaskError(f"{self.path}:{self._line}: line longer than {MAX_LINE_BYTES >> 20} MiB; "
                                    f"not a {self.what}")
            if b"\0" in raw:
                raise GeneMaskError(f"{self.path}:{self._line}: binary data (NUL bytes), not a text {self.what}")
            try:
                yield raw.decode("utf-8-sig" if self._line == 1 else "utf-8")
            except UnicodeDecodeError:
                raise GeneMaskError(f"{self.path}:{self._line}: not UTF-8/ASCII text") from None

    def _next_row(self):
        try:
            return next(self._reader)
        except csv.Error as e:
            raise GeneMaskError(f"{self.path}:{self._line}: not a readable {self.what} ({e})") from None

    def __iter__(self):
        while True:
            try:
                row = self._next_row()
            except StopIteration:
                return
            fields = [f.strip() for f in row]
            if any(fields):
                yield self._line, fields


@contextlib.contextmanager
def table_rows(path, what: str, expected: str, named_as=None):
    """The one reader of TSV/CSV inputs: a regular file only, plain or gzip (streamed, line length
    bounded by MAX_LINE_BYTES), UTF-8, CSV quoting (RFC 4180 double quotes, also in TSV); yields a
    `TableRows`. `expected` names the layout in the message for an empty file; every fault is a
    one-line GeneMaskError `FILE:LINE: ...`."""
    with open_table(path, what) as fh:
        yield TableRows(Path(path), fh, what, expected, named_as)


def read_tsv(path, what: str, columns=(), expected: str = "", **read_csv_kwargs):
    """A TSV with a header as a DataFrame; every fault -> one-line GeneMaskError naming the file.

    what: the table's name in messages ("training log"); columns: required column names;
    expected: the layout named in the messages (default: the required columns). Opened by
    `open_table` (regular files only; gzip streamed), parsed by pandas with the same quoting.
    """
    import pandas as pd

    path = Path(path)
    expected = expected or " ".join(columns)
    try:
        with open_table(path, what) as fh:
            df = pd.read_csv(fh, sep="\t", quotechar='"', **read_csv_kwargs)
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
