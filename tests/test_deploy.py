"""Deployment as another project would do it: an empty directory with its own config and a
Snakefile that imports this workflow with the `module` directive. The dry run must build the DAG of
that config (job counts computed from genemask.plan), with every path the workflow keeps next to
itself (model configurations, schema, conda env, report captions) resolving to this checkout, and
the repository's default config/config.yaml must not leak into it."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import BIN, ENV, ROOT, SNAKEMAKE, error_lines, job_counts
from genemask import plan
from genemask.util import GeneMaskError

# What the user's Snakefile adds after `use rule *`: where each rule's conda env file and report
# captions and the workflow's report text resolve (Snakemake takes them relative to the rule file).
PROBE = '''
import json

probe = {"report": str(workflow.report_text), "rules": {}}
for r in workflow.rules:
    captions = [str(f.flags["report"].caption) for f in r.output
                if "report" in f.flags and f.flags["report"].caption is not None]
    env = str(r.basedir.join(r.conda_env)) if isinstance(r.conda_env, str) else None
    probe["rules"][r.name] = {"conda": env, "captions": captions}
with open("probe.json", "w") as fh:
    json.dump(probe, fh)
'''


def user_snakefile(workflow_snakefile: Path, probe: bool = True) -> str:
    return f'''configfile: "config/config.yaml"


module genemask:
    snakefile:
        "{workflow_snakefile}"
    config:
        config


use rule * from genemask
''' + (PROBE if probe else "")


def user_config() -> dict:
    """The end-to-end config with other tasks, seeds, schemes and chunking: a project's own."""
    cfg = yaml.safe_load((ROOT / "tests" / "data" / "e2e.yaml").read_text())
    cfg["genome"]["chunk_size"] = 1_000_000
    cfg["pretrain"]["schemes"] = ["none", "genemask"]
    cfg["finetune"].update(tasks=["Prom-core", "Splice-40"], shots=[10], seeds=[3, 4])
    return cfg


def expected_counts(cfg: dict) -> dict[str, int]:
    """The dry run's job table for `cfg`, from the plan: one job per chunk for counting and corpus,
    per pretraining run, per task x shot with a file, per fine-tuning run, per source fetched."""
    runs = plan.runs(cfg)
    names = {cfg["genome"]["source"]}
    if cfg["npmi"]["ranking"] == "published":
        names.add("data_a")
    for t in cfg["finetune"]["tasks"]:
        task = cfg["tasks"][t]
        names |= {task["test"], *task.get("exclude", [])}
        names |= {plan.shot_source(cfg, t, s) for s in plan.task_shots(cfg, t)} - {None}
    n_chunks = len(plan.chunks(cfg))
    return {
        "fetch": len({cfg["sources"][n]["path"] for n in names}),
        "index_genome": 1, "chunks": 1, "ngrams": n_chunks, "merge_ngrams": 1, "npmi": 1, "corpus": n_chunks,
        "pretrain": len({m["run"] for m in plan.models(cfg) if "run" in m}),
        "task_data": len({(r["task"], r["shot"]) for r in runs}), "finetune": len(runs),
        "missing_shots": 1, "plot_loss": 1, "mask_ranks": 1, "motifs": 1, "aggregate": 1, "all": 1,
    }


def deploy(tmp_path: Path, workflow_snakefile: Path, probe: bool = True) -> Path:
    work = tmp_path / "project"
    (work / "config").mkdir(parents=True)
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(user_config(), sort_keys=False))
    (work / "Snakefile").write_text(user_snakefile(workflow_snakefile, probe))
    return work


def dry_run(work: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "snakemake"), "-n", "-p"], cwd=work, env=ENV, capture_output=True, text=True)


@pytest.mark.subprocess
def test_module_deployment_dry_run_builds_the_users_dag(tmp_path):
    work = deploy(tmp_path, ROOT / "workflow" / "Snakefile")
    r = dry_run(work)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    cfg = plan.resolve(user_config())
    counts = job_counts(out)
    assert counts == expected_counts(cfg), counts
    # 2 tasks x 1 shot x 2 schemes x 2 seeds, 3 chunks of the 2.3 Mbp slice: the user's config, with
    # nothing of the repository's paper-scale config/config.yaml (74 chunks, 360 runs) merged in
    assert (counts["finetune"], counts["ngrams"], counts["pretrain"], counts["fetch"]) == (8, 3, 2, 5)
    # the model configuration comes from this checkout (plan.ROOT), whatever the working directory
    model = re.findall(r"--model-config '?([^ ']+)'?", out)
    assert model and {Path(m) for m in model} == {ROOT / "resources" / "models" / "tiny.json"}, model
    probe = json.loads((work / "probe.json").read_text())
    assert Path(probe["report"]) == ROOT / "workflow" / "report" / "workflow.rst"
    assert [name for name, v in probe["rules"].items() if v["conda"] is None] == ["all"]
    envs = {v["conda"] for v in probe["rules"].values() if v["conda"]}
    assert {Path(e).resolve() for e in envs} == {ROOT / "envs" / "genemask.yaml"}, envs
    captions = {Path(c).resolve() for v in probe["rules"].values() for c in v["captions"]}
    assert len(captions) >= 5 and all(c.is_file() and c.parent == ROOT / "workflow" / "report" for c in captions)
    assert not (work / "results").exists()  # a dry run writes no results, neither here nor in ROOT


@pytest.mark.subprocess
def test_module_of_another_checkout_is_one_line_error(tmp_path):
    """A workflow copy whose package is not the imported one (another version, or a non-editable
    install without config/ and resources/) is refused before anything is planned."""
    other = tmp_path / "other-checkout"
    shutil.copytree(ROOT / "workflow", other / "workflow")
    work = deploy(tmp_path, other / "workflow" / "Snakefile", probe=False)
    r = dry_run(work)
    errors = error_lines(r.stdout + r.stderr)
    assert r.returncode != 0 and len(errors) == 1, errors
    assert errors[0].startswith(f"genemask: error: {other / 'workflow'}: the genemask package is imported from")
    assert f"pip install -e {other}" in errors[0]


def test_check_checkout():
    plan.check_checkout(ROOT / "workflow")
    plan.check_checkout(ROOT / "workflow" / ".." / "workflow")
    with pytest.raises(GeneMaskError, match=r"not this workflow's checkout; install it from there: pip install -e /"):
        plan.check_checkout(ROOT / "tests")


@pytest.mark.subprocess
def test_default_config_is_not_merged_into_a_given_one(tmp_path):
    """`snakemake -n` alone plans config/config.yaml; with --configfile only that file counts (the
    Snakefile loads its default only without one: Snakemake would merge the two key by key).
    Run in an empty working directory holding only config/ (a results/ of the checkout's own demo
    must not change the counts): the default configfile is relative to the working directory."""
    (tmp_path / "config").mkdir()
    for name in ("config.yaml", "demo.yaml"):
        (tmp_path / "config" / name).write_text((ROOT / "config" / name).read_text())
    smk = [*SNAKEMAKE, "-n", "--quiet", "rules"]
    bare = subprocess.run(smk, cwd=tmp_path, env=ENV, capture_output=True, text=True)
    demo = subprocess.run([*smk, "--configfile", "config/demo.yaml"], cwd=tmp_path, env=ENV, capture_output=True,
                          text=True)
    for r in (bare, demo):
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    for name, r in (("config", bare), ("demo", demo)):
        cfg = plan.resolve(yaml.safe_load((ROOT / "config" / f"{name}.yaml").read_text()))
        counts = job_counts(r.stdout + r.stderr)
        assert counts["ngrams"] == len(plan.chunks(cfg)) and counts["finetune"] == len(plan.runs(cfg)), (name, counts)
