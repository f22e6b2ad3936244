"""Genome FASTA handling via pysam: validation, bgzip + faidx, chunking, reading sequence."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pysam

from .util import GeneMaskError

_REGION = re.compile(r"^(?P<chrom>[^:]+)(?::(?P<start>[\d,]+)-(?P<end>[\d,]+))?$")


def parse_region(region: str) -> tuple[str, int | None, int | None]:
    """'chr2:1-1000' (1-based inclusive, as samtools) -> ('chr2', 0, 1000) 0-based half-open."""
    m = _REGION.match(region.strip())
    if not m:
        raise GeneMaskError(f"region {region!r}: expected CHR or CHR:START-END")
    if m["start"] is None:
        return m["chrom"], None, None
    start, end = int(m["start"].replace(",", "")), int(m["end"].replace(",", ""))
    if start < 1 or end < start:
        raise GeneMaskError(f"region {region!r}: START must be >= 1 and <= END")
    return m["chrom"], start - 1, end


def read_sequences(path: str | Path, region: str | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield (name, sequence bytes as in the file, case kept) for each record, or for one region.

    Plain, gzip and bgzip FASTA are read by streaming; a region needs a bgzip/plain file with .fai.
    """
    path = Path(path)
    if not path.exists():
        raise GeneMaskError(f"{path}: file not found")
    if region is None:
        with pysam.FastxFile(str(path)) as fh:
            for rec in fh:
                yield rec.name, rec.sequence.encode("ascii")
        return
    chrom, start, end = parse_region(region)
    try:
        fa = pysam.FastaFile(str(path))
    except (OSError, ValueError) as e:
        raise GeneMaskError(f"{path}: cannot open as an indexed FASTA for region {region} ({e})") from None
    with fa:
        if chrom not in fa.references:
            raise GeneMaskError(f"{path}: no contig {chrom!r} (region {region})")
        yield chrom, fa.fetch(chrom, start, end).encode("ascii")
