"""The on-disk dataset layout and the manifest schema: the one place these facts live.

A dataset folder ``OUT`` holds::

    OUT/train/train-000000.tar ...   WebDataset shards, one folder per split
    OUT/train/train-000000_stats.json  per shard: counts, status, size and SHA-256, timings
    OUT/val/val-000000.tar ...
    OUT/test/test-000000.tar ...
    OUT/manifest.parquet             one row per planned sample (every input file, failures included)
    OUT/train.parquet, val.parquet, test.parquet   the written samples of each split, with shard and key
    OUT/stats.json                   counts per split and status, timings, arguments, library versions
    OUT/.m2u-build/                  build state: the fingerprint, one commit marker per shard, partition locks

Each sample in a shard is four tar members sharing a key: ``<key>.masked.<ext>``, ``<key>.unmasked.<ext>``,
``<key>.mask.png`` (single channel, 0/255) and ``<key>.json``. Failed inputs never enter a shard (HuggingFace
``datasets`` needs every sample of a shard to have the same fields); they live only in the manifest.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from m2u.core import outcome
from m2u.core.errors import SettingError
from m2u.core.fileio import arrow_path, atomic_write, report_text

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


def check_image_size(size: object, setting: str = "size") -> int:
    """`size` if it is an integer side within MIN_IMAGE_SIZE..MAX_IMAGE_SIZE, else SettingError naming `setting`."""
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise SettingError(
            setting,
            f"must be an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} (pixels per side of the "
            f"aligned crop), got {size!r}",
        )
    return size


MANIFEST_NAME = "manifest.parquet"
STATS_NAME = "stats.json"
SHARD_SUFFIX = ".tar"
# Build state: per-shard commit markers and the build's fingerprint, and the lock a run holds (m2u.datasets.locks).
STATE_DIR = ".m2u-build"
LOCK_NAME = ".m2u-build.lock"
# Beside each shard, "<split>-NNNNNN_stats.json": its counts, status, size, SHA-256 and timings (as img2dataset).
SHARD_STATS_SUFFIX = "_stats.json"
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


# The outcome of one planned sample, as recorded in the manifest: the status vocabulary all per-file tools share.
Status = outcome.Status
# The statuses a manifest uses (NOT_MASKED is m2u-unmask's alone): the per-split and total counts hold these.
MANIFEST_STATUSES = tuple(s for s in Status if s is not Status.NOT_MASKED)


# The columns of the Parquet files, their types and meanings: the one place these facts live. The README's
# schema table is generated from it (tests/datasets/test_manifests.py checks they agree) and every column's meaning
# travels with the files as Parquet field metadata. (name, type, nullable, meaning, files that have it)
_MANIFEST = "manifest"
_SPLIT = "split"
COLUMNS: tuple[tuple[str, pa.DataType, bool, str, tuple[str, ...]], ...] = (
    (
        "key",
        pa.string(),
        False,
        "sample key, `[a-z0-9][a-z0-9_-]*`; the tar members' name prefix",
        (_MANIFEST, _SPLIT),
    ),
    (
        "split",
        pa.string(),
        False,
        "`train`, `val` or `test`; drawn for every input before it is read, so rows not `ok` carry one too "
        "(the samples of a split: `status` `ok` as well)",
        (_MANIFEST,),
    ),
    (
        "shard",
        pa.string(),
        True,
        "shard path relative to OUT (`train/train-000000.tar`); null when the sample was not written",
        (_MANIFEST, _SPLIT),
    ),
    ("source", pa.string(), False, "the input file as given (absolute path)", (_MANIFEST, _SPLIT)),
    (
        "source_sha256",
        pa.string(),
        True,
        "SHA-256 of the input file; null when it could not be read",
        (_MANIFEST,),
    ),
    ("identity", pa.string(), True, "the person's identity; null when unknown", (_MANIFEST, _SPLIT)),
    (
        "status",
        pa.string(),
        False,
        "`ok`, `no_face`, `refused` (faces found, every one refused by the placement checks) or `error`",
        (_MANIFEST,),
    ),
    (
        "reason",
        pa.string(),
        True,
        "why the sample was not written; null when `ok`, unless only the detector's low-threshold retry found "
        "the face (any status: a note saying so, as the face may be none)",
        (_MANIFEST,),
    ),
    (
        "mask_type",
        pa.string(),
        True,
        "the mask drawn (surgical, cloth, ...); null when none was",
        (_MANIFEST, _SPLIT),
    ),
    (
        "width",
        pa.int32(),
        True,
        "width of the input image in pixels; null when it could not be read",
        (_MANIFEST,),
    ),
    (
        "height",
        pa.int32(),
        True,
        "height of the input image in pixels; null when it could not be read",
        (_MANIFEST,),
    ),
    ("variant", pa.int32(), False, "mask variant of the input, 0 to `--variants` - 1", (_MANIFEST, _SPLIT)),
    ("seed", pa.int64(), False, "the sample's own seed (from `--seed` and the key)", (_MANIFEST, _SPLIT)),
    (
        "n_faces",
        pa.int32(),
        True,
        "faces found by the detection pass that found one (0: none); null when detection did not run",
        (_MANIFEST,),
    ),
)
SCHEMA_VERSION = "2"


def schema_markdown() -> str:
    """The README's table of the Parquet columns (tests/datasets/test_manifests.py keeps the README in step)."""
    lines = ["| column | type | in | meaning |", "|---|---|---|---|"]
    for name, dtype, nullable, meaning, tables in COLUMNS:
        kind = f"{dtype}{'' if nullable else ', never null'}"
        where = ", ".join("manifest" if t == _MANIFEST else "split" for t in tables)
        lines.append(f"| `{name}` | {kind} | {where} | {meaning} |")
    return "\n".join(lines)


def _schema(table: str) -> pa.Schema:
    fields = [
        pa.field(name, dtype, nullable=nullable, metadata={"description": meaning})
        for name, dtype, nullable, meaning, tables in COLUMNS
        if table in tables
    ]
    what = {
        _MANIFEST: "one row per planned sample (every input file, failures included)",
        _SPLIT: "the written samples of one split, in shard order",
    }[table]
    return pa.schema(
        fields, metadata={"m2u.table": table, "m2u.schema_version": SCHEMA_VERSION, "m2u.description": what}
    )


MANIFEST_SCHEMA = _schema(_MANIFEST)
# train.parquet, val.parquet, test.parquet: the samples of each split with their shard and key.
SPLIT_SCHEMA = _schema(_SPLIT)
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


def shard_stats_relpath(split: str, index: int) -> str:
    """The per-shard stats file beside the shard, relative to the dataset folder."""
    return f"{split}/{shard_name(split, index).removesuffix(SHARD_SUFFIX)}{SHARD_STATS_SUFFIX}"


def dataset_render_version(dataset: str | Path) -> int | None:
    """The mask engine version that drew a dataset folder's pairs, from its stats.json (m2u.masking.render's
    RENDER_VERSION; a dataset of the m2u engine from before render versions: 1; None: the synthetic engine)."""
    from m2u.masking.render import FIRST_RENDER_VERSION

    stats = json.loads((Path(dataset) / STATS_NAME).read_text())
    if "render_version" in stats:
        return stats["render_version"]
    return FIRST_RENDER_VERSION if stats.get("arguments", {}).get("mask_engine", "m2u") == "m2u" else None


def stats_path_of(shard_path: str | os.PathLike[str]) -> Path:
    """The stats JSON beside a shard (``train/train-000003.tar`` → ``train/train-000003_stats.json``)."""
    path = Path(shard_path)
    return path.with_name(path.name.removesuffix(SHARD_SUFFIX) + SHARD_STATS_SUFFIX)


def is_build_file(relative: PurePosixPath) -> bool:
    """Whether a file at `relative` (below a dataset folder) is one a build writes: the manifests and stats,
    the shards and their stats in the split folders, the build state. What else m2u writes there (an m2u-eval
    report put into a split folder) is not the build's to replace."""
    top = relative.parts[0]
    if top == STATE_DIR:
        return True
    if len(relative.parts) == 1:
        return top in {MANIFEST_NAME, STATS_NAME, *(split_manifest_name(split) for split in SPLITS)}
    if len(relative.parts) == 2 and top in SPLITS:
        index = rf"{top}-\d{{{SHARD_INDEX_DIGITS}}}"
        return (
            re.fullmatch(
                rf"{index}({re.escape(SHARD_SUFFIX)}|{re.escape(SHARD_STATS_SUFFIX)})", relative.name
            )
            is not None
        )
    return False


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file's content, or None when it is missing or unreadable."""
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def split_manifest_name(split: str) -> str:
    """``train.parquet``, ``val.parquet``, ``test.parquet``: the written samples of one split."""
    return f"{validate_split(split)}.parquet"


def split_shards(out_dir: str | os.PathLike[str], split: str) -> list[Path]:
    """The finished shards of one split, sorted by name (temporary files excluded)."""
    folder = Path(out_dir) / validate_split(split)
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^{split}-\d{{{SHARD_INDEX_DIGITS}}}{re.escape(SHARD_SUFFIX)}$")
    return sorted(p for p in folder.iterdir() if pattern.match(p.name))


def manifest_table(rows: Iterable[Mapping[str, Any]], sort: bool = True) -> pa.Table:
    """Build the manifest table from row dicts: checks columns and types, sorts by key (deterministic) unless
    ``sort=False``. Missing values are None (nulls in Parquet), never empty strings."""
    rows = sorted(rows, key=lambda row: row["key"]) if sort else list(rows)
    columns: dict[str, list[Any]] = {name: [] for name in MANIFEST_COLUMNS}
    for row in rows:
        missing = set(MANIFEST_COLUMNS) - set(row)
        if missing:
            raise ValueError(f"manifest row {row.get('key')!r} lacks columns {sorted(missing)}")
        status = row["status"]
        if Status(status).value != status:  # raises for unknown statuses
            raise ValueError(f"manifest row {row['key']!r}: bad status {status!r}")
        for name in MANIFEST_COLUMNS:
            value = row[name]
            columns[name].append(
                None if value == "" else report_text(value) if isinstance(value, str) else value
            )
    keys = columns["key"]
    if len(set(keys)) != len(keys):
        raise ValueError("manifest rows have duplicate keys")
    return pa.Table.from_pydict(columns, schema=MANIFEST_SCHEMA)


def split_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """A per-split manifest from manifest rows of one split, in the given (shard) order; only written samples."""
    names = SPLIT_SCHEMA.names
    written = [row for row in rows if row["status"] == Status.OK.value]
    return pa.Table.from_pydict({name: [row[name] for row in written] for name in names}, schema=SPLIT_SCHEMA)


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike[str]) -> None:
    """Write a Parquet file under a temporary name, then rename it: readers never see a partial file. A dataset's
    files are m2u's by name (`by_name`): a damaged manifest or marker is written again by a rerun."""
    path = Path(path)
    if _holds_table(path, table):
        # The same rows are there already: their bytes stay (a rerun on a finished dataset wrote them again, and
        # another m2u's column notes or pyarrow's version changed the manifest's SHA-256, by which m2u-train tells
        # the dataset on a resume).
        return
    # No statistics timestamps exist in Parquet; fixed compression keeps the bytes reproducible.
    atomic_write(
        path,
        lambda tmp: pq.write_table(table, arrow_path(tmp), compression="zstd", write_statistics=True),
        durable=True,
        by_name=True,
    )


def _holds_table(path: Path, table: pa.Table) -> bool:
    """Whether `path` is a Parquet file m2u may write (m2u.core.fileio) holding `table`'s rows and columns."""
    from m2u.core.fileio import replace_problem

    if not path.is_file() or replace_problem(path, by_name=True):
        return False
    try:
        kept = pq.read_table(arrow_path(path), schema=table.schema)
    except (OSError, ValueError, pa.ArrowException):
        return False
    return bool(kept.equals(table))


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
    return pq.read_table(arrow_path(path), schema=MANIFEST_SCHEMA).to_pandas()


FILE_SCHEME = "file://"


def is_url(text: str | os.PathLike[str]) -> bool:
    """A URL with a scheme fsspec handles (`s3://...`); `file://` and plain paths are local."""
    text = os.fspath(text)
    return "://" in text and not text.startswith(FILE_SCHEME)


def local_location(text: str | os.PathLike[str]) -> str:
    """`text` as a local path where it is a `file://` URL (`file:///data/ds` -> `/data/ds`, as fsspec reads it):
    read and written in place, with no copy; anything else unchanged. Every place that takes a dataset location
    calls it first (a `file://` text taken as a path made a folder named `file:`)."""
    text = os.fspath(text)
    if not text.startswith(FILE_SCHEME):
        return text
    path = text[len(FILE_SCHEME) :]
    return path[len("localhost") :] if path.startswith("localhost/") else path  # file://localhost/data/ds
