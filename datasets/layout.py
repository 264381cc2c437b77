"""The on-disk dataset layout and the manifest schema: the one place these facts live.

A dataset folder ``OUT`` holds::

    OUT/train/train-000000.tar ...   WebDataset shards, one folder per split
    OUT/val/val-000000.tar ...
    OUT/test/test-000000.tar ...
    OUT/manifest.parquet             one row per planned sample (every input file, failures included)
    OUT/stats.json                   counts per split and status, timings, arguments, library versions

Each sample in a shard is four tar members sharing a key: ``<key>.masked.<ext>``, ``<key>.unmasked.<ext>``,
``<key>.mask.png`` (single channel, 0/255) and ``<key>.json``. Failed inputs never enter a shard (HuggingFace
``datasets`` needs every sample of a shard to have the same fields); they live only in the manifest.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from m2u.masking.fileio import atomic_write

SPLITS: tuple[str, ...] = ("train", "val", "test")
# Paper, section 4.1: "divided into 70% for training, 15% for validation, and 15% for testing".
DEFAULT_SPLIT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
# Paper, section 4.1: images are brought to 256 x 256.
DEFAULT_IMAGE_SIZE = 256
# Below 32 px the aligned face's inter-ocular distance (a quarter of the side, see m2u.datasets.align) falls under
# the masking engine's 6 px minimum: of 30 CelebA faces, 0 could be masked at 24 px, 14 at 32, 29 at 48.
MIN_IMAGE_SIZE = 32
# Above this one aligned pair alone takes hundreds of MB in a worker (--size 60000 asked for 10.8 GB per input).
MAX_IMAGE_SIZE = 2048


def check_image_size(size: object, option: str = "--size") -> int:
    """`size` if it is an integer side within MIN_IMAGE_SIZE..MAX_IMAGE_SIZE, else ValueError naming `option`."""
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"{option} must be an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} (pixels per side of the "
            f"aligned crop), got {size!r}"
        )
    return size


MANIFEST_NAME = "manifest.parquet"
STATS_NAME = "stats.json"
SHARD_SUFFIX = ".tar"
SHARD_INDEX_DIGITS = 6

# Tar member field names (the part after the key's dot). Image fields take the image format's extension.
MASKED_FIELD = "masked"
UNMASKED_FIELD = "unmasked"
MASK_FIELD = "mask.png"
META_FIELD = "json"

# webdataset splits a member name at the first dot of its basename, treats slashes as part of the key and
# reserves a leading "__" for its own metadata: keys are restricted to this alphabet.
KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
MAX_KEY_LENGTH = 80  # keeps "<key>.unmasked.webp" inside a plain ustar name field (100 bytes)


class Status(enum.StrEnum):
    """Outcome of one planned sample, as recorded in the manifest."""

    OK = "ok"
    NO_FACE = "no_face"
    # A face was found but the masking engine refused to place a mask on it (fold-over, mask off the mouth...):
    # a property of the photo, not a failure of the build.
    REFUSED = "refused"
    ERROR = "error"


MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        # Shard path relative to OUT ("train/train-000000.tar"); empty when the sample was not written.
        pa.field("shard", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_sha256", pa.string(), nullable=False),
        pa.field("identity", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("mask_type", pa.string(), nullable=False),
        # Size of the source image in pixels (0 when it could not be read).
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("variant", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("n_faces", pa.int32(), nullable=False),
    ]
)
MANIFEST_COLUMNS: tuple[str, ...] = tuple(MANIFEST_SCHEMA.names)


def validate_key(key: str) -> str:
    """Return ``key`` unchanged, or raise ValueError saying why webdataset would misread it."""
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise ValueError(
            f"invalid sample key {key!r}: keys must match {KEY_PATTERN.pattern} (no dots, no slashes)"
        )
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"invalid sample key {key!r}: longer than {MAX_KEY_LENGTH} characters")
    return key


def validate_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    return split


def shard_name(split: str, index: int) -> str:
    """File name of shard ``index`` of ``split``, e.g. ``train-000003.tar``."""
    validate_split(split)
    if index < 0 or index >= 10**SHARD_INDEX_DIGITS:
        raise ValueError(f"shard index {index} out of range")
    return f"{split}-{index:0{SHARD_INDEX_DIGITS}d}{SHARD_SUFFIX}"


def shard_relpath(split: str, index: int) -> str:
    """Shard path relative to the dataset folder, as stored in the manifest (always with '/')."""
    return f"{split}/{shard_name(split, index)}"


def split_shards(out_dir: str | os.PathLike[str], split: str) -> list[Path]:
    """The finished shards of one split, sorted by name (temporary files excluded)."""
    folder = Path(out_dir) / validate_split(split)
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^{split}-\d{{{SHARD_INDEX_DIGITS}}}{re.escape(SHARD_SUFFIX)}$")
    return sorted(p for p in folder.iterdir() if pattern.match(p.name))


def manifest_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build the manifest table from row dicts: checks columns and types, sorts by key (deterministic)."""
    rows = sorted(rows, key=lambda row: row["key"])
    columns: dict[str, list[Any]] = {name: [] for name in MANIFEST_COLUMNS}
    for row in rows:
        missing = set(MANIFEST_COLUMNS) - set(row)
        if missing:
            raise ValueError(f"manifest row {row.get('key')!r} lacks columns {sorted(missing)}")
        status = row["status"]
        if Status(status).value != status:  # raises for unknown statuses
            raise ValueError(f"manifest row {row['key']!r}: bad status {status!r}")
        for name in MANIFEST_COLUMNS:
            columns[name].append(row[name])
    keys = columns["key"]
    if len(set(keys)) != len(keys):
        raise ValueError("manifest rows have duplicate keys")
    return pa.Table.from_pydict(columns, schema=MANIFEST_SCHEMA)


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike[str]) -> None:
    """Write a Parquet file under a temporary name, then rename it: readers never see a partial file."""
    path = Path(path)
    # No statistics timestamps exist in Parquet; fixed compression keeps the bytes reproducible.
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd", write_statistics=True))


def write_manifest(out_dir: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    path = Path(out_dir) / MANIFEST_NAME
    write_parquet_atomic(manifest_table(rows), path)
    return path


def read_manifest(path: str | os.PathLike[str]):
    """Read ``manifest.parquet`` (or the one inside a dataset folder) as a pandas DataFrame."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no dataset manifest at {path}")
    return pq.read_table(path, schema=MANIFEST_SCHEMA).to_pandas()
