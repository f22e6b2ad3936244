"""Genome FASTA handling via pysam: validation, bgzip + faidx, chunking, reading sequence."""
from __future__ import annotations

import gzip
import os
import re
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .util import GeneMaskError, Progress, atomic_output, write_failure

# A region is CHR, CHR:START-END or {CHR}:START-END (samtools' forms). Contig names may contain ':'
# and '-' (GRCh38 has HLA-A*01:01:01:01), so coordinates are parsed from the right and a name that is
# itself a contig of the file is taken whole; braces make any region unambiguous.
_COORDS = re.compile(r"(?P<chrom>.+):(?P<start>[\d,]+)-(?P<end>[\d,]+)")  # fullmatch
_BRACED = re.compile(r"\{(?P<chrom>[^{}]+)\}(?::(?P<start>[\d,]+)-(?P<end>[\d,]+))?")  # fullmatch
# SAM's reference-name grammar (SAMv1 section 1.2.1): what a contig name may be.
CONTIG_NAME = re.compile(r"[0-9A-Za-z!#$%&+./:;?@^_|~-][0-9A-Za-z!#$%&*+./:;=?@^_|~-]*")  # always fullmatch


def format_region(chrom: str, start: int, end: int) -> str:
    """(chrom, 0-based start, end) -> 'CHR:START-END' (1-based inclusive); parse_region reads it back."""
    return f"{chrom}:{start + 1}-{end}"


def parse_region(region: str, references=None) -> tuple[str, int | None, int | None]:
    """'chr2:1-1000' (1-based inclusive, as samtools) -> ('chr2', 0, 1000) 0-based half-open.

    `references` (the file's contig names), when given, resolves 'NAME' where NAME itself looks like
    'X:1-2': a whole contig of that name wins, as in samtools."""
    region = region.strip()
    if not region:
        raise GeneMaskError("region '': expected CHR, CHR:START-END or {CHR}:START-END")
    m = _BRACED.fullmatch(region)
    if m is None:
        if references is not None and region in references:
            return region, None, None
        m = _COORDS.fullmatch(region)
    if m is None:
        return region, None, None
    if m["start"] is None:
        return m["chrom"], None, None
    start, end = int(m["start"].replace(",", "")), int(m["end"].replace(",", ""))
    if start < 1 or end < start:
        raise GeneMaskError(f"region {region!r}: START must be >= 1 and <= END")
    return m["chrom"], start - 1, end



def read_sequences(path: str | Path, region=None) -> Iterator[tuple[str, bytes]]:
    """Yield (name, sequence bytes as in the file, case kept) for each record, or for one region.

    Plain, gzip and bgzip FASTA are read by streaming; a region (a string, see parse_region, or a
    (contig, 0-based start, end) tuple) needs a bgzip/plain file with a .fai, which is checked
    against the file first (check_fai: a stale or foreign index is refused). Every record read is
    checked to be DNA (check_alphabet).
    """
    import pysam  # imported where used: training nodes that only read a built corpus need no pysam

    path = Path(path)
    if not path.exists():
        raise GeneMaskError(f"{path}: file not found")
    if region is None:
        verbosity = pysam.set_verbosity(0)  # htslib's "[E::inflate_gzip_block]" lines: the error below says it
        try:
            with pysam.FastxFile(str(path)) as fh:
                for rec in fh:
                    seq = rec.sequence.encode("ascii")
                    check_alphabet(path, rec.name, seq, strict=False)
                    yield rec.name, seq
        except (OSError, ValueError) as e:
            if isinstance(e, GeneMaskError):
                raise
            raise GeneMaskError(f"{path}: cannot read as FASTA ({_gzip_fault(path) or e})") from None
        finally:
            pysam.set_verbosity(verbosity)
        return
    try:
        fa = pysam.FastaFile(str(path))
    except (OSError, ValueError) as e:
        raise GeneMaskError(f"{path}: cannot open as an indexed FASTA for region {region} ({e})") from None
    with fa:
        if isinstance(region, tuple):
            chrom, start, end = region
        else:
            chrom, start, end = parse_region(region, fa.references)
        if chrom not in fa.references:
            raise GeneMaskError(f"{path}: no contig {chrom!r} (region {region})")
        check_fai(path, [chrom])
        seq = fa.fetch(reference=chrom, start=start, end=end).encode("ascii")
        check_alphabet(path, chrom, seq, strict=False)
        yield chrom, seq


def _gzip_fault(path: Path) -> str | None:
    """What is wrong with a gzip file's stream (streamed, 1 MiB at a time), or None (intact, not gzip)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(2) != b"\x1f\x8b":
                return None
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except (OSError, EOFError, zlib.error) as e:
        return f"truncated or corrupt gzip: {e}"
    return None


# ----------------------------------------------------------------------------------------------
# The .fai must describe this very file: htslib trusts it blindly, so an index left from an
# earlier or another FASTA reads the wrong bytes (headers, the next record) as sequence.
# ----------------------------------------------------------------------------------------------
def read_fai(fasta: str | Path) -> list[tuple[str, int, int, int, int]]:
    """Rows (name, length, offset, line bases, line bytes) of `fasta`.fai; malformed -> GeneMaskError."""
    fai = Path(str(fasta) + ".fai")
    try:
        text = fai.read_text()
    except FileNotFoundError:
        raise GeneMaskError(f"{fasta}: no .fai index next to it (run `genemask index` first)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GeneMaskError(f"{fai}: unreadable FASTA index ({e})") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        f = line.split("\t")
        try:
            if len(f) not in (5, 6):
                raise ValueError
            row = (f[0], *(int(x) for x in f[1:5]))
        except ValueError:
            raise GeneMaskError(f"{fai}: line {i}: not a FASTA index line (NAME LENGTH OFFSET LINEBASES LINEWIDTH)") \
                from None
        rows.append(row)
    return rows


class _Uncompressed:
    """Random access to the uncompressed bytes of a plain or bgzip file (bgzip via its .gzi)."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as fh:
            self.gz = fh.read(2) == b"\x1f\x8b"
        self.blocks = None
        if self.gz:
            gzi = Path(str(path) + ".gzi")
            if not gzi.exists():
                raise FileNotFoundError(gzi)
            raw = np.fromfile(gzi, dtype="<u8")
            if raw.size < 1 or raw.size != 1 + 2 * int(raw[0]):
                raise GeneMaskError(f"{gzi}: not a bgzip index (.gzi)")
            pairs = raw[1:].reshape(-1, 2)
            self.blocks = np.vstack(([[0, 0]], pairs))  # (compressed, uncompressed) block starts

    def read(self, start: int, n: int) -> bytes:
        start = max(start, 0)
        if not self.gz:
            with open(self.path, "rb") as fh:
                fh.seek(start)
                return fh.read(n)
        b = int(np.searchsorted(self.blocks[:, 1], start, side="right")) - 1
        coff, uoff = (int(x) for x in self.blocks[b])
        out = bytearray()
        with open(self.path, "rb") as fh:
            fh.seek(coff)
            data = fh.read(1 << 17)
            d = zlib.decompressobj(31)
            while data and len(out) < start - uoff + n:
                out += d.decompress(data)
                if d.eof:  # next bgzip member
                    data = d.unused_data or fh.read(1 << 17)
                    d = zlib.decompressobj(31)
                else:
                    data = fh.read(1 << 17)
        return bytes(out[start - uoff : start - uoff + n])


def check_fai(fasta: str | Path, contigs=None) -> None:
    """Refuse (one line naming the .fai) an index that does not describe `fasta` for `contigs`
    (default: all): each record's header must sit right before its offset, its lines must have the
    declared width, and its last base must be followed by a line end and the next '>' or the end."""
    fasta = Path(fasta)
    fai = Path(str(fasta) + ".fai")
    st_a, st_b = fasta.stat(), fai.stat() if fai.exists() else None
    if st_b is None:
        return  # pysam builds a fresh one
    key = (str(fasta.resolve()), st_a.st_size, st_a.st_mtime_ns, st_b.st_size, st_b.st_mtime_ns)
    done = _FAI_CHECKED.setdefault(key, set())
    want = [c for c in (contigs if contigs is not None else [r[0] for r in read_fai(fasta)]) if c not in done]
    if not want:
        return
    rows = {r[0]: r for r in read_fai(fasta)}
    try:
        raw = _Uncompressed(fasta)
    except FileNotFoundError:
        return  # no .gzi: htslib refuses or rebuilds on open
    for name in want:
        if name not in rows:
            continue
        problem = _fai_row_problem(raw, *rows[name])
        if problem:
            raise GeneMaskError(f"{fai}: index does not match {fasta} (contig {name!r}: {problem}); stale or from "
                                f"another file: delete {fai.name} (and .gzi) and re-index (genemask index)")
        done.add(name)


_FAI_CHECKED: dict[tuple, set] = {}


def _fai_row_problem(raw: _Uncompressed, name: str, length: int, offset: int, lb: int, lw: int) -> str | None:
    if length < 1 or lb < 1 or lw <= lb or lw > lb + 2:
        return f"impossible entry (length {length}, line bases {lb}, line width {lw})"
    head = raw.read(offset - 4096, min(offset, 4096))
    if not head.endswith(b"\n"):
        return f"no header line ends at offset {offset}"
    line = head[:-1].rstrip(b"\r").rsplit(b"\n", 1)[-1]
    fields = line[1:].split()
    if not line.startswith(b">") or not fields or fields[0] != name.encode():
        return f"the line before offset {offset} is not its header '>{name}'"
    if length > lb and raw.read(offset + lb, 1) not in (b"\n", b"\r"):
        return f"its lines are not {lb} bp long"
    last = offset + (length - 1) // lb * lw + (length - 1) % lb
    tail = raw.read(last, lw - lb + 2)
    if not tail or tail[:1] in (b"\n", b"\r", b">"):
        return f"the file ends or a line breaks before base {length:,} (declared length)"
    rest = tail[1:].lstrip(b"\r\n")
    if len(tail) > 1 and (tail[1:2] not in (b"\n", b"\r") or (rest and not rest.startswith(b">"))):
        return f"the record goes on past {length:,} bp (declared length)"
    return None


# ----------------------------------------------------------------------------------------------
# Validation + bgzip/faidx
# ----------------------------------------------------------------------------------------------
# Valid sequence letters: the IUPAC nucleotide codes of DNA, either case. Lower case (soft-masked
# repeats) is kept as it is in the indexed FASTA and upper-cased by the counting and corpus stages;
# non-ACGT IUPAC codes are kept too and act as gaps there (they break n-grams and corpus pieces).
# U (RNA) is refused: read as a gap it would silently leave nothing to count.
_IUPAC = b"ACGTNRYKMSWBDHV"
_VALID = np.zeros(256, dtype=bool)
for _c in _IUPAC + _IUPAC.lower():
    _VALID[_c] = True
_ACGTN = np.zeros(256, dtype=bool)
for _c in b"ACGTNacgtn":
    _ACGTN[_c] = True
MIN_ACGTN_FRACTION = 0.5  # a DNA record is mostly A/C/G/T/N; ambiguity codes are rare in any assembly


def check_alphabet(path, name: str, seq: bytes, first_line: int | None = None, strict: bool = True,
                   what: str = "contig") -> None:
    """The one alphabet check of every sequence input (FASTA records, sequence-table rows; `what`
    names the record in messages). GeneMaskError naming the file, the record and the bad letters
    unless `seq` is DNA: with
    `strict` (indexing) IUPAC nucleotide codes only, either case; always at least
    MIN_ACGTN_FRACTION A/C/G/T/N, and no more U than T (RNA). Without `strict` (reading a region or
    a FASTA to count) other letters such as '-' are gaps, as the counters document."""
    arr = np.frombuffer(seq, dtype=np.uint8)
    if not arr.size:
        return
    where = f"{path}: {what} {name!r}" + (f" (from line {first_line})" if first_line else "")
    hist = np.bincount(arr, minlength=256)
    n_u, n_t = int(hist[ord("U")] + hist[ord("u")]), int(hist[ord("T")] + hist[ord("t")])
    if n_u and n_u >= n_t:
        raise GeneMaskError(f"{where} is RNA, not DNA ({n_u:,} U, {n_t:,} T in {arr.size:,} bases): "
                            f"write T for U (e.g. sed '/^>/!y/Uu/Tt/')")
    if strict:
        bad = np.flatnonzero(~_VALID[arr])
        if bad.size:
            c = int(arr[bad[0]])
            ch = chr(c) if 32 < c < 127 else f"byte 0x{c:02x}"
            letters = "".join(chr(x) if 32 < x < 127 else "?" for x in np.flatnonzero(hist * ~_VALID)[:20])
            raise GeneMaskError(f"{where} has an invalid sequence character {ch!r} at base {bad[0] + 1} "
                                f"(allowed: IUPAC nucleotide codes; found {letters}: {bad.size:,} of {arr.size:,} "
                                f"bases)")
    acgtn = int(hist[_ACGTN].sum())
    if acgtn < MIN_ACGTN_FRACTION * arr.size:
        top = sorted(np.flatnonzero(hist * ~_ACGTN), key=lambda x: -hist[x])[:6]
        letters = ", ".join(f"{chr(x) if 32 < x < 127 else hex(x)} {hist[x]:,}" for x in top)
        raise GeneMaskError(f"{where} is not DNA: only {acgtn:,} of {arr.size:,} letters are A/C/G/T/N "
                            f"(most common others: {letters}); protein or a wrong file?")


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
        check_alphabet(path, name, seq, first_line_of_record)
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
    specs = {c: split_contig_arg(c) for c in contigs or []}  # argument -> (name, length or None)
    by_name = {n: (arg, ln) for arg, (n, ln) in specs.items()}
    by_name.update({arg: (arg, None) for arg in specs})  # a record named like the whole argument wins
    taken: set[str] = set()
    found: dict[str, int] = {}
    prog = Progress(f"index {fasta.name}", sum(ln for _, ln in specs.values() if ln) or None, "bp")
    verbosity = pysam.set_verbosity(0)  # htslib's own "[E::bgzf_flush]" lines: the error below says it
    with atomic_output(output) as tmp:
        try:
            open(tmp, "wb").close()  # a file pysam cannot create (EROFS, EACCES) crashes BGZFile: fail here
            with pysam.BGZFile(str(tmp), "wb") as out:
                for name, seq in iter_fasta_validated(fasta):
                    if specs and name not in by_name:
                        continue
                    arg, want = by_name.get(name, (name, None))
                    if arg in taken:  # one record per argument ('chr2:5' with records 'chr2:5' and 'chr2')
                        continue
                    taken.add(arg)
                    if want is not None and len(seq) != want:
                        raise GeneMaskError(f"{fasta}: contig {name} has {len(seq):,} bp but the config "
                                            f"declares {want:,} bp (genome.contigs)")
                    found[name] = len(seq)
                    out.write(b">" + name.encode() + b"\n")
                    step = 60 * 1024  # wrap at 60 bp, 1024 lines per write
                    for i in range(0, len(seq), step):
                        block = seq[i : i + step]
                        out.write(b"\n".join(block[j : j + 60] for j in range(0, len(block), 60)) + b"\n")
                    prog.update(len(seq))
            missing = [a for a in specs if a not in taken]
            if missing:
                raise GeneMaskError(f"{fasta}: contig(s) {', '.join(missing)} named in the config (NAME or "
                                    f"NAME:LENGTH) are not in the file")
            try:
                pysam.faidx(str(tmp))
            except pysam.SamtoolsError as e:
                raise write_failure(output, str(e).strip().splitlines()[-1]) from None
            for ext in (".fai", ".gzi"):
                os.replace(str(tmp) + ext, str(output) + ext)
        except OSError as e:
            _clean_index(tmp)
            if e.errno is None:  # pysam's BGZFile: "Error closing BGZFile object", no errno
                raise write_failure(output, str(e)) from None
            raise
        except BaseException:
            _clean_index(tmp)
            raise
        finally:
            pysam.set_verbosity(verbosity)
    prog.close(f"{len(found)} contigs, {sum(found.values()):,} bp")


def _clean_index(tmp: Path) -> None:
    for ext in (".fai", ".gzi"):
        try:
            Path(str(tmp) + ext).unlink(missing_ok=True)
        except OSError:  # a read-only file system refuses even that: there is nothing to remove
            pass


# ----------------------------------------------------------------------------------------------
# Chunks: non-overlapping contig windows. Stages that need context beyond a window (n-gram
# counting) read it themselves, so every n-gram is counted in exactly one chunk.
# ----------------------------------------------------------------------------------------------
def split_contig_arg(arg: str, names=()) -> tuple[str, int | None]:
    """'NAME' or 'NAME:LENGTH' -> (NAME, LENGTH or None); the length is split off from the right, so
    names with ':' (HLA-A*01:01:01:01) work: 'HLA-A*01:01:01:01:3000' is that contig with 3000 bp.
    An `arg` that is itself one of `names` (the file's contigs) is that contig, without a length."""
    if arg in names:
        return arg, None
    name, sep, ln = arg.rpartition(":")
    if sep and ln.isdigit() and name:
        return name, int(ln)
    return arg, None


def plan_chunks(lengths: dict[str, int], size: int) -> list[dict]:
    """Windows of `size` bp per contig (the last one shorter), in contig order. The id of a chunk
    (a file name and a Snakemake wildcard) is a safe token c0000, c0001, ... numbered in plan order,
    never derived from the contig name, which may hold any character SAM allows (*, :, |, ...)."""
    if size < 1:
        raise GeneMaskError(f"chunk size must be >= 1 bp, got {size}")
    out = []
    for contig, n in lengths.items():
        for start in range(0, n, size):
            end = min(start + size, n)
            out.append({"chunk": f"c{len(out):04d}", "contig": contig, "start": start, "end": end,
                        "region": format_region(contig, start, end)})
    return out


def fai_lengths(fasta: str | Path) -> dict[str, int]:
    return {r[0]: r[1] for r in read_fai(fasta)}


def write_chunks(fasta: str | Path, output: str | Path, size: int, contigs: list[str] | None = None) -> None:
    """Write the chunk plan of an indexed FASTA as TSV: chunk, contig, start, end (0-based, half-open), region.

    `contigs` (NAME or NAME:LENGTH, as for index) fixes the contigs and their order, so that the ids
    equal those of the workflow's plan (plan.chunks, from the config); default: all, in file order."""
    have = fai_lengths(fasta)
    if contigs:
        lengths = {}
        for c in contigs:
            name, ln = split_contig_arg(c, have)
            if name not in have:
                raise GeneMaskError(f"{fasta}.fai: no contig {name!r} (named in --contigs)")
            if ln is not None and have[name] != ln:
                raise GeneMaskError(f"{fasta}.fai: contig {name!r} has {have[name]:,} bp, not {ln:,}")
            lengths[name] = have[name]
    else:
        lengths = have
    check_fai(fasta, list(lengths))
    chunks = plan_chunks(lengths, size)
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
