"""Shared plumbing: the user-facing error type, atomic outputs, progress lines, seeding."""
from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import time
from pathlib import Path


class GeneMaskError(Exception):
    """An error caused by the user's input or config: the CLI prints it as one line and exits 2.

    The message must name the file (or config key) and what is wrong with it.
    """


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, is_dir: bool = False):
    """Yield a temporary path next to `path`; move it into place only if the block succeeds.

    On any exception the temporary file/folder is removed, so no partial output is ever left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a killed run (SIGKILL skips cleanup)
        _remove(stale)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
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
