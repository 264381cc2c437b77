"""Fixtures for the m2u.datasets tests: small synthetic datasets written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from m2u.datasets.synthetic import write_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 samples at 32 px, shards of 4 samples (so every split has several shards)."""
    out = tmp_path_factory.mktemp("synthetic") / "ds"
    write_synthetic_dataset(out, 40, size=32, seed=0, shard_size=4)
    return out
