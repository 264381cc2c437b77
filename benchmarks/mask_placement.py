"""Where m2u's synthetic masks sit on the face, against real masks (issue 23, item 3: masks that look like real ones).

    .venv/bin/python benchmarks/mask_placement.py             # → benchmarks/results/mask_placement.json

Real: the hand-drawn labels of ../shared/faces/real-mask-seg (102 masked crops; read by m2u-eval's `read_label`).
Synthetic: m2u's masks on the first --faces CelebA photos of ../shared/faces/celeba with the dataset's default mask
options, each face's own seed, drawn with PlacementConfig's defaults, with those of render version 2
(`VERSION_2_PLACEMENT`: no per-face height) and with those of render version 1 (`EARLIER_PLACEMENT`). Both are measured the same way, from the masked image alone: BlazeFace's eye, nose-tip and
mouth keypoints on it give a face frame (origin between the eyes, x along the eyes, unit = the eye distance; the
landmarks m2u places masks with play no part), and in that frame, on the mask with its ear loops and slivers opened
away (a disc of 6 % of the image side, the largest piece kept):
- `top_midline`: how far below the eye line the mask's top edge is at the nose (a band 0.1 wide);
- `top_cheeks`: the same under the eye centres (x = -0.5 and 0.5, averaged);
- `width_at_nose`, `width_at_mouth`: the mask's width at the height of the nose-tip and mouth keypoints.
Quartiles over near-frontal faces (the nose keypoint within 0.15 eye distances of the eyes' midpoint, sideways);
the real labels' quartiles are what the defaults were chosen to meet (version 2: the medians; version 3 also the
spread). Skips cleanly when ../shared is absent.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "faces"
FRONTAL = 0.15  # |nose keypoint - eye midpoint| sideways, eye distances
MEASURES = ("top_midline", "top_cheeks", "width_at_nose", "width_at_mouth")
# PlacementConfig's defaults up to render version 1 (m2u.masking.render.RENDER_VERSION).
EARLIER_PLACEMENT = {
    "jaw_margin": 0.07,
    "bridge_fraction": 0.42,
    "eye_clearance": 0.16,
    "top_drop": 0.06,
    "height_spread": (0.0, 0.0),
}
# PlacementConfig's defaults of render version 2 (no per-face shift of the top edge).
VERSION_2_PLACEMENT = {"bridge_fraction": 0.2, "eye_clearance": 0.06, "height_spread": (0.0, 0.0)}


def frame_measures(mask: np.ndarray, keypoints: np.ndarray) -> dict[str, float] | None:
    """The measures of a bool (H, W) mask in the face frame of BlazeFace keypoints, or None (too small a face)."""
    left_eye, right_eye, nose, mouth = (keypoints[i].astype(np.float64) for i in range(4))
    eyes = (left_eye + right_eye) / 2
    distance = float(np.hypot(*(right_eye - left_eye)))
    ys, xs = np.nonzero(mask)
    if distance < 8 or len(xs) < 20:
        return None
    ex = (right_eye - left_eye) / distance
    ey = np.array([-ex[1], ex[0]])
    points = np.stack([xs, ys], axis=1) - eyes
    u, v = points @ ex / distance, points @ ey / distance
    nose_u, nose_v = (nose - eyes) @ ex / distance, (nose - eyes) @ ey / distance
    mouth_v = (mouth - eyes) @ ey / distance

    def top(centre: float, half_width: float) -> float:
        band = np.abs(u - centre) < half_width
        return float(v[band].min()) if band.sum() >= 3 else float("nan")

    def width(height: float) -> float:
        band = np.abs(v - height) < 0.05
        return float(u[band].max() - u[band].min()) if band.sum() >= 3 else float("nan")

    midline = top(nose_u, 0.1)
    if not np.isfinite(midline):
        return None
    return {
        "sideways": float(nose_u),
        "top_midline": midline,
        "top_cheeks": float(np.nanmean([top(-0.5, 0.08), top(0.5, 0.08)])),
        "width_at_nose": width(nose_v),
        "width_at_mouth": width(mouth_v),
    }


def mask_body(mask: np.ndarray) -> np.ndarray:
    """The mask without ear loops and slivers: opened by a disc of 6 % of the image side, largest piece kept."""
    radius = max(1, round(0.03 * max(mask.shape)))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    opened = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, disc)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(opened)
    if count <= 1:
        return opened > 0
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def keypoints_of(image: np.ndarray) -> np.ndarray | None:
    """BlazeFace's keypoints of the best face (the short-range model, then the full-range one, with a border: the
    crops are tight)."""
    from m2u.masking.blazeface import blazeface_detect

    for model in ("short", "full"):
        found = blazeface_detect(image, model, 0.5, pad=0.25)
        if found:
            return found[0].keypoints
    return None


def real_rows(folder: Path) -> list[dict]:
    from m2u.core.imageio import read_image
    from m2u.evaluation.real_masks import read_label

    rows = []
    for path in sorted((folder / "image").glob("*.jpg")):
        label_path = folder / "mask" / path.name
        if not label_path.is_file():
            continue
        image = read_image(path)
        keypoints = keypoints_of(image)
        measured = (
            None
            if keypoints is None
            else frame_measures(mask_body(read_label(label_path, image.shape[:2])), keypoints)
        )
        if measured:
            rows.append({"name": path.name, **measured})
    return rows


def synthetic_rows(folder: Path, count: int, placement: dict | None) -> list[dict]:
    from m2u.core.imageio import read_image
    from m2u.datasets.config import BuildConfig
    from m2u.masking import DetectorConfig, FaceDetector, MaskConfig, MaskingError, apply_mask

    detector = FaceDetector(DetectorConfig())
    options = dict(BuildConfig().mask_options)
    if placement is not None:
        options["placement"] = placement
    config = MaskConfig(**options)
    rows = []
    for seed, path in enumerate(sorted(folder.glob("*.jpg"))[:count]):
        image = read_image(path)
        faces = detector.detect(image, largest_only=True)
        if not faces:
            continue
        try:
            result = apply_mask(image, faces[0], config, seed=seed)
        except MaskingError:
            continue
        keypoints = keypoints_of(result.image)
        measured = None if keypoints is None else frame_measures(mask_body(result.mask > 0), keypoints)
        if measured:
            rows.append({"name": path.name, "type": result.meta["type"], **measured})
    return rows


def quartiles(rows: list[dict]) -> dict:
    frontal = [r for r in rows if abs(r["sideways"]) < FRONTAL]
    out: dict = {"faces_measured": len(rows), "near_frontal": len(frontal)}
    for name in MEASURES:
        values = np.array([r[name] for r in frontal], np.float64)
        values = values[np.isfinite(values)]
        out[name] = [round(float(np.percentile(values, q)), 3) for q in (25, 50, 75)] if len(values) else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared faces folder")
    parser.add_argument("--faces", type=int, default=600, help="CelebA photos to mask")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "mask_placement.json")
    args = parser.parse_args()
    labelled, celeba = args.shared / "real-mask-seg", args.shared / "celeba"
    if not (labelled / "mask").is_dir() or not celeba.is_dir():
        print(f"skipped: no real-mask-seg labels or CelebA photos under {args.shared}")
        return
    from m2u.masking.geometry import PlacementConfig
    from m2u.masking.render import RENDER_VERSION

    started = time.perf_counter()
    figures = {
        "protocol": __doc__.split("\n\n", 2)[2].strip(),
        "render_version": RENDER_VERSION,
        "placement_defaults": {k: getattr(PlacementConfig(), k) for k in EARLIER_PLACEMENT},
        "earlier_placement_defaults": EARLIER_PLACEMENT,
        "real_labels": quartiles(real_rows(labelled)),
        "synthetic_defaults": quartiles(synthetic_rows(celeba, args.faces, None)),
        "synthetic_version_2": quartiles(synthetic_rows(celeba, args.faces, VERSION_2_PLACEMENT)),
        "synthetic_earlier_defaults": quartiles(synthetic_rows(celeba, args.faces, EARLIER_PLACEMENT)),
    }
    figures["seconds"] = round(time.perf_counter() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"quartiles over near-frontal faces, eye distances ({args.json}):")
    for key in ("real_labels", "synthetic_defaults", "synthetic_version_2", "synthetic_earlier_defaults"):
        row = figures[key]
        print(
            f"  {key:27s} n={row['near_frontal']:3d}  "
            + "  ".join(f"{m} {'/'.join(f'{q:.3f}' for q in row[m])}" for m in MEASURES)
        )


if __name__ == "__main__":
    main()
