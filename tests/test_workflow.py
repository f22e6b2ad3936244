"""The Snakemake workflow: lint, formatting, schema errors, the paper-scale DAG, and the whole
shrunk DAG end to end on real data, with incremental reruns checked by dry runs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import BIN, ENV, ROOT, SNAKEMAKE, error_lines, job_counts, smk
from genemask import defaults as D
from genemask import plan

# A PATH without the environment: snakemake started by absolute path, nothing activated.
BARE_PATH = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                            if p and Path(p).resolve() != BIN.resolve() and not (Path(p) / "genemask").exists())


@pytest.mark.subprocess
def test_lint_and_format():
    r = smk("--lint", "--configfile", "config/demo.yaml")
    assert "Congratulations" in r.stdout + r.stderr
    r = subprocess.run([str(BIN / "snakefmt"), "--check", "workflow"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.subprocess
def test_paper_scale_dry_run_builds_full_hg38_dag(tmp_path):
    # in an empty working directory: a demo's results/ in the checkout must not change the counts
    r = smk("-n", "--configfile", str(ROOT / "config/config.yaml"), "--directory", str(tmp_path))
    counts = job_counts(r.stdout + r.stderr)
    chunks = sum(-(-n // 50_000_000) for n in yaml.safe_load(open(ROOT / "config/config.yaml"))["genome"]["contigs"].values())
    assert chunks == 74
    # 4 tasks x 5 shots, minus Cohn-enh and Splice-40 1000 (not public) = 18 task x shot
    assert counts == {
        "fetch": 1 + 18 + 4,  # genome + shot files + test sets (Prom-300 exclusions are its shot files)
        "index_genome": 1, "chunks": 1, "ngrams": chunks, "merge_ngrams": 1, "npmi": 1, "corpus": chunks,
        "pretrain": 4, "task_data": 18, "finetune": 18 * 4 * 5, "missing_shots": 1, "plot_loss": 1,
        "mask_ranks": 1, "motifs": 1, "aggregate": 1, "all": 1,
    }, counts


# Each config fault: (mutation of config/demo.yaml, the key its one line names, what it says). Every
# one is raised by plan.resolve, which the Snakefile calls (rules/common.smk: `genemask: error: ` +
# its message, exit 1) as does `genemask check-config` (plan.check_config_files), so they are checked
# in-process; test_config_errors_one_line_from_the_dry_run runs two of them through `snakemake -n`.
CONFIG_ERRORS = [
    (lambda c: c["pretrain"]["settings"].update(steps=-5), "pretrain.settings.steps", "less than the minimum"),
    (lambda c: c["pretrain"].update(foo=1), "pretrain", "unknown key(s) ('foo' was unexpected)"),
    (lambda c: c["finetune"].update(seeds="1"), "finetune.seeds", "is not of type 'array'"),
    (lambda c: c["pretrain"]["settings"].update(masking={"high_rule": "third"}),
     "pretrain.settings.masking.high_rule", "is not one of ['all_if_le8', 'half']"),
    (lambda c: c["pretrain"]["settings"].update(masking={"P": 0.02}), "pretrain.settings.masking",
     "unknown key(s) ('P' was unexpected)"),
    (lambda c: c["finetune"].update(tasks=["Prom-9000"]), "finetune.tasks", "unknown task 'Prom-9000'"),
    (lambda c: c.setdefault("tasks", {}).update({"X": {"num_labels": 2, "test": "prom_core_test",
                                                       "shots": {"10": "no_such_file"}}})
     or c["finetune"].update(tasks=["X"], shots=[10]), "tasks.X.shots.10", "source 'no_such_file' is not declared"),
    (lambda c: c["finetune"].update(shots={"Prom-core": [10]}), "finetune.shots",
     "no shot sizes for task 'Prom-300' (the mapping lists Prom-core)"),
    # late failures caught at the dry run
    (lambda c: c["ngrams"].update(max_order=4), "ngrams.max_order", "must be >= corpus.k (6)"),
    (lambda c: c["corpus"].update(min_bp=20, max_bp=10), "corpus.max_bp", "must be >= corpus.min_bp (20)"),
    (lambda c: c["finetune"].update(seeds=[1.0, 2]), "finetune.seeds.0", "1.0 is not of type 'integer'"),
    (lambda c: c["corpus"].update(seed=42.0), "corpus.seed", "42.0 is not of type 'integer'"),
    (lambda c: c["pretrain"]["settings"].update(seed=1.0), "pretrain.settings.seed", "1.0 is not of type 'integer'"),
    (lambda c: c["finetune"].update(shots=[10, 20]), "finetune.shots",
     "shot 20 of task 'Prom-core' is not in the task catalogue"),
    (lambda c: c["pretrain"]["settings"].update(steps=0), "pretrain.settings.steps",
     "0 steps would save untrained models as dnabert, genemask"),
    (lambda c: c.update(sources={"hg38_chr2_slice": {"url": "raw.githubusercontent.com/x/chr2.fa.gz"}}),
     "sources.hg38_chr2_slice.url", "is not a URL with a scheme"),
    (lambda c: c.update(sources={"hg38_chr2_slice": {"path": "../../../outside.fa.gz"}}),
     "sources.hg38_chr2_slice.path", "must be relative and stay inside results/sources"),
    (lambda c: c.update(predict={"inputs": {"mine": "no/such/regions.fa.gz"}, "models": "all"}),
     "predict.inputs.mine", "no such file 'no/such/regions.fa.gz'"),
    (lambda c: c.update(predict={"inputs": {"../up": "config/demo.yaml"}, "models": "all"}),
     "predict.inputs", "name '../up' is not allowed"),
]
# The two faults also checked end to end through `snakemake -n`: a schema error, and a cross-check
# on a relative path, which resolves against the dry run's working directory (--directory).
CONFIG_ERRORS_E2E = ["finetune.seeds.0", "predict.inputs.mine"]


def _bad_config(tmp_path, mutate) -> Path:
    cfg = yaml.safe_load(open(ROOT / "config/demo.yaml"))
    mutate(cfg)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    return bad


def _config_error_line(tmp_path, monkeypatch, bad) -> str:
    """The line the Snakefile prints for `bad` (rules/common.smk: `genemask: error: ` + the message
    of plan.resolve), computed in-process in the dry run's working directory."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(plan.GeneMaskError) as e:
        plan.check_config_files([str(bad)])
    return f"genemask: error: {e.value}"


@pytest.mark.parametrize("mutate, key, fault", CONFIG_ERRORS)
def test_config_errors_name_the_key(tmp_path, monkeypatch, mutate, key, fault):
    bad = _bad_config(tmp_path, mutate)
    line = _config_error_line(tmp_path, monkeypatch, bad)
    assert len(error_lines(line)) == 1 and "\n" not in line, line  # one line, no traceback
    assert line.startswith(f"genemask: error: {bad}: key '{key}'") and fault in line, line


@pytest.mark.subprocess
@pytest.mark.parametrize("mutate, key, fault", [c for c in CONFIG_ERRORS if c[1] in CONFIG_ERRORS_E2E],
                         ids=CONFIG_ERRORS_E2E)
def test_config_errors_one_line_from_the_dry_run(tmp_path, monkeypatch, mutate, key, fault):
    """`snakemake -n` fails with exactly the line plan.resolve gives in-process, and nothing else
    mentions an error."""
    bad = _bad_config(tmp_path, mutate)
    want = _config_error_line(tmp_path, monkeypatch, bad)
    r = smk("-n", "--configfile", bad, "--directory", tmp_path, check=False)
    assert r.returncode != 0
    errors = error_lines(r.stdout + r.stderr)
    assert errors == [want], errors  # one line, no traceback
    assert errors[0].startswith(f"genemask: error: {bad}: key '{key}'") and fault in errors[0], errors


# ---------------------------------------------------------------------------------------------
# The shrunk DAG end to end (real hg38 slice and task files, tiny model): about 2-4 minutes.
# ---------------------------------------------------------------------------------------------
E2E = ROOT / "tests" / "data" / "e2e.yaml"


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, mirror):
    work = tmp_path_factory.mktemp("e2e")
    r = smk("--configfile", str(E2E), "--directory", str(work), "--cores", "2", "--show-failed-logs",
            env={**ENV, "PATH": BARE_PATH})  # jobs must find their own genemask (plan.export_own_bin)
    return work, r.stdout + r.stderr


@pytest.mark.subprocess
@pytest.mark.slow
def test_e2e_jobs_find_genemask_without_an_activated_environment(e2e):
    """The whole shrunk DAG ran from `.venv/bin/snakemake` with a PATH that has no genemask on it."""
    work, out = e2e
    assert subprocess.run(["bash", "-c", "command -v genemask"], env={"PATH": BARE_PATH}).returncode != 0
    assert "exit status 127" not in out and "command not found" not in out
    assert (work / "results" / "report" / "report.html").is_file()


@pytest.mark.subprocess
@pytest.mark.slow
def test_e2e_report_has_every_run(e2e):
    work, out = e2e
    cfg = plan.resolve(yaml.safe_load(open(E2E)))
    expected = plan.runs(cfg)
    runs = pd.read_csv(work / "results/report/runs.tsv", sep="\t")
    got = {(r.task, r.shot, r.scheme, r.seed) for r in runs.itertuples()}
    assert got == {(r["task"], r["shot"], r["scheme"], r["seed"]) for r in expected}
    for col in ("accuracy", "macro_f1", "auroc"):
        assert runs[col].between(0, 1).all(), col
    assert runs["mcc"].between(-1, 1).all()
    summary = pd.read_csv(work / "results/report/summary.tsv", sep="\t")
    missing = summary[summary["status"] == "missing"]
    assert {(t, s) for t, s in zip(missing["task"], missing["shot"])} == {("Cohn-enh", 1000), ("Splice-40", 1000)}
    html = (work / "results/report/report.html").read_text()
    assert "Prom-core" in html and "data:image/png;base64" in html
    for f in ("pretrain_loss.png", "mask_ranks.png", "motifs.tsv", "accuracy_vs_shots.png"):
        assert (work / "results/report" / f).stat().st_size > 500, f
    npmi = pd.read_csv(work / "results/npmi/npmi.tsv", sep="\t")
    assert list(npmi.columns) == ["ngram", "order", "count", "naive_pmi", "dp_pmi", "npmi", "rank"]
    run = work / "results/models/genemask/seed42"
    assert json.loads((run / "genemask.json").read_text())["scheme"] == "genemask"
    steps = cfg["pretrain"]["settings"]["steps"]
    meta = json.loads((run / f"step{steps}" / "genemask.json").read_text())
    assert (meta["pretrain_step"], meta["pretrain_seed"]) == (steps, 42)
    assert set(runs["pretrain_step"]) == {0, steps} and set(runs["pretrain_seed"]) == {42}
    assert "Few-shot accuracy" in out  # the mean +- sd table is printed


@pytest.mark.subprocess
@pytest.mark.slow
def test_e2e_unchanged_rerun_does_nothing(e2e):
    work, _ = e2e
    r = smk("-n", "--configfile", str(E2E), "--directory", str(work))
    assert job_counts(r.stdout + r.stderr) == {}, r.stdout[-2000:]


def _variant(work, mutate):
    cfg = yaml.safe_load(open(E2E))
    mutate(cfg)
    path = work / "variant.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = smk("-n", "--configfile", str(path), "--directory", str(work))
    return job_counts(r.stdout + r.stderr)


@pytest.mark.subprocess
@pytest.mark.slow
def test_e2e_new_seed_reruns_only_new_finetuning(e2e):
    work, _ = e2e
    counts = _variant(work, lambda c: c["finetune"].update(seeds=[1, 2]))
    # 4 tasks x 10 shots + 2 tasks x 1000 shots = 6 task x shot, x 3 schemes, one new seed each
    assert counts == {"finetune": 18, "aggregate": 1, "all": 1}, counts


@pytest.mark.subprocess
@pytest.mark.slow
def test_e2e_new_shot_reruns_only_new_jobs(e2e):
    work, _ = e2e
    counts = _variant(work, lambda c: c["finetune"].update(shots=[10, 50, 1000]))
    # 50-shot files of the 4 tasks; Prom-300's was already fetched as a test-set exclusion
    assert counts == {"fetch": 3, "task_data": 4, "finetune": 12, "aggregate": 1, "all": 1}, counts


@pytest.mark.subprocess
@pytest.mark.slow
def test_e2e_finetune_setting_reruns_finetuning_and_report_only(e2e):
    work, _ = e2e
    counts = _variant(work, lambda c: c["finetune"]["settings"]["regimes"][0].update(epochs=3))
    assert counts == {"finetune": 18, "aggregate": 1, "all": 1}, counts


@pytest.mark.subprocess
@pytest.mark.slow
def test_e2e_settings_params_are_resolved_defaults_rerun_exactly_what_they_change(e2e):
    """The rules pass the resolved settings (plan.fill_settings) as params: a setting given equal to
    its schema default is no change (0 jobs), so neither is a default written out by a newer schema;
    another value reruns the pretraining runs and everything downstream of them."""
    work, _ = e2e

    def same(c):
        c["pretrain"]["settings"].update(weight_decay=D.default("pretrain.settings.weight_decay"), masking={
            "mask_prob": D.default("pretrain.settings.masking.mask_prob")})
        c["finetune"]["settings"]["warmup_ratio"] = D.default("finetune.settings.warmup_ratio")

    assert _variant(work, same) == {}
    counts = _variant(work, lambda c: c["pretrain"]["settings"].update(weight_decay=0.02))
    assert counts == {"pretrain": 3, "finetune": 18, "plot_loss": 1, "mask_ranks": 1, "aggregate": 1, "all": 1}, counts
    counts = _variant(work, lambda c: c["finetune"]["settings"].update(warmup_ratio=0.2))
    assert counts == {"finetune": 18, "aggregate": 1, "all": 1}, counts


@pytest.mark.slow
def test_e2e_changed_genome_reruns_everything_downstream(e2e):
    work, _ = e2e

    def other_genome(c):
        c["sources"] = {"my_genome": {"url": "https://example.org/my.fa.gz", "sha256": "0" * 64,
                                      "path": "genome/my.fa.gz"}}
        c["genome"]["source"] = "my_genome"

    counts = _variant(work, other_genome)
    assert counts == {"fetch": 1, "index_genome": 1, "chunks": 1, "ngrams": 2, "merge_ngrams": 1, "npmi": 1,
                      "corpus": 2, "pretrain": 3, "finetune": 18, "plot_loss": 1, "mask_ranks": 1, "motifs": 1,
                      "aggregate": 1, "all": 1}, counts


@pytest.mark.subprocess
@pytest.mark.slow
def test_e2e_snakemake_report(e2e):
    """`snakemake --report` collects the report() outputs with their captions into one HTML file."""
    work, _ = e2e
    html = work / "snakemake_report.html"
    smk("--configfile", str(E2E), "--directory", str(work), "--report", str(html))
    text = html.read_text(errors="replace")
    assert html.stat().st_size > 100_000
    for name in ("accuracy_vs_shots.png", "summary.tsv", "tests.tsv", "pretrain_loss.png", "mask_ranks.png", "motifs.tsv"):
        assert name in text, name


@pytest.mark.subprocess
def test_published_ranking_skips_counting(tmp_path):
    """npmi.ranking: published pretrains with the authors' Data-A table: no counting, no NPMI job."""
    cfg = yaml.safe_load(open(ROOT / "config/demo.yaml"))
    cfg["npmi"]["ranking"] = "published"
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = smk("-n", "--configfile", str(path), "--directory", str(tmp_path))
    counts = job_counts(r.stdout + r.stderr)
    assert "ngrams" not in counts and "npmi" not in counts and counts["pretrain"] == 3
    assert "Data-A_norm-pmi-score-ranking.csv" in r.stdout + r.stderr


def test_config_overrides_one_key_of_a_catalogued_source():
    """A user pins hg38's sha256 without repeating its URL and mirror path."""
    cfg = yaml.safe_load(open(ROOT / "config/config.yaml"))
    cfg["sources"] = {"hg38": {"sha256": "a" * 64}}
    resolved = plan.resolve(cfg)
    assert resolved["sources"]["hg38"] == {"url": "https://hgdownload.soe.ucsc.edu/goldenPath/hg38/bigZips/hg38.fa.gz",
                                           "sha256": "a" * 64, "path": "genome/hg38.fa.gz",
                                           "checksums": {"url": "https://hgdownload.soe.ucsc.edu/goldenPath/hg38/"
                                                                "bigZips/md5sum.txt",
                                                         "algorithm": "md5", "path": "genome/hg38.md5sum.txt"}}
    assert plan.resolve(yaml.safe_load(open(ROOT / "config/config.yaml")))["sources"]["hg38"]["sha256"] is None


@pytest.mark.subprocess
def test_local_file_task_dry_run_job_counts(tmp_path, mirror):
    """config/gue-prom-core.yaml on top of the demo: 3 drawn K-shot sets from local files, nothing fetched
    for them; a missing local file fails the dry run with one line naming the key."""
    env = {**ENV, "GENEMASK_MIRROR": str(mirror)}
    cmd = [*SNAKEMAKE, "-n", "-p", "--directory", str(tmp_path), "--configfile", "config/demo.yaml"]
    r = subprocess.run([*cmd, "config/gue-prom-core.yaml"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    counts = job_counts(r.stdout + r.stderr)
    assert counts == {
        "fetch": 1,  # the genome only: the task's files are local
        "index_genome": 1, "chunks": 1, "ngrams": 3, "merge_ngrams": 1, "npmi": 1, "corpus": 3, "pretrain": 3,
        "task_data": 3, "finetune": 3 * 3 * 2, "missing_shots": 1, "plot_loss": 1, "mask_ranks": 1, "motifs": 1,
        "probe": 3,  # the demo's probes: 3 models x the one task (its explain task, Splice-40, is not run here)
        "aggregate": 1, "all": 1,
    }, counts
    assert "--draw 100 --draw-seed 0 --label-names" in r.stdout + r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  GUE-prom-core:\n    train: no/such/train.csv\n")
    r = subprocess.run([*cmd, "config/gue-prom-core.yaml", str(bad)], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    errors = [line for line in (r.stdout + r.stderr).splitlines() if "error" in line.lower()]
    assert r.returncode != 0 and len(errors) == 1, errors
    assert errors[0].startswith("genemask: error: ") and "key 'tasks.GUE-prom-core.train': no such file " \
        "'no/such/train.csv'" in errors[0] and f"working directory {tmp_path}" in errors[0], errors


# A dry run that also prints each group job Snakemake would submit (members, rules, resources as
# the executor would request them): the dry-run log names group jobs but not their resources.
_GROUP_JOBS = """
import json, sys
import snakemake.jobs as J
log_info = J.GroupJob.log_info
def show(self):
    res = {k: v for k, v in self.resources.items() if isinstance(v, int)}
    print("GROUP_JOB", json.dumps({"rules": sorted(self.rules), "n": len(self.jobs), **res}), flush=True)
    return log_info(self)
J.GroupJob.log_info = show
from snakemake.cli import main
sys.argv[0] = "snakemake"
main()
"""


def group_jobs(*args, cwd=ROOT) -> tuple[list[dict], dict[str, int]]:
    """(group jobs, job counts) of a dry run. --cores is raised from a dry run's default of 1 to the
    no limit of a real SLURM submission, so only the profile's `resources:` can serialise members."""
    r = subprocess.run([sys.executable, "-c", _GROUP_JOBS, *SNAKEMAKE[1:], "-n", "--cores", "1000", *args],
                       cwd=cwd, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    out = r.stdout + r.stderr
    groups = [json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("GROUP_JOB ")]
    assert len(groups) == out.count("Group job finetune (jobs in lexicogr. order):")
    return groups, job_counts(out)


def _profile(*names):
    prof = {}
    for n in names:  # several --profile: a later one's top-level keys replace the earlier one's
        prof.update(yaml.safe_load(open(ROOT / "profiles" / n / "config.yaml")))
    return prof


@pytest.mark.subprocess
@pytest.mark.parametrize("configs, profiles", [
    (["config/config.yaml"], ["slurm"]),
    (["tests/data/e2e.yaml", "tests/data/e2e-slurm.yaml"], ["slurm", "slurm-ci"]),
], ids=["paper-scale", "slurm-ci"])
def test_slurm_profile_groups_finetuning_runs_on_one_gpu_each(configs, profiles, tmp_path):
    cfg = {}
    for c in configs:
        for k, v in yaml.safe_load(open(ROOT / c)).items():
            cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    cfg = plan.resolve(cfg)
    size = _profile(*profiles)["group-components"]["finetune"]
    args = [a for p in profiles for a in ("--profile", f"profiles/{p}")]
    groups, counts = group_jobs("--configfile", *configs, *args, "--directory", str(tmp_path))
    runs = len(plan.runs(cfg))
    assert counts["finetune"] == runs
    if profiles == ["slurm"]:
        assert (runs, size, len(groups)) == (360, 15, 24)  # the profile's comment: ceil(360 / 15)
    assert len(groups) == -(-runs // size) <= 30
    assert sorted(g["n"] for g in groups) == [runs % size] * (runs % size > 0) + [size] * (runs // size)
    ft = cfg["finetune"]
    assert ft["gpus"] == 1
    for g in groups:  # one run's GPU, CPU and memory; the members in series, so their time
        assert g["rules"] == ["finetune"] and g["gpu"] == 1 and g["_cores"] == 1, g
        assert g["mem_mb"] == ft["mem_mb"] and g["runtime"] == g["n"] * ft["runtime_min"], g



# ---------------------------------------------------------------------------------------------
# predict: the saved classifiers applied to the user's files
# ---------------------------------------------------------------------------------------------
PREDICT_FASTA = ">long one\n" + "ACGTTGCAAGGCTTAACCGGTATCGATCGGGCTAAATTCGCGCATATGCGC" * 12 + "\n>short\nACGTAGGCTTACGATCGA\n"


def _predict_config(tmp_path, name="it's; my regions.fa"):
    """demo + finetune.save: all + a predict section on a FASTA whose name needs quoting (an
    apostrophe, a semicolon, spaces) and a TSV, both given relative to the working directory."""
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "in" / name).write_text(PREDICT_FASTA)
    (tmp_path / "in" / "rows.tsv").write_text("id\tsequence\nrow_a\tACGTACGTTTGACCA\nrow_b\tGGGCCCAAATTTGCA\n")
    cfg = {"finetune": {"save": "all"},
           "predict": {"inputs": {"regions": f"in/{name}", "rows": "in/rows.tsv"},
                       "models": [{"task": "Prom-300", "shot": 10, "model": "genemask/seed42/step300", "seed": 1},
                                  {"task": "Prom-core"}],  # all saved runs of a task: 2 shots x 3 models x 2 seeds
                       "stride": 100, "embed": {"pooling": "mean", "layer": -1}}}
    path = tmp_path / "predict.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.subprocess
@pytest.mark.slow  # dry runs and a real prediction through snakemake
def test_predict_section_dry_run_jobs_quoted_commands_and_a_real_prediction(tmp_path, root):
    """13 selected runs x 2 inputs = 26 predict jobs and 3 pretrained models x 2 inputs = 6 embed jobs
    on top of the demo; paths absolute and shell-quoted; then the printed predict command line and
    embed command line run for real on a saved tiny classifier / pretrained folder."""
    import shlex

    import torch

    from genemask.inference import predict, read_input
    from genemask.modelfolder import load_classifier, save_classifier
    from genemask.pretrain import build_model
    from genemask.tokenizer import build_tokenizer, save_tokenizer

    extra = _predict_config(tmp_path)
    r = smk("-n", "-p", "--directory", str(tmp_path), "--configfile", "config/demo.yaml", str(extra))
    out = r.stdout + r.stderr
    assert job_counts(out) == {
        "fetch": 14, "index_genome": 1, "chunks": 1, "ngrams": 3, "merge_ngrams": 1, "npmi": 1, "corpus": 3,
        # the demo's 5 task x shot cells (Prom-core 10 and 50, the others 10) x 3 schemes x 2 seeds
        "pretrain": 3, "task_data": 5, "finetune": 5 * 3 * 2, "missing_shots": 1, "plot_loss": 1,
        "mask_ranks": 1, "motifs": 1, "aggregate": 1, "predict": 13 * 2, "embed": 3 * 2, "all": 1,
        # the demo's probes (3 models x 4 tasks) and explain (Splice-40: the saved classifiers, no refit)
        "probe": 3 * 4, "explain": 3, "explain_motifs": 3, "explain_report": 1,
    }, job_counts(out)
    fasta = tmp_path / "in" / "it's; my regions.fa"
    run = "Prom-300/10/genemask/seed42/step300/seed1"
    want = (f"GENEMASK_THREADS=1 genemask predict --model results/finetune/{run}.model {shlex.quote(str(fasta))} "
            f"--stride 100 -o results/predict/regions/{run}.tsv 2> results/logs/predict/regions/{run}.log")
    commands = [ln.split("Shell command: ", 1)[1] for ln in out.splitlines() if "Shell command: " in ln]
    assert want in commands, [c for c in commands if "genemask predict" in c][:3]
    emb = [c for c in commands if c.startswith("GENEMASK_THREADS=1 genemask embed --model results/models/"
                                               "genemask/seed42/step300 ") and "/regions/" in c]
    assert emb == [f"GENEMASK_THREADS=1 genemask embed --model results/models/genemask/seed42/step300 "
                   f"{shlex.quote(str(fasta))} --stride 100 --pooling mean --layer -1 -o "
                   f"results/embed/regions/genemask/seed42/step300.parquet 2> "
                   f"results/logs/embed/regions/genemask/seed42/step300.log"], emb

    # the job's inputs made here: a tiny pretrained folder and a classifier saved from it
    pre = tmp_path / "results/models/genemask/seed42/step300"
    model, k = build_model(json.loads((root / "resources/models/tiny.json").read_text()), seed=0)
    model.save_pretrained(pre)
    save_tokenizer(build_tokenizer(k), pre)
    (pre / "genemask.json").write_text(json.dumps({"k": k, "scheme": "genemask"}))
    torch.manual_seed(0)
    folder = save_classifier(load_classifier(pre, 2, None), tmp_path / f"results/finetune/{run}.model",
                             {"task": "Prom-300", "shot": 10, "seed": 1, "source_model": str(pre),
                              "labels": ["non-promoter", "promoter"]})
    for cmd in (want, emb[0]):
        log = tmp_path / cmd.rsplit(" 2> ", 1)[1]
        log.parent.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=ENV, capture_output=True, text=True)
        assert done.returncode == 0, log.read_text()[-2000:]
    df = pd.read_csv(tmp_path / f"results/predict/regions/{run}.tsv", sep="\t")
    print(df.head().to_string())
    ids, seqs = read_input(fasta)
    assert ids == ["long", "short"] and df["id"].tolist() == ids
    prob, labels = predict(folder, seqs, stride=100, device="cpu")
    assert np.allclose(df[["prob_non-promoter", "prob_promoter"]].to_numpy(), prob, atol=1e-5)
    assert (df["predicted"] == np.asarray(labels)[prob.argmax(1)]).all()
    vec = pd.read_parquet(tmp_path / "results/embed/regions/genemask/seed42/step300.parquet")
    assert vec["id"].tolist() == ids and len(vec["embedding"][0]) == 32


@pytest.mark.parametrize("predict, key, fault", [
    ({"models": [{"task": "Prom-300", "shot": 1000}]}, "predict.models.0.shot",
     "1000 matches no fine-tuning run (the runs with its task have shot 10)"),
    ({"models": [{"model": "genemask/seed7/step300"}]}, "predict.models.0.model", "matches no fine-tuning run"),
    ({"models": [{"task": "Prom-core"}], "save": "none"}, "predict.models", "needs finetune.save: all"),
    ({"inputs": {"notes": "in/notes.txt"}, "models": "all"}, "predict.inputs.notes", "unknown input extension '.txt'"),
    ({"embed": {"models": ["dnabert/seed42/step9"]}}, "predict.embed.models.0", "unknown model"),
    ({}, "predict", "nothing to do"),
    ({"models": "all", "bf16": "yes"}, "predict.bf16", "'yes' is not one of"),
])
def test_predict_config_errors_name_the_key(tmp_path, monkeypatch, predict, key, fault):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "r.fa").write_text(PREDICT_FASTA)
    (tmp_path / "in" / "notes.txt").write_text("ACGT\n")
    cfg = yaml.safe_load(open(ROOT / "config/demo.yaml"))
    cfg["finetune"]["save"] = predict.pop("save", "all")
    cfg["predict"] = {"inputs": {"r": "in/r.fa"}, **predict}
    with pytest.raises(plan.GeneMaskError) as e:
        plan.resolve(cfg, where="demo.yaml")
    assert str(e.value).startswith(f"demo.yaml: key '{key}': ") and fault in str(e.value), str(e.value)


def test_predict_section_resolves_paths_and_selections(tmp_path, monkeypatch):
    """Relative input paths become absolute; `models: all` = every run; embed.models default = the
    selected runs' models; only the options given reach the command line."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.fa.gz").write_bytes(b"")
    cfg = yaml.safe_load(open(ROOT / "config/demo.yaml"))
    cfg["finetune"]["save"] = "all"
    cfg["predict"] = {"inputs": {"r": "r.fa.gz"}, "models": "all"}
    got = plan.resolve(cfg)
    assert plan.predict_inputs(got) == {"r": str(tmp_path / "r.fa.gz")}
    assert plan.predict_runs(got) == plan.runs(got) and len(plan.runs(got)) == 30
    assert plan.embed_models(got) == [] and plan.apply_args(got, "predict") == []
    assert cfg["predict"]["inputs"] == {"r": "r.fa.gz"}  # the caller's config is left as given
    cfg["predict"] = {"inputs": {"r": "r.fa.gz"}, "models": [{"seed": 2, "shot": 50}],
                      "embed": {"format": "npy", "layer": 0}, "batch_size": 8, "device": "cpu", "bf16": False}
    got = plan.resolve(cfg)
    assert {(r["shot"], r["seed"]) for r in plan.predict_runs(got)} == {(50, 2)} and len(plan.predict_runs(got)) == 3
    assert plan.embed_models(got) == ["none/seed42/step0", "dnabert/seed42/step300", "genemask/seed42/step300"]
    assert plan.embed_ext(got) == ".npy"
    assert plan.apply_args(got, "embed") == ["--batch-size", "8", "--device", "cpu", "--bf16", "false", "--layer", "0"]
    assert plan.resolve(yaml.safe_load(open(ROOT / "config/demo.yaml"))).get("predict") is None
