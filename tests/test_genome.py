"""Genome stage: validation of FASTA input, bgzip + faidx, chunk plan, ACGT segments."""
import gzip

import pysam
import pytest

from genemask.cli import main
from genemask.genome import acgt_segments, iter_fasta_validated, plan_chunks, read_sequences


def run_cli(args, capsys):
    rc = main(args)
    err = capsys.readouterr().err
    return rc, err


def test_index_real_slice_roundtrip(hg38_slice, tmp_path, capsys):
    out = tmp_path / "g.fa.gz"
    rc, _ = run_cli(["index", str(hg38_slice), "--contigs", "chr2:2333275", "-o", str(out)], capsys)
    assert rc == 0
    a, b = pysam.FastaFile(str(out)), pysam.FastaFile(str(hg38_slice))
    assert tuple(a.references) == ("chr2",) and tuple(a.lengths) == (2333275,)
    assert a.fetch("chr2", 1_605_092, 1_605_592) == b.fetch("chr2", 1_605_092, 1_605_592)
    assert a.fetch("chr2") == b.fetch("chr2")  # soft-masking kept; upper-casing happens downstream
    assert (tmp_path / "g.fa.gz.fai").exists() and (tmp_path / "g.fa.gz.gzi").exists()


def test_chunks_cover_contigs_without_overlap():
    plan = plan_chunks({"a": 2500, "b": 1000}, 1000)
    assert [(c["contig"], c["start"], c["end"]) for c in plan] == [
        ("a", 0, 1000), ("a", 1000, 2000), ("a", 2000, 2500), ("b", 0, 1000)]
    assert plan[1]["region"] == "a:1001-2000"


def test_acgt_segments_split_at_gaps():
    assert acgt_segments(b"NNACgtNRYACGNN") == [(2, 6), (9, 12)]
    assert acgt_segments(b"") == [] and acgt_segments(b"NNNN") == []


def test_lower_case_and_iupac_are_valid_input(tmp_path, capsys):
    fa = tmp_path / "x.fa"
    fa.write_text(">s1 description\nacgtNNRYKM\nACGT\n>s2\nGGGG\n")
    assert [(n, s) for n, s in iter_fasta_validated(fa)] == [("s1", b"acgtNNRYKMACGT"), ("s2", b"GGGG")]
    out = tmp_path / "x.fa.gz"
    assert run_cli(["index", str(fa), "-o", str(out)], capsys)[0] == 0
    # lower case stays soft-masked in the index, IUPAC codes stay as they are
    assert dict(read_sequences(out)) == {"s1": b"acgtNNRYKMACGT", "s2": b"GGGG"}


BAD_FASTA = {
    "empty": (b"", "empty file"),
    "no_header": (b"ACGTACGT\nACGT\n", "sequence before the first '>' header"),
    "binary": (bytes(range(256)) * 4, "binary data"),
    "crlf": (b">s1\r\nACGT\r\n", "CRLF"),
    "duplicate": (b">s1\nACGT\n>s1\nACGT\n", "duplicate contig name 's1'"),
    "bad_letter": (b">s1\nACGTXACGT\n", "invalid sequence character 'X' at base 5"),
    "empty_name": (b">\nACGT\n", "no contig name"),
    "no_sequence": (b">s1\n>s2\nACGT\n", "has no sequence"),
}


@pytest.mark.parametrize("case", sorted(BAD_FASTA))
def test_malformed_fasta_one_line_error_no_output(case, tmp_path, capsys):
    content, fault = BAD_FASTA[case]
    fa = tmp_path / f"{case}.fa"
    fa.write_bytes(content)
    out = tmp_path / "out" / "g.fa.gz"
    rc, err = run_cli(["index", str(fa), "-o", str(out)], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(fa) in lines[0] and fault in lines[0], err
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_truncated_gzip(hg38_slice, tmp_path, capsys):
    data = hg38_slice.read_bytes()
    fa = tmp_path / "cut.fa.gz"
    fa.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out" / "g.fa.gz"
    rc, err = run_cli(["index", str(fa), "-o", str(out)], capsys)
    assert rc == 2 and "truncated or corrupt gzip" in err and str(fa) in err
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_declared_length_must_match(tmp_path, capsys):
    fa = tmp_path / "x.fa.gz"
    with gzip.open(fa, "wb") as fh:
        fh.write(b">chr9\nACGTACGTAC\n")
    rc, err = run_cli(["index", str(fa), "--contigs", "chr9:11", "-o", str(tmp_path / "o.fa.gz")], capsys)
    assert rc == 2 and "chr9 has 10 bp but the config declares 11 bp" in err
    rc, err = run_cli(["index", str(fa), "--contigs", "chrZ", "-o", str(tmp_path / "o.fa.gz")], capsys)
    assert rc == 2 and "chrZ" in err and "not in the file" in err
    assert not (tmp_path / "o.fa.gz").exists()
