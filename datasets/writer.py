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

from m2u.datasets.codecs import ImageFormat, encode_image, encode_mask
from m2u.datasets.layout import (
    MASK_FIELD,
    MASKED_FIELD,
    META_FIELD,
    SPLITS,
    STATS_NAME,
    UNMASKED_FIELD,
    Status,
)
from m2u.masking.fileio import atomic_write_text
from m2u.masking.fileio import library_versions as versions_of

LANDMARK_DECIMALS = 3  # JSON floats are rounded so the metadata bytes are stable


def dumps_json(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces): the same object always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def round_array(array: np.ndarray, decimals: int = LANDMARK_DECIMALS) -> list:
    return np.round(np.asarray(array, dtype=np.float64), decimals).tolist()


def sample_metadata(
    planned: Any, size: int, landmarks: np.ndarray, align_matrix: np.ndarray, mask_meta: Mapping[str, Any]
) -> dict[str, Any]:
    """The `<key>.json` member: where the sample came from, its landmarks after alignment, and the mask's meta."""
    return {
        "key": planned.key,
        "source": planned.source,
        "identity": planned.identity,
        "split": planned.split,
        "seed": planned.seed,
        "variant": planned.variant,
        "size": size,
        "landmarks": round_array(landmarks),
        "align_matrix": round_array(align_matrix, 6),
        "mask": mask_meta,
    }


def manifest_row(planned: Any, **values: Any) -> dict[str, Any]:
    """The manifest row of one planned sample (m2u.datasets.layout.MANIFEST_SCHEMA): an error row with empty
    fields unless ``values`` say otherwise (``status``, ``reason``, ``shard``, ``width``, ...)."""
    row = {
        "key": planned.key,
        "split": planned.split,
        "shard": "",
        "source": planned.source,
        "source_sha256": "",
        "identity": planned.identity,
        "status": Status.ERROR.value,
        "reason": "",
        "mask_type": "",
        "width": 0,
        "height": 0,
        "variant": planned.variant,
        "seed": planned.seed,
        "n_faces": 0,
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
    by_split: dict[str, dict[str, int]] = {split: {s.value: 0 for s in Status} for split in SPLITS}
    totals = {s.value: 0 for s in Status}
    for row in rows:
        by_split[row["split"]][row["status"]] += 1
        totals[row["status"]] += 1
    return {
        "samples": {split: by_split[split][Status.OK.value] for split in SPLITS},
        "by_split_and_status": by_split,
        "by_status": totals,
    }


# The libraries whose versions a dataset's stats.json records (m2u.masking.fileio.library_versions).
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
    return atomic_write_text(path, json.dumps(stats, indent=2, sort_keys=True) + "\n")
