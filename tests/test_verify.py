"""Every intermediate file is verified where it is read (issue 20, point 3): a corpus (token ids,
offsets, meta.json), an NPMI ranking table, a model folder (weights named by genemask.json's sha256)
and a task's stats.json. Each fault is one line naming the file and the fault, exit status 2, and
no output is left. Every case writes a real file with the pipeline's own writer, damages it the way a
hostile tester did, and runs the real command through `genemask.cli.main`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from genemask.cli import main
from genemask.corpus import build_corpus
from genemask.kmers import MASK, N_SPECIAL, vocab_size

pytestmark = pytest.mark.hostile

TINY = {"k": 6, "num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 512}


def _one_line(capsys, rc, *words):
    """rc is 2 and stderr's last line is the one error line holding every word; returns it."""
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    errors = [ln for ln in err if ": error: " in ln]
    assert rc == 2 and len(errors) == 1 and errors[0] == err[-1], err
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


# ---- corpus (corpus.open_split, read by pretraining) ----------------------------------------------

@pytest.fixture(scope="module")
def corpus(hg38_slice, tmp_path_factory):
    d = tmp_path_factory.mktemp("verify")
    build_corpus(hg38_slice, d / "c", region="chr2:1-60000", seed=1)
    (d / "tiny.json").write_text(json.dumps(TINY))
    return d


def _pretrain(d, corpus_dir, out, *sets):
    argv = ["pretrain", "--corpus", str(corpus_dir), "--model-config", str(d / "tiny.json"), "--scheme", "random",
            "-o", str(out), "--set", "threads=1", "--set", "warmup_steps=1", "--set", "eval_every=1000",
            "--set", "eval_batches=1", "--set", "batch_size=2", "--set", "grad_accum=1"]
    for s in sets:
        argv += ["--set", s]
    return main(argv)


def _ids(path):
    return np.fromfile(path, dtype=np.uint16)


def _offsets(folder, split):
    return np.load(folder / f"{split}.idx.npy")


def _damage(c, fault):
    """Damage corpus folder c; returns (the file the message must name, a word of the fault)."""
    train, idx_path = c / "train.bin", c / "train.idx.npy"
    ids, idx = _ids(train), _offsets(c, "train")
    if fault == "beyond_vocab":
        ids[len(ids) // 2] = vocab_size(6)
        ids.tofile(train)
        return train, "beyond the vocabulary"
    if fault == "zero_run":  # a zero-filled block (lost write): a run of [PAD]
        ids[1000:1400] = 0
        ids.tofile(train)
        return train, "[PAD]"
    if fault == "special_inside":
        ids[idx[3] + 2] = MASK
        ids.tofile(train)
        return train, "[MASK]"
    if fault == "valid_zero_filled":
        v = c / "valid.bin"
        (v).write_bytes(bytes(v.stat().st_size))
        return v, "[PAD]"
    if fault == "shuffled":  # every id a k-mer, same size, but no longer a sequence
        np.random.default_rng(0).permutation(ids).tofile(train)
        return train, "not overlapping"
    if fault == "offsets_not_monotonic":
        idx[[2, 3]] = idx[[3, 2]]
        np.save(idx_path, idx)
        return idx_path, "not increasing"
    if fault == "offsets_not_at_zero":
        idx[0] = 1
        np.save(idx_path, idx)
        return idx_path, "start at 0"
    if fault == "offsets_short_of_file":
        np.save(idx_path, idx[:-1])
        return train, "offsets end at"
    if fault == "odd_bytes":
        train.write_bytes(train.read_bytes() + b"\x01")
        return train, "uint16"
    if fault == "offsets_pickle":
        np.save(idx_path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        return idx_path, "not a corpus offsets file"
    if fault == "meta_not_mapping":
        (c / "meta.json").write_text("[1, 2]\n")
        return c / "meta.json", "JSON object"
    if fault == "meta_wrong_k":
        meta = json.loads((c / "meta.json").read_text())
        (c / "meta.json").write_text(json.dumps({**meta, "k": 5}))
        return c / "meta.json", "k=6"
    if fault == "meta_counts":
        meta = json.loads((c / "meta.json").read_text())
        (c / "meta.json").write_text(json.dumps({**meta, "train_tokens": meta["train_tokens"] + 7}))
        return c / "meta.json", "tokens"
    raise AssertionError(fault)


CORPUS_FAULTS = ["beyond_vocab", "zero_run", "special_inside", "valid_zero_filled", "shuffled",
                 "offsets_not_monotonic", "offsets_not_at_zero", "offsets_short_of_file", "odd_bytes",
                 "offsets_pickle", "meta_not_mapping", "meta_wrong_k", "meta_counts"]


@pytest.mark.parametrize("fault", CORPUS_FAULTS)
def test_damaged_corpus_refused_in_one_line(corpus, tmp_path, capsys, fault):
    """Pretraining on a damaged corpus: exit 2, one line naming the damaged file and the fault, no run folder
    and no checkpoint folder."""
    c = tmp_path / "c"
    shutil.copytree(corpus / "c", c)
    named, word = _damage(c, fault)
    out = tmp_path / "run"
    rc = _pretrain(corpus, c, out, "steps=2")
    line = _one_line(capsys, rc, str(named), word)
    assert "Traceback" not in line
    assert not out.exists() and not (tmp_path / "run.ckpt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_rewritten_corpus_of_same_size_never_resumes_a_stale_checkpoint(corpus, tmp_path, capsys):
    """The checkpoint fingerprint covers the corpus content: train.bin rewritten with other valid ids of the
    same size (every base complemented: still overlapping k-mers, same offsets and meta.json) is another
    fingerprint, so the rerun starts from step 0 and says why."""
    c = tmp_path / "c"
    shutil.copytree(corpus / "c", c)
    out = tmp_path / "run"
    assert _pretrain(corpus, c, out, "steps=4", "checkpoint_every=2") == 0
    shutil.rmtree(out)
    assert _pretrain(corpus, c, out, "steps=4", "checkpoint_every=2") == 0  # unchanged: resumed
    assert "resumed from" in capsys.readouterr().err
    shutil.rmtree(out)
    train = c / "train.bin"
    ids = _ids(train)
    complement = int("01" * 6, 2)  # A0<->T1, C2<->G3 on every base digit
    new = (((ids.astype(np.int64) - N_SPECIAL) ^ complement) + N_SPECIAL).astype(np.uint16)
    assert len(new) == len(ids) and (new != ids).any()
    new.tofile(train)
    assert _pretrain(corpus, c, out, "steps=4", "checkpoint_every=2") == 0
    err = capsys.readouterr().err
    assert "resumed from" not in err and "training from step 0" in err, err
    said = [ln for ln in err.splitlines() if "not resuming" in ln]
    assert len(said) == 1 and "corpus" in said[0], err
    assert len(list((tmp_path / "run.ckpt").iterdir())) == 2


# ---- NPMI ranking tables (npmi.load_ranking, read by pretraining, masking, mask-stats, motifs) ---------

@pytest.fixture(scope="module")
def npmi_tsv(hg38_slice, tmp_path_factory):
    """Our npmi.tsv, made by the pipeline's own commands (ngrams, then npmi) from the hg38 slice."""
    d = tmp_path_factory.mktemp("npmi")
    assert main(["ngrams", str(hg38_slice), "--region", "chr2:1-300000", "--max-order", "6",
                 "-o", str(d / "counts.npz")]) == 0
    assert main(["npmi", str(d / "counts.npz"), "--min-count", "1", "-o", str(d / "npmi.tsv")]) == 0
    return d / "npmi.tsv"


def _damage_ranking(p: Path, fault: str) -> str:
    """Damage the ranking table p (ours, or Data-A's CSV for data_a_*); returns a word of the fault."""
    text = p.read_text()
    head, *rows = text.splitlines()
    sep = "\t" if "\t" in head else ","
    cols = head.split(sep)
    rank_col = cols.index("rank" if sep == "\t" else "norm_pmi_rank_rel")
    six = [i for i, r in enumerate(rows) if len(r.split(sep)[0].strip('"')) == 6]
    j = six[len(six) // 2]

    def set_field(col, value):
        f = rows[j].split(sep)
        f[col] = value
        rows[j] = sep.join(f)

    word = {"missing_rank_column": "lacks column(s) rank", "nan_rank": "is not an integer",
            "non_numeric_rank": "is not an integer", "negative_rank": "is not an integer",
            "fractional_rank": "is not an integer", "duplicate_kmer": "listed twice",
            "wrong_length": "is not a 6-mer", "non_acgt": "other than ACGT",
            "data_a_missing_ngram": "lacks column(s) ngram", "data_a_empty_rank": "is not an integer"}.get(fault)
    if fault == "binary":
        p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 64)
        return "binary"
    if fault in ("missing_rank_column", "data_a_missing_ngram"):
        drop = rank_col if fault == "missing_rank_column" else cols.index("ngram")
        lines = [sep.join(f for i, f in enumerate(ln.split(sep)) if i != drop) for ln in [head, *rows]]
        p.write_text("\n".join(lines) + "\n")
        return word
    if fault == "nan_rank":
        set_field(rank_col, "nan")
    elif fault == "non_numeric_rank":
        set_field(rank_col, "first")
    elif fault == "negative_rank":
        set_field(rank_col, "-3")
    elif fault == "fractional_rank":
        set_field(rank_col, "2.5")
    elif fault == "data_a_empty_rank":
        set_field(rank_col, "")
    elif fault == "duplicate_kmer":
        rows.append(rows[j])
    elif fault == "wrong_length":
        set_field(0, "ACGTA")  # the row's order column still says 6
    elif fault == "non_acgt":
        set_field(0, "ACGTNA")
    else:
        raise AssertionError(fault)
    p.write_text("\n".join([head, *rows]) + "\n")
    return word


RANKING_FAULTS = ["missing_rank_column", "nan_rank", "non_numeric_rank", "negative_rank", "fractional_rank",
                  "duplicate_kmer", "wrong_length", "non_acgt", "binary", "data_a_missing_ngram",
                  "data_a_empty_rank"]


@pytest.mark.parametrize("fault", RANKING_FAULTS)
def test_damaged_ranking_table_refused_in_one_line(corpus, npmi_tsv, data_a, tmp_path, capsys, fault):
    """Pretraining with --ranking on a damaged table (ours or Data-A's): exit 2, one line naming the table and
    the fault, no run folder, no checkpoint folder."""
    src = data_a if fault.startswith("data_a") else npmi_tsv
    table = tmp_path / src.name
    shutil.copyfile(src, table)
    word = _damage_ranking(table, fault)
    out = tmp_path / "run"
    rc = main(["pretrain", "--corpus", str(corpus / "c"), "--model-config", str(corpus / "tiny.json"),
               "--scheme", "genemask", "--ranking", str(table), "-o", str(out), "--set", "steps=2",
               "--set", "threads=1", "--set", "batch_size=2"])
    _one_line(capsys, rc, str(table), word)
    assert not out.exists() and not (tmp_path / "run.ckpt").exists()


@pytest.mark.parametrize("which", ["ours", "data_a"])
def test_intact_ranking_tables_still_read(npmi_tsv, data_a, which):
    """The control: the undamaged tables load (ranks 1..4**k, absent k-mers 4**k + 1)."""
    from genemask.npmi import load_ranking

    r = load_ranking(npmi_tsv if which == "ours" else data_a, 6)
    assert r.shape == (4096,) and r.min() == 1 and r.max() <= 4097


# ---- model folders (modelfolder.verify_weights, run by every loader: finetune, predict, embed) -------

@pytest.fixture(scope="module")
def model_folder(corpus, tmp_path_factory):
    """A real pretrained model folder (run/step1/, genemask.json with weights_sha256) and a FASTA to embed."""
    d = tmp_path_factory.mktemp("models")
    assert _pretrain(corpus, corpus / "c", d / "run", "steps=1") == 0
    assert _pretrain(corpus, corpus / "c", d / "other", "steps=1", "seed=7") == 0
    (d / "in.fa").write_text(">a\nACGTACGTTAGCATCGATCGATCGGATCGATCGTAGCTAG\n>b\nGGGCCCATATATCGCGATTAGACAGATTTAC\n")
    return d


def _damage_model(m: Path, other: Path, fault: str) -> tuple[Path, str]:
    """Damage model folder m (other: another real folder); returns (the path the line names, a word)."""
    import torch
    from safetensors.torch import load_file

    w = m / "model.safetensors"
    extra = {"extra_pytorch_bin": "pytorch_model.bin", "extra_h5": "tf_model.h5", "extra_msgpack": "flax_model.msgpack",
             "extra_pt": "model.pt", "extra_pth": "weights.pth", "extra_shard": "model-00002-of-00002.safetensors",
             "sharded_index": "model.safetensors.index.json"}
    if fault in extra:
        if fault == "extra_pytorch_bin":
            torch.save(load_file(other / "model.safetensors"), m / extra[fault])
        else:
            (m / extra[fault]).write_bytes((other / "model.safetensors").read_bytes())
        return m, extra[fault]
    if fault == "bin_instead":  # the safetensors file replaced by a pickle: sha256 check skipped before
        torch.save(load_file(w), m / "pytorch_model.bin")
        w.unlink()
        return m, "pytorch_model.bin"
    if fault == "swapped_weights":
        shutil.copyfile(other / "model.safetensors", w)
        return w, "damaged weights"
    if fault == "bad_sha_field":
        meta = json.loads((m / "genemask.json").read_text())
        (m / "genemask.json").write_text(json.dumps({**meta, "weights_sha256": "deadbeef"}))
        return m / "genemask.json", "64 lower-case hex"
    if fault == "meta_not_mapping":
        (m / "genemask.json").write_text('"k=6"\n')
        return m / "genemask.json", "JSON object"
    raise AssertionError(fault)


MODEL_FAULTS = ["extra_pytorch_bin", "bin_instead", "extra_h5", "extra_msgpack", "extra_pt", "extra_pth",
                "extra_shard", "sharded_index", "swapped_weights", "bad_sha_field", "meta_not_mapping"]


@pytest.mark.parametrize("fault", MODEL_FAULTS)
def test_model_folder_with_unchecked_weights_refused_by_embed(model_folder, tmp_path, capsys, fault):
    """`embed` on a model folder whose weights are not exactly the sha256-recorded model.safetensors: exit 2,
    one line naming the folder (or file) and the fault, no output."""
    m = tmp_path / "m"
    shutil.copytree(model_folder / "run" / "step1", m)
    named, word = _damage_model(m, model_folder / "other" / "step1", fault)
    out = tmp_path / "e.npy"
    rc = main(["embed", "--model", str(m), str(model_folder / "in.fa"), "-o", str(out)])
    _one_line(capsys, rc, f"{named}:", word)
    assert not out.exists() and not (tmp_path / "e.ids.txt").exists()


@pytest.mark.parametrize("fault", ["extra_pytorch_bin", "bin_instead", "swapped_weights"])
def test_model_folder_with_unchecked_weights_refused_by_finetune(model_folder, fewshot, tmp_path, capsys, fault):
    """The fine-tuning loader goes through the same check."""
    m = tmp_path / "m"
    shutil.copytree(model_folder / "run" / "step1", m)
    named, word = _damage_model(m, model_folder / "other" / "step1", fault)
    out = tmp_path / "r.json"
    data = fewshot / "Prom-core"
    rc = main(["finetune", "--model", str(m), "--train", str(data / "10" / "train.tsv"), "--test",
               str(data / "test.tsv"), "--task", "Prom-core", "--shot", "10", "--seed", "1", "--scheme", "x",
               "--num-labels", "2", "--settings", '{"epochs": 1}', "-o", str(out), "--save-model", str(tmp_path / "s")])
    _one_line(capsys, rc, f"{named}:", word)
    assert not out.exists() and not (tmp_path / "s").exists()


def test_intact_model_folder_embeds(model_folder, tmp_path):
    """The control: the pipeline's own folder passes."""
    assert main(["embed", "--model", str(model_folder / "run" / "step1"), str(model_folder / "in.fa"),
                 "-o", str(tmp_path / "e.npy")]) == 0
    assert np.load(tmp_path / "e.npy").shape[0] == 2


def test_baseline_with_pickle_weights_becomes_one_checked_safetensors(model_folder, tmp_path, capsys):
    """A DNABERT-style source holding pytorch_model.bin (and a tf_model.h5) besides config and vocab: the
    prepared baseline holds only model.safetensors (converted from the plain tensors), its sha256 recorded,
    and it embeds; the source's other weights files are not copied."""
    import torch
    from safetensors.torch import load_file

    src = tmp_path / "dnabert"
    shutil.copytree(model_folder / "run" / "step1", src)
    state = load_file(src / "model.safetensors")
    torch.save(state, src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    (src / "genemask.json").unlink()
    (src / "tf_model.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    out = tmp_path / "base"
    assert main(["baseline", "--name", "dnabert6", "--model", str(src), "-o", str(out)]) == 0
    weights = sorted(p.name for p in out.iterdir() if p.suffix in (".bin", ".h5", ".safetensors"))
    assert weights == ["model.safetensors"]
    got = load_file(out / "model.safetensors")
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    assert main(["embed", "--model", str(out), str(model_folder / "in.fa"), "-o", str(tmp_path / "e.npy")]) == 0


# ---- side files: a task's stats.json (tasks.read_stats, read by finetune --save-model) ----------------

@pytest.fixture(scope="module")
def task_dir(fewshot, tmp_path_factory):
    """train.tsv / test.tsv / stats.json made by the pipeline's task-data command (Prom-core, 10-shot)."""
    d = tmp_path_factory.mktemp("task")
    data = fewshot / "Prom-core"
    assert main(["task-data", "--task", "Prom-core", "--train", str(data / "10" / "train.tsv"), "--test",
                 str(data / "test.tsv"), "--num-labels", "2", "--max-test", "20", "--out-train", str(d / "train.tsv"),
                 "--out-test", str(d / "test.tsv"), "--out-stats", str(d / "stats.json")]) == 0
    return d


def _damage_stats(stats: dict, fault: str):
    if fault == "not_mapping":
        return [stats]
    if fault == "missing_key":
        return {k: v for k, v in stats.items() if k != "num_labels"}
    if fault == "label_names_list":
        return {**stats, "label_names": ["neg", "pos"]}
    if fault == "label_ids_out_of_range":
        return {**stats, "label_names": {"neg": 0, "pos": 7}}
    if fault == "num_labels_differs":
        return {**stats, "num_labels": 3}
    if fault == "negative_rows":
        return {**stats, "train_rows": -1}
    if fault == "float_rows":
        return {**stats, "test_rows": float("inf")}
    if fault == "counts_disagree":
        return {**stats, "train_label_counts": {"0": 1, "1": 1}}
    raise AssertionError(fault)


STATS_FAULTS = {"not_mapping": "JSON object", "missing_key": "lacks key(s) num_labels",
                "label_names_list": "label_names", "label_ids_out_of_range": "label_names",
                "num_labels_differs": "num_labels 3", "negative_rows": "train_rows",
                "float_rows": "test_rows", "counts_disagree": "train_label_counts"}


@pytest.mark.parametrize("fault", sorted(STATS_FAULTS))
def test_damaged_task_stats_refused_before_fine_tuning(model_folder, task_dir, tmp_path, capsys, fault):
    """finetune --save-model reads the label names from the task's stats.json: a damaged one is one line naming
    it and the key, exit 2, before any training, and neither the metrics JSON nor the model folder is left."""
    d = tmp_path / "task"
    shutil.copytree(task_dir, d)
    stats = json.loads((d / "stats.json").read_text())
    (d / "stats.json").write_text(json.dumps(_damage_stats(stats, fault)))
    out = tmp_path / "r.json"
    rc = main(["finetune", "--model", str(model_folder / "run" / "step1"), "--train", str(d / "train.tsv"),
               "--test", str(d / "test.tsv"), "--task", "Prom-core", "--shot", "10", "--seed", "1", "--scheme", "x",
               "--num-labels", "2", "--settings", '{"epochs": 1}', "-o", str(out), "--save-model", str(tmp_path / "s")])
    line = _one_line(capsys, rc, f"{d / 'stats.json'}:", STATS_FAULTS[fault])
    assert "epoch" not in capsys.readouterr().err, line
    assert not out.exists() and not (tmp_path / "s").exists()


def test_intact_task_stats_name_the_saved_classifier_labels(model_folder, task_dir, tmp_path):
    """The control: intact stats.json passes; with label names ({name: class id}, as task-data --label-names
    writes them) the saved classifier's labels are the names in class-id order, not in the file's key order."""
    d = tmp_path / "task"
    shutil.copytree(task_dir, d)
    stats = json.loads((d / "stats.json").read_text())
    assert stats["label_names"] is None
    (d / "stats.json").write_text(json.dumps({**stats, "label_names": {"promoter": 1, "background": 0}}))
    out = tmp_path / "r.json"
    assert main(["finetune", "--model", str(model_folder / "run" / "step1"), "--train", str(d / "train.tsv"),
                 "--test", str(d / "test.tsv"), "--task", "Prom-core", "--shot", "10", "--seed", "1", "--scheme", "x",
                 "--num-labels", "2", "--settings", '{"epochs": 1}', "-o", str(out),
                 "--save-model", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "genemask.json").read_text())["labels"] == ["background", "promoter"]


# ---- other side files: the model configuration, a baseline's config.json, a run's genemask.json -------

@pytest.mark.parametrize("fault, word", [("not_mapping", "JSON object"), ("k7", "key k must be one of")])
def test_bad_model_configuration_refused_in_one_line(corpus, tmp_path, capsys, fault, word):
    mc = tmp_path / "model.json"
    mc.write_text(json.dumps([TINY]) if fault == "not_mapping" else json.dumps({**TINY, "k": 7}))
    out = tmp_path / "run"
    rc = main(["pretrain", "--corpus", str(corpus / "c"), "--model-config", str(mc), "--scheme", "random",
               "-o", str(out), "--set", "steps=1"])
    _one_line(capsys, rc, f"{mc}:", word)
    assert not out.exists() and not (tmp_path / "run.ckpt").exists()


@pytest.mark.parametrize("fault, word", [("not_mapping", "JSON object"), ("vocab_size_text", "vocab_size must be")])
def test_baseline_with_bad_config_json_refused_in_one_line(model_folder, tmp_path, capsys, fault, word):
    src = tmp_path / "src"
    shutil.copytree(model_folder / "run" / "step1", src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps([cfg]) if fault == "not_mapping"
                                     else json.dumps({**cfg, "vocab_size": "4101"}))
    out = tmp_path / "base"
    rc = main(["baseline", "--name", "b", "--model", str(src), "-o", str(out)])
    _one_line(capsys, rc, f"{src / 'config.json'}:", word)
    assert not out.exists()


def _study_report(d: Path) -> Path:
    r = d / "report"
    r.mkdir()
    (r / "verdict.md").write_text("- nothing to say\n")
    (r / "summary.md").write_text("| x |\n")
    (r / "tests.tsv").write_text("task\tscheme\tbaseline\tmetric\tpretrain_step\tmean_diff\tp_holm\n")
    (r / "variance.tsv").write_text("task\tscheme\n")
    (r / "runs.tsv").write_text("task\tshot\tscheme\tseed\taccuracy\n")
    (r / "summary.tsv").write_text("task\tshot\tscheme\tpretrain_step\tn\taccuracy_mean\taccuracy_sd\tstatus\treason\n")
    (r / "verdict.tsv").write_text("scheme\tbaseline\tmetric\tmde\n")
    (d / "study.yaml").write_text("pretrain: {model: tiny, schemes: [cm_gems], seeds: [0], settings: {steps: 1}}\n")
    return r


@pytest.mark.parametrize("fault, word", [("intact", None), ("not_mapping", "JSON object"),
                                         ("switch_step_text", "switch_step"), ("switch_past_steps", "switch_step"),
                                         ("no_steps", "lacks key(s) steps")])
def test_study_doc_validates_run_metadata(model_folder, tmp_path, capsys, fault, word):
    """study-doc reads each cm_gems run's genemask.json (its switch step): validated on read."""
    report = _study_report(tmp_path)
    run = tmp_path / "models" / "cm_gems" / "seed0"
    run.parent.mkdir(parents=True)
    shutil.copytree(model_folder / "run", run)
    meta = json.loads((run / "genemask.json").read_text())
    bad = {"intact": meta, "not_mapping": [meta], "switch_step_text": {**meta, "switch_step": "soon"},
           "switch_past_steps": {**meta, "switch_step": meta["steps"] + 5},
           "no_steps": {k: v for k, v in meta.items() if k != "steps"}}[fault]
    (run / "genemask.json").write_text(json.dumps(bad))
    out = tmp_path / "docs" / "study.md"
    rc = main(["study-doc", "--report", str(report), "--config", str(tmp_path / "study.yaml"), "--command", "x",
               "--models", str(tmp_path / "models"), "-o", str(out)])
    if word is None:
        assert rc == 0 and "seed0: None" in out.read_text()
        return
    _one_line(capsys, rc, f"{run / 'genemask.json'}:", word)
    assert not out.exists() and not (tmp_path / "docs" / "study").exists()
