"""Faults: a counting job killed with SIGKILL leaves no output, and its rerun equals an
uninterrupted run (pretraining's kill/resume is in test_pretrain.py, downloads in test_sources.py)."""
import os
import signal
import subprocess

import numpy as np
import pytest

from conftest import GENEMASK

pytestmark = pytest.mark.subprocess


def test_sigkill_during_counting_then_rerun(mirror, tmp_path):
    chrx = mirror / "genome" / "GRCh37_chrX_1-69999930.hs37chrXtrunc.fa.gz"
    out = tmp_path / "counts.npz"
    # The job reads its FASTA through a named pipe that we fill only half-way: it is then certainly
    # in the middle of its work (counting is too fast to catch by timing: ~200 Mbp/s).
    fifo = tmp_path / "half.fa"
    os.mkfifo(fifo)
    proc = subprocess.Popen([GENEMASK, "ngrams", str(fifo), "--max-order", "10", "-o", str(out)],
                            stderr=subprocess.DEVNULL)
    data = subprocess.run(["gzip", "-dc", str(chrx)], capture_output=True, check=True).stdout
    with open(fifo, "wb") as fh:
        fh.write(data[: len(data) // 2])
        fh.flush()
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    fifo.unlink()
    assert not out.exists()
    subprocess.run([GENEMASK, "ngrams", str(chrx), "--max-order", "10", "-o", str(out)], check=True,
                   stderr=subprocess.DEVNULL)
    ref = tmp_path / "ref.npz"
    subprocess.run([GENEMASK, "ngrams", str(chrx), "--max-order", "10", "-o", str(ref)], check=True,
                   stderr=subprocess.DEVNULL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counts.npz", "ref.npz"]  # nothing partial left
    a, b = np.load(out), np.load(ref)
    assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[f], b[f]) for f in a.files)
    assert int(a["order1"].sum()) > 60_000_000  # the real chrX: ~66 M ACGT bases
