"""Declared external inputs: download (resumable) or copy from a mirror folder, always verified.

A source is (url, sha256, mirror_path[, checksums]). When a mirror folder is given (argument or the
GENEMASK_MIRROR environment variable) the file is taken from `mirror/mirror_path` and nothing is
downloaded: this is how air-gapped cluster nodes, CI and the tests run. Otherwise the URL is
fetched into `<output>.part` (an interrupted download resumes from there with an HTTP Range
request) and moved into place only once verified. A failed check deletes the file.

What the file is checked against, first that applies:
1. a pinned sha256 (the source's `sha256`);
2. the lock `<output>.sha256` left by an earlier fetch of this output (later runs, other nodes);
3. a published checksum list fetched beside the file (the source's `checksums`: `url`, `algorithm`,
   and the list's `path` inside a mirror folder), in the `md5sum` format; its entry for the file's
   basename must match, and the file's sha256 is then written to the lock (before the file appears).
Without any of them the source is refused.
"""
from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .util import GeneMaskError, Progress, atomic_output

CHUNK = 1 << 20
ALGORITHMS = ("md5", "sha1", "sha256", "sha512")  # config key sources.<name>.checksums.algorithm
LIST_MAX_BYTES = 16 << 20  # a checksum list is small text; anything bigger is not one
# `<hex>  <name>` (text) or `<hex> *<name>` (binary marker); a leading backslash flags an escaped name.
_LINE = re.compile(r"(\\?)([0-9a-fA-F]+) [ *](.+)")


def sha256_of(path: str | Path) -> str:
    return digests(path, ("sha256",))["sha256"]


def digests(path: str | Path, algorithms=("sha256",)) -> dict[str, str]:
    """Hex digests of a file for several algorithms, in one read."""
    hs = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            for h in hs.values():
                h.update(block)
    return {a: h.hexdigest() for a, h in hs.items()}


def lock_path(output: str | Path) -> Path:
    """Where the sha256 seen by the first checksum-list-verified fetch of `output` is kept."""
    output = Path(output)
    return output.with_name(output.name + ".sha256")


def parse_checksums(text: str, algorithm: str, where: str) -> dict[str, str]:
    """Parse `md5sum`-format lines into {name: lowercase hex}; a malformed line is an error."""
    width = hashlib.new(algorithm).digest_size * 2
    out: dict[str, str] = {}
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.fullmatch(line)
        if not m or len(m[2]) != width:
            raise GeneMaskError(f"{where}: line {i}: not a {algorithm}sum line ('<{width} hex digits>  <name>'): "
                                f"{line[:80]!r}")
        name = m[3]
        if m[1]:  # GNU coreutils escapes '\' and newlines in names and flags the line with '\'
            name = re.sub(r"\\(.)", lambda e: {"n": "\n", "r": "\r"}.get(e[1], e[1]), name)
        name, digest = name.removeprefix("./"), m[2].lower()
        if out.get(name, digest) != digest:
            raise GeneMaskError(f"{where}: line {i}: second, different {algorithm} for {name!r}")
        out[name] = digest
    if not out:
        raise GeneMaskError(f"{where}: empty checksum list (no '<hex>  <name>' line)")
    return out


URL_SCHEMES = ("http", "https", "ftp", "file")


def check_url(url: str, what: str) -> None:
    """A source URL must name its scheme: 'example.org/x.fa' is no URL urllib can fetch. `what`
    starts the error line (the config key or the option)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in URL_SCHEMES:
        raise GeneMaskError(f"{what}: {url!r} is not a URL with a scheme "
                            f"({', '.join(s + '://' for s in URL_SCHEMES)})")


def check_relative_path(path: str, what: str, under: str) -> None:
    """A path from the config stays below the folder it is joined to: relative, no '..' parts."""
    parts = PurePosixPath(path).parts
    if (not path or path.startswith(("/", "~")) or "\\" in path or ".." in parts or not parts
            or any(ord(ch) < 32 for ch in path)):
        raise GeneMaskError(f"{what}: path {path!r} must be relative and stay inside {under} "
                            f"(no leading '/', no '..', no control characters)")


def fetch_args(source: dict) -> str:
    """The `genemask fetch` arguments (shell-quoted) for a resolved source entry; -o is the rule's."""
    args = ["--mirror-path", source["path"]]
    if source.get("url"):
        args += ["--url", source["url"]]
    elif source.get("origin"):
        args += ["--origin", source["origin"]]
    if source.get("sha256"):
        args += ["--sha256", source["sha256"]]
    if source.get("checksums"):
        c = source["checksums"]
        args += ["--checksums-url", c["url"], "--checksums-algorithm", c["algorithm"], "--checksums-path", c["path"]]
    return " ".join(map(shlex.quote, args))


def fetch(url: str | None, sha256: str | None, mirror_path: str, output: str | Path, mirror: str | None = None,
          checksums: dict | None = None, origin: str | None = None) -> None:
    """Put the verified file at `output`. `checksums`: {url, algorithm, path} of a published list.

    A source without a URL (a file published inside a package, say) comes from the mirror only;
    `origin` says where to get it."""
    output = Path(output)
    if url:
        check_url(url, "--url")
    check_relative_path(mirror_path, "--mirror-path", "the mirror folder")
    if checksums:
        check_url(checksums["url"], "--checksums-url")
        check_relative_path(checksums["path"], "--checksums-path", "the mirror folder")
    mirror = mirror or os.environ.get("GENEMASK_MIRROR") or None
    if not url and not mirror:
        raise GeneMaskError(f"{mirror_path}: this source has no download URL; put it into a mirror folder "
                            f"(GENEMASK_MIRROR) at that path" + (f" (origin: {origin})" if origin else ""))
    url = url or f"mirror:{mirror_path}"
    expect = _expectation(url, sha256, checksums, output, mirror)
    if mirror:
        src = Path(mirror) / mirror_path
        if not src.is_file():
            raise GeneMaskError(f"{src}: not in the mirror folder {mirror} (source {url})")
        with atomic_output(output) as tmp:
            shutil.copyfile(src, tmp)
            ok = expect.check(tmp, f"{src} (mirror copy of {url})")
        print(f"fetch: {output} <- {src} ({ok})", file=sys.stderr)
        return
    part = output.with_name(output.name + ".part")
    _download(url, part)
    try:
        ok = expect.check(part, f"{url} (downloaded to {part})")
    except GeneMaskError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, output)
    print(f"fetch: {output} <- {url} ({ok})", file=sys.stderr)


@dataclass
class _Expect:
    """What a fetched file must match: a sha256 (pinned or locked) or a listed digest (then lock)."""

    sha256: str | None = None
    lock: Path | None = None  # the lock the sha256 came from, or (with `listed`) the one to write
    listed: tuple[str, str, str] | None = None  # (algorithm, digest, where the list came from)

    def check(self, path: Path, what: str) -> str:
        if self.listed is None:
            got = sha256_of(path)
            if got == self.sha256:
                return "sha256 ok" if self.lock is None else f"sha256 matches {self.lock}"
            if self.lock is None:
                raise GeneMaskError(f"{what}: sha256 mismatch (expected {self.sha256}, got {got}); file refused")
            raise GeneMaskError(f"{what}: sha256 {got} differs from the locked sha256 {self.sha256} ({self.lock}); "
                                f"file refused (delete the lock only if the source really changed)")
        algorithm, expected, where = self.listed
        got = digests(path, {algorithm, "sha256"})
        if got[algorithm] != expected:
            raise GeneMaskError(f"{what}: {algorithm} mismatch against {where} (listed {expected}, "
                                f"got {got[algorithm]}); file refused")
        with atomic_output(self.lock) as tmp:  # before the file appears: a crash leaves lock, no file
            tmp.write_text(f"{got['sha256']}  {self.lock.name.removesuffix('.sha256')}\n")
        return f"{algorithm} ok against {where}; sha256 {got['sha256']} locked in {self.lock}"


def _pinned(sha256: str | None) -> str | None:
    if not sha256 or sha256.lower() in ("none", "null"):
        return None
    if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
        raise GeneMaskError(f"sha256 {sha256!r}: not 64 hex digits")
    return sha256.lower()


def _expectation(url: str, sha256: str | None, checksums: dict | None, output: Path, mirror: str | None) -> _Expect:
    pinned = _pinned(sha256)
    if pinned:  # a pin wins: no lock, no list
        return _Expect(sha256=pinned)
    lock = lock_path(output)
    if lock.exists():
        try:
            text = lock.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise GeneMaskError(f"{lock}: unreadable sha256 lock ({e})") from None
        entries = parse_checksums(text, "sha256", f"{lock} (sha256 lock)")
        if output.name not in entries:
            raise GeneMaskError(f"{lock}: sha256 lock has no entry for {output.name!r}")
        return _Expect(sha256=entries[output.name], lock=lock)
    if not checksums:
        raise GeneMaskError(f"{url}: no sha256 pinned for this source (got {sha256!r}) and no checksum list; "
                            f"refusing an unverified file: set the source's sha256 (from a copy you verified) "
                            f"or its checksums: {{url, algorithm, path}}")
    algorithm = checksums["algorithm"]
    if algorithm not in ALGORITHMS:
        raise GeneMaskError(f"{checksums['url']}: checksum algorithm {algorithm!r} is not one of "
                            f"{', '.join(ALGORITHMS)}")
    data, where = _checksum_list(checksums, url, mirror)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GeneMaskError(f"{where}: unreadable checksum list (not UTF-8 text: {e})") from None
    name = urllib.parse.unquote(PurePosixPath(urllib.parse.urlparse(url).path).name)
    entries = parse_checksums(text, algorithm, where)
    if name not in entries:
        raise GeneMaskError(f"{where}: checksum list has no {algorithm} entry for {name!r} (source {url}); "
                            f"file refused")
    return _Expect(lock=lock, listed=(algorithm, entries[name], where))


def _checksum_list(checksums: dict, url: str, mirror: str | None) -> tuple[bytes, str]:
    """The list's bytes and a description of where they came from: the mirror first, like the file."""
    list_url = checksums["url"]
    if mirror:
        src = Path(mirror) / checksums["path"]
        if not src.is_file():
            raise GeneMaskError(f"{src}: checksum list not in the mirror folder {mirror} (list {list_url} of {url})")
        try:
            with open(src, "rb") as fh:
                data = fh.read(LIST_MAX_BYTES + 1)
        except OSError as e:
            raise GeneMaskError(f"{src}: unreadable checksum list ({e})") from None
        where = f"{src} (mirror copy of {list_url})"
    else:
        try:
            with urllib.request.urlopen(list_url, timeout=60) as resp:
                data = resp.read(LIST_MAX_BYTES + 1)
        except Exception as e:  # noqa: BLE001 - network errors come in many types
            raise GeneMaskError(f"{list_url}: checksum list download failed ({e}) for {url}; "
                                f"set GENEMASK_MIRROR on an offline machine") from None
        where = list_url
    if len(data) > LIST_MAX_BYTES:
        raise GeneMaskError(f"{where}: not a checksum list (over {LIST_MAX_BYTES >> 20} MiB)")
    return data, where


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
