"""Shared fixtures: where the read-only shared data lives, and skips when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("M2U_SHARED", REPO_ROOT.parent / "shared"))
CELEBA_DIR = SHARED / "faces" / "celeba"
EXTRAS_DIR = SHARED / "faces" / "extras"
MASKTHEFACE_TEMPLATES = SHARED / "mask-templates" / "maskthefacE"

# One intra-op thread: the tests' networks are tiny, and on a loaded 2-core machine OpenMP's spinning threads
# made them up to 20x slower (a 64 px generator step: 0.6 s with one thread, up to 21 s with two).
torch.set_num_threads(1)


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.fixture(scope="session")
def celeba_dir() -> Path:
    return _require(CELEBA_DIR)


@pytest.fixture(scope="session")
def extras_dir() -> Path:
    return _require(EXTRAS_DIR)


@pytest.fixture(scope="session")
def masktheface_templates_dir() -> Path:
    return _require(MASKTHEFACE_TEMPLATES)


@pytest.fixture(scope="session")
def celeba_first(celeba_dir: Path):
    """The first n CelebA files sorted by name (the issues' protocol subsets)."""
    files = sorted(p for p in celeba_dir.iterdir() if p.suffix.lower() == ".jpg")

    def first(n: int) -> list[Path]:
        return files[:n]

    return first


def _dataset_snapshot(out: Path) -> dict[str, bytes]:
    """Every file a dataset build leaves, by relative path, except what records timings or a process id (stats.json,
    the per-shard ``*_stats.json``, the lock files)."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file()
        and p.name
        not in ("stats.json", ".m2u-written")  # the writer's record lists names in the order written
        and not p.name.endswith(("_stats.json", ".lock"))
    }


@pytest.fixture(scope="session")
def dataset_snapshot():
    """A function: dataset folder -> {relative path: bytes}, for byte-identity checks between builds."""
    return _dataset_snapshot
