"""Finding and aligning masked faces for m2u-unmask: detection rate per mask type, false positives, alignment error
and per-face time. Prints the figures and writes benchmarks/results/unmask.json.

    .venv/bin/python benchmarks/unmask.py [--faces 300] [--shared ../shared]
    .venv/bin/python benchmarks/unmask.py --quick      # 24 photos, 3 candidates, 8 faceless images: a smoke run

The evaluation set: CelebA photos (`{identity}_{imageid}.jpg`) whose identity falls in the test split of the hash
split by identity with seed 0 (`m2u.datasets.splits.assign_split`), every k-th of them in name order, in three equal
groups masked by `m2u-mask --mask-type random --seed 0` with the templates' own colours, with `--color random`, and
with `--pattern random` (so every type, colour and pattern occurs). Ground truth per masked face: its box and the
68 landmarks m2u-mask placed the mask from (detected on the unmasked photo), from m2u-mask's JSON.

Detection: each dlib detector (HOG at upsample 0/1/2, the CNN (mmod) at upsample 0/1) runs once per image at a low
threshold; single passes at a given threshold and cascades (a stage of passes, detections merged, runs only when
the stages before it found nothing) are read off those runs, with the CPU time (time.process_time) of the runs a cascade needed. A face counts
as found when a detection overlaps its box with IoU >= 0.3. False positives: detections that match no face on the
masked photos, and every detection on photos without faces (`faceless_images`: scikit-image's sample images without
people and face-free regions of its photos of people, blurred noise and synthetic textures, 57 images since issue 23
(33 before, with the dogs photo: the figures in results/unmask.json are from that set); plus dlib's photo of dogs). The shipped cascade (`MASKED_CASCADE`) is then run for real
(`MaskedFaceDetector`, 68 landmarks included) for its own rate, per-face CPU time and the faces it reports on the
group photos of ../shared/faces/extras/dlib-examples (no ground truth there: counts only).

Alignment: for every face the shipped cascade finds, the crop transform from the masked photo's landmarks (as
m2u-unmask computes it: "visible" = eye centres and the mouth centre placed from them by expected_mouth;
"landmarks" = the 68-point mouth) against the transform from the unmasked original's landmarks: the offset of the
true eye centres and mouth centre between the two crops, in pixels of a 256 px crop (mean and 95th percentile).

Throughput: m2u-unmask's whole per-face path (detection, alignment, M-Seg and CARU2-Net at their default sizes with
untrained weights, paste-back) on a few masked photos, CPU time per face on this machine.

Many faces (`--many-faces-only` runs only this, into the JSON's "many_faces" key): the shipped model on a photo of
16 synthetic faces at known places (detection left out: its per-face cost is the cascade's figure above), one intra-op
thread, CPU time per face in interleaved rounds for one face per forward pass in fp32, all the photo's faces in one
fp32 pass (m2u-unmask before issue 28), and m2u-unmask's default (passes of up to 16, `precision="auto"`); and
bf16 autocast against fp32 for M-Seg + generator at batch 1, 2, 4, 8 and 16 (the measurement behind
`BF16_MIN_BATCH`), with the CPU's flags. The per-face time is the whole path's (the decision's classifiers, M-Seg,
the generator, GrabCut's refinement of each restored face's mask, paste-back) divided by every face; "faces_restored"
says how many of them each setup restored.

Orientation (`--orientation-only` runs only this, into the JSON's "orientation" key at --offset 0, the selection the
margin was chosen on, or "orientation_held_out" otherwise): the shipped cascade on every masked photo as it is and
turned 180 degrees; faces refused as upside down (Face.problem) upright are false refusals, faces found turned and
not refused would be restored upside down; every unrefused detection on the turned photos is counted as well.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from m2u.core.boxes import box_iou

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CROP = 256
IOU_MATCH = 0.3
RUNS = {
    "hog0": ("hog", 0),
    "hog1": ("hog", 1),
    "hog2": ("hog", 2),
    "mhog0": ("mhog", 0),
    "mhog1": ("mhog", 1),
    "cnn0": ("cnn", 0),
    "cnn1": ("cnn", 1),
}
LOW_THRESHOLD = -1.0
# Single passes and cascades read off the runs: name -> stages, each a list of (run, threshold); the first stage
# with any detection gives the result, its passes' detections merged (as MaskedFaceDetector does). "hog" is dlib's
# frontal detector, "mhog" the masked-face HOG (MASKED_HOG_MODEL), "cnn" dlib's mmod CNN.
CANDIDATES: dict[str, list[list[tuple[str, float]]]] = {
    "hog upsample 0": [[("hog0", 0.0)]],
    "hog upsample 1": [[("hog1", 0.0)]],
    "hog upsample 2": [[("hog2", 0.0)]],
    "hog upsample 0, threshold -0.4": [[("hog0", -0.4)]],
    "hog upsample 1, threshold -0.8": [[("hog1", -0.8)]],
    "cnn upsample 0": [[("cnn0", 0.0)]],
    "cnn upsample 1": [[("cnn1", 0.0)]],
    "mhog upsample 0": [[("mhog0", 0.0)]],
    "mhog upsample 0, threshold -0.2": [[("mhog0", -0.2)]],
    "mhog upsample 1": [[("mhog1", 0.0)]],
    "m2u-mask ladder: hog0 > hog0@-0.4 > hog1": [[("hog0", 0.0)], [("hog0", -0.4)], [("hog1", 0.0)]],
    "m2u-mask ladder > cnn0": [[("hog0", 0.0)], [("hog0", -0.4)], [("hog1", 0.0)], [("cnn0", 0.0)]],
    "hog0 > cnn1": [[("hog0", 0.0)], [("cnn1", 0.0)]],
    "hog0 > hog0@-0.4 > hog1@-0.4 > cnn1": [
        [("hog0", 0.0)],
        [("hog0", -0.4)],
        [("hog1", -0.4)],
        [("cnn1", 0.0)],
    ],
    "hog0+mhog0": [[("hog0", 0.0), ("mhog0", 0.0)]],
    "hog0+mhog0 > hog1+mhog1 > cnn1": [
        [("hog0", 0.0), ("mhog0", 0.0)],
        [("hog1", 0.0), ("mhog1", 0.0)],
        [("cnn1", 0.0)],
    ],
    "shipped: hog0+mhog0 > hog0@-0.4+mhog0@-0.2 > hog1+mhog1 > cnn1": [
        [("hog0", 0.0), ("mhog0", 0.0)],
        [("hog0", -0.4), ("mhog0", -0.2)],
        [("hog1", 0.0), ("mhog1", 0.0)],
        [("cnn1", 0.0)],
    ],
}
# --quick (a smoke run): these candidates only (HOG passes and the shipped cascade, whose CNN stage runs only where
# the HOG stages find nothing), every QUICK_FACELESS_STEP-th faceless image, the first dlib example photo and 2
# photos for the pipeline timing.
QUICK_CANDIDATES = (
    "hog upsample 0",
    "mhog upsample 0",
    "shipped: hog0+mhog0 > hog0@-0.4+mhog0@-0.2 > hog1+mhog1 > cnn1",
)
QUICK_FACELESS_STEP = 8
QUICK_PIPELINE_PHOTOS = 2
FACELESS_SKIMAGE = (
    "brick", "grass", "gravel", "moon", "page", "text", "horse", "hubble_deep_field", "immunohistochemistry",
    "retina", "coins", "clock", "logo", "checkerboard", "colorwheel", "chelsea", "coffee", "rocket",
    "cell", "binary_blobs", "shepp_logan_phantom", "microaneurysms",
)  # fmt: skip
# scikit-image draws binary_blobs at random unless given a seed: seeded, every run measures the same image.
FACELESS_ARGS = {"binary_blobs": {"rng": 0}}


def quick_candidates() -> list[tuple[str, list[list[tuple[str, float]]]]]:
    """The candidates --quick scores (QUICK_CANDIDATES, in CANDIDATES' order)."""
    return [(name, passes) for name, passes in CANDIDATES.items() if name in QUICK_CANDIDATES]


def split_photos(celeba: Path, n: int, split: str = "test", offset: int = 0) -> list[Path]:
    """Every k-th CelebA photo (name order) whose identity is in `split` of the hash split by identity, seed 0."""
    from m2u.datasets.splits import assign_split

    files = sorted(p for p in celeba.glob("*.jpg") if assign_split(p.name.split("_")[0], 0) == split)
    step = max(1, len(files) // n)
    return files[offset % step :: step][:n]


def build_eval_set(photos: list[Path], out: Path, seed: int = 0) -> list[dict]:
    """Mask the photos with m2u-mask (three groups: own colours, random colour, random pattern); one record per
    masked face: masked file, original, box, type, colour, pattern, the original's landmarks."""
    variants = {
        "own colours": [],
        "random colour": ["--color", "random"],
        "random pattern": ["--pattern", "random"],
    }
    records = []
    for g, (group, extra) in enumerate(variants.items()):
        src = out / f"src{g}"
        src.mkdir(parents=True)
        for photo in photos[g :: len(variants)]:
            (src / photo.name).symlink_to(photo.resolve())
        command = [sys.executable, "-c", "from m2u.masking.launch import main; main()", str(src), "-o"]
        command += [str(out / f"masked{g}"), "--mask-type", "random", "--seed", str(seed), "--quiet", *extra]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"m2u-mask failed on {src}: {done.stderr.strip()}")
        for meta in sorted((out / f"masked{g}").glob("*.json")):
            info = json.loads(meta.read_text())
            for face in info["faces"]:
                records.append(
                    {
                        "masked": str(meta.with_suffix(".jpg")),
                        "original": info["input"],
                        "group": group,
                        "box": face["box"],
                        "type": face["type"],
                        "color": face["color"],
                        "pattern": face["pattern"],
                        "landmarks": face["landmarks"],
                    }
                )
    return records


# Regions of scikit-image's photos of people that hold no face (y0, y1, x0, x1): the astronaut's shoulder patch
# and flag (what the demo once "restored" into a face), the cameraman's coat and tripod.
FACELESS_REGIONS = {
    "astronaut": [(300, 512, 0, 260), (300, 512, 250, 512), (0, 230, 330, 512), (380, 512, 100, 420)],
    "camera": [(300, 512, 0, 512), (0, 512, 350, 512), (250, 512, 150, 400)],
}


def synthetic_textures(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """Made here, nothing downloaded: gratings, checkerboards, gradients, rectangles, multi-scale noise."""
    import cv2

    out = []
    yy, xx = np.mgrid[0:256, 0:320].astype(np.float32)
    for k, (period, angle) in enumerate([(8, 0), (16, 45), (32, 90), (12, 30), (48, 135)]):
        t = np.deg2rad(angle)
        wave = 127.5 + 127.5 * np.sin(2 * np.pi * (xx * np.cos(t) + yy * np.sin(t)) / period)
        colour = rng.uniform(0.4, 1.0, 3)
        out.append((f"grating {k}", np.clip(wave[..., None] * colour, 0, 255).astype(np.uint8)))
    for cell in (8, 24, 64):
        board = (((yy // cell) + (xx // cell)) % 2 * 255).astype(np.uint8)
        out.append((f"checkerboard {cell} px", np.stack([board] * 3, -1)))
    for k in range(3):
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        ramp = (xx / 319.0 * (1 - k / 2) + yy / 255.0 * k / 2)[..., None]
        out.append((f"gradient {k}", (a * (1 - ramp) + b * ramp).astype(np.uint8)))
    for k in range(3):
        canvas = np.full((256, 320, 3), rng.integers(0, 256, 3), np.uint8)
        for _ in range(12):
            x0, y0 = int(rng.integers(0, 300)), int(rng.integers(0, 240))
            x1, y1 = x0 + int(rng.integers(10, 120)), y0 + int(rng.integers(10, 120))
            cv2.rectangle(canvas, (x0, y0), (x1, y1), [int(v) for v in rng.integers(0, 256, 3)], -1)
        out.append((f"rectangles {k}", canvas))
    for k in range(4):
        octaves = sum(
            cv2.resize(rng.uniform(0, 1, (4 * 2**o, 5 * 2**o, 3)).astype(np.float32), (320, 256)) / 2**o
            for o in range(5)
        )
        octaves = (octaves - octaves.min()) / np.ptp(octaves)
        out.append((f"multi-scale noise {k}", (255 * octaves).astype(np.uint8)))
    return out


def faceless_images() -> list[tuple[str, np.ndarray]]:
    """Images without a (human) face, none downloaded: scikit-image's sample images without people, regions of its
    photos of people that hold no face, blurred noise and synthetic textures (57 images)."""
    import cv2
    import skimage.data

    def rgb(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a)
        if a.dtype != np.uint8:
            a = (255 * (a.astype(float) - a.min()) / max(1e-9, float(np.ptp(a.astype(float))))).astype(
                np.uint8
            )
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        return np.ascontiguousarray(a[..., :3])

    images = [
        (name, rgb(getattr(skimage.data, name)(**FACELESS_ARGS.get(name, {})))) for name in FACELESS_SKIMAGE
    ]
    for name, regions in FACELESS_REGIONS.items():
        whole = rgb(getattr(skimage.data, name)())
        for k, (y0, y1, x0, x1) in enumerate(regions):
            images.append((f"{name} region {k}", np.ascontiguousarray(whole[y0:y1, x0:x1])))
    rng = np.random.default_rng(0)
    for k in range(10):
        noise = rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)
        images.append((f"blurred noise sigma {1 + k}", cv2.GaussianBlur(noise, (0, 0), 1 + k)))
    return images + synthetic_textures(rng)


class LazyRuns(dict):
    """name -> (boxes, scores, CPU seconds) of one detector run at LOW_THRESHOLD (the CNN: every detection), run
    the first time a candidate needs it (the CNN runs cost ~0.1-0.7 s per photo here)."""

    def __init__(self, image: np.ndarray):
        super().__init__()
        self.image = image

    def __missing__(self, name: str):
        from m2u.masking.masked_faces import MaskedDetectorConfig, _run_pass

        model, upsample = RUNS[name]
        start = time.process_time()
        cap = MaskedDetectorConfig().cnn_max_pixels  # as the shipped detector runs the CNN
        found = _run_pass(self.image, model, upsample, LOW_THRESHOLD, cnn_max_pixels=cap)
        self[name] = ([b for b, _ in found], [s for _, s in found], time.process_time() - start)
        return self[name]


def cascade(runs: dict, stages: list[list[tuple[str, float]]]) -> tuple[list, float]:
    """The merged boxes of the first stage that finds any, and the CPU time of the runs needed to get there."""
    from m2u.masking.masked_faces import merge_detections

    seconds, done = 0.0, set()
    for stage in stages:
        found = []
        for name, threshold in stage:
            boxes, scores, t = runs[name]
            if name not in done:
                seconds, done = seconds + t, done | {name}
            found += [(b, s, name) for b, s in zip(boxes, scores) if s >= threshold]
        if found:
            return [b for b, _, _ in merge_detections(found)], seconds
    return [], seconds


def score_detections(images: list[dict], records: list[dict], detect) -> dict:
    """detect(image record) -> (boxes, CPU s). Found per mask type / group, unmatched detections, time per face."""
    by_file: dict[str, list[dict]] = {}
    for r in records:
        by_file.setdefault(r["masked"], []).append(r)
    found, total, found_g, total_g = Counter(), Counter(), Counter(), Counter()
    unmatched, seconds = 0, 0.0
    for item in images:
        boxes, t = detect(item)
        seconds += t
        faces = by_file[item["masked"]]
        for face in faces:
            hit = any(box_iou(b, face["box"]) >= IOU_MATCH for b in boxes)
            total[face["type"]] += 1
            total_g[face["group"]] += 1
            found[face["type"]] += hit
            found_g[face["group"]] += hit
        unmatched += sum(not any(box_iou(b, f["box"]) >= IOU_MATCH for f in faces) for b in boxes)
    n = sum(total.values())
    return {
        "found": sum(found.values()),
        "faces": n,
        "rate": round(sum(found.values()) / n, 4),
        "rate_per_mask_type": {k: round(found[k] / total[k], 4) for k in sorted(total)},
        "found_per_mask_type": {k: f"{found[k]}/{total[k]}" for k in sorted(total)},
        "found_per_group": {k: f"{found_g[k]}/{total_g[k]}" for k in sorted(total_g)},
        "worst_mask_type_rate": round(min(found[k] / total[k] for k in total), 4),
        "unmatched_detections_on_masked_photos": unmatched,
        "cpu_ms_per_face": round(1000 * seconds / n, 2),
    }


def alignment_errors(matches: list[tuple[dict, np.ndarray]]) -> dict:
    """Offsets of the true eye and mouth centres between the crop from the masked photo and from the original."""
    from m2u.datasets.align import alignment_matrix, anchor_points, transform_points
    from m2u.masking.masked_faces import visible_anchor_points

    out = {}
    for source in ("visible", "landmarks"):
        eyes, mouths = [], []
        for record, masked_landmarks in matches:
            truth = np.asarray(record["landmarks"], np.float64)
            reference = alignment_matrix(truth, CROP)
            anchors = visible_anchor_points(masked_landmarks) if source == "visible" else None
            matrix = alignment_matrix(masked_landmarks, CROP, anchors)
            points = anchor_points(truth)
            offset = np.hypot(*(transform_points(matrix, points) - transform_points(reference, points)).T)
            eyes += list(offset[:2])
            mouths.append(offset[2])
        out[source] = {
            "faces": len(mouths),
            "eye_px_mean": round(float(np.mean(eyes)), 2),
            "eye_px_p95": round(float(np.percentile(eyes, 95)), 2),
            "mouth_px_mean": round(float(np.mean(mouths)), 2),
            "mouth_px_p95": round(float(np.percentile(mouths, 95)), 2),
        }
    return out


def _turned_box(box, width: int, height: int) -> tuple:
    left, top, right, bottom = box
    return (width - 1 - right, height - 1 - bottom, width - 1 - left, height - 1 - top)


def orientation_figures(detector, files: list[str], records: list[dict]) -> dict:
    """The upside-down check on masked faces: on the masked photos as they are (faces refused there are false
    refusals) and turned 180 degrees (faces the cascade still finds there, and how many of them the check refuses;
    the rest would be restored upside down). Also the score margins (turned minus as found) of the matched faces."""
    from m2u.masking import read_image

    by_file: dict[str, list[dict]] = {}
    for r in records:
        by_file.setdefault(r["masked"], []).append(r)
    counts = Counter()
    margins: dict[str, list[float]] = {"upright": [], "turned": []}
    for name in files:
        image = read_image(name)
        height, width = image.shape[:2]
        for view in ("upright", "turned"):
            shown = image if view == "upright" else np.ascontiguousarray(image[::-1, ::-1])
            faces = detector.detect(shown)
            # Every detection the check lets through, matched to a face or not (turned: each would be restored).
            counts[f"{view}_detections_restored"] += sum(not f.problem for f in faces)
            for r in by_file[name]:
                box = r["box"] if view == "upright" else _turned_box(r["box"], width, height)
                counts[f"{view}_faces"] += 1
                best = max(faces, key=lambda f: box_iou(f.box, box), default=None)
                if best is None or box_iou(best.box, box) < IOU_MATCH:
                    continue
                counts[f"{view}_found"] += 1
                counts[f"{view}_refused"] += bool(best.problem)
                as_found, turned = detector.orientation_scores(shown, best.box)
                margins[view].append(round(turned - as_found, 3))

    def quantiles(values: list[float]) -> dict:
        if not values:
            return {}
        q = np.quantile(values, [0.0, 0.05, 0.5, 0.95, 1.0])
        return dict(zip(("min", "p5", "median", "p95", "max"), (round(float(v), 3) for v in q)))

    return {
        "margin_used": detector.config.upside_down_margin,
        **{k: counts[k] for k in sorted(counts)},
        "false_refusal_rate_upright": round(counts["upright_refused"] / max(1, counts["upright_found"]), 4),
        "refusal_rate_turned": round(counts["turned_refused"] / max(1, counts["turned_found"]), 4),
        "restored_upside_down": counts["turned_found"] - counts["turned_refused"],
        "turned_photos": len(files),
        "margin_quantiles": {view: quantiles(v) for view, v in margins.items()},
        "margins": margins,
    }


def pipeline_seconds_per_face(files: list[str], n: int) -> dict:
    """m2u-unmask's per-face path with default-size models (untrained: the speed does not depend on weights)."""
    import torch

    from m2u.inference.restore import TwoStageModel
    from m2u.inference.unmask import UnmaskConfig, Unmasker
    from m2u.masking import read_image
    from m2u.training.models import CARU2Net, GeneratorConfig, MSeg, MSegConfig

    torch.manual_seed(0)
    unmasker = Unmasker(
        TwoStageModel(MSeg(MSegConfig()), CARU2Net(GeneratorConfig())), UnmaskConfig(device="cpu")
    )
    unmasker.unmask_image(read_image(files[0]))  # warm-up: models loaded, first-call allocations
    faces, seconds = 0, 0.0
    for path in files[1 : n + 1]:
        image = read_image(path)
        start = time.process_time()
        _, restored = unmasker.unmask_image(image)
        seconds += time.process_time() - start
        faces += len(restored)
    return {
        "photos": n,
        "faces": faces,
        "cpu_s_per_face": round(seconds / max(faces, 1), 3),
        "faces_per_cpu_s": round(faces / max(seconds, 1e-9), 3),
        "torch_threads": torch.get_num_threads(),
    }


def many_faces_figures(rounds: int = 3, faces: int = 16) -> dict:
    """Per-face CPU time of m2u-unmask's path after detection on a photo of `faces` faces (see the docstring)."""
    import statistics

    import cv2
    import torch

    from m2u.datasets.synthetic import make_synthetic_sample
    from m2u.inference.restore import load_two_stage, restore_batch
    from m2u.inference.unmask import BF16_MIN_BATCH, UnmaskConfig, Unmasker
    from m2u.masking.detect import Face
    from m2u.training.device import cpu_native_bf16

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    side, cols = 180, 4
    photo = cv2.GaussianBlur(
        rng.integers(0, 256, (side * (faces // cols + 1), side * cols, 3), dtype=np.uint8), (0, 0), 3
    )
    found = []
    for k in range(faces):
        sample = make_synthetic_sample(160, seed=k)
        x, y = 10 + (k % cols) * side, 10 + (k // cols) * side
        photo[y : y + 160, x : x + 160] = sample.masked
        found.append(Face.from_landmarks(sample.landmarks + np.array([x, y], np.float32)))

    class _Known:
        def detect(self, image):
            return list(found)

    models = load_two_stage(None, None, "cpu")
    setups = {
        "one_face_per_pass_fp32": UnmaskConfig(device="cpu", max_batch=1, precision="fp32", progress=False),
        "one_pass_fp32": UnmaskConfig(device="cpu", max_batch=faces, precision="fp32", progress=False),
        "default": UnmaskConfig(device="cpu", progress=False),
    }
    unmaskers, restored = {}, {}
    for name, config in setups.items():
        unmaskers[name] = Unmasker(models, config)
        unmaskers[name].detector = _Known()
        # Warm-up; and how many of the faces each setup restores (the decision may leave some: the generator and
        # the mask refinement then skip them, while the time is still divided by every face).
        restored[name] = len(unmaskers[name].unmask_image(photo)[1])
    times: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, unmasker in unmaskers.items():
            start = time.process_time()
            unmasker.unmask_image(photo)
            times[name].append((time.process_time() - start) / faces)
    mseg, generator = models.mseg, models.generator
    threshold = unmaskers["default"].usage.mask_threshold
    size = unmaskers["default"].usage.crop_size
    bf16 = {}
    for batch in (1, 2, 4, 8, 16):
        x = torch.rand(batch, 3, size, size)

        def run(enabled: bool, x=x) -> float:
            start = time.process_time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
                restore_batch(mseg, generator, x, threshold)
            return time.process_time() - start

        run(False), run(True)
        pairs = [(run(False), run(True)) for _ in range(rounds)]
        bf16[str(batch)] = {
            "fp32_ms_per_face": round(1000 * statistics.median(a for a, _ in pairs) / batch, 1),
            "bf16_ms_per_face": round(1000 * statistics.median(b for _, b in pairs) / batch, 1),
            "bf16_speedup": round(statistics.median(a / b for a, b in pairs), 2),
        }
    ratio = lambda a, b: round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 2)  # noqa: E731
    flags = set()
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {
        "faces": faces,
        "crop": size,
        "model": "shipped",
        "rounds": rounds,
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_native_bf16(),
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4"))),
        "default_precision_at_16": unmaskers["default"].pass_precision(min(faces, 16)),
        "bf16_min_batch": BF16_MIN_BATCH,
        "faces_restored": restored,
        "cpu_ms_per_face": {k: round(1000 * statistics.median(v), 1) for k, v in times.items()},
        "default_vs_one_face_per_pass": ratio(times["one_face_per_pass_fp32"], times["default"]),
        "default_vs_one_fp32_pass": ratio(times["one_pass_fp32"], times["default"]),
        "bf16_vs_fp32": bf16,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--faces", type=int, default=300, help="photos of the test split to mask")
    parser.add_argument(
        "--offset",
        type=int,
        default=3,
        help="start of the every-k-th selection (0: the set the cascade was tuned on)",
    )
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run, not for the record (about a minute): 24 photos, {len(QUICK_CANDIDATES)} candidates, "
        f"every {QUICK_FACELESS_STEP}th faceless image, 1 dlib example photo, {QUICK_PIPELINE_PHOTOS} pipeline photos",
    )
    parser.add_argument("--pipeline-photos", type=int, default=8)
    parser.add_argument(
        "--orientation-only",
        action="store_true",
        help="only the upside-down check (photos as they are and turned 180 degrees), into the JSON's "
        "'orientation' (offset 0) or 'orientation_held_out' key; the rest of the JSON is kept",
    )
    parser.add_argument(
        "--many-faces-only",
        action="store_true",
        help="only the many-faces timing (batched passes, bf16), into the JSON's 'many_faces' key",
    )
    parser.add_argument("-o", "--out", type=Path, default=RESULTS / "unmask.json")
    args = parser.parse_args()
    if args.many_faces_only:
        figures = many_faces_figures(rounds=1 if args.quick else 3)
        merged = json.loads(args.out.read_text()) if args.out.is_file() else {}
        merged["many_faces"] = figures
        _write_json(args.out, merged)
        print(json.dumps(figures, indent=1))
        return
    n = 24 if args.quick else args.faces
    import cv2

    from m2u.masking import read_image
    from m2u.masking.masked_faces import MASKED_CASCADE, MaskedFaceDetector

    cv2.setNumThreads(1)
    photos = split_photos(args.shared / "faces" / "celeba", n, offset=args.offset)
    if not photos:
        raise SystemExit(f"no CelebA photos under {args.shared / 'faces' / 'celeba'} (give --shared)")
    with tempfile.TemporaryDirectory() as tmp:
        records = build_eval_set(photos, Path(tmp))
        files = sorted({r["masked"] for r in records})
        images = [{"masked": f, "runs": LazyRuns(read_image(f))} for f in files]
        print(
            f"{len(records)} masked faces in {len(files)} photos of {len(photos)} test-split photos",
            flush=True,
        )
        if args.orientation_only:
            figures = orientation_figures(MaskedFaceDetector().load_models(), files, records)
            figures["protocol"] = {"photos": len(photos), "offset": args.offset, "quick": args.quick}
            key = "orientation" if args.offset == 0 else "orientation_held_out"
            merged = json.loads(args.out.read_text()) if args.out.is_file() else {}
            merged[key] = figures
            _write_json(args.out, merged)
            print(json.dumps({k: v for k, v in figures.items() if k != "margins"}, indent=1))
            return
        faceless = faceless_images()
        if args.quick:
            faceless = faceless[::QUICK_FACELESS_STEP]
        negatives = [(name, image, LazyRuns(image)) for name, image in faceless]
        dogs = args.shared / "faces" / "extras" / "dlib-examples" / "dogs.jpg"
        if dogs.is_file() and not args.quick:
            image = read_image(dogs)
            negatives.append(("dlib example dogs.jpg", image, LazyRuns(image)))
        candidates = {}
        for name, passes in quick_candidates() if args.quick else CANDIDATES.items():
            result = score_detections(images, records, lambda item, p=passes: cascade(item["runs"], p))
            result["detections_on_faceless_images"] = sum(
                len(cascade(runs, passes)[0]) for _, _, runs in negatives
            )
            candidates[name] = result
            print(
                f"{name:48s} {result['found']}/{result['faces']} ({result['rate']:.1%}), worst type "
                f"{result['worst_mask_type_rate']:.1%}, false positives {result['unmatched_detections_on_masked_photos']}"
                f" on masked + {result['detections_on_faceless_images']} on faceless, "
                f"{result['cpu_ms_per_face']:.1f} CPU ms/face",
                flush=True,
            )
        # The shipped cascade for real: MaskedFaceDetector with 68 landmarks, and the alignment it leads to.
        detector = MaskedFaceDetector().load_models()
        detected: dict[str, list] = {}

        def detect(item):
            image = read_image(item["masked"])
            start = time.process_time()
            faces = detector.detect(image)
            seconds = time.process_time() - start
            detected[item["masked"]] = faces
            return [f.box for f in faces], seconds

        shipped = score_detections(images, records, detect)
        passes_used = Counter(f.detector for faces in detected.values() for f in faces)
        shipped["faces_by_pass"] = dict(sorted(passes_used.items()))
        per_image = {name: len(detector.detect(img)) for name, img, _ in negatives}
        shipped["detections_on_faceless_images"] = sum(per_image.values())
        shipped["faceless_images_with_detections"] = {k: v for k, v in per_image.items() if v}
        from m2u.masking import FaceDetector

        extras = sorted((args.shared / "faces" / "extras" / "dlib-examples").glob("*.jpg"))
        extras = [p for p in extras if p.name != "dogs.jpg"][: 1 if args.quick else None]
        plain = FaceDetector()  # m2u-mask's detector, for comparison (no ground truth on these photos)
        shipped["faces_on_dlib_example_photos"] = {
            p.name: {
                "shipped": len(detector.detect(read_image(p))),
                "m2u-mask ladder": len(plain.detect(read_image(p))),
            }
            for p in extras
        }
        matches = []
        for r in records:
            best = max(detected[r["masked"]], key=lambda f: box_iou(f.box, r["box"]), default=None)
            if best is not None and box_iou(best.box, r["box"]) >= IOU_MATCH:
                matches.append((r, best.landmarks.astype(np.float64)))
        alignment = alignment_errors(matches)
        print(
            f"shipped cascade: {shipped['found']}/{shipped['faces']} ({shipped['rate']:.1%}), per type "
            f"{shipped['found_per_mask_type']}, {shipped['cpu_ms_per_face']:.1f} CPU ms/face, "
            f"{shipped['detections_on_faceless_images']} detections on {len(negatives)} faceless images"
        )
        for source, e in alignment.items():
            print(
                f"alignment {source}: eyes {e['eye_px_mean']:.2f} px mean / {e['eye_px_p95']:.2f} p95, mouth "
                f"{e['mouth_px_mean']:.2f} / {e['mouth_px_p95']:.2f} ({CROP} px crop, {e['faces']} faces)"
            )
        orientation = orientation_figures(detector, files, records)
        orientation["protocol"] = {"photos": len(photos), "offset": args.offset, "quick": args.quick}
        print(
            f"upside-down check: {orientation['upright_refused']}/{orientation['upright_found']} upright faces "
            f"refused, {orientation['turned_refused']}/{orientation['turned_found']} found turned 180 degrees refused"
        )
        pipeline_photos = (
            min(QUICK_PIPELINE_PHOTOS, args.pipeline_photos) if args.quick else args.pipeline_photos
        )
        pipeline = pipeline_seconds_per_face(files, min(pipeline_photos, len(files) - 1))
        print(
            f"pipeline: {pipeline['cpu_s_per_face']:.3f} CPU s per face ({pipeline['faces_per_cpu_s']:.2f}/s)"
        )
    result = {
        "protocol": {
            "photos": len(photos),
            "offset": args.offset,
            "masked_faces": len(records),
            "masked_photos": len(files),
            "split": "test split of the hash split by identity, seed 0",
            "mask": "m2u-mask --mask-type random --seed 0; thirds: own colours, --color random, --pattern random",
            "match": f"IoU >= {IOU_MATCH} with the masked face's box",
            "faceless_images": [name for name, _, _ in negatives],
            "quick": args.quick,
        },
        "mask_types": dict(sorted(Counter(r["type"] for r in records).items())),
        "candidates": candidates,
        "shipped_cascade": {"stages": [[p.label for p in stage] for stage in MASKED_CASCADE], **shipped},
        "alignment_error_crop_px": {"crop": CROP, **alignment},
        "pipeline": pipeline,
        "orientation" if args.offset == 0 else "orientation_held_out": orientation,
        "machine": {"python": platform.python_version(), "processor": platform.machine()},
    }
    # The orientation figures of the other selection (see --orientation-only) are kept from the previous file.
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    for key in ("orientation", "orientation_held_out", "many_faces"):
        if key in previous and key not in result:
            result[key] = previous[key]
    _write_json(args.out, result)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"written: {path}")


if __name__ == "__main__":
    main()
