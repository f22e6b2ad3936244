"""Hostile input: config values that would be shell code, contig names with every character SAM
allows, paths that climb out of results/, and real faults (disk full, read-only file system).

The injection tests run the cheap rules for real (fetch from a mirror folder, index, chunks, n-gram
counts, corpus, missing shots) on a generated genome in a temporary working directory and assert
that no PWNED file appears anywhere; the dry run's printed commands must split (as the shell does)
back into exactly the values of the config."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ENV, ROOT, SNAKEMAKE
from genemask import defaults as D
from genemask import plan
from genemask.cli import main
from genemask.ngrams import count_sequence, load_counts

pytestmark = pytest.mark.hostile

# Each would run `touch PWNED` if it reached a shell unquoted or inside '...'.
QUOTE_BREAK = "x'; touch PWNED; echo '"
SUBST = "$(touch PWNED)"
BACKTICK = "`touch PWNED`"
# Contig names must be legal SAM names (no quotes, brackets, spaces), yet ';', '$', '|', '&', '*', ':'
# are legal: this one runs `touch .PWNED` unquoted. The others are real GRCh38 / assembly names.
EVIL_CONTIG = "chrE;touch$IFS.PWNED;"
CONTIGS = {"HLA-A*01:01:01:01": 1500, "chrUn_KI270302v1": 1200, "chr1:10-20": 1100, EVIL_CONTIG: 1000}


def _env(**extra):
    return {**ENV, "GENEMASK_THREADS": "1", **extra}


def _genome(rng) -> dict[str, str]:
    return {n: "".join(rng.choice(list("ACGTacgtN"), size=ln, p=[.22, .22, .22, .22, .03, .03, .03, .02, .01]))
            for n, ln in CONTIGS.items()}


def _write_fasta(path: Path, seqs: dict[str, str], width: int = 70) -> None:
    with gzip.open(path, "wt") if path.suffix == ".gz" else open(path, "w") as fh:
        for name, seq in seqs.items():
            fh.write(f">{name} a description\n")
            fh.writelines(seq[i : i + width] + "\n" for i in range(0, len(seq), width))


def _hostile_config(tmp_path: Path, mirror: Path, seqs: dict[str, str]) -> Path:
    genome_path = f"genome/{QUOTE_BREAK}{SUBST}{BACKTICK}.fa.gz"
    (mirror / genome_path).parent.mkdir(parents=True, exist_ok=True)
    _write_fasta(mirror / genome_path, seqs)
    sha = hashlib.sha256((mirror / genome_path).read_bytes()).hexdigest()
    cfg = yaml.safe_load(open(ROOT / "config" / "demo.yaml"))
    cfg["sources"] = {"evil": {"url": f"https://example.invalid/{QUOTE_BREAK}{SUBST}.fa.gz", "sha256": sha,
                               "path": genome_path}}
    cfg["genome"] = {"source": "evil", "contigs": dict(CONTIGS), "chunk_size": 1000}
    cfg["ngrams"]["max_order"] = 6
    cfg["finetune"]["shots"] = [10, 1000]  # Cohn-enh and Splice-40 at 1000: listed by write-missing
    path = tmp_path / "hostile.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def _pwned(*dirs: Path) -> list[Path]:
    """Files an executed payload would have made (`touch PWNED`, `touch .PWNED`) in the folders the
    commands run in or name."""
    return [p for d in dirs for p in d.rglob("*PWNED") if p.name in ("PWNED", ".PWNED")]


@pytest.mark.subprocess
@pytest.mark.slow  # runs the rules end to end through snakemake
def test_hostile_config_values_reach_no_shell(tmp_path):
    """Source URL and path, contig names (hence regions and NAME:LENGTH arguments), task names in
    write-missing: the rules run for real, in a folder whose path has a space, and nothing is
    executed; the counts equal counting each contig's sequence directly."""
    rng = np.random.default_rng(7)
    seqs = _genome(rng)
    mirror, work = tmp_path / "mirror", tmp_path / "work dir with space"  # paths with spaces work too
    work.mkdir()
    config = _hostile_config(tmp_path, mirror, seqs)
    cfg = plan.resolve(yaml.safe_load(config.read_text()))
    chunks = plan.chunks(cfg)
    assert [c["chunk"] for c in chunks] == [f"c{i:04d}" for i in range(len(chunks))]
    targets = ["results/genome/chunks.tsv", "results/report/missing.tsv", "results/corpus/c0000",
               *[f"results/ngrams/{c['chunk']}.npz" for c in chunks]]
    r = subprocess.run([*SNAKEMAKE, "--configfile", str(config), "--directory", str(work), "--cores", "1",
                        "--show-failed-logs", *targets], cwd=tmp_path, env=_env(GENEMASK_MIRROR=str(mirror)),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert _pwned(tmp_path) == [] and not (ROOT / "PWNED").exists() and not (ROOT / ".PWNED").exists()
    # chunks.tsv is the plan the workflow wired (same ids, same regions, config order)
    lines = (work / "results/genome/chunks.tsv").read_text().splitlines()[1:]
    assert [line.split("\t")[0::4] for line in lines] == [[c["chunk"], c["region"]] for c in chunks]
    # every chunk counted, merged = each contig's sequence counted directly (orders 1..6)
    total = {n: np.zeros(4**n, np.uint64) for n in range(1, 7)}
    for c in chunks:
        got = load_counts(work / f"results/ngrams/{c['chunk']}.npz")
        for n in total:
            total[n] += got[n]
    direct = {n: np.zeros(4**n, np.uint64) for n in range(1, 7)}
    for seq in seqs.values():
        for n, v in count_sequence(seq.upper(), max_order=6).items():
            direct[n] += v
    for n in total:
        assert np.array_equal(total[n], direct[n]), n
    missing = (work / "results/report/missing.tsv").read_text().splitlines()
    assert sorted(missing[1:]) == sorted(f"{t}\t1000\tno public training file (null in the task catalogue)"
                                         for t in ("Cohn-enh", "Splice-40"))
    assert (work / "results/corpus/c0000/meta.json").exists()


@pytest.mark.subprocess
def test_dry_run_commands_split_back_into_the_config_values(tmp_path):
    """`snakemake -n -p`: every printed command, split as the shell splits it, holds each hostile
    value as one intact argument (so it is data, never code)."""
    rng = np.random.default_rng(7)
    config = _hostile_config(tmp_path, tmp_path / "mirror", _genome(rng))
    r = subprocess.run([*SNAKEMAKE, "-n", "-p", "--configfile", str(config), "--directory", str(tmp_path / "w")],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cmds = [shlex.split(line.split("Shell command: ", 1)[1]) for line in (r.stdout + r.stderr).splitlines()
            if line.startswith("Shell command: genemask ") and " pretrain " not in line
            and " finetune " not in line]
    by = {}
    for c in cmds:
        by.setdefault(c[1], []).append(c)
    fetch = next(c for c in by["fetch"] if "evil" in " ".join(c) or QUOTE_BREAK in " ".join(c))
    assert fetch[fetch.index("--url") + 1] == f"https://example.invalid/{QUOTE_BREAK}{SUBST}.fa.gz"
    assert fetch[fetch.index("--mirror-path") + 1] == f"genome/{QUOTE_BREAK}{SUBST}{BACKTICK}.fa.gz"
    assert fetch[fetch.index("-o") + 1] == f"results/sources/genome/{QUOTE_BREAK}{SUBST}{BACKTICK}.fa.gz"
    (index,) = by["index"]
    assert index[1:3] == ["index", f"results/sources/genome/{QUOTE_BREAK}{SUBST}{BACKTICK}.fa.gz"]
    declared = yaml.safe_load(config.read_text())["genome"]["contigs"]  # the config's order
    contig_args = [f"{n}:{ln}" for n, ln in declared.items()]
    assert sorted(contig_args) == sorted(f"{n}:{ln}" for n, ln in CONTIGS.items())
    assert index[index.index("--contigs") + 1 : index.index("-o")] == contig_args
    (chunks,) = by["chunks"]
    assert chunks[chunks.index("--contigs") + 1 : chunks.index("-o")] == contig_args
    regions = sorted(c[c.index("--region") + 1] for c in by["ngrams"])
    assert regions == sorted(c["region"] for c in plan.chunks(plan.resolve(yaml.safe_load(config.read_text()))))
    assert f"{EVIL_CONTIG}:1-1000" in regions and "HLA-A*01:01:01:01:1001-1500" in regions
    assert all(c[-2] == "2>" for c in cmds), "every log redirection is the last thing on the line"


@pytest.mark.parametrize("mutate, key, fault", [
    (lambda c: c["sources"]["evil"].update(path="../../outside.fa.gz"), "sources.evil.path", "stay inside"),
    (lambda c: c["sources"]["evil"].update(path="genome/../../../x.fa"), "sources.evil.path", "no '..'"),
    (lambda c: c["sources"]["evil"].update(path="/etc/x.fa"), "sources.evil.path", "does not match"),
    (lambda c: c["sources"]["evil"].update(path="~/x.fa"), "sources.evil.path", "must be relative"),
    (lambda c: c["sources"]["evil"].update(url="example.org/x.fa"), "sources.evil.url", "not a URL with a scheme"),
    (lambda c: c["sources"]["evil"].update(url="javascript:alert(1)"), "sources.evil.url", "not a URL"),
    (lambda c: c["sources"]["evil"].update(checksums={"url": "md5.txt", "algorithm": "md5", "path": "m.txt"}),
     "sources.evil.checksums.url", "not a URL"),
    (lambda c: c["genome"]["contigs"].update({"chr x": 1000}), "genome.contigs", "not a legal contig name"),
    (lambda c: c["genome"]["contigs"].update({QUOTE_BREAK: 1000}), "genome.contigs", "not a legal contig name"),
    (lambda c: c["pretrain"].update(model="../../../etc/passwd"), "pretrain.model", "must be a file name"),
    (lambda c: c.update(tasks={"a$(x)": {"num_labels": 2, "test": "prom_core_test", "shots": {"10": None}}})
     or c["finetune"].update(tasks=["a$(x)"]), "finetune.tasks", "letters, digits"),
])
def test_unsafe_names_and_paths_refused_at_config_time(tmp_path, mutate, key, fault):
    cfg = yaml.safe_load(_hostile_config(tmp_path, tmp_path / "mirror", _genome(np.random.default_rng(0)))
                         .read_text())
    mutate(cfg)
    with pytest.raises(plan.GeneMaskError) as e:
        plan.resolve(cfg, where="hostile.yaml")
    msg = str(e.value)
    assert msg.startswith(f"hostile.yaml: key '{key}'") and fault in msg and "\n" not in msg, msg


# ---------------------------------------------------------------------------------------------
# Real faults: a full disk and a read-only file system give one line and leave no partial output.
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs (root only; skipped elsewhere)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "full"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "error" in line.lower() or "Traceback" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.subprocess  # tiny_fs: mount, umount
@pytest.mark.parametrize("stage", ["index", "index-fai", "ngrams", "corpus", "chunks"])
def test_disk_full_one_line_no_partial_output(stage, tiny_fs, tmp_path, capsys):
    """A 64 KiB file system: the BGZF write (index), the .fai (index-fai: 6000 tiny contigs compress
    to 16 KiB, their index does not fit), the .npz, the corpus folder, the chunk table."""
    rng = np.random.default_rng(3)
    seqs = {"chrA": "".join(rng.choice(list("ACGT"), 200_000)), **{f"c{i}": "ACGT" * 5 for i in range(4000)}}
    fa = tmp_path / "g.fa"
    _write_fasta(fa, seqs)
    many = tmp_path / "many.fa"
    _write_fasta(many, {f"contig_number_{i}": "ACGTACGTACGTACGTACGT" for i in range(6000)})
    indexed = tmp_path / "g.fa.gz"
    assert main(["index", str(fa), "-o", str(indexed)]) == 0
    capsys.readouterr()
    out = tiny_fs / "sub" / ("out" if stage == "corpus" else "out.x")
    args = {"index": ["index", str(fa), "-o", str(out)],
            "index-fai": ["index", str(many), "-o", str(out)],
            "ngrams": ["ngrams", str(indexed), "--region", "chrA:1-200000", "--max-order", "10", "-o", str(out)],
            "corpus": ["corpus", str(indexed), "--region", "chrA", "-o", str(out)],
            "chunks": ["chunks", str(indexed), "--size", "1", "-o", str(out)]}[stage]
    rc = main(args)
    line = _one_line(capsys.readouterr().err)
    assert rc == 1 and line.startswith(f"genemask {args[0]}: error: ") and "No space left on device" in line, line
    assert str(out) in line or str(out.parent) in line, line
    assert sorted(p.name for p in tiny_fs.rglob("*") if p.is_file()) == []  # nothing partial, no temp file


@pytest.mark.subprocess  # tiny_fs: mount, umount
def test_read_only_file_system_one_line(tiny_fs, tmp_path, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    fa = tmp_path / "g.fa"
    _write_fasta(fa, {"chrA": "ACGT" * 100})
    rc = main(["index", str(fa), "-o", str(tiny_fs / "g.fa.gz")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 1 and line.startswith("genemask index: error: ") and "Read-only file system" in line, line
    assert str(tiny_fs) in line


def test_fetch_url_without_scheme_one_line(tmp_path, capsys):
    rc = main(["fetch", "--url", "example.org/x.fa", "--sha256", "0" * 64, "--mirror-path", "x.fa",
               "-o", str(tmp_path / "x.fa")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and "--url: 'example.org/x.fa' is not a URL with a scheme" in line, line
    rc = main(["fetch", "--url", "https://example.org/x.fa", "--sha256", "0" * 64, "--mirror-path", "../x.fa",
               "--mirror", str(tmp_path), "-o", str(tmp_path / "x.fa")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and "--mirror-path: path '../x.fa' must be relative and stay inside" in line, line


def test_check_config_refuses_yte_templates_without_running_them(tmp_path, capsys):
    """Snakemake evaluates `?` values of a config with `__use_yte__: true` as Python; check-config
    reads configs as plain YAML and refuses the template, running nothing."""
    yte = tmp_path / "yte.yaml"
    yte.write_text('__use_yte__: true\nfinetune:\n  seeds: ?__import__("os").system("touch PWNED") or [1]\n')
    rc = main(["check-config", str(ROOT / "config" / "demo.yaml"), str(yte)])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and line == (f"genemask check-config: error: {yte}: key '__use_yte__': a YTE template "
                                f"(Snakemake evaluates its '?' values as Python code); GeneMask configs are plain YAML")
    assert _pwned(tmp_path) == [] and not Path("PWNED").exists()
    override = tmp_path / "seeds.yaml"
    override.write_text("finetune:\n  seeds: [1.0]\n")
    rc = main(["check-config", str(ROOT / "config" / "demo.yaml"), str(override)])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and "key 'finetune.seeds.0': 1.0 is not of type 'integer'" in line
    assert main(["check-config", str(ROOT / "config" / "demo.yaml")]) == 0
    assert "config/demo.yaml: ok (3 chunks, 3 schemes, 30 fine-tuning runs)" in capsys.readouterr().out


def test_check_config_refuses_a_yaml_alias_bomb_and_keeps_real_anchors(tmp_path, capsys):
    """A 'billion laughs': 9 levels of 9 aliases, 342 bytes on disk, 490 million values once a reader
    copies it (Snakemake's config merge does). check-config counts without expanding and refuses."""
    bomb = tmp_path / "bomb.yaml"
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb.write_text("\n".join(lines) + "\n")
    assert bomb.stat().st_size < 400
    rc = main(["check-config", str(ROOT / "config" / "demo.yaml"), str(bomb)])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and f"{bomb}: its YAML aliases expand to 490,329,055 values" in line
    anchors = tmp_path / "anchors.yaml"  # an ordinary use of anchors: fine
    anchors.write_text("finetune:\n  seeds: &s [1, 2]\nreport:\n  x_seeds: *s\n")
    # root, finetune, seeds [1, 2] (3 values), report, the alias counted again in full (3)
    assert plan.expanded_size(yaml.safe_load(anchors.read_text())) == 1 + 1 + 3 + 1 + 3


@pytest.mark.subprocess
def test_training_rules_get_hostile_values_as_data(tmp_path, mirror):
    """The values that reach pretrain, finetune, task_data and baseline commands (a free-form
    fine-tuning setting, a baseline's model path, local task files, the study's eval steps and seeds)
    come back from the printed commands as single intact arguments."""
    evil = f"{QUOTE_BREAK}{SUBST}{BACKTICK}"
    local = tmp_path / f"my {evil}"
    local.mkdir()
    pool = mirror / "proxies/GUE/prom/prom_core_all"
    for name in ("train.csv", "test.csv"):
        (local / name).write_bytes((pool / name).read_bytes())
    cfg = yaml.safe_load(open(ROOT / "config/demo.yaml"))
    bad = {**cfg, "finetune": {**cfg["finetune"], "settings": {"note": evil}}}
    with pytest.raises(plan.GeneMaskError, match=r"key 'finetune.settings': unknown key\(s\) \('note' was unexpected\)"):
        plan.resolve(bad)  # a free-form string never gets as far as a command
    cfg["finetune"]["tasks"] = ["Prom-core", "Mine"]
    cfg["tasks"] = {"Mine": {"num_labels": 2, "train": str(local / "train.csv"), "test": str(local / "test.csv"),
                             "shots": [10], "on_conflict": "drop"}}
    cfg["baselines"] = {"ext": {"model": str(local / "model")}}
    cfg["pretrain"].update(seeds=[3, 4], eval_steps=[100])
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([*SNAKEMAKE, "-n", "-p", "--configfile", str(p), "--directory", str(tmp_path / "w")],
                       cwd=tmp_path, env=_env(GENEMASK_MIRROR=str(mirror)), capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    cmds = [shlex.split(line.split("Shell command: ", 1)[1]) for line in out.splitlines()
            if line.startswith("Shell command: ")]
    by = {}
    for c in cmds:
        words = [w for w in c if w in ("pretrain", "finetune", "task-data", "baseline")]
        if words:
            by.setdefault(words[0], []).append(c)
    for c in by["finetune"]:
        # the given settings over every schema default (plan.fill_settings), as one shell word
        assert json.loads(c[c.index("--settings") + 1]) == {**D.defaults("finetune.settings"),
                                                             **cfg["finetune"]["settings"]}
    (base,) = by["baseline"]
    assert base[base.index("--model") + 1] == str(local / "model")
    mine = [c for c in by["task-data"] if "Mine" in c]
    assert mine and mine[0][mine[0].index("--train") + 1] == str(local / "train.csv")
    pre = by["pretrain"]
    assert len(pre) == 3 * 2 and all(c[c.index("--save-steps") + 1] in ("0", "100") for c in pre)
    assert {c[c.index("seed=3") if "seed=3" in c else c.index("seed=4")] for c in pre} == {"seed=3", "seed=4"}
    assert not list(tmp_path.rglob("PWNED"))


@pytest.mark.subprocess  # tiny_fs: mount, umount
@pytest.mark.parametrize("stage", ["pretrain", "finetune", "task-data"])
def test_disk_full_in_training_stages_one_line(stage, tiny_fs, tmp_path, hg38_slice, fewshot, capsys):
    """The stages that write model folders, checkpoints (torch.save), metrics and task files: a full
    disk is one line naming the output, exit 1, nothing left behind."""
    import json as _json

    import torch
    from transformers import BertConfig, BertForMaskedLM

    from genemask.corpus import build_corpus

    (tiny_fs / "filler").write_bytes(b"\0" * 40_000)  # 24 KiB left: no model folder fits
    out = tiny_fs / "sub" / "out"
    if stage == "pretrain":
        build_corpus(hg38_slice, tmp_path / "c", region="chr2:1-100000", seed=1)
        mc = tmp_path / "tiny.json"
        mc.write_text(_json.dumps({"k": 6, "num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2,
                                   "intermediate_size": 64, "max_position_embeddings": 512}))
        args = ["pretrain", "--corpus", str(tmp_path / "c"), "--model-config", str(mc), "--scheme", "dnabert",
                "--set", "steps=2", "--set", "batch_size=2", "--set", "grad_accum=1", "--set", "warmup_steps=1",
                "--set", "threads=1", "-o", str(out)]
    else:
        torch.manual_seed(0)
        model = tmp_path / "m"
        BertForMaskedLM(BertConfig(vocab_size=4101, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=512)).save_pretrained(model)
        train, test = fewshot / "Prom-core" / "10" / "train.tsv", fewshot / "Prom-core" / "test.tsv"
        if stage == "finetune":
            args = ["finetune", "--model", str(model), "--train", str(train), "--test", str(train), "--task", "P",
                    "--shot", "10", "--seed", "1", "--scheme", "none", "--num-labels", "2", "--settings",
                    '{"epochs": 1}', "--save-model", str(out), "-o", str(tiny_fs / "m.json")]
        else:
            args = ["task-data", "--task", "Prom-core", "--train", str(train), "--test", str(test), "--num-labels",
                    "2", "--out-train", str(out), "--out-test", str(tiny_fs / "t.tsv"), "--out-stats",
                    str(tiny_fs / "s.json")]
    capsys.readouterr()
    rc = main(args)
    line = _one_line(capsys.readouterr().err)
    assert rc == 1 and line.startswith(f"genemask {stage}: error: ") and "No space left on device" in line, line
    left = sorted(str(p.relative_to(tiny_fs)) for p in tiny_fs.rglob("*") if p.is_file() and p.name != "filler")
    assert left == [], left
