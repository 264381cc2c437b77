"""Committing shards, verifying them on a rerun, and writing the dataset's manifests.

A shard is committed by the process that drives the build (never by a worker): after its task wrote the tar, the
driver writes the shard's stats JSON beside it (``<split>-NNNNNN_stats.json``: counts, status, size, SHA-256,
timings, like img2dataset's) and then its manifest rows to ``OUT/.m2u-build/<split>-NNNNNN.parquet`` — that file
is the commit marker, and its schema metadata repeats the tar's size and SHA-256. A rerun verifies every committed
shard it keeps against them (re-reading and hashing each tar) and rebuilds the missing or damaged ones.

Finalising reads the markers of every planned shard and writes ``manifest.parquet`` (every planned sample, sorted
by key), ``train.parquet``, ``val.parquet`` and ``test.parquet`` (the written samples of each split, in shard
order); the column meanings travel with them as Parquet field metadata (``m2u.datasets.layout.COLUMNS``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from m2u.core.fileio import arrow_path, atomic_write_text, report_text
from m2u.datasets.layout import (
    MANIFEST_SCHEMA,
    MANIFEST_STATUSES,
    SPLITS,
    STATE_DIR,
    manifest_table,
    read_json,
    shard_name,
    shard_relpath,
    shard_stats_relpath,
    split_manifest_name,
    split_table,
    write_manifest,
    write_parquet_atomic,
)
from m2u.datasets.plan import ShardOutput, ShardTask
from m2u.datasets.shards import file_digest

# Schema metadata of a commit marker: the committed tar's size and SHA-256 ("" when the shard has no tar).
BYTES_KEY = b"m2u.shard_bytes"
SHA256_KEY = b"m2u.shard_sha256"
# The mask engine that drew the shard (ShardOutput.render_version); absent: the synthetic engine, or an m2u from
# before render versions (the first engine).
RENDER_VERSION_KEY = b"m2u.render_version"


def marker_path(out_dir: Path, split: str, index: int) -> Path:
    return out_dir / STATE_DIR / shard_name(split, index).replace(".tar", ".parquet")


def shard_stats(output: ShardOutput, planned: int) -> dict[str, Any]:
    """The per-shard stats JSON: what was planned and written, the tar's size and checksum, timings."""
    counts = {status.value: 0 for status in MANIFEST_STATUSES}
    for row in output.rows:
        counts[row["status"]] += 1
    return {
        "shard": shard_relpath(output.split, output.index),
        "split": output.split,
        "index": output.index,
        "status": "written" if output.sha256 else "empty",
        "planned": planned,
        "counts": counts,
        "bytes": output.bytes,
        "sha256": output.sha256,
        "timings": {"process_s": output.process_s, "write_s": output.write_s},
        "worker": output.worker,
    }


def write_shard_stats(out_dir: Path, output: ShardOutput, planned: int) -> dict[str, Any]:
    """Write the shard's stats JSON beside it; returns the stats."""
    if len(output.rows) != planned:
        raise RuntimeError(
            f"shard {output.split}-{output.index}: {len(output.rows)} rows for {planned} planned"
        )
    stats = shard_stats(output, planned)
    stats_path = out_dir / shard_stats_relpath(output.split, output.index)
    stats_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        stats_path, json.dumps(stats, indent=2, sort_keys=True) + "\n", durable=True, by_name=True
    )
    return stats


def commit_shard(out_dir: Path, output: ShardOutput, planned: int) -> dict[str, Any]:
    """Write the shard's stats JSON, then its commit marker (which repeats the tar's size and SHA-256)."""
    stats = write_shard_stats(out_dir, output, planned)
    table = manifest_table(output.rows, sort=False)
    metadata = {
        **(table.schema.metadata or {}),
        BYTES_KEY: str(output.bytes or ""),
        SHA256_KEY: output.sha256 or "",
    }
    if output.render_version is not None:
        metadata[RENDER_VERSION_KEY] = str(output.render_version)
    marker = marker_path(out_dir, output.split, output.index)
    write_parquet_atomic(table.replace_schema_metadata(metadata), marker)
    return stats


def check_committed(out_dir: Path, task: ShardTask, render_version: int | None = None) -> str | None:
    """None when the shard is committed and its files hold what the commit recorded (with `render_version`: drawn by
    that mask engine); else what is wrong."""
    marker = marker_path(out_dir, task.split, task.index)
    if not marker.is_file():
        return "not committed"
    try:
        schema = pq.read_schema(marker)
        rows = pq.read_metadata(marker).num_rows
    except (OSError, pa.ArrowException) as exc:
        return f"commit marker {marker.name} is unreadable: {exc}"
    meta = schema.metadata or {}
    if rows != len(task.samples):
        return f"commit marker {marker.name} lists {rows} samples, the plan {len(task.samples)}"
    if SHA256_KEY not in meta:
        return "committed by an older m2u without a checksum (rebuilt once to record one)"
    if render_version is not None:
        from m2u.masking.render import FIRST_RENDER_VERSION

        drawn = int(meta.get(RENDER_VERSION_KEY, FIRST_RENDER_VERSION))
        if drawn != render_version:
            return f"drawn by mask engine version {drawn}, and this build draws version {render_version}"
    sha256, expected_bytes = meta[SHA256_KEY].decode(), meta[BYTES_KEY].decode()
    # The stats JSON is what the loader checks a shard against: one damaged or edited must rebuild the shard here,
    # or the loader's "rerun m2u-make-dataset" would find nothing to redo.
    stats = read_json(out_dir / shard_stats_relpath(task.split, task.index))
    if not isinstance(stats, dict):
        return "its stats JSON is missing or unreadable"
    recorded = (stats.get("sha256") or "", "" if stats.get("bytes") is None else str(stats["bytes"]))
    if recorded != (sha256, expected_bytes):  # an empty shard records neither
        return "its stats JSON does not hold the size and SHA-256 the commit recorded"
    tar = out_dir / task.relpath
    if sha256:
        if not tar.is_file():
            return "the shard is missing"
        size = tar.stat().st_size
        if str(size) != expected_bytes:
            return f"the shard has {size} bytes, {expected_bytes} were committed"
        if file_digest(tar)[1] != sha256:
            return "the shard's SHA-256 differs from the one committed"
    return _changed_input(task, marker)


def _changed_input(task: ShardTask, marker: Path) -> str | None:
    """Which local input of a committed shard no longer holds the bytes it was built from (its SHA-256 differs
    from the manifest's `source_sha256`; a file that could not be read then or now counts as None), or None.
    Read as the build reads it, so a repaired or emptied photo rebuilds its shard on the next run. A URL's
    inputs are not fetched again for this."""
    from m2u.core.imageio import ImageReadError, read_input_bytes

    table = pq.read_table(arrow_path(marker), columns=["key", "source_sha256"]).to_pydict()
    recorded = dict(zip(table["key"], table["source_sha256"], strict=True))
    current: dict[str, str | None] = {}
    for sample in task.samples:
        source = sample.source
        if "://" in source:
            continue
        if source not in current:
            try:
                current[source] = hashlib.sha256(read_input_bytes(source)).hexdigest()
            except ImageReadError:
                current[source] = None
        if current[source] != recorded.get(sample.key):
            return f"its input {report_text(source)} changed since the shard was built"
    return None


def uncommit(out_dir: Path, task: ShardTask) -> None:
    """Forget a damaged shard's commit so that this run builds it again."""
    marker_path(out_dir, task.split, task.index).unlink(missing_ok=True)


def read_rows(out_dir: Path, tasks: Iterable[ShardTask]) -> list[dict[str, Any]]:
    """The committed rows of ``tasks``, shard after shard, each shard in plan order."""
    tables = [
        pq.read_table(arrow_path(marker_path(out_dir, t.split, t.index)), schema=MANIFEST_SCHEMA)
        for t in tasks
    ]
    return pa.concat_tables(tables).to_pylist() if tables else []


@dataclass(frozen=True)
class Manifests:
    rows: list[dict[str, Any]]
    paths: list[Path]


def write_manifests(out_dir: Path, tasks: Sequence[ShardTask]) -> Manifests:
    """manifest.parquet and the three split manifests from the committed shards of ``tasks``."""
    return write_manifests_from_rows(out_dir, read_rows(out_dir, sorted(tasks, key=ShardTask.sort_key)))


def write_manifests_from_rows(out_dir: Path, rows: list[dict[str, Any]]) -> Manifests:
    """manifest.parquet and the three split manifests from every planned sample's row, in shard order."""
    paths = []
    for split in SPLITS:
        path = out_dir / split_manifest_name(split)
        write_parquet_atomic(split_table(row for row in rows if row["split"] == split), path)
        paths.append(path)
    paths.append(write_manifest(out_dir, rows))
    return Manifests(rows=rows, paths=paths)


def read_shard_stats(out_dir: str | os.PathLike[str], split: str, index: int) -> dict[str, Any] | None:
    """A shard's stats JSON, or None when it has none (a dataset written before they existed)."""
    path = Path(out_dir) / shard_stats_relpath(split, index)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
