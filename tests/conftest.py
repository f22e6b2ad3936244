"""Shared fixtures: the offline data mirror (real data, read-only) and the repository root."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
