"""Software environments, checked offline (conda cannot run here): every envs/*.yaml parses and pins
every package; every rule in workflow/rules/*.smk names an existing env with `conda:`; and the pip
pins of envs/genemask.yaml equal the pins of pyproject.toml [project].dependencies, both ways.

Which packages belong where: the rule env holds what the rules' `genemask` commands import. The
runner packages below are pinned in pyproject.toml only: they run the workflow (the submitting
process and, under SLURM, the job step, which is started with the submitting environment's
Python and only activates the rule env around each shell command), so a rule env never needs them.
"""
from __future__ import annotations

import os
import re
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import ROOT

ENVS = sorted((ROOT / "envs").glob("*.yaml"))
RULE_FILES = sorted((ROOT / "workflow" / "rules").glob("*.smk"))
RUNNER = {"snakemake", "snakemake-executor-plugin-slurm"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;=<>!~,]+)$")


def norm(name: str) -> str:
    """PEP 503 name: case and runs of -_. do not matter (PyYAML == pyyaml)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_pins(entries: list[str], where: str) -> tuple[dict[str, str], list[str]]:
    """{normalised name: version} of `name==version` entries; problems for anything else except
    local paths (`-e path`, `.`), which are not packages from an index."""
    pins, problems = {}, []
    for e in entries:
        e = e.strip()
        if e.startswith(("-e ", "--editable", ".", "/")):
            continue
        m = PIN.match(e)
        if not m:
            problems.append(f"{where}: '{e}' is not pinned as name==version")
            continue
        name = norm(m.group(1))
        if name in pins:
            problems.append(f"{where}: {name} listed twice")
        pins[name] = m.group(3)
    return pins, problems


def env_pip_entries(env: dict) -> list[str]:
    out = []
    for dep in env.get("dependencies") or []:
        if isinstance(dep, dict):
            out.extend(str(x) for x in dep.get("pip") or [])
    return out


def compare_pins(env_file: Path, pyproject_file: Path) -> list[str]:
    """Every way the env's pip pins and pyproject's runtime pins disagree (empty list: in sync)."""
    env = yaml.safe_load(env_file.read_text())
    project = tomllib.loads(pyproject_file.read_text())["project"]
    env_pins, problems = pip_pins(env_pip_entries(env), env_file.name)
    proj_pins, more = pip_pins(project["dependencies"], "pyproject.toml")
    problems += more
    for name, version in sorted(env_pins.items()):
        if name in RUNNER:
            problems.append(f"{env_file.name}: {name} is a runner package; it belongs in pyproject.toml only")
        elif name not in proj_pins:
            problems.append(f"{env_file.name}: {name}=={version} is not in pyproject.toml [project].dependencies")
        elif proj_pins[name] != version:
            problems.append(f"{name}: {env_file.name} pins {version}, pyproject.toml pins {proj_pins[name]}")
    for name, version in sorted(proj_pins.items()):
        if name not in RUNNER and name not in env_pins:
            problems.append(f"pyproject.toml: {name}=={version} is missing from {env_file.name}")
    return problems


# ---------------------------------------------------------------------------------------------
def test_there_are_envs_and_rules():
    assert ENVS and [p.name for p in ENVS] == ["genemask.yaml"], ENVS
    assert len(RULE_FILES) >= 6, RULE_FILES


@pytest.mark.parametrize("env_file", ENVS, ids=lambda p: p.name)
def test_env_parses_and_pins_everything(env_file):
    env = yaml.safe_load(env_file.read_text())
    assert isinstance(env, dict) and set(env) <= {"name", "channels", "dependencies"}, env
    assert env.get("channels") and "defaults" not in env["channels"], env.get("channels")
    deps = env["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    for d in conda:  # conda syntax: name=version (or name==version), nothing open-ended
        assert re.fullmatch(r"[A-Za-z0-9._-]+==?[0-9][^\s*<>]*", d), f"{env_file.name}: '{d}' is not pinned"
    others = [d for d in deps if not isinstance(d, str)]
    assert all(isinstance(d, dict) and set(d) == {"pip"} for d in others), others
    if others:
        assert any(d.split("=")[0] == "pip" for d in conda), "a pip: section needs pip itself pinned"
    _, problems = pip_pins(env_pip_entries(env), env_file.name)
    assert not problems, problems


def test_env_python_satisfies_requires_python():
    env = yaml.safe_load((ROOT / "envs/genemask.yaml").read_text())
    py = next(d for d in env["dependencies"] if isinstance(d, str) and d.split("=")[0] == "python")
    version = py.split("=")[-1]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11,<3.12" and version.startswith("3.11"), (py, requires)


def test_env_pins_equal_pyproject_pins():
    assert compare_pins(ROOT / "envs/genemask.yaml", ROOT / "pyproject.toml") == []


def test_pin_comparison_catches_drift(tmp_path):
    env, proj = tmp_path / "genemask.yaml", tmp_path / "pyproject.toml"
    shutil.copy(ROOT / "envs/genemask.yaml", env)
    shutil.copy(ROOT / "pyproject.toml", proj)
    assert compare_pins(env, proj) == []

    text = env.read_text()
    assert "      - numpy==2.4.6\n" in text
    env.write_text(text.replace("      - numpy==2.4.6\n", "      - numpy==2.4.5\n"))
    assert compare_pins(env, proj) == ["numpy: genemask.yaml pins 2.4.5, pyproject.toml pins 2.4.6"]

    env.write_text(text.replace("      - numpy==2.4.6\n", ""))  # dropped from the env
    assert compare_pins(env, proj) == ["pyproject.toml: numpy==2.4.6 is missing from genemask.yaml"]

    env.write_text(text.replace("      - numpy==2.4.6\n", "      - numpy>=2\n"))  # unpinned
    assert compare_pins(env, proj) == ["genemask.yaml: 'numpy>=2' is not pinned as name==version",
                                       "pyproject.toml: numpy==2.4.6 is missing from genemask.yaml"]

    env.write_text(text.replace("      - pyyaml==6.0.3\n", "      - PyYAML==6.0.3\n      - tqdm==4.67.1\n"))
    assert compare_pins(env, proj) == ["genemask.yaml: tqdm==4.67.1 is not in pyproject.toml [project].dependencies"]

    env.write_text(text.replace("      - numpy==2.4.6\n", "      - numpy==2.4.6\n      - snakemake==9.27.1\n"))
    assert compare_pins(env, proj) == ["genemask.yaml: snakemake is a runner package; it belongs in pyproject.toml only"]

    env.write_text(text)
    ptext = proj.read_text()
    assert '  "pandas==3.1.1",\n' in ptext
    proj.write_text(ptext.replace('  "pandas==3.1.1",\n', '  "pandas==3.2.0",\n'))
    assert compare_pins(env, proj) == ["pandas: genemask.yaml pins 3.1.1, pyproject.toml pins 3.2.0"]

    proj.write_text(ptext.replace('  "snakemake[reports]==9.27.1",\n', ""))  # runner: not compared
    assert compare_pins(env, proj) == []


# ---------------------------------------------------------------------------------------------
def rule_blocks(path: Path) -> dict[str, str]:
    """{rule name: its body} of the top-level `rule x:` blocks of a Snakemake file."""
    blocks, name, body = {}, None, []
    for line in path.read_text().splitlines():
        m = re.match(r"rule (\w+):", line)
        if m or (line[:1].strip() and not line.startswith("#")):  # a new top-level statement
            if name:
                blocks[name] = "\n".join(body)
            name, body = (m.group(1), []) if m else (None, [])
            continue
        body.append(line)
    if name:
        blocks[name] = "\n".join(body)
    return blocks


def string_constants() -> dict[str, str]:
    """NAME = "literal" assignments of the rule files (where ENV is defined)."""
    out = {}
    for f in RULE_FILES:
        out.update(re.findall(r'^([A-Z_][A-Z0-9_]*) = "([^"]+)"$', f.read_text(), re.M))
    return out


RULES = [(f, name, body) for f in RULE_FILES for name, body in rule_blocks(f).items()]


def test_rule_parser_finds_every_rule():
    n = sum(len(re.findall(r"^rule \w+:", f.read_text(), re.M)) for f in RULE_FILES)
    assert len(RULES) == n >= 15, (len(RULES), n)


@pytest.mark.parametrize("smk, rule, body", RULES, ids=[f"{f.stem}:{r}" for f, r, _ in RULES])
def test_every_rule_declares_an_existing_conda_env(smk, rule, body):
    m = re.search(r"^    conda:\n        (\S+)\s*$", body, re.M)
    assert m, f"rule {rule} ({smk.name}) has no conda: directive"
    value = m.group(1)
    if value.startswith(("'", '"')):
        rel = value.strip("'\"")
    else:
        consts = string_constants()
        assert value in consts, f"rule {rule}: conda: {value} is not a string constant of the rule files"
        rel = consts[value]
    env = (smk.parent / rel).resolve()  # conda: paths are relative to the file that defines the rule
    assert env.is_file() and env.parent == ROOT / "envs", f"rule {rule}: {rel} -> {env}"


# snakemake copies an env file to .snakemake/conda/<hash>.yaml before conda reads it, so a relative
# pip path (`-e ../`) would point into <workdir>/.snakemake: the package is installed by the env's
# post-deploy script from $GENEMASK_ROOT (set by workflow/rules/common.smk) instead.
def test_env_has_no_relative_pip_paths():
    for env_file in ENVS:
        entries = env_pip_entries(yaml.safe_load(env_file.read_text()))
        bad = [e for e in entries if re.match(r"(-e\s+|--editable[=\s]+)?\.\.?(/|$)", e.strip())]
        assert not bad, f"{env_file.name}: relative pip paths {bad}"


def test_post_deploy_installs_the_package_from_the_checkout():
    script = ROOT / "envs" / "genemask.post-deploy.sh"
    text = script.read_text()
    assert os.access(script, os.X_OK) and "GENEMASK_ROOT" in text and "pip install" in text
    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert "plan.export_root()" in common
