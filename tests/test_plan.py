"""Defaults and settings: one home (the config schema's `default:`), the code's tables read from it,
config/README.md checked against it, every setting validated when the config loads, and today's
effective values pinned (moving the defaults changed none of them)."""
import copy
import dataclasses
import inspect
import json
import re

import numpy as np
import pytest
import yaml

from conftest import ROOT
from genemask import defaults as D
from genemask import plan
from genemask.util import GeneMaskError


def demo() -> dict:
    return yaml.safe_load(open(ROOT / "config/demo.yaml"))


# ---------------------------------------------------------------------------------------------
# today's effective values, written out (the values before the defaults moved to the schema)
# ---------------------------------------------------------------------------------------------
PRETRAIN_TODAY = {
    "steps": 10000, "batch_size": 10, "grad_accum": 25, "lr": 8e-4, "betas": [0.9, 0.98], "eps": 1e-6,
    "weight_decay": 0.01, "grad_clip": 1.0, "warmup_steps": 500, "max_len": 512, "seed": 42, "eval_every": 500,
    "eval_batches": 20, "checkpoint_every": 1000, "log_every": 10, "compile": False, "threads": 0,
    "bf16": "auto",  # was True ("autocast on GPU only"); issue 22: auto = bf16 where the hardware has it
    "masking": {}, "keep_checkpoints": True,
}
FINETUNE_TODAY = {
    "regimes": [{"max_shot": 100, "batch_size": 5, "lr": 1e-4, "epochs": 20},
                {"max_shot": None, "batch_size": 15, "lr": 5e-5, "epochs": 5}],
    "epochs": None, "warmup_ratio": 0.1, "weight_decay": 0.01, "hidden_dropout": 0.1, "max_grad_norm": 1.0,
    "eval_batch_size": 64, "max_length": 512, "device": "cpu",
    "bf16": "auto",  # new (issue 22): bf16 autocast where the hardware has it; float32 elsewhere, as before
}
P_TODAY = {"random": 0.15, "dnabert": 0.025, "genemask": 0.0176, "reference": 0.0176, "curriculum": 0.0176,
           "global_pmi": 0.0136, "cm_step": 0.025, "cm_gems": 0.0176}
MASKING_TODAY = {"high_rule": "all_if_le8", "ramp": 1.0, "mask_prob": 0.8, "random_prob": 0.1, "global_p": 0.0136,
                 "threshold": 1.0, "switch_at": None, "faithful": False}
SECTIONS_TODAY = {  # plan.DEFAULTS, and the rules' .get(key, default) for the resource keys
    "ngrams": {"max_order": 10},
    "npmi": {"variant": "paper", "min_count": 101, "ranking": "computed"},
    "corpus": {"k": 6, "max_bp": 511, "min_bp": 6, "valid_fraction": 0.1, "seed": 42},
    "report": {"motifs_top": 50, "motif_method": "tomtom", "equivalence_margin": {},  # {}: each metric's default
               "motif_q_threshold": 0.05, "motif_rule_threshold": 0.85, "motif_rule_min_ic": 10.0, "motif_n_perm": 10000},
    "pretrain": {"gpus": 0, "threads": 2, "runtime_min": 60, "mem_mb": 8000},
    "finetune": {"worker": True, "max_test": 0, "save": "none", "gpus": 0, "runtime_min": 60, "mem_mb": 4000,
                 "task_data_mem_mb": 1000},
}


def test_code_defaults_keep_todays_values():
    from genemask import finetune, masking, pretrain

    assert pretrain.DEFAULTS == PRETRAIN_TODAY and pretrain.load_settings(None) == PRETRAIN_TODAY
    assert finetune.DEFAULT_SETTINGS == FINETUNE_TODAY and finetune.load_settings(None) == FINETUNE_TODAY
    ranking = np.arange(4**6)
    for scheme in masking.SCHEMES:
        for k in (3, 4, 5, 6):
            got = masking.make_masker(scheme, k, ranking=np.arange(4**k)).settings()
            assert got == {"scheme": scheme, "k": k, "p": P_TODAY[scheme], "high_radius": k - 1, **MASKING_TODAY}
    assert masking.make_masker("genemask", 6, ranking=ranking, p=0.03, high_radius=2).settings()["high_radius"] == 2


def test_demo_and_paper_configs_resolve_to_todays_values():
    """Every value the jobs and rules get from the demo and paper configs is what it was."""
    for name, given_steps, seeds in (("demo", 300, [42]), ("config", 10000, [42])):
        path = ROOT / "config" / f"{name}.yaml"
        given = yaml.safe_load(open(path))
        cfg = plan.check_config_files([str(path)])
        for section, today in SECTIONS_TODAY.items():
            want = {**today, **{k: v for k, v in (given.get(section) or {}).items() if k != "settings"}}
            assert {k: v for k, v in cfg[section].items() if k != "settings"} == want, (name, section)
        # the settings reach the rules resolved: the given values over every schema default (the rules'
        # params, so a changed default reruns the jobs it changes)
        masking = {**D.defaults("pretrain.settings.masking"), **given["pretrain"]["settings"].get("masking", {})}
        assert cfg["pretrain"]["settings"] == {**D.defaults("pretrain.settings"), **given["pretrain"]["settings"],
                                               "masking": masking}
        assert cfg["finetune"]["settings"] == {**D.defaults("finetune.settings"), **given["finetune"]["settings"]}
        assert plan.pretrain_steps(cfg) == given_steps and plan.pretrain_seeds(cfg) == seeds
        assert plan.window(cfg) == (6, 510)
        assert plan.task_data_args(cfg, "Prom-core", 10) == ["--k", "6", "--window-tokens", "510", "--on-conflict",
                                                             "error"]
        assert cfg.get("predict") is None
    cfg = plan.resolve(demo())
    del cfg["pretrain"]["settings"]["steps"]
    assert plan.pretrain_steps(cfg) == 10000  # the schema's default, without importing torch


def test_changed_settings_default_changes_the_rules_params(monkeypatch):
    """A changed schema default of a settings block reaches the rules' params (the resolved settings
    they pass, json-dumped as in workflow/rules/*.smk), so Snakemake reruns the jobs it changes; a
    default the config overrides changes nothing."""

    def params(cfg):
        return {s: json.dumps(cfg[s]["settings"], sort_keys=True) for s in ("pretrain", "finetune")}

    before = params(plan.resolve(demo()))
    schema = copy.deepcopy(D.schema())
    settings = schema["properties"]["pretrain"]["properties"]["settings"]["properties"]
    settings["weight_decay"]["default"] = 0.02
    settings["masking"]["properties"]["mask_prob"]["default"] = 0.7
    settings["steps"]["default"] = 123  # given by the demo config: no change
    schema["properties"]["finetune"]["properties"]["settings"]["properties"]["warmup_ratio"]["default"] = 0.2
    monkeypatch.setattr(D, "schema", lambda: schema)
    after = plan.resolve(demo())
    assert after["pretrain"]["settings"]["weight_decay"] == 0.02 and after["pretrain"]["settings"]["steps"] == 300
    assert after["pretrain"]["settings"]["masking"]["mask_prob"] == 0.7
    assert after["finetune"]["settings"]["warmup_ratio"] == 0.2
    assert params(after)["pretrain"] != before["pretrain"] and params(after)["finetune"] != before["finetune"]


def test_local_task_defaults(tmp_path):
    for f in ("train.tsv", "test.tsv"):
        (tmp_path / f).write_text("sequence\tlabel\nACGTACGT\t0\n")
    cfg = demo()
    cfg["tasks"] = {"Mine": {"num_labels": 2, "train": str(tmp_path / "train.tsv"), "test": str(tmp_path / "test.tsv")}}
    cfg["finetune"].update(tasks=["Mine"], shots=[10])
    got = plan.resolve(cfg)
    assert got["tasks"]["Mine"]["draw_seed"] == 0 and got["tasks"]["Mine"]["on_conflict"] == "error"
    assert plan.task_data_args(got, "Mine", 10) == ["--k", "6", "--window-tokens", "510", "--on-conflict", "error",
                                                     "--draw", "10", "--draw-seed", "0", "--label-names"]


# ---------------------------------------------------------------------------------------------
# one home: the code's tables and the commands' defaults are the schema's
# ---------------------------------------------------------------------------------------------
def test_code_tables_are_the_schemas_defaults():
    from genemask import finetune, masking, pretrain

    assert {k: v for k, v in pretrain.DEFAULTS.items() if k != "threads"} == D.defaults("pretrain.settings")
    assert finetune.DEFAULT_SETTINGS == D.defaults("finetune.settings")
    assert masking.OPTION_DEFAULTS == D.defaults("pretrain.settings.masking")
    assert set(masking.OPTIONS) == set(D.node("pretrain.settings.masking")["properties"])
    assert set(masking.OPTIONS) - set(masking.OPTION_DEFAULTS) == {"p", "high_radius"}  # scheme- and k-dependent
    assert masking.DEFAULT_P["global_pmi"] == masking.GLOBAL_P == D.default("pretrain.settings.masking.global_p")
    assert set(masking.DEFAULT_P) == set(masking.SCHEMES)
    # a Masker has no defaults of its own that could contradict make_masker's
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               for f in dataclasses.fields(masking.Masker) if f.init)
    assert D.node("pretrain.schemes")["items"]["enum"] == ["none", *masking.SCHEMES]


def test_finetune_docstring_block_is_the_defaults():
    """The docstring of genemask.finetune shows the settings with their defaults: it must be them."""
    from genemask import finetune

    block = re.search(r"\n    \{\n(.*?)\n    \}\n", finetune.__doc__, re.S).group(0)
    text = re.sub(r"#[^\n]*", "", block)
    assert json.loads(text) == finetune.DEFAULT_SETTINGS


# (subcommand, option dest) -> the schema key whose default the option takes
CLI_DEFAULTS = {
    ("ngrams", "max_order"): "ngrams.max_order",
    ("npmi", "variant"): "npmi.variant", ("npmi", "min_count"): "npmi.min_count",
    **{("corpus", k): f"corpus.{k}" for k in ("k", "max_bp", "min_bp", "valid_fraction", "seed")},
    ("task-data", "max_test"): "finetune.max_test",
    ("task-data", "draw_seed"): "definitions.local_task.draw_seed",
    ("task-data", "on_conflict"): "definitions.catalogued_task.on_conflict",
    **{(c, k): f"predict.{k}" for c in ("predict", "embed") for k in ("stride", "batch_size", "device")},
    ("embed", "pooling"): "predict.embed.pooling", ("embed", "layer"): "predict.embed.layer",
    ("motifs", "top"): "report.motifs_top",
}


def test_commands_and_functions_default_to_the_schema():
    """A command (or library function) used without the pipeline runs with the pipeline's defaults."""
    from genemask import corpus, inference, ngrams, npmi
    from genemask.cli import build_parser

    subs = next(a for a in build_parser()._actions if a.dest == "command").choices
    for (command, dest), key in CLI_DEFAULTS.items():
        assert subs[command].get_default(dest) == D.default(key), (command, dest)

    def sig(f, name):
        return inspect.signature(f).parameters[name].default

    for f, name, key in [(ngrams.count_fasta, "max_order", "ngrams.max_order"),
                         (npmi.npmi_table, "variant", "npmi.variant"), (npmi.npmi_table, "min_count", "npmi.min_count"),
                         (npmi.npmi_file, "variant", "npmi.variant"), (npmi.npmi_file, "min_count", "npmi.min_count"),
                         (corpus.cut_pieces, "max_bp", "corpus.max_bp"), (corpus.cut_pieces, "min_bp", "corpus.min_bp"),
                         (inference.predict_cli, "batch_size", "predict.batch_size"),
                         (inference.predict_cli, "stride", "predict.stride"),
                         (inference.embed_cli, "pooling", "predict.embed.pooling"),
                         (inference.embed_cli, "layer", "predict.embed.layer"),
                         (inference.embed, "pooling", "predict.embed.pooling"), (inference.embed, "layer", "predict.embed.layer")]:
        assert sig(f, name) == D.default(key), (f.__name__, name)


def test_rules_have_no_copies_of_defaults():
    """plan.resolve fills every section the rules read (settings included), so the rules index the
    config and keep no fallback of their own; the predict section's resources (it is filled only
    where given) come from plan.section_resources, which reads the schema."""
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        assert not re.findall(r'CFG\["(\w+)"\]\.get\("(\w+)", ([^)]+?)\)', text), smk.name
        assert not re.findall(r'PREDICT\.get\(', text), smk.name
        assert not re.findall(r'\.get\("(threads|gpus|mem_mb|runtime_min)"', text), smk.name
    assert plan.section_resources({}, "predict") == {k: D.default(f"predict.{k}")
                                                     for k in ("threads", "gpus", "runtime_min", "mem_mb")}
    assert plan.section_resources({"predict": {"threads": 4}}, "predict")["threads"] == 4


# ---------------------------------------------------------------------------------------------
# settings validated when the config loads, one line naming the key
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mutate, key, fault", [
    (lambda c: c["finetune"]["settings"].update(warmup_ratoi=0.1), "finetune.settings",
     "unknown key(s) ('warmup_ratoi' was unexpected)"),
    (lambda c: c["finetune"]["settings"].update(warmup_ratio=2), "finetune.settings.warmup_ratio",
     "2 is greater than the maximum of 1"),
    (lambda c: c["finetune"]["settings"].update(device="gpu"), "finetune.settings.device",
     "'gpu' is not one of ['cpu', 'cuda', 'auto']"),
    (lambda c: c["finetune"]["settings"].update(epochs=2.0), "finetune.settings.epochs", "2.0 is not of type"),
    (lambda c: c["finetune"]["settings"]["regimes"][1].update(batchsize=15), "finetune.settings.regimes.1",
     "unknown key(s) ('batchsize' was unexpected)"),
    (lambda c: c["finetune"]["settings"]["regimes"][0].pop("lr"), "finetune.settings.regimes.0",
     "'lr' is a required property"),
    (lambda c: c["finetune"]["settings"]["regimes"][0].update(lr=-1), "finetune.settings.regimes.0.lr",
     "-1 is less than the minimum of 0"),
    (lambda c: c["finetune"]["settings"].update(regimes=[]), "finetune.settings.regimes", "should be non-empty"),
    (lambda c: c["finetune"]["settings"].update(regimes=[{"max_shot": 10, "batch_size": 5, "lr": 1e-4, "epochs": 1}]),
     "finetune.settings.regimes", "no regime covers shot 50 of task 'Prom-core' (max_shot values [10]"),
    (lambda c: c["pretrain"]["settings"].update(warmup=3), "pretrain.settings",
     "unknown key(s) ('warmup' was unexpected)"),
    (lambda c: c["pretrain"]["settings"].update(masking={"mask_prob": 1.5}), "pretrain.settings.masking.mask_prob",
     "1.5 is greater than the maximum of 1"),
    (lambda c: c["pretrain"].update(threads=0), "pretrain.threads", "0 is less than the minimum of 1"),
])
def test_setting_typos_fail_when_the_config_loads(tmp_path, mutate, key, fault):
    cfg = demo()
    mutate(cfg)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(GeneMaskError) as e:
        plan.check_config_files([str(path)])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: key '{key}': ") and fault in msg, msg


def test_finetune_job_and_config_apply_one_set_of_rules():
    """The job's load_settings (settings from the command line) accepts exactly what the config accepts."""
    from genemask.finetune import load_settings

    cases = [{}, {"epochs": 3}, {"epochs": None}, {"warmup_ratio": 1}, {"warmup_ratio": 1.01}, {"hidden_dropout": None},
             {"max_grad_norm": None}, {"max_grad_norm": -0.1}, {"eval_batch_size": 0}, {"max_length": 3},
             {"max_length": 2}, {"device": "auto"}, {"device": "tpu"}, {"weight_decay": True},
             {"bf16": "auto"}, {"bf16": True}, {"bf16": False}, {"bf16": "true"}, {"bf16": "yes"}, {"bf16": 1},
             {"regimes": [{"batch_size": 4, "lr": 0, "epochs": 1}]},
             {"regimes": [{"max_shot": 0, "batch_size": 4, "lr": 1e-3, "epochs": 1}]},
             {"regimes": [{"max_shot": None, "batch_size": 4, "lr": 1e-3, "epochs": 1.0}]},
             {"regimes": [{"batch_size": 4, "lr": 1e-3}]}, {"regimes": "fast"}]
    for s in cases:
        cfg = demo()
        cfg["finetune"]["settings"] = copy.deepcopy(s)
        try:
            plan.resolve(cfg)
            config_ok = True
        except GeneMaskError:
            config_ok = False
        try:
            got = load_settings(json.dumps(s))
            job_ok = True
        except GeneMaskError as e:
            assert str(e).startswith("--settings: setting '"), e
            job_ok = False
        assert config_ok == job_ok, s
        if job_ok:
            assert all("max_shot" in r for r in got["regimes"])


# ---------------------------------------------------------------------------------------------
# config/README.md against the schema
# ---------------------------------------------------------------------------------------------
def schema_keys(node: dict, prefix: str = "") -> dict[str, dict]:
    """Every documented key of the schema -> its schema: nested `properties`, and a mapping's entries
    (`additionalProperties` with keys of their own) as `<name>`; array items and alternatives are
    documented in their key's row."""
    out = {}
    for name, sub in node.get("properties", {}).items():
        key = f"{prefix}{name}"
        out[key] = sub
        out.update(schema_keys(sub, key + "."))
        entry = sub.get("additionalProperties")
        if isinstance(entry, dict):
            entries = [entry]
            while any("$ref" in e or "then" in e for e in entries):
                entries = [x for e in entries for x in (
                    [D.node("definitions." + e["$ref"].rsplit("/", 1)[1])] if "$ref" in e else
                    [e["then"], e["else"]] if "then" in e else [e])]
            if any("properties" in e for e in entries):
                out[f"{key}.<name>"] = entry
                for e in entries:
                    out.update(schema_keys(e, f"{key}.<name>."))
    return out


def readme_rows() -> list[tuple[list[str], str, str]]:
    """(keys, default cell, whole row) per row of config/README.md's table."""
    rows = []
    for line in (ROOT / "config" / "README.md").read_text().splitlines():
        if not line.startswith("| ") or line.startswith("| key ") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        keys, last = [], ""
        for name in re.findall(r"`([^`]+)`", cells[0]):
            if name.startswith("."):  # `.origin`: a sibling of the key before
                name = last.rsplit(".", 1)[0] + name
            keys.append(name)
            last = name
        rows.append((keys, cells[1], line))
    return rows


def test_config_readme_documents_every_schema_key_and_default():
    keys = schema_keys(D.schema())
    rows = readme_rows()
    documented = {}
    for names, cell, line in rows:
        for n in names:
            assert n in keys, f"config/README.md names {n!r}, which the schema does not have"
            documented[n] = (names, cell, line)
    for key, sub in keys.items():
        if "." not in key and key not in documented:
            continue  # a section: its keys (or its entries, `<name>`) are the rows
        if key in documented:
            names, cell, line = documented[key]
            if "default" in sub:
                values = yaml.safe_load("[" + cell.replace("`", "") + "]")
                if len(names) == 1:
                    values = [yaml.safe_load(cell.replace("`", ""))]
                assert len(values) == len(names), line
                assert values[names.index(key)] == sub["default"], \
                    f"config/README.md: {key} default {values[names.index(key)]!r}, the schema's {sub['default']!r}"
            continue
        assert "default" not in sub, f"config/README.md: no row for {key} (default {sub['default']!r})"
        # a key without a default may be named in its parent's row instead (e.g. `{url, sha256, path}`)
        parent = key.rsplit(".", 1)[0]
        leaf = key.rsplit(".", 1)[1]
        assert parent in documented and re.search(rf"\b{leaf}\b", documented[parent][2]), \
            f"config/README.md: {key} is not documented (no row, not named in the row of {parent})"
