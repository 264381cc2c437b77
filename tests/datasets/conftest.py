"""Fixtures for the m2u.datasets tests: small synthetic datasets written once per session."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from m2u.datasets.synthetic import write_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 samples at 32 px, shards of 4 samples (so every split has several shards)."""
    out = tmp_path_factory.mktemp("synthetic") / "ds"
    write_synthetic_dataset(out, 40, size=32, seed=0, shard_size=4)
    return out


@pytest.fixture(scope="session")
def demo_faces(tmp_path_factory: pytest.TempPathFactory):
    """A function n -> a list file of n embedded demo faces (pipelines/demo_faces.py; no ../shared needed)."""
    from m2u.pipelines.demo_faces import write_demo_faces

    root = tmp_path_factory.mktemp("demo-faces")

    def listing(count: int) -> Path:
        folder = root / f"faces-{count}"
        path = root / f"faces-{count}.txt"
        if not path.exists():
            files = write_demo_faces(folder, count=count)
            path.write_text("".join(f"{f}\n" for f in files))
        return path

    return listing


@pytest.fixture(autouse=True)
def no_lease_settle_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build to a URL waits LEASE_SETTLE_S after writing its lease, for a build racing it; none races here
    (the race tests set their own delay)."""
    from m2u.datasets import storage

    monkeypatch.setattr(storage, "LEASE_SETTLE_S", 0.0, raising=False)


def lease_of_another_build(
    renewed_ago_s: float, *, host: str = "build-host-2", pid: int = 4242, machine: str | None = None
) -> bytes:
    """The bytes of a build lease another machine's build wrote (m2u.datasets.storage.LEASE_NAME), last renewed
    `renewed_ago_s` seconds ago (`machine`: the system it says it ran in; none said by default)."""

    def iso(ago_s: float) -> str:
        return datetime.fromtimestamp(time.time() - ago_s, UTC).isoformat()

    fields = {
        "token": "0" * 32,
        "host": host,
        "pid": pid,
        "started": iso(renewed_ago_s + 60),
        "renewed": iso(renewed_ago_s),
    }
    if machine is not None:
        fields["machine"] = machine
    return json.dumps(fields).encode()
