"""Shared test tools: the repository root, the environment's programs, the offline data mirror
(real data, read-only) and the dry-run helpers.

Import the constants and helpers with `from conftest import ROOT, GENEMASK, smk, job_counts` (pytest
puts tests/ on sys.path: rootdir-based collection, no tests/__init__.py)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The environment's bin folder (the venv running pytest), not resolved: a symlinked venv keeps its
# own bin/ with the console scripts installed into it.
BIN = Path(sys.executable).parent
GENEMASK = str(BIN / "genemask")  # the `genemask` console script, as a subprocess argument
SNAKEFILE = ROOT / "workflow" / "Snakefile"
SNAKEMAKE = [str(BIN / "snakemake"), "-s", str(SNAKEFILE)]
# For subprocesses: this environment's programs first on PATH, and this checkout's package first on
# PYTHONPATH (an editable install of another checkout must not answer for this one).
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}


def smk(*args, cwd=ROOT, check=True, env=None) -> subprocess.CompletedProcess:
    """`snakemake -s workflow/Snakefile ARGS` in `cwd` (env: ENV unless given); check: a failure
    raises AssertionError with the tail of its output."""
    r = subprocess.run([*SNAKEMAKE, *map(str, args)], cwd=cwd, env=ENV if env is None else env,
                       capture_output=True, text=True)
    if check and r.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(map(str, args))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


NOTHING_TO_DO = "Nothing to be done (all requested files are present and up to date)."
_JOB_STATS = re.compile(r"Job stats:\njob\s+count\n[-\s]+\n(.*?)\ntotal\s+(\d+)", re.S)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: jobs}; {} only when Snakemake said there is
    nothing to be done. Any other output without the table (an error, a wrong command) fails."""
    m = _JOB_STATS.search(output)
    if not m:
        assert NOTHING_TO_DO in output, f"no job table and not 'nothing to be done':\n{output[-3000:]}"
        return {}
    counts = {name: int(n) for name, n in (line.split() for line in m.group(1).splitlines())}
    assert sum(counts.values()) == int(m.group(2)), m.group(0)
    return counts


def error_lines(output: str) -> list[str]:
    """The lines of a command's output that mention an error (a one-line error: exactly one)."""
    return [line for line in output.splitlines() if "error" in line.lower()]


def mirror_dir() -> Path:
    return Path(os.environ.get("GENEMASK_MIRROR", ROOT.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def mirror() -> Path:
    m = mirror_dir()
    if not (m / "SOURCES.md").exists():
        pytest.fail(f"data mirror not found at {m}: set GENEMASK_MIRROR to the shared data folder")
    return m


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def data_a(mirror) -> Path:
    return mirror / "genemask" / "Data-A_norm-pmi-score-ranking.csv"


@pytest.fixture(scope="session")
def fewshot(mirror) -> Path:
    return mirror / "genemask" / "Data-B_fewshot-task-datasets"


@pytest.fixture(scope="session")
def hg38_slice(mirror) -> Path:
    return mirror / "genome" / "hg38_chr2_1-2333275.fa.gz"
