"""`genemask bench ngrams FASTA [--max-order N]`: our n-gram counting vs KMC, with an exactness check.

The FASTA is decoded once (gzip + parse, timed on its own line). Ours counts orders 1..N in one
numba pass (single thread). If the `kmc` command exists, KMC counts the same sequence (written once
as plain FASTA to a temporary folder, so KMC does no gzip work either) once per order with
`kmc -k<n> -ci1 -cs4294967295 -b -fm -t1` (exact counts, forward strand only: -b turns off
canonical k-mers, one thread); `kmc_tools transform ... dump` reads its counts back (not timed) and
they must equal ours for every order. Each timing is the best of 3 runs. The last line is the speed-up, KMC time / our time, e.g. `9.6x`.
"""
from __future__ import annotations

import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..kmers import kmer_to_index
from ..ngrams import NgramCounter, count_sequence
from ..util import GeneMaskError

REPEATS = 3  # every timing is the best of 3 runs (shared machines are noisy)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _kmc_counts(kmc_tools: str, db: Path, n: int, dump: Path) -> np.ndarray:
    subprocess.run([kmc_tools, "-hp", "transform", str(db), "dump", str(dump)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    a = np.zeros(4**n, dtype=np.uint64)
    if dump.stat().st_size:
        df = pd.read_csv(dump, sep="\t", header=None, names=["kmer", "count"], dtype={"kmer": str, "count": np.uint64})
        idx = kmer_to_index(list(df["kmer"]), n)
        if (idx < 0).any():
            raise GeneMaskError(f"{dump}: KMC dumped a k-mer with a non-ACGT letter")
        a[idx] = df["count"].to_numpy()
    return a


def main(args) -> int:
    from ..genome import read_sequences

    fasta, max_order = Path(args.fasta), int(getattr(args, "max_order", 10) or 10)
    t = time.perf_counter()
    records = list(read_sequences(fasta))
    t_decode = time.perf_counter() - t
    bp = sum(len(s) for _, s in records)
    print(f"input: {fasta} ({len(records)} record(s), {bp:,} bp)")
    print(f"decode once (gzip + FASTA parse, pysam): {t_decode:.2f}s")

    t = time.perf_counter()
    count_sequence(b"ACGTN", max_order)  # JIT compile or load from the numba cache
    print(f"ours: numba compile/cache load: {time.perf_counter() - t:.2f}s")
    t_ours = float("inf")
    for _ in range(REPEATS):
        t = time.perf_counter()
        counter = NgramCounter(max_order)
        for _, s in records:
            counter.add(s)
        ours = counter.counts()
        t_ours = min(t_ours, time.perf_counter() - t)
    print(f"ours: count orders 1..{max_order} in one pass, 1 thread, best of {REPEATS}: {t_ours:.2f}s "
          f"({bp / t_ours / 1e6:,.0f} Mbp/s; {int(ours[1].sum()):,} ACGT bases), peak RSS {_rss_mib():,.0f} MiB")

    kmc, kmc_tools = shutil.which("kmc"), shutil.which("kmc_tools")
    if not kmc or not kmc_tools:
        print(f"KMC is missing (no `kmc`/`kmc_tools` on PATH): ours only, {t_ours:.2f}s")
        return 0
    with tempfile.TemporaryDirectory(prefix="genemask-bench-") as tmp:
        tmp = Path(tmp)
        plain = tmp / "input.fa"
        with plain.open("wb") as fh:
            for i, (_, s) in enumerate(records):
                fh.write(b">r%d\n" % i)
                for j in range(0, len(s), 1 << 20):
                    fh.write(s[j : j + (1 << 20)])
                fh.write(b"\n")
        del records
        t_kmc, per_order, mismatched = 0.0, [], []
        for n in range(1, max_order + 1):
            db, work = tmp / f"k{n}", tmp / f"w{n}"
            work.mkdir()
            cmd = [kmc, f"-k{n}", "-ci1", "-cs4294967295", "-b", "-fm", "-t1", "-hp", str(plain), str(db), str(work)]
            dt = float("inf")
            for _ in range(REPEATS):
                t = time.perf_counter()
                r = subprocess.run(cmd, capture_output=True, text=True)
                dt = min(dt, time.perf_counter() - t)
                if r.returncode != 0:
                    raise GeneMaskError(f"kmc -k{n} failed: {r.stderr.strip() or r.stdout.strip()}")
            t_kmc += dt
            per_order.append(f"k{n} {dt:.2f}s")
            if not np.array_equal(_kmc_counts(kmc_tools, db, n, tmp / f"dump{n}.txt"), ours[n]):
                mismatched.append(n)
            for p in tmp.glob(f"k{n}.*"):
                p.unlink()
        t_ours_e2e = float("inf")  # ours end to end on the same plain file, for a like-for-like line
        for _ in range(REPEATS):
            t = time.perf_counter()
            c2 = NgramCounter(max_order)
            for _, s in read_sequences(plain):
                c2.add(s)
            c2.counts()
            t_ours_e2e = min(t_ours_e2e, time.perf_counter() - t)
    ver = subprocess.run([kmc], capture_output=True, text=True).stdout.splitlines()[:1]
    print(f"kmc: {ver[0] if ver else 'kmc'}; -t1, one run per order, best of {REPEATS} each: {t_kmc:.2f}s ({', '.join(per_order)})")
    if mismatched:
        raise GeneMaskError(f"counts differ from KMC for orders {mismatched}")
    print(f"counts agree with KMC: orders 1..{max_order} identical")
    print(f"end to end from plain FASTA (parse + count): ours {t_ours_e2e:.2f}s vs KMC {t_kmc:.2f}s: "
          f"{t_kmc / t_ours_e2e:.1f}x")
    print(f"counting, KMC {t_kmc:.2f}s / ours {t_ours:.2f}s: {t_kmc / t_ours:.1f}x")
    return 0
