"""Genome FASTA handling via pysam: validation, bgzip + faidx, chunking, reading sequence."""
from __future__ import annotations

import gzip
import os
import re
import sys
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from .util import GeneMaskError, Progress, atomic_output

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
    import pysam  # imported where used: training nodes that only read a built corpus need no pysam

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


# ----------------------------------------------------------------------------------------------
# Validation + bgzip/faidx
# ----------------------------------------------------------------------------------------------
# Valid sequence letters: the IUPAC nucleotide codes, either case. Lower case (soft-masked repeats)
# is kept as it is in the indexed FASTA and upper-cased by the counting and corpus stages;
# non-ACGT IUPAC codes are kept too and act as gaps there (they break n-grams and corpus pieces).
_IUPAC = b"ACGTNRYKMSWBDHVU"
_VALID = np.zeros(256, dtype=bool)
for _c in _IUPAC + _IUPAC.lower():
    _VALID[_c] = True


def _open_text(path: Path):
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def iter_fasta_validated(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """Stream (name, sequence) records with strict checks; every fault is a GeneMaskError naming
    the file, the line and what is wrong: empty file, text before the first header, non-text
    bytes, CRLF line ends, letters outside IUPAC, empty or duplicate contig names, truncated gzip."""
    path = Path(path)
    if not path.exists():
        raise GeneMaskError(f"{path}: file not found")
    seen: set[str] = set()
    name: str | None = None
    parts: list[bytes] = []
    first_line_of_record = 0
    lineno = 0

    def finish():
        seq = b"".join(parts)
        arr = np.frombuffer(seq, dtype=np.uint8)
        bad = np.flatnonzero(~_VALID[arr])
        if bad.size:
            ch = chr(arr[bad[0]]) if arr[bad[0]] < 128 else f"byte 0x{arr[bad[0]]:02x}"
            raise GeneMaskError(f"{path}: contig {name!r} (from line {first_line_of_record}) has an invalid "
                                f"sequence character {ch!r} at base {bad[0] + 1} (allowed: IUPAC nucleotide codes)")
        if not seq:
            raise GeneMaskError(f"{path}: contig {name!r} (line {first_line_of_record}) has no sequence")
        return seq

    try:
        with _open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if line.endswith(b"\r\n"):
                    raise GeneMaskError(f"{path}: line {lineno} ends with CRLF (Windows line ends); "
                                        f"convert the file with dos2unix")
                line = line.rstrip(b"\n")
                if line.startswith(b">"):
                    if name is not None:
                        yield name, finish()
                    try:
                        header = line[1:].decode("ascii")
                    except UnicodeDecodeError:
                        raise GeneMaskError(f"{path}: line {lineno}: header is not ASCII text") from None
                    fields = header.split()
                    if not fields:
                        raise GeneMaskError(f"{path}: line {lineno}: header has no contig name")
                    name = fields[0]
                    if name in seen:
                        raise GeneMaskError(f"{path}: line {lineno}: duplicate contig name {name!r}")
                    seen.add(name)
                    parts, first_line_of_record = [], lineno
                elif name is None:
                    if line.strip():
                        what = "binary data, not FASTA" if not _is_text(line) else "sequence before the first '>' header"
                        raise GeneMaskError(f"{path}: line {lineno}: {what}")
                else:
                    parts.append(line.strip())
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise GeneMaskError(f"{path}: truncated or corrupt gzip after line {lineno} ({e})") from None
    if name is None:
        raise GeneMaskError(f"{path}: empty file or no FASTA record ('>' header) found")
    yield name, finish()


def _is_text(line: bytes) -> bool:
    return all(32 <= b < 127 or b == 9 for b in line[:200])


def index_fasta(fasta: str | Path, output: str | Path, contigs: list[str] | None = None) -> None:
    """Validate `fasta` and write the chosen contigs bgzip-compressed with .fai and .gzi indexes.

    `contigs` items are NAME or NAME:LENGTH; with a length, the contig must have exactly that many bp
    (the config declares lengths so that the chunk plan is known before the genome is read).
    """
    import pysam

    fasta, output = Path(fasta), Path(output)
    want: dict[str, int | None] = {}
    for c in contigs or []:
        n, _, ln = c.partition(":")
        want[n] = int(ln) if ln else None
    found: dict[str, int] = {}
    prog = Progress(f"index {fasta.name}", sum(v for v in want.values() if v) or None, "bp")
    with atomic_output(output) as tmp:
        try:
            with pysam.BGZFile(str(tmp), "wb") as out:
                for name, seq in iter_fasta_validated(fasta):
                    if want and name not in want:
                        continue
                    if want.get(name) is not None and len(seq) != want[name]:
                        raise GeneMaskError(f"{fasta}: contig {name} has {len(seq):,} bp but the config "
                                            f"declares {want[name]:,} bp (genome.contigs)")
                    found[name] = len(seq)
                    out.write(b">" + name.encode() + b"\n")
                    step = 60 * 1024  # wrap at 60 bp, 1024 lines per write
                    for i in range(0, len(seq), step):
                        block = seq[i : i + step]
                        out.write(b"\n".join(block[j : j + 60] for j in range(0, len(block), 60)) + b"\n")
                    prog.update(len(seq))
            missing = [n for n in want if n not in found]
            if missing:
                raise GeneMaskError(f"{fasta}: contig(s) {', '.join(missing)} named in the config are not in the file")
            pysam.faidx(str(tmp))
            for ext in (".fai", ".gzi"):
                os.replace(str(tmp) + ext, str(output) + ext)
        except BaseException:
            for ext in (".fai", ".gzi"):
                Path(str(tmp) + ext).unlink(missing_ok=True)
            raise
    prog.close(f"{len(found)} contigs, {sum(found.values()):,} bp")


# ----------------------------------------------------------------------------------------------
# Chunks: non-overlapping contig windows. Stages that need context beyond a window (n-gram
# counting) read it themselves, so every n-gram is counted in exactly one chunk.
# ----------------------------------------------------------------------------------------------
def plan_chunks(lengths: dict[str, int], size: int) -> list[dict]:
    """Windows of `size` bp per contig (the last one shorter), in contig order, with stable ids."""
    if size < 1:
        raise GeneMaskError(f"chunk size must be >= 1 bp, got {size}")
    out = []
    for contig, n in lengths.items():
        for i, start in enumerate(range(0, n, size)):
            end = min(start + size, n)
            out.append({"chunk": f"{contig}_{i:04d}", "contig": contig, "start": start, "end": end,
                        "region": f"{contig}:{start + 1}-{end}"})
    return out


def fai_lengths(fasta: str | Path) -> dict[str, int]:
    fai = Path(str(fasta) + ".fai")
    if not fai.exists():
        raise GeneMaskError(f"{fasta}: no .fai index next to it (run `genemask index` first)")
    lengths = {}
    for line in fai.read_text().splitlines():
        f = line.split("\t")
        lengths[f[0]] = int(f[1])
    return lengths


def write_chunks(fasta: str | Path, output: str | Path, size: int) -> None:
    """Write the chunk plan of an indexed FASTA as TSV: chunk, contig, start, end (0-based, half-open), region."""
    chunks = plan_chunks(fai_lengths(fasta), size)
    with atomic_output(output) as tmp:
        with open(tmp, "w") as fh:
            fh.write("chunk\tcontig\tstart\tend\tregion\n")
            for c in chunks:
                fh.write(f"{c['chunk']}\t{c['contig']}\t{c['start']}\t{c['end']}\t{c['region']}\n")
    print(f"chunks: {len(chunks)} windows of <= {size:,} bp -> {output}", file=sys.stderr)


def acgt_segments(seq: bytes) -> list[tuple[int, int]]:
    """Maximal runs of A/C/G/T (either case) as (start, end) pairs: the corpus never spans a gap."""
    arr = np.frombuffer(seq, dtype=np.uint8)
    ok = np.zeros(256, dtype=bool)
    for c in b"ACGTacgt":
        ok[c] = True
    good = np.concatenate(([False], ok[arr], [False]))
    edges = np.flatnonzero(good[1:] != good[:-1])
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))
