"""Declared external inputs: download (resumable) or copy from a mirror folder, always sha256-checked.

A source is (url, sha256, mirror_path). When a mirror folder is given (argument or the
GENEMASK_MIRROR environment variable) the file is taken from `mirror/mirror_path` and nothing is
downloaded: this is how air-gapped cluster nodes, CI and the tests run. Otherwise the URL is
fetched into `<output>.part` (an interrupted download resumes from there with an HTTP Range
request) and moved into place only once its sha256 matches. A mismatch deletes the file.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import urllib.request
from pathlib import Path

from .util import GeneMaskError, Progress, atomic_output

CHUNK = 1 << 20


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch(url: str, sha256: str, mirror_path: str, output: str | Path, mirror: str | None = None) -> None:
    output = Path(output)
    if not sha256 or sha256.lower() in ("none", "null") or len(sha256) != 64:
        raise GeneMaskError(f"{url}: no sha256 pinned for this source (got {sha256!r}); refusing an unverified "
                            f"file: set the source's sha256 in the config from a copy you have verified")
    mirror = mirror or os.environ.get("GENEMASK_MIRROR") or None
    if mirror:
        src = Path(mirror) / mirror_path
        if not src.is_file():
            raise GeneMaskError(f"{src}: not in the mirror folder {mirror} (source {url})")
        with atomic_output(output) as tmp:
            shutil.copyfile(src, tmp)
            _verify(tmp, sha256, f"{src} (mirror copy of {url})")
        print(f"fetch: {output} <- {src} (sha256 ok)", file=sys.stderr)
        return
    part = output.with_name(output.name + ".part")
    _download(url, part)
    try:
        _verify(part, sha256, f"{url} (downloaded to {part})")
    except GeneMaskError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, output)
    print(f"fetch: {output} <- {url} (sha256 ok)", file=sys.stderr)


def _verify(path: Path, expected: str, what: str) -> None:
    got = sha256_of(path)
    if got != expected.lower():
        raise GeneMaskError(f"{what}: sha256 mismatch (expected {expected}, got {got}); file refused")


def _download(url: str, part: Path) -> None:
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        raise GeneMaskError(f"{url}: download failed ({e}); set GENEMASK_MIRROR on an offline machine") from None
    with resp:
        resumed = have and resp.status == 206
        total = resp.headers.get("Content-Length")
        prog = Progress(f"download {part.name}", int(total) + (have if resumed else 0) if total else None, "B")
        with open(part, "ab" if resumed else "wb") as fh:
            if resumed:
                prog.update(have)
            for block in iter(lambda: resp.read(CHUNK), b""):
                fh.write(block)
                prog.update(len(block))
        prog.close()
