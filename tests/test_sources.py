"""Declared sources: mirror copy, sha256 check, refusal of mismatches, resumable download, and
sources verified by a published md5 list with the sha256 they had locked for later fetches."""
import hashlib
import http.server
import shlex
import threading
from functools import partial
from pathlib import Path

import pytest
import yaml

from genemask import cli, plan
from genemask.sources import ALGORITHMS, fetch, fetch_args, lock_path, parse_checksums, sha256_of
from genemask.util import GeneMaskError

SLICE = "genome/hg38_chr2_1-2333275.fa.gz"
SLICE_SHA = "d7d3f5a3f7026336d8d464ed518cb5658c074b34171115b96146ca717b45b79e"


def test_mirror_copy_verified(mirror, tmp_path):
    out = tmp_path / "g.fa.gz"
    fetch("https://example.invalid/x", SLICE_SHA, SLICE, out, mirror=str(mirror))
    assert sha256_of(out) == SLICE_SHA


def test_checksum_mismatch_refused_and_nothing_left(mirror, tmp_path):
    out = tmp_path / "g.fa.gz"
    with pytest.raises(GeneMaskError, match=r"sha256 mismatch.*refused") as e:
        fetch("https://example.invalid/x", "0" * 64, SLICE, out, mirror=str(mirror))
    assert SLICE in str(e.value) and "https://example.invalid/x" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_missing_in_mirror_names_file_and_url(mirror, tmp_path):
    with pytest.raises(GeneMaskError, match=r"not in the mirror.*https://example.invalid/y"):
        fetch("https://example.invalid/y", SLICE_SHA, "genome/nope.fa.gz", tmp_path / "o", mirror=str(mirror))
    assert list(tmp_path.iterdir()) == []


def test_unpinned_sha_refused(tmp_path):
    with pytest.raises(GeneMaskError, match="no sha256 pinned"):
        fetch("https://example.invalid/z", "None", "genome/hg38.fa.gz", tmp_path / "o", mirror=str(tmp_path))


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with HTTP Range support (status 206), as real servers do."""

    def log_message(self, *a):
        pass

    def do_GET(self):
        path = self.translate_path(self.path)
        if not Path(path).is_file():
            self.send_error(404)
            return
        data = open(path, "rb").read()
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            body = data[start:]
        else:
            self.send_response(200)
            body = data
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_RangeHandler, directory=str(root)))
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    t.join(timeout=10)


def test_interrupted_download_resumes(server, tmp_path, monkeypatch):
    monkeypatch.delenv("GENEMASK_MIRROR", raising=False)
    root, base = server
    payload = bytes(range(256)) * 4000
    (root / "f.bin").write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    out = tmp_path / "out" / "f.bin"
    out.parent.mkdir()
    # A download cut off after 1000 bytes leaves f.bin.part; the rerun resumes from byte 1000.
    (out.parent / "f.bin.part").write_bytes(payload[:1000])
    fetch(f"{base}/f.bin", sha, "f.bin", out)
    assert out.read_bytes() == payload
    assert not (out.parent / "f.bin.part").exists()


def test_corrupt_partial_download_restarts_cleanly(server, tmp_path, monkeypatch):
    monkeypatch.delenv("GENEMASK_MIRROR", raising=False)
    root, base = server
    payload = b"ACGT" * 5000
    (root / "g.bin").write_bytes(payload)
    out = tmp_path / "g.bin"
    (tmp_path / "g.bin.part").write_bytes(b"garbage!")  # wrong bytes: the resumed file cannot verify
    with pytest.raises(GeneMaskError, match="sha256 mismatch"):
        fetch(f"{base}/g.bin", hashlib.sha256(payload).hexdigest(), "g.bin", out)
    assert not out.exists() and not (tmp_path / "g.bin.part").exists()  # bad partial removed
    fetch(f"{base}/g.bin", hashlib.sha256(payload).hexdigest(), "g.bin", out)  # the rerun starts over
    assert out.read_bytes() == payload


# ---- verified by a published checksum list (UCSC's md5sum.txt for hg38), sha256 then locked ------


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


@pytest.fixture()
def listed(server, tmp_path, monkeypatch):
    """A served file `x.fa.gz` (real hg38 slice bytes would do; any bytes are a file) beside its md5 list."""
    monkeypatch.delenv("GENEMASK_MIRROR", raising=False)
    root, base = server
    payload = bytes(range(256)) * 300 + b"tail"
    (root / "x.fa.gz").write_bytes(payload)
    (root / "md5sum.txt").write_text(f"{_md5(b'other')}  other.fa.gz\n{_md5(payload)} *x.fa.gz\n")
    checksums = {"url": f"{base}/md5sum.txt", "algorithm": "md5", "path": "genome/x.md5sum.txt"}
    out = tmp_path / "out" / "x.fa.gz"
    return root, base, payload, checksums, out


def test_checksum_list_verifies_and_locks_sha256(listed):
    root, base, payload, checksums, out = listed
    fetch(f"{base}/x.fa.gz", None, "genome/x.fa.gz", out, checksums=checksums)
    assert out.read_bytes() == payload
    sha = hashlib.sha256(payload).hexdigest()
    assert lock_path(out) == out.parent / "x.fa.gz.sha256"
    assert lock_path(out).read_text() == f"{sha}  x.fa.gz\n"  # sha256sum -c format
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.fa.gz", "x.fa.gz.sha256"]  # no .part, no tmp


def test_checksum_list_md5_mismatch_refused_nothing_left(listed):
    root, base, payload, checksums, out = listed
    (root / "md5sum.txt").write_text(f"{_md5(b'not it')}  x.fa.gz\n")
    with pytest.raises(GeneMaskError, match=r"md5 mismatch against .*md5sum.txt .*listed .*got .*refused") as e:
        fetch(f"{base}/x.fa.gz", None, "genome/x.fa.gz", out, checksums=checksums)
    assert _md5(payload) in str(e.value) and "\n" not in str(e.value)
    assert list(out.parent.iterdir()) == []  # no file, no .part, no lock


def test_checksum_list_lacking_the_file_refused_before_download(listed):
    root, base, payload, checksums, out = listed
    (root / "md5sum.txt").write_text(f"{_md5(payload)}  y.fa.gz\n")
    with pytest.raises(GeneMaskError, match=r"md5sum.txt: checksum list has no md5 entry for 'x.fa.gz'"):
        fetch(f"{base}/x.fa.gz", None, "genome/x.fa.gz", out, checksums=checksums)
    assert not out.parent.exists()  # the list is read first: nothing was downloaded


@pytest.mark.parametrize("body, fault", [
    (b"not a checksum line\n", "line 1: not a md5sum line"),
    (b"0123abcd  x.fa.gz\n", "line 1: not a md5sum line"),  # 8 hex digits, not 32
    (b"\xff\xfe\x00garbage", "unreadable checksum list"),
    (b"\n\n", "empty checksum list"),
])
def test_malformed_checksum_list_refused(listed, body, fault):
    root, base, payload, checksums, out = listed
    (root / "md5sum.txt").write_bytes(body)
    with pytest.raises(GeneMaskError, match=fault):
        fetch(f"{base}/x.fa.gz", None, "genome/x.fa.gz", out, checksums=checksums)
    assert not out.parent.exists()


def test_unreachable_checksum_list_refused(listed):
    root, base, payload, checksums, out = listed
    (root / "md5sum.txt").unlink()
    with pytest.raises(GeneMaskError, match=r"md5sum.txt: checksum list download failed \(HTTP Error 404"):
        fetch(f"{base}/x.fa.gz", None, "genome/x.fa.gz", out, checksums=checksums)
    assert not out.parent.exists()


def test_second_fetch_checks_the_lock(listed):
    root, base, payload, checksums, out = listed
    url = f"{base}/x.fa.gz"
    fetch(url, None, "genome/x.fa.gz", out, checksums=checksums)
    sha = sha256_of(out)
    # A rerun needs no list once the sha256 is locked (e.g. a node that cannot reach it).
    (root / "md5sum.txt").unlink()
    out.unlink()
    fetch(url, None, "genome/x.fa.gz", out, checksums=checksums)
    assert sha256_of(out) == sha
    # The file changes upstream, and so does its list: the list would accept it, the lock refuses it.
    tampered = payload[:-4] + b"TAIL"
    (root / "x.fa.gz").write_bytes(tampered)
    (root / "md5sum.txt").write_text(f"{_md5(tampered)}  x.fa.gz\n")
    out.unlink()
    with pytest.raises(GeneMaskError, match=r"differs from the locked sha256") as e:
        fetch(url, None, "genome/x.fa.gz", out, checksums=checksums)
    msg = str(e.value)
    assert url in msg and sha in msg and hashlib.sha256(tampered).hexdigest() in msg and str(lock_path(out)) in msg
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.fa.gz.sha256"]  # refused file gone, lock kept
    assert lock_path(out).read_text() == f"{sha}  x.fa.gz\n"


def test_pinned_sha256_wins_and_needs_no_list(listed):
    root, base, payload, checksums, out = listed
    (root / "md5sum.txt").unlink()  # unreachable list: not consulted
    fetch(f"{base}/x.fa.gz", hashlib.sha256(payload).hexdigest(), "genome/x.fa.gz", out, checksums=checksums)
    assert out.read_bytes() == payload and not lock_path(out).exists()
    out.unlink()
    with pytest.raises(GeneMaskError, match="sha256 mismatch"):  # a wrong pin is refused, whatever the list says
        fetch(f"{base}/x.fa.gz", "0" * 64, "genome/x.fa.gz", out, checksums=checksums)
    assert list(out.parent.iterdir()) == []


def test_checksum_list_from_mirror_first(mirror, tmp_path, monkeypatch):
    """On an offline node the list comes from the mirror too (checksums.path), beside the real file."""
    monkeypatch.delenv("GENEMASK_MIRROR", raising=False)
    m = tmp_path / "mirror"
    (m / "genome").mkdir(parents=True)
    data = (mirror / SLICE).read_bytes()
    (m / SLICE).write_bytes(data)
    checksums = {"url": "https://example.invalid/md5sum.txt", "algorithm": "md5", "path": "genome/list.txt"}
    url = "https://example.invalid/hg38_chr2_1-2333275.fa.gz"
    out = tmp_path / "out" / "g.fa.gz"
    with pytest.raises(GeneMaskError, match=r"list.txt: checksum list not in the mirror folder"):
        fetch(url, None, SLICE, out, mirror=str(m), checksums=checksums)
    assert not out.exists() and not lock_path(out).exists()
    (m / "genome" / "list.txt").write_text(f"{_md5(data)}  ./hg38_chr2_1-2333275.fa.gz\n")
    fetch(url, None, SLICE, out, mirror=str(m), checksums=checksums)
    assert sha256_of(out) == SLICE_SHA and lock_path(out).read_text() == f"{SLICE_SHA}  g.fa.gz\n"


def test_parse_checksums_md5sum_format():
    a, b, c = _md5(b"a"), _md5(b"b"), _md5(b"c")
    text = f"{a}  plain.txt\r\n{b.upper()} *binary.gz\n\n{c}  ./dot/x y.txt\n\\{a}  back\\\\slash\\nnl\n"
    assert parse_checksums(text, "md5", "l") == {"plain.txt": a, "binary.gz": b, "dot/x y.txt": c,
                                                  "back\\slash\nnl": a}
    with pytest.raises(GeneMaskError, match=r"l: line 2: second, different md5 for 'x'"):
        parse_checksums(f"{a}  x\n{b}  x\n", "md5", "l")


def test_rule_arguments_fetch_hg38_by_its_md5_list(listed):
    """The fetch rule's arguments for the catalogued hg38 carry UCSC's list and no sha256; the same
    arguments, pointed at the local server, fetch through the CLI and write the lock."""
    hg38 = plan.resolve(yaml.safe_load(open(plan.ROOT / "config" / "config.yaml")))["sources"]["hg38"]
    args = shlex.split(fetch_args(hg38))
    assert "--sha256" not in args
    ucsc = "https://hgdownload.soe.ucsc.edu/goldenPath/hg38/bigZips/"
    assert args[args.index("--checksums-url") + 1] == ucsc + "md5sum.txt" and hg38["url"] == ucsc + "hg38.fa.gz"
    assert args[args.index("--checksums-algorithm") + 1] == "md5"
    schema = yaml.safe_load(open(plan.ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    checksums_schema = schema["definitions"]["source"]["properties"]["checksums"]
    assert tuple(checksums_schema["properties"]["algorithm"]["enum"]) == ALGORITHMS  # one list of algorithms
    root, base, payload, checksums, out = listed
    local = shlex.split(fetch_args({"url": f"{base}/x.fa.gz", "path": "genome/x.fa.gz", "sha256": None,
                                    "checksums": checksums}))
    assert cli.main(["fetch", *local, "-o", str(out)]) == 0
    assert lock_path(out).read_text() == f"{hashlib.sha256(payload).hexdigest()}  x.fa.gz\n"
