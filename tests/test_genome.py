"""Genome stage: validation of FASTA input, bgzip + faidx, chunk plan, ACGT segments."""
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pysam
import pytest

from genemask.cli import main
from genemask.genome import acgt_segments, iter_fasta_validated, parse_region, plan_chunks, read_sequences
from genemask.util import GeneMaskError


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


# ---- hostile names, stale indexes, wrong alphabets ---------------------------------------------
# GRCh38 has HLA-A*01:01:01:01 and chrUn_KI270302v1; SAM allows ':' and '-' in a name, so a contig may
# be called like a region. Each must work end to end: index, chunks, counting, corpus.
ODD_NAMES = ["HLA-A*01:01:01:01", "chrUn_KI270302v1", "chr1:10-20", "chr1", "a|b;c$d&e"]


def _random_fasta(path, names, rng, width=60):
    seqs = {}
    with open(path, "w") as fh:
        for i, name in enumerate(names):
            seq = "".join(rng.choice(list("ACGTacgtN"), 2_000 + 333 * i))
            seqs[name] = seq
            fh.write(f">{name} some description\n" + "".join(seq[j : j + width] + "\n" for j in range(0, len(seq), width)))
    return seqs


def test_parse_region_reads_coordinates_from_the_right():
    assert parse_region("HLA-A*01:01:01:01:1001-1500") == ("HLA-A*01:01:01:01", 1000, 1500)
    assert parse_region("chr1:10-20:1-5") == ("chr1:10-20", 0, 5)
    assert parse_region("chr1:10-20") == ("chr1", 9, 20)
    assert parse_region("chr1:10-20", references=["chr1", "chr1:10-20"]) == ("chr1:10-20", None, None)
    assert parse_region("{chr1:10-20}") == ("chr1:10-20", None, None)
    assert parse_region("{chr1:10-20}:3-4") == ("chr1:10-20", 2, 4)
    assert parse_region("HLA-A*01:01:01:01") == ("HLA-A*01:01:01:01", None, None)
    with pytest.raises(GeneMaskError, match="START must be >= 1"):
        parse_region("chr1:0-5")


def test_odd_contig_names_index_chunks_count_corpus(tmp_path, capsys):
    from genemask.ngrams import count_fasta, count_sequence, load_counts

    rng = np.random.default_rng(11)
    fa = tmp_path / "odd.fa"
    seqs = _random_fasta(fa, ODD_NAMES, rng)
    out = tmp_path / "g.fa.gz"
    keep = ["chr1:10-20", "HLA-A*01:01:01:01", "a|b;c$d&e", "chrUn_KI270302v1"]  # chr1 left out
    args = [f"{n}:{len(seqs[n])}" for n in keep]
    rc, err = run_cli(["index", str(fa), "--contigs", *args, "-o", str(out)], capsys)
    assert rc == 0, err
    assert set(pysam.FastaFile(str(out)).references) == set(keep)
    chunks_tsv = tmp_path / "chunks.tsv"
    rc, err = run_cli(["chunks", str(out), "--size", "1000", "--contigs", *args, "-o", str(chunks_tsv)], capsys)
    assert rc == 0, err
    rows = [line.split("\t") for line in chunks_tsv.read_text().splitlines()[1:]]
    plan = plan_chunks({n: len(seqs[n]) for n in keep}, 1000)
    assert [r[0] for r in rows] == [c["chunk"] for c in plan] == [f"c{i:04d}" for i in range(len(plan))]
    assert [r[1] for r in rows] == [c["contig"] for c in plan] and [r[4] for r in rows] == [c["region"] for c in plan]
    assert [r[1] for r in rows][:3] == ["chr1:10-20"] * 3  # config order, not file order
    total = None
    for r in rows:  # every chunk through the CLI, as the ngrams rule runs it
        npz = tmp_path / f"{r[0]}.npz"
        rc, err = run_cli(["ngrams", str(out), "--region", r[4], "--max-order", "5", "-o", str(npz)], capsys)
        assert rc == 0, err
        got = load_counts(npz)
        total = got if total is None else {n: total[n] + got[n] for n in got}
    direct = {n: sum(count_sequence(seqs[c].upper(), 5)[n] for c in keep) for n in range(1, 6)}
    for n in direct:
        assert np.array_equal(total[n], direct[n]), n
    # a whole contig whose name looks like a region is that contig, not chr1:10-20 of 'chr1'
    whole = count_fasta(out, "chr1:10-20", 5)
    assert np.array_equal(whole[5], count_sequence(seqs["chr1:10-20"].upper(), 5)[5])
    corpus = tmp_path / "corpus"
    rc, err = run_cli(["corpus", str(out), "--region", "HLA-A*01:01:01:01:1-2000", "-o", str(corpus)], capsys)
    assert rc == 0, err
    assert json.loads((corpus / "meta.json").read_text())["bp_in"] == 2000


def test_contig_argument_that_is_a_whole_name(tmp_path, capsys):
    """NAME:LENGTH is split from the right, unless the whole argument is a record's name."""
    fa = tmp_path / "x.fa"
    fa.write_text(">HLA-A*01:01:01:01\nACGTACGTAC\n>chr2:5\nACGTA\n>chr2\nACG\n")
    out = tmp_path / "x.fa.gz"
    rc, err = run_cli(["index", str(fa), "--contigs", "HLA-A*01:01:01:01:10", "chr2:5", "-o", str(out)], capsys)
    assert rc == 0, err
    assert list(pysam.FastaFile(str(out)).references) == ["HLA-A*01:01:01:01", "chr2:5"]
    rc, err = run_cli(["index", str(fa), "--contigs", "HLA-A*01:01:01:01:11", "-o", str(out)], capsys)
    assert rc == 2 and "contig HLA-A*01:01:01:01 has 10 bp but the config declares 11 bp" in err


def _two_fastas(tmp_path, bgzip):
    """Two FASTAs with the same contig names, the second one's chrS 39,333 bp instead of 30,000."""
    rng = np.random.default_rng(5)
    paths = []
    for tag, n in (("real", 30_000), ("other", 39_333)):
        seq = "".join(rng.choice(list("ACGT"), n))
        p = tmp_path / f"{tag}.fa"
        p.write_text(">chrS\n" + "".join(seq[i : i + 60] + "\n" for i in range(0, n, 60)) + ">chrT\n" + seq[:5000] + "\n")
        if bgzip:
            pysam.tabix_compress(str(p), str(p) + ".gz")
            p = Path(str(p) + ".gz")
        pysam.faidx(str(p))
        paths.append(p)
    return paths


@pytest.mark.parametrize("bgzip", [False, True])
def test_stale_fai_is_refused_naming_it(tmp_path, capsys, bgzip):
    real, other = _two_fastas(tmp_path, bgzip)
    good = Path(str(real) + ".fai").read_text()
    npz = tmp_path / "n.npz"
    rc, err = run_cli(["ngrams", str(real), "--region", "chrS:1-40000", "--max-order", "4", "-o", str(npz)], capsys)
    assert rc == 0 and "30,000 ACGT bases" in err  # the right index: 30,000 bases, clipped at the end
    shutil.copy(str(other) + ".fai", str(real) + ".fai")  # an index of another file (or an older version)
    for cmd in (["ngrams", str(real), "--region", "chrS:1-40000", "--max-order", "4", "-o", str(npz)],
                ["ngrams", str(real), "--region", "chrT", "--max-order", "4", "-o", str(npz)],
                ["corpus", str(real), "--region", "chrS", "-o", str(tmp_path / "c")],
                ["chunks", str(real), "--size", "1000", "-o", str(tmp_path / "chunks.tsv")]):
        npz.unlink(missing_ok=True)
        rc, err = run_cli(cmd, capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1, err
        assert lines[0].startswith(f"genemask {cmd[0]}: error: {real}.fai: index does not match {real}"), lines
        assert not npz.exists() and not (tmp_path / "c").exists() and not (tmp_path / "chunks.tsv").exists()
    Path(str(real) + ".fai").write_text(good)
    assert run_cli(["ngrams", str(real), "--region", "chrT", "--max-order", "4", "-o", str(npz)], capsys)[0] == 0


def test_fai_with_wrong_line_width_is_refused(tmp_path, capsys):
    fa = tmp_path / "w.fa"
    fa.write_text(">s\n" + "ACGT" * 50 + "\n")
    (tmp_path / "w.fa.fai").write_text("s\t200\t3\t60\t61\n")  # claims 60 bp lines; the file has one 200 bp line
    rc, err = run_cli(["ngrams", str(fa), "--region", "s:1-200", "--max-order", "3", "-o", str(tmp_path / "n.npz")],
                      capsys)
    assert rc == 2 and "its lines are not 60 bp long" in err and f"{fa}.fai" in err


def test_rna_fasta_refused_naming_file_record_letters(tmp_path, capsys):
    rng = np.random.default_rng(2)
    rna = tmp_path / "rna.fa"
    rna.write_text(">dna1\nACGTACGTAC\n>tx1 an mRNA\n" + "".join(rng.choice(list("ACGU"), 500)) + "\n")
    rc, err = run_cli(["index", str(rna), "-o", str(tmp_path / "o.fa.gz")], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and f"{rna}: contig 'tx1'" in lines[0] and "RNA" in lines[0], err
    assert "write T for U" in lines[0] and not (tmp_path / "o.fa.gz").exists()
    rc, err = run_cli(["ngrams", str(rna), "--max-order", "3", "-o", str(tmp_path / "n.npz")], capsys)
    assert rc == 2 and f"{rna}: contig 'tx1' is RNA" in err and not (tmp_path / "n.npz").exists()


def test_protein_fasta_refused(tmp_path, capsys):
    prot = tmp_path / "prot.fa"
    prot.write_text(">sp|P69905|HBA_HUMAN\nMVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSFPTTKTYFPHFDLSHGSAQVKGHGKKVADAL\n")
    rc, err = run_cli(["index", str(prot), "-o", str(tmp_path / "o.fa.gz")], capsys)
    assert rc == 2 and "sp|P69905|HBA_HUMAN" in err and "invalid sequence character 'L'" in err
    assert "found EFLPQ: 16 of 67 bases" in err
    # letters that are all IUPAC codes but mostly not A/C/G/T/N: still no DNA
    amb = tmp_path / "amb.fa"
    amb.write_text(">x\nMKVHDBWSMKVHDBWSACGT\n")
    rc, err = run_cli(["index", str(amb), "-o", str(tmp_path / "o.fa.gz")], capsys)
    assert rc == 2 and "contig 'x'" in err and "is not DNA: only 4 of 20 letters are A/C/G/T/N" in err
    rc, err = run_cli(["ngrams", str(amb), "--max-order", "3", "-o", str(tmp_path / "n.npz")], capsys)
    assert rc == 2 and "is not DNA" in err
