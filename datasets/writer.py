"""Turning one finished sample into shard members, and writing the dataset-level files (stats.json).

Shared by the real build and the synthetic writer, so both produce the same on-disk layout.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from m2u.core.fileio import atomic_write_text
from m2u.core.fileio import library_versions as versions_of
from m2u.datasets.codecs import ImageFormat, encode_image, encode_mask
from m2u.datasets.layout import (
    MANIFEST_STATUSES,
    MASK_FIELD,
    MASKED_FIELD,
    META_FIELD,
    SPLITS,
    STATS_NAME,
    UNMASKED_FIELD,
    Status,
)

LANDMARK_DECIMALS = 3  # JSON floats are rounded so the metadata bytes are stable


def dumps_json(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces): the same object always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def round_array(array: np.ndarray, decimals: int = LANDMARK_DECIMALS) -> list:
    return np.round(np.asarray(array, dtype=np.float64), decimals).tolist()


# The `mask` object of every sample's JSON: each field always present with one JSON type (HuggingFace `datasets`
# infers a dataset's schema from its first rows, so a field that is null there and a string later breaks
# `load_dataset`). Strings are "" when a value does not apply (no colour, no pattern, no fallback); numbers
# declared float are always written as floats; point lists hold [float, float] pairs.
MASK_META_SCHEMA: dict[str, str] = {
    "type": "str",
    "template": "str",
    "template_source": "str",
    "color": "str",  # "#rrggbb", or "" when the template keeps its own colours
    "color_weight": "float",
    "pattern": "str",  # a pattern name or image file, or ""
    "pattern_weight": "float",
    "anchors": "anchors",  # {"a": [x, y], ..., "f": [x, y]}: the six MaskTheFace anchor points, crop pixels
    "landmarks": "points",  # the 68 landmarks the mask was placed from, crop pixels
    "pose": "str",  # "front", "left" or "right"
    "yaw": "float",
    "roll_degrees": "float",
    "fallback": "str",  # the mesh fallback that produced the mask, or ""
    "mask_pixels": "int",
    "seed": "int",
    "placement": "str",  # the placement configuration as canonical JSON, or "" for engines without one
    # Fields an engine gives beyond this schema, as canonical JSON ("" when none): kept, not dropped, without
    # breaking the schema; give a field its own typed entry here once it matters.
    "extra": "str",
}
ANCHOR_KEYS = ("a", "b", "c", "d", "e", "f")
# What a masking engine may leave out (its value then is this); every other field it must give.
_MASK_META_DEFAULTS: dict[str, Any] = {
    "color": "",
    "color_weight": 0.0,
    "pattern": "",
    "pattern_weight": 0.0,
    "pose": "front",
    "yaw": 0.0,
    "roll_degrees": 0.0,
    "fallback": "",
    "placement": "",
}


def _points(value: Any, where: str) -> list[list[float]]:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(
            f"mask metadata field {where!r} must be a list of [x, y] points, got shape {array.shape}"
        )
    return round_array(array)


def _plain(value: Any) -> Any:
    """JSON-able copy (numpy scalars and arrays as Python numbers and lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _color_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    r, g, b = (int(c) for c in value)  # an (r, g, b) triple of 0..255
    return f"#{r:02x}{g:02x}{b:02x}"


def mask_metadata(mask_meta: Mapping[str, Any], landmarks: np.ndarray, seed: int) -> dict[str, Any]:
    """A masking engine's meta brought to MASK_META_SCHEMA: every field present, one type each; fields outside
    the schema go, as canonical JSON, into `extra`. Raises ValueError for a required field that is missing."""
    if "extra" in mask_meta:
        raise ValueError("mask metadata may not set 'extra' itself: it holds the fields outside the schema")
    unknown = {k: v for k, v in mask_meta.items() if k not in MASK_META_SCHEMA}
    known = {k: v for k, v in mask_meta.items() if k in MASK_META_SCHEMA}
    extra = dumps_json(_plain(unknown)).decode("ascii") if unknown else ""
    given = {**_MASK_META_DEFAULTS, "landmarks": landmarks, "seed": seed, **known, "extra": extra}
    given.setdefault("template", given.get("type", ""))
    given.setdefault("template_source", "")
    missing = [name for name in MASK_META_SCHEMA if name not in given]
    if missing:
        raise ValueError(f"mask metadata lacks required field(s): {', '.join(missing)}")
    out: dict[str, Any] = {}
    for name, kind in MASK_META_SCHEMA.items():
        value = given[name]
        if kind == "str":
            if name == "color":
                value = _color_text(value)
            elif name == "placement" and isinstance(value, Mapping):
                value = dumps_json(dict(value)).decode("ascii")
            out[name] = "" if value is None else str(value)
        elif kind == "float":
            out[name] = float(value)
        elif kind == "int":
            out[name] = int(value)
        elif kind == "points":
            out[name] = _points(value, name)
        else:  # anchors
            if set(value) != set(ANCHOR_KEYS):
                raise ValueError(
                    f"mask metadata 'anchors' must name {', '.join(ANCHOR_KEYS)}, got {sorted(value)}"
                )
            out[name] = {k: [round(float(c), LANDMARK_DECIMALS) for c in value[k]] for k in ANCHOR_KEYS}
    return out


def sample_metadata(
    planned: Any, size: int, landmarks: np.ndarray, align_matrix: np.ndarray, mask_meta: Mapping[str, Any]
) -> dict[str, Any]:
    """The `<key>.json` member: where the sample came from, its landmarks after alignment, and the mask's meta
    (in MASK_META_SCHEMA). The one builder of the per-sample JSON, used by the real build and the synthetic
    writer alike; every field is always present with one type."""
    return {
        "key": str(planned.key),
        "source": str(planned.source),
        "identity": str(planned.identity or ""),
        "split": str(planned.split),
        "seed": int(planned.seed),
        "variant": int(planned.variant),
        "size": int(size),
        "landmarks": _points(landmarks, "landmarks"),
        "align_matrix": round_array(align_matrix, 6),
        "mask": mask_metadata(mask_meta, landmarks, int(planned.seed)),
    }


def manifest_row(planned: Any, **values: Any) -> dict[str, Any]:
    """The manifest row of one planned sample (m2u.datasets.layout.MANIFEST_SCHEMA): an error row whose unknown
    values are nulls unless ``values`` say otherwise (``status``, ``reason``, ``shard``, ``width``, ...)."""
    row = {
        "key": planned.key,
        "split": planned.split,
        "shard": None,
        "source": planned.source,
        "source_sha256": None,
        "identity": planned.identity or None,
        "status": Status.ERROR.value,
        "reason": None,
        "mask_type": None,
        "width": None,
        "height": None,
        "variant": planned.variant,
        "seed": planned.seed,
        "n_faces": None,
    }
    unknown = set(values) - set(row)
    if unknown:
        raise ValueError(f"not manifest columns: {sorted(unknown)}")
    row.update(values)
    return row


def sample_members(
    *,
    masked: np.ndarray,
    unmasked: np.ndarray,
    mask: np.ndarray,
    meta: Mapping[str, Any],
    image_format: ImageFormat | str,
    quality: int,
) -> dict[str, bytes]:
    """The tar members of one sample (field name → bytes). ``mask`` is uint8 (H, W) with values 0/255."""
    if masked.shape != unmasked.shape or masked.shape[:2] != mask.shape:
        raise ValueError(f"pair members differ in size: {masked.shape}, {unmasked.shape}, {mask.shape}")
    if not np.isin(mask, (0, 255)).all():
        raise ValueError("mask values must be 0 or 255")
    fmt = ImageFormat(image_format)
    return {
        f"{MASKED_FIELD}.{fmt.value}": encode_image(masked, fmt, quality),
        f"{UNMASKED_FIELD}.{fmt.value}": encode_image(unmasked, fmt, quality),
        MASK_FIELD: encode_mask(mask),
        META_FIELD: dumps_json(dict(meta)),
    }


def count_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts per split and status, and per split of written (ok) samples."""
    by_split: dict[str, dict[str, int]] = {split: {s.value: 0 for s in MANIFEST_STATUSES} for split in SPLITS}
    totals = {s.value: 0 for s in MANIFEST_STATUSES}
    for row in rows:
        by_split[row["split"]][row["status"]] += 1
        totals[row["status"]] += 1
    return {
        "samples": {split: by_split[split][Status.OK.value] for split in SPLITS},
        "by_split_and_status": by_split,
        "by_status": totals,
    }


def describe_counts(counts: Mapping[str, Any]) -> str:
    """`count_rows`'s counts as the build's summary says them (m2u-make-dataset, m2u-pipeline's dataset stage)."""
    samples = counts["samples"]
    return (
        f"train {samples['train']}, val {samples['val']}, test {samples['test']} pairs; "
        f"{describe_failures(counts['by_status'])}"
    )


def describe_failures(statuses: Mapping[str, int]) -> str:
    """The samples not written, by status, as every build summary says them (a partition's too)."""
    return (
        f"{statuses['no_face']} without a face, {statuses.get('refused', 0)} refused by the masking checks, "
        f"{statuses['error']} errors"
    )


# The libraries whose versions a dataset's stats.json records (m2u.core.fileio.library_versions).
VERSIONED_LIBRARIES = (
    "m2u",
    "numpy",
    "opencv-python-headless",
    "pillow",
    "dlib-bin",
    "webdataset",
    "pyarrow",
    "torch",
)


def library_versions() -> dict[str, str]:
    return versions_of(VERSIONED_LIBRARIES)


def write_stats(out_dir: str | os.PathLike[str], stats: Mapping[str, Any]) -> Path:
    """Write ``stats.json`` atomically (human-readable, indented)."""
    path = Path(out_dir) / STATS_NAME
    return atomic_write_text(path, json.dumps(stats, indent=2, sort_keys=True) + "\n", by_name=True)
