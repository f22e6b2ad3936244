"""Faults: a counting job killed with SIGKILL leaves no output, and its rerun equals an
uninterrupted run (pretraining's kill/resume is in test_pretrain.py, downloads in test_sources.py)."""
import os
import signal
import subprocess
import sys
import time

import numpy as np

BIN = os.path.join(os.path.dirname(sys.executable), "genemask")


def test_sigkill_during_counting_then_rerun(mirror, tmp_path):
    chrx = mirror / "genome" / "GRCh37_chrX_1-69999930.hs37chrXtrunc.fa.gz"
    out = tmp_path / "counts.npz"
    proc = subprocess.Popen([BIN, "ngrams", str(chrx), "--max-order", "10", "-o", str(out)],
                            stderr=subprocess.DEVNULL)
    time.sleep(2.0)  # mid-way: decoding 70 Mbp of gzip takes longer than this
    assert proc.poll() is None, "counting finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []
    subprocess.run([BIN, "ngrams", str(chrx), "--max-order", "10", "-o", str(out)], check=True,
                   stderr=subprocess.DEVNULL)
    ref = tmp_path / "ref.npz"
    subprocess.run([BIN, "ngrams", str(chrx), "--max-order", "10", "-o", str(ref)], check=True,
                   stderr=subprocess.DEVNULL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counts.npz", "ref.npz"]  # stale temp file cleaned
    a, b = np.load(out), np.load(ref)
    assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[f], b[f]) for f in a.files)
