"""A synthetic paired dataset in exactly the layout ``m2u-make-dataset`` writes, with no face detector.

Each sample is a procedurally drawn face-like picture (a skin-coloured ellipse with eyes, brows, nose and mouth
on a gradient background) with 68 landmarks in the iBUG order, and a "mask" region over the lower face (a
polygon through the jaw and the nose bridge, or an ellipse) filled with a colour and an optional stripe pattern.
Outside the mask, masked and unmasked are identical by construction. Meant for fast tests and CI: 40 samples at
64 px take well under a second.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from m2u.core.fileio import remove_written
from m2u.datasets.codecs import DEFAULT_JPEG_QUALITY, ImageFormat
from m2u.datasets.layout import (
    DEFAULT_SPLIT_FRACTIONS,
    MANIFEST_NAME,
    SPLITS,
    STATS_NAME,
    Status,
    is_build_file,
    shard_name,
    shard_relpath,
    split_manifest_name,
)
from m2u.datasets.manifest import write_manifests_from_rows, write_shard_stats
from m2u.datasets.plan import InputItem, ShardOutput, group_by_shard, plan_samples
from m2u.datasets.shards import ShardWriter
from m2u.datasets.splits import parse_fractions
from m2u.datasets.writer import (
    count_rows,
    library_versions,
    manifest_row,
    sample_members,
    sample_metadata,
    write_stats,
)

SYNTHETIC_SOURCE_PREFIX = "synthetic://"
MASK_TYPES = ("synthetic-polygon", "synthetic-ellipse")
_LANDMARK_COUNT = 68
_FACES_PER_IDENTITY = 4


@dataclass(frozen=True)
class SyntheticFace:
    image: np.ndarray  # uint8 RGB (size, size, 3)
    landmarks: np.ndarray  # float32 (68, 2), iBUG order, pixel coordinates


@dataclass(frozen=True)
class SyntheticSample:
    unmasked: np.ndarray
    masked: np.ndarray
    mask: np.ndarray  # uint8 (size, size), 0/255
    landmarks: np.ndarray
    mask_meta: dict[str, Any]


def _arc(center, axes, start_deg: float, end_deg: float, n: int) -> np.ndarray:
    angles = np.deg2rad(np.linspace(start_deg, end_deg, n))
    return np.stack([center[0] + axes[0] * np.cos(angles), center[1] + axes[1] * np.sin(angles)], axis=1)


def draw_face(size: int, rng: np.random.Generator) -> SyntheticFace:
    """Draw one face-like picture with its 68 landmarks (image y grows downwards)."""
    if size < 16:
        raise ValueError(f"synthetic faces need size >= 16, got {size}")
    s = float(size)
    top = rng.uniform(40, 220, 3)
    bottom = rng.uniform(40, 220, 3)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    image = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (size, size, 3)).astype(np.uint8).copy()

    cx = s * (0.5 + rng.uniform(-0.04, 0.04))
    cy = s * (0.52 + rng.uniform(-0.03, 0.03))
    ax, ay = s * rng.uniform(0.27, 0.32), s * rng.uniform(0.36, 0.41)
    skin = np.array([rng.uniform(150, 235), rng.uniform(110, 190), rng.uniform(80, 160)])
    eye_y = cy - 0.12 * s
    eye_dx, eye_r = 0.12 * s, 0.045 * s
    mouth_y, mouth_w, mouth_h = cy + 0.2 * s, 0.11 * s, 0.035 * s

    landmarks = np.zeros((_LANDMARK_COUNT, 2), np.float64)

    landmarks[0:17] = _arc((cx, cy), (ax, ay), 170, 10, 17)
    landmarks[17:22] = _arc((cx - eye_dx, eye_y - 0.03 * s), (0.06 * s, 0.025 * s), 200, 340, 5)
    landmarks[22:27] = _arc((cx + eye_dx, eye_y - 0.03 * s), (0.06 * s, 0.025 * s), 200, 340, 5)
    landmarks[27:31] = np.stack([np.full(4, cx), np.linspace(eye_y, cy + 0.06 * s, 4)], axis=1)
    landmarks[31:36] = np.stack(
        [np.linspace(cx - 0.04 * s, cx + 0.04 * s, 5), np.full(5, cy + 0.09 * s)], axis=1
    )
    for start, ex in ((36, cx - eye_dx), (42, cx + eye_dx)):
        landmarks[start : start + 6] = _arc((ex, eye_y), (eye_r, eye_r * 0.5), 180, 540, 7)[:6]
    landmarks[48:60] = _arc((cx, mouth_y), (mouth_w, mouth_h), 180, 540, 13)[:12]
    landmarks[60:68] = _arc((cx, mouth_y), (mouth_w * 0.7, mouth_h * 0.4), 180, 540, 9)[:8]

    cv2.ellipse(
        image, (round(cx), round(cy)), (round(ax), round(ay)), 0, 0, 360, skin.tolist(), -1, cv2.LINE_AA
    )
    dark = (rng.uniform(20, 70, 3)).tolist()
    for start in (36, 42):
        cv2.fillPoly(image, [np.round(landmarks[start : start + 6]).astype(np.int32)], dark, cv2.LINE_AA)
    for start in (17, 22):
        cv2.polylines(
            image, [np.round(landmarks[start : start + 5]).astype(np.int32)], False, dark, 1, cv2.LINE_AA
        )
    cv2.polylines(image, [np.round(landmarks[27:31]).astype(np.int32)], False, (skin * 0.7).tolist(), 1)
    lips = (rng.uniform(140, 200), rng.uniform(50, 90), rng.uniform(60, 100))
    cv2.fillPoly(image, [np.round(landmarks[48:60]).astype(np.int32)], lips, cv2.LINE_AA)
    return SyntheticFace(image=image, landmarks=landmarks.astype(np.float32))


def draw_mask(face: SyntheticFace, rng: np.random.Generator) -> SyntheticSample:
    """Cover the lower face with a polygon or ellipse "mask"; pixels outside it are left untouched."""
    size = face.image.shape[0]
    lm = face.landmarks.astype(np.float64)
    mask = np.zeros((size, size), np.uint8)
    mask_type = MASK_TYPES[int(rng.integers(len(MASK_TYPES)))]
    if mask_type == "synthetic-polygon":
        # Jaw from ear to ear, closed over the nose bridge.
        outline = np.concatenate([lm[1:16], lm[28:29]])
        cv2.fillPoly(mask, [np.round(outline).astype(np.int32)], 255)
    else:
        center = (lm[8] + lm[28]) / 2
        axes = (np.linalg.norm(lm[2] - lm[14]) / 2, np.linalg.norm(lm[8] - lm[28]) / 2)
        cv2.ellipse(
            mask, tuple(np.round(center).astype(int)), tuple(np.round(axes).astype(int)), 0, 0, 360, 255, -1
        )
    colour = rng.integers(0, 256, 3).astype(np.uint8)
    cover = np.broadcast_to(colour, face.image.shape).copy()
    stripes = bool(rng.integers(2))
    if stripes:
        period = max(2, size // 16)
        rows = (np.arange(size) // period) % 2 == 1
        cover[rows] = (cover[rows].astype(np.int16) * 3 // 4).astype(np.uint8)
    covered = mask == 255
    masked = face.image.copy()
    masked[covered] = cover[covered]
    # The fields of the per-sample JSON's mask schema (m2u.datasets.writer.MASK_META_SCHEMA) this engine knows;
    # its anchors are the outline points the polygon runs through (jaw ends, nose bridge, jaw corners, chin).
    anchors = {name: lm[index].tolist() for name, index in zip("abcdef", (1, 28, 15, 4, 8, 12))}
    meta = {
        "type": mask_type,
        "template_source": "synthetic",
        "color": "#{:02x}{:02x}{:02x}".format(*(int(c) for c in colour)),
        "color_weight": 1.0,
        "pattern": "stripes" if stripes else "",
        "pattern_weight": 0.25 if stripes else 0.0,
        "anchors": anchors,
        "mask_pixels": int(np.count_nonzero(mask)),
    }
    return SyntheticSample(
        unmasked=face.image, masked=masked, mask=mask, landmarks=face.landmarks, mask_meta=meta
    )


def make_synthetic_sample(size: int, seed: int) -> SyntheticSample:
    """One synthetic pair; the same (size, seed) always gives the same arrays."""
    rng = np.random.default_rng(seed)
    return draw_mask(draw_face(size, rng), rng)


@dataclass(frozen=True)
class SyntheticDatasetInfo:
    out_dir: Path
    counts: dict[str, int]  # written samples per split
    shards: dict[str, list[Path]]


def write_synthetic_dataset(
    out_dir: str | os.PathLike[str],
    n_samples: int,
    size: int = 64,
    seed: int = 0,
    *,
    split: str | tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
    shard_size: int = 16,
    image_format: ImageFormat | str = ImageFormat.PNG,
    quality: int = DEFAULT_JPEG_QUALITY,
    overwrite: bool = False,
) -> SyntheticDatasetInfo:
    """Write ``n_samples`` synthetic pairs to ``out_dir`` in the layout of ``m2u-make-dataset``.

    Keys are ``synth-NNNNNN``, identities ``synth-id-NNNN`` (four faces each), sources ``synthetic://<key>``.
    The same arguments always give byte-identical shards and manifest.
    """
    # Every argument is checked before the folder is made: a refused call left a split folder that the corrected
    # retry then refused as "not empty".
    for name, value, least in (
        ("n_samples", n_samples, 1),
        ("size", size, 16),
        ("shard_size", shard_size, 1),
    ):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be a whole number, got {value!r}")
        if value < least:
            what = "synthetic faces need size" if name == "size" else name + " must be"
            raise ValueError(f"{what} >= {least}, got {value}")
    if not isinstance(quality, int) or isinstance(quality, bool) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be a whole number in 1..100, got {quality!r}")
    started = time.perf_counter()
    fractions = parse_fractions(split)
    fmt = ImageFormat(image_format)
    out = _empty_out_dir(Path(out_dir), overwrite)
    plan = plan_samples(_synthetic_items(n_samples), seed=seed, fractions=fractions, shard_size=shard_size)
    rows, shards = _write_synthetic_shards(out, plan, size, fmt, quality)
    write_manifests_from_rows(out, rows)
    counts = count_rows(rows)
    arguments = {
        "n_samples": n_samples,
        "size": size,
        "seed": seed,
        "split": list(fractions),
        "shard_size": shard_size,
        "image_format": fmt.value,
        "quality": quality,
    }
    write_stats(
        out,
        {
            "generator": "m2u.datasets.synthetic",
            "counts": counts,
            "arguments": arguments,
            "timings": {"total_s": round(time.perf_counter() - started, 3)},
            "versions": library_versions(),
        },
    )
    return SyntheticDatasetInfo(out_dir=out, counts=counts["samples"], shards=shards)


def _empty_out_dir(out: Path, overwrite: bool) -> Path:
    """`out`, created; a non-empty one only with `overwrite` (then the splits, manifests and stats m2u wrote there are removed; anything else there is refused)."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True to replace it")
        remove_written(
            out,
            (*SPLITS, *(split_manifest_name(s) for s in SPLITS), MANIFEST_NAME, STATS_NAME),
            ours=is_build_file,
            by_name=True,
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def _synthetic_items(n_samples: int) -> list[InputItem]:
    return [
        InputItem(
            base_key=f"synth-{i:06d}",
            source=f"{SYNTHETIC_SOURCE_PREFIX}synth-{i:06d}",
            identity=f"synth-id-{i // _FACES_PER_IDENTITY:04d}",
        )
        for i in range(n_samples)
    ]


def _write_synthetic_shards(
    out: Path, plan: list, size: int, fmt: ImageFormat, quality: int
) -> tuple[list[dict[str, Any]], dict[str, list[Path]]]:
    """Every planned sample drawn and written to its shard; (manifest rows, shard paths per split)."""
    rows = []
    shards: dict[str, list[Path]] = {s: [] for s in SPLITS}
    for (split_name, index), samples in group_by_shard(plan).items():
        shard_started = time.perf_counter()
        path = out / split_name / shard_name(split_name, index)
        shard_rows = []
        with ShardWriter(path) as writer:
            for planned in samples:
                sample = make_synthetic_sample(size, planned.seed)
                # Synthetic faces are drawn already aligned: the identity transform.
                meta = sample_metadata(planned, size, sample.landmarks, np.eye(2, 3), sample.mask_meta)
                writer.write(
                    planned.key,
                    sample_members(
                        masked=sample.masked,
                        unmasked=sample.unmasked,
                        mask=sample.mask,
                        meta=meta,
                        image_format=fmt,
                        quality=quality,
                    ),
                )
                shard_rows.append(
                    manifest_row(
                        planned,
                        shard=shard_relpath(split_name, index),
                        status=Status.OK.value,
                        mask_type=sample.mask_meta["type"],
                        width=size,
                        height=size,
                        n_faces=1,
                    )
                )
        output = ShardOutput(
            split=split_name,
            index=index,
            rows=shard_rows,
            bytes=writer.size,
            sha256=writer.sha256,
            process_s=round(time.perf_counter() - shard_started, 3),
            write_s=0.0,
            worker=f"{socket.gethostname()}:{os.getpid()}",
        )
        write_shard_stats(out, output, len(samples))
        rows.extend(shard_rows)
        shards[split_name].append(path)
    return rows, shards


__all__ = ["SyntheticDatasetInfo", "make_synthetic_sample", "write_synthetic_dataset"]


def synthetic_masker(
    image: np.ndarray, face: Any, seed: int, photo: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A stand-in for the masking engine with the build's masker signature: the synthetic polygon/ellipse mask
    drawn from ``face.landmarks``. Lets the build run (in tests, or before the engine exists) without templates.
    ``photo`` (where the photo lies in the crop) is not used: it draws on the crop as it is."""
    sample = draw_mask(
        SyntheticFace(image=image, landmarks=np.asarray(face.landmarks, np.float32)),
        np.random.default_rng(seed),
    )
    return sample.masked, sample.mask, sample.mask_meta
