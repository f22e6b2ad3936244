"""Declared sources: mirror copy, sha256 check, refusal of mismatches, resumable download."""
import hashlib
import http.server
import threading
from functools import partial

import pytest

from genemask.sources import fetch, sha256_of
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
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


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
