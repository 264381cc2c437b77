"""A pack's side views on turned faces: how much of the face they cover against the pack's front template.

    .venv/bin/python benchmarks/pack_side_views.py [--photos 300]   # → benchmarks/results/pack_side_views.json

On the first `--photos` CelebA photos of ../shared/faces/celeba (sorted by name), each photo's largest face is kept
when it is turned enough to get a pack's side view (`Mesh.pose` left or right). Every type of MaskTheFace's pack
(../shared/mask-templates/maskthefacE) with side views is drawn on it with the face's m2u-mask seed (realism on),
the engine's checks off so that the side view itself is measured: once as the side view and once with the front
template forced on the same face, seed and top edge. Per type, over those faces:
- `area_ratio`: the side view's ground-truth mask pixels over the front template's (quartiles, lowest);
- `lower_face`: the share of the lower face's pixels (the hull of jaw landmarks 2-14, nose 29-35, mouth 48-67) in
  the mask, side view and front template (medians, and the lowest for the side view);
- `points`: the shares of the jaw (2-14), nose (29-35) and mouth (48-67) landmarks in the mask, side and front;
- `gaps`: masks with a hole (pixels the mask encloses but leaves out) and the most such pixels, side and front;
- with the checks on (as m2u-mask draws): side views drawn as such, drawn as the front template instead
  (`meta["fallback"]` "front template"), refused.
Measured twice in the same run: as m2u loads the pack now (a side view's outer anchors moved to the mask body's
edge, `m2u.masking.templates_pack.side_view_anchors`) and with the pack's anchors as written: the baseline. Skips
cleanly when ../shared is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CELEBA = SHARED / "faces" / "celeba"
PACK = SHARED / "mask-templates" / "maskthefacE" / "masks.cfg"
JAW, NOSE, MOUTH = list(range(2, 15)), list(range(29, 36)), list(range(48, 68))


def turned_faces(photos: list[Path]) -> list[tuple[str, np.ndarray, np.ndarray, str]]:
    """(name, image, 68 points, pose) of each photo whose largest face gets a side view."""
    from m2u.masking import DetectorConfig, FaceDetector, MaskingError, read_image
    from m2u.masking.geometry import build_mesh

    detector = FaceDetector(DetectorConfig())
    found = []
    for path in photos:
        image = read_image(path)
        faces = detector.detect(image)
        if not faces:
            continue
        try:
            pose = build_mesh(faces[0].landmarks).pose
        except MaskingError:
            continue
        if pose != "front":
            found.append((path.stem, image, faces[0].landmarks.astype(np.float64), pose))
    return found


def _covered(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    height, width = mask.shape
    pixels = np.round(points).astype(int)
    inside = (pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < height)
    covered = np.zeros(len(points), bool)
    covered[inside] = mask[pixels[inside, 1], pixels[inside, 0]] > 0
    return covered


def _hole_pixels(mask: np.ndarray) -> int:
    """Pixels outside the mask that no path outside it joins to the image's border: gaps inside the mask."""
    outside = np.pad((mask == 0).view(np.uint8), 1, constant_values=1)
    count, labels = cv2.connectedComponents(outside, connectivity=4)
    return int(np.count_nonzero((labels > 0) & (labels != labels[0, 0])))


def _quartiles(values: list[float]) -> list[float]:
    return [round(float(q), 3) for q in np.percentile(values, [25, 50, 75])] if values else []


def measure(faces: list, types: tuple[str, ...]) -> dict[str, dict]:
    import m2u.masking.render as render
    from m2u.masking import MaskConfig, MaskingError, apply_mask
    from m2u.masking.batch import face_seed

    draw = render._draw

    def front_only(*args):  # apply_mask's draw with the front template forced (its last argument, side_view)
        return draw(*args[:7], False)

    out = {}
    for kind in types:
        ratios, hull_side, hull_front, gaps, front_gaps = [], [], [], [], []
        points = {part: {"side": 0, "front": 0, "of": 0} for part in ("jaw", "nose", "mouth")}
        checked = {"side_view": 0, "front_template": 0, "refused": 0}
        for name, image, landmarks, _ in faces:
            seed = face_seed(0, Path(name), 0)
            unchecked = MaskConfig(mask_type=kind, pack=str(PACK), color="random", verify=False)
            try:
                side = apply_mask(image, landmarks, unchecked, seed)
                render._draw = front_only
                try:
                    front = apply_mask(image, landmarks, unchecked, seed)
                finally:
                    render._draw = draw
            except MaskingError:
                continue
            assert side.meta["template"] != front.meta["template"], "the face got no side view"
            ratios.append(side.meta["mask_pixels"] / max(front.meta["mask_pixels"], 1))
            hull = np.zeros(image.shape[:2], np.uint8)
            outline = cv2.convexHull(landmarks[JAW + NOSE + MOUTH].astype(np.float32)).astype(np.int32)
            cv2.fillConvexPoly(hull, outline, 1)
            inside = hull > 0
            hull_side.append(float(np.mean(side.mask[inside] > 0)))
            hull_front.append(float(np.mean(front.mask[inside] > 0)))
            for part, idx in (("jaw", JAW), ("nose", NOSE), ("mouth", MOUTH)):
                points[part]["side"] += int(_covered(side.mask, landmarks[idx]).sum())
                points[part]["front"] += int(_covered(front.mask, landmarks[idx]).sum())
                points[part]["of"] += len(idx)
            gaps.append(_hole_pixels(side.mask))
            front_gaps.append(_hole_pixels(front.mask))
            try:
                result = apply_mask(
                    image, landmarks, MaskConfig(mask_type=kind, pack=str(PACK), color="random"), seed
                )
            except MaskingError:
                checked["refused"] += 1
                continue
            checked[
                "front_template" if "front template" in (result.meta["fallback"] or "") else "side_view"
            ] += 1
        out[kind] = {
            "faces": len(ratios),
            "area_ratio_quartiles": _quartiles(ratios),
            "area_ratio_lowest": round(min(ratios), 3) if ratios else None,
            "lower_face_median": {"side": _quartiles(hull_side)[1:2], "front": _quartiles(hull_front)[1:2]},
            "lower_face_side_lowest": round(min(hull_side), 3) if hull_side else None,
            "points_covered": {
                part: {view: round(c[view] / max(c["of"], 1), 3) for view in ("side", "front")}
                for part, c in points.items()
            },
            "masks_with_gaps": sum(g > 0 for g in gaps),
            "most_gap_pixels": max(gaps, default=0),
            "front_masks_with_gaps": sum(g > 0 for g in front_gaps),
            "front_most_gap_pixels": max(front_gaps, default=0),
            "checked": checked,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pack_side_views.json")
    args = parser.parse_args()
    if not CELEBA.is_dir() or not PACK.is_file():
        print(f"skipped: {CELEBA} or {PACK} is absent")
        return 0
    import m2u.masking.shading as shading
    import m2u.masking.templates_pack as templates_pack

    started = time.perf_counter()
    pack = templates_pack.load_template_pack(PACK)
    types = tuple(n for n in pack.names if f"{n}_left" in pack.templates and f"{n}_right" in pack.templates)
    faces = turned_faces(sorted(CELEBA.glob("*.jpg"))[: args.photos])
    now = measure(faces, types)
    move = templates_pack.side_view_anchors
    templates_pack.side_view_anchors = lambda anchors, alpha: anchors  # the baseline: the anchors as written
    templates_pack._load_pack_cached.cache_clear()
    shading._TEXTURES.clear()  # the first pass's textures (each entry holds its template) go
    try:
        baseline = measure(faces, types)
    finally:
        templates_pack.side_view_anchors = move
        templates_pack._load_pack_cached.cache_clear()
        shading._TEXTURES.clear()
    result = {
        "photos": args.photos,
        "turned_faces": len(faces),
        "poses": {pose: sum(f[3] == pose for f in faces) for pose in ("left", "right")},
        "now": now,
        "baseline_anchors_as_written": baseline,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"{len(faces)} of {args.photos} photos' largest faces get a side view; now (baseline)")
    print(f"{'type':>15} {'area side/front q25/50/75':>34} {'lower face side|front':>24} "
          f"{'mouth pts side':>15} {'jaw pts side|front':>22} {'gaps side|front':>16} {'front fallback':>15}")  # fmt: skip
    for kind in types:
        a, b = now[kind], baseline[kind]
        print(
            f"{kind:>15} {'/'.join(f'{q:.2f}' for q in a['area_ratio_quartiles']):>15} "
            f"({'/'.join(f'{q:.2f}' for q in b['area_ratio_quartiles'])}) "
            f"{a['lower_face_median']['side'][0]:>8.2f} ({b['lower_face_median']['side'][0]:.2f})"
            f"|{a['lower_face_median']['front'][0]:.2f} "
            f"{a['points_covered']['mouth']['side']:>8.2f} ({b['points_covered']['mouth']['side']:.2f}) "
            f"{a['points_covered']['jaw']['side']:>8.2f} ({b['points_covered']['jaw']['side']:.2f})"
            f"|{a['points_covered']['jaw']['front']:.2f} "
            f"{a['masks_with_gaps']:>3} ({b['masks_with_gaps']})|{a['front_masks_with_gaps']} "
            f"{a['checked']['front_template']:>4} ({b['checked']['front_template']}) of {a['faces']}"
        )
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
