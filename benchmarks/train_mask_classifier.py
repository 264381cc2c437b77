"""Train the masked-face classifier that m2u-unmask's decision ships (inference/pretrained/m2unet-celeba-128/mask_presence.safetensors).

    .venv/bin/python benchmarks/train_mask_classifier.py [--photos 1200] [--epochs 8] [--shared ../shared]
        [--realism DATASET --hard-negatives 0.5 --real-variants 16]

The shipped file (of 2026-12-05, sha256 e1ea161e...) is what this made (340 s on 2 cores; 32,980 training crops;
held-out accuracy 0.994; rerun, it came out byte for byte, 596 s on a busier machine, and again after the flags
became the `Augmentation` dataclass, 339 s):

    .venv/bin/python benchmarks/train_mask_classifier.py --realism runs/real2/data --hard-negatives 1.0 \
        --painted-collars --print-negatives 1500 --real-variants 16 --recolour 0.5 --tight-depth 0.45 \
        --greyscale 0.3 --pastel 0.25 --collar-height 0.35 -o runs/mask_presence.safetensors

It was chosen among six retrains on the tuning photos (docs/real-masks.md, "The mask classifier shipped on 2026-12-05"): the
others gave the tuning set's turtleneck or its thumb-at-the-mouth face 0.92-0.99 (1-2 bare tuning faces restored
each). The one shipped before it (the second of 2026-12-04, sha256 4ace63b6...) is the same command without
`--pastel` and `--collar-height` (byte for byte, checked then; the new flags' defaults draw nothing new).

The first of 2026-12-04 (sha256 4a4bcb60..., min_mask_probability 0.98) is, byte for byte,
`--realism runs/real2/data --hard-negatives 0.5 --real-variants 16` (27,759 crops; the new flags' defaults draw
nothing new, so that command still makes it).

where runs/real2/data was built by `m2u-make-dataset ../shared/faces/celeba -o runs/real2/data --size 128
--split-by identity --identity-pattern '{identity}_{id}.jpg' --workers 2 --seed 0` on 2026-12-03 (train 8,318 pairs;
later builds find faces with BlazeFace first and differ slightly). Then `benchmarks/tune_masked_rule.py --classifier
FILE` on the tuning photos and `benchmarks/real_masks.py --classifier FILE` on the measured ones. The same command
with `--low-res 0.3` made a candidate that was measured and not shipped (docs/real-masks.md, "The mask classifier shipped second
on 2026-12-04").

Training data: CelebA photos of the TRAIN split of the hash split by identity with seed 0 (benchmarks/real_masks.py
measures on test-split photos), masked by `m2u-mask --mask-type random --seed 2` in three groups (the templates' own
colours, `--color random`, `--pattern random`: benchmarks/unmask.py's build_eval_set). Each face gives a positive
(the masked photo) and a negative (the same photo unmasked), both aligned at 64 px by the dataset alignment from
visible points (eye centres and the mouth placed from them, as m2u-unmask aligns), with the anchors jittered
(rotation, scale, shift: detectors on masked faces place them less well), and photometric augmentation (brightness,
contrast, colour cast, blur, noise, JPEG, greyscale, mirror). Further negatives (`negative_crops`): crops of the same
photos away from the face and synthetic textures (a detection that is no face must not count as a masked face).
Real masks: the 102 tight crops of ../shared/faces/real-mask-seg (MFSD, MIT), found and aligned as m2u-unmask does,
`--real-variants` augmented crops each, as positives: trained on synthetic masks alone the classifier missed a
quarter of the real masked photos (black, patterned and high-reaching masks, tight crops). `--realism`: a dataset
`m2u-make-dataset` built from ../shared/faces/celeba with the realism engine (split by identity, seed 0; only its
train split is read, `realism_pairs`): thousands more exact pairs of one face masked and bare, pasted back into the
CelebA photo and cropped as above; `--hard-negatives`: that share of its bare faces gives one more bare crop with
dark lipstick, a beard or a collar up to the chin (`hard_negative`: the bare faces a mask-finder takes for masked).
Against the colour cue (the classifier of 2026-12-04 gave ~0 to plainly masked real faces that it found in grey):
`--recolour` repaints that share of the masked faces inside their exact pixel mask (m2u-mask's mask file, the realism
engine's mask, real-mask-seg's label) dark (black, navy, grey), light (white, surgical blue), any hue or with a print,
keeping the mask's own light and folds (`recolour_mask`); `--painted-collars` gives half the hard negatives' collars
those colours and prints (cloth below a bare mouth is no mask); `--print-negatives` adds faceless crops of that cloth;
`--greyscale` sets the share of crops turned grey (0.15); `--tight-depth` lets tight crops cut further into the face
(real close-ups end at the brows or the mouth); `--low-res` sets the share of crops shrunk to a 12-40 px side and
brought back to 64 px (small faces in full-body street photos, aligned up from a few dozen pixels; 0 by default);
`--upside-down` gives that share of the masked faces (and of each real-mask-seg crop's variants, turned) one more
negative: the face turned 180 degrees with its 68 points fitted as if upright (`upside_down_crop`; measured and not
shipped: the upside-down question has its own net, benchmarks/train_orientation_classifier.py; docs/real-masks.md).
`--pastel` draws that share of those colours pale (pink, peach, lavender, mint) and `--collar-height` lets the hard
negatives' collars rise that share of the nose-to-chin height over the chin (0.12 by default; the shipped file: 0.25
and 0.35; docs/real-masks.md, "The mask classifier shipped on 2026-12-05"). `--width`, `--label-smoothing` and `--mixup` change
the net and its training (measured on 2026-12-05 against the classifier's instability on real close-ups, with
`--training-set` keeping one set of crops for every setting: not shipped; docs/real-masks.md, "The sure-mask route").
benchmarks/real_masks.py measures the decision on the 300 photos of real-masked, which the classifier never sees.
Training photos are cut close round the face half the time (tight crops). The last 10 % of the CelebA photos (and
of the realism pairs and the other negatives) are held out; the script prints their accuracy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


@dataclass(frozen=True)
class Augmentation:
    """How the training crops are drawn: the command's augmentation flags, the same for every crop of a run. Each
    default draws nothing the commands that made earlier files did not, so those commands still make them byte for
    byte (train_orientation_classifier.py draws with the defaults)."""

    # How far into the face a tight crop may cut (--tight-depth): the share of the landmarks' height the bottom edge
    # may rise above the chin (the top edge goes a third as far below the brows).
    tight_depth: float = 0.1
    # The colour augmentation's strength (--colour-jitter).
    colour_jitter: float = 0.0
    # The share of crops turned grey (--greyscale) and of masked faces whose mask is repainted (--recolour), and
    # whether half the hard negatives' collars take those colours and prints (--painted-collars).
    greyscale: float = 0.15
    recolour: float = 0.0
    painted_collars: bool = False
    # The share of training crops seen as a small face (--low-res).
    low_res: float = 0.0
    # The share of masked faces that also give an upside-down negative (--upside-down).
    upside_down: float = 0.0
    # The share of mask colours (recoloured masks, painted collars, print palettes) drawn pastel (--pastel).
    pastel: float = 0.0
    # How far a hard negative's collar may rise above the chin (--collar-height: a share of the nose-to-chin
    # height; the lips stay bare).
    collar_height: float = 0.12


DEFAULT_AUGMENTATION = Augmentation()


def tight_crop(image, landmarks, rng, aug: Augmentation = DEFAULT_AUGMENTATION):
    """Half the time, the photo cut close round the face (at the forehead, the chin, the cheeks) as the tight crops
    of real photos are: the alignment then fills the crop's border with the photo's replicated edge. Real close-ups
    cut deeper than the default `tight_depth`: at the brows and at the mouth (a quarter of the real masked photos the
    2026-12-04 classifier skipped)."""
    if rng.random() < 0.5:
        return image, landmarks
    (x0, y0), (x1, y1) = landmarks.min(0), landmarks.max(0)
    w, h = x1 - x0, y1 - y0
    top = int(max(0, y0 - rng.uniform(-max(0.05, aug.tight_depth / 3), 0.3) * h))
    bottom = int(min(image.shape[0], y1 + rng.uniform(-aug.tight_depth, 0.2) * h))
    left = int(max(0, x0 - rng.uniform(-0.05, 0.3) * w))
    right = int(min(image.shape[1], x1 + rng.uniform(-0.05, 0.3) * w))
    if bottom - top < 16 or right - left < 16:
        return image, landmarks
    return np.ascontiguousarray(image[top:bottom, left:right]), landmarks - np.array([left, top], np.float32)


def jittered_crop(
    image, landmarks, rng, size: int = 64, strength: float = 1.0, aug: Augmentation = DEFAULT_AUGMENTATION
) -> np.ndarray:
    from m2u.datasets.align import align_face
    from m2u.masking.masked_faces import visible_anchor_points

    if strength >= 1.0:
        image, landmarks = tight_crop(image, landmarks, rng, aug)
    anchors = visible_anchor_points(landmarks)
    centre = anchors.mean(0)
    angle = np.deg2rad(rng.normal(0, 5) * strength)
    scale = np.exp(rng.normal(0, 0.06) * strength)
    shift = rng.normal(0, 0.04, 2) * strength * np.linalg.norm(anchors[1] - anchors[0]) * 2.5
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) * scale
    moved = (anchors - centre) @ rot.T + centre + shift
    return align_face(image, landmarks, size, moved).image


def upside_down_crop(
    image: np.ndarray, landmarks: np.ndarray, rng, aug: Augmentation = DEFAULT_AUGMENTATION
) -> np.ndarray:
    """The face turned 180 degrees as m2u-unmask sees one its orientation check lets through: dlib's 68 points fitted
    on the turned face's box (they come out upright-looking, on the wrong features), aligned from their eye centres.
    No masked face: the mask sits above the "eyes" and hair or brows below them. The classifier of 2026-12-04 gave
    the 35 such faces of real-masked turned 180 degrees that m2u-unmask restored 0.81-1.0."""
    import dlib

    from m2u.masking.detect import _shape_predictor

    height, width = image.shape[:2]
    turned = np.ascontiguousarray(image[::-1, ::-1])
    points = np.array([width - 1, height - 1], np.float32) - landmarks
    (x0, y0), (x1, y1) = points.min(0), points.max(0)
    shape = _shape_predictor()(turned, dlib.rectangle(int(x0), int(y0), int(x1), int(y1)))
    fitted = np.array([(q.x, q.y) for q in shape.parts()], np.float32)
    return jittered_crop(turned, fitted, rng, aug=aug)


def wants_upside_down(rng, aug: Augmentation) -> bool:
    """Whether this masked face also gives an upside-down negative (no draw at all when --upside-down is 0, so the
    commands that made earlier files still make them)."""
    return aug.upside_down > 0 and rng.random() < aug.upside_down


def photometric(crop: np.ndarray, rng, aug: Augmentation = DEFAULT_AUGMENTATION) -> np.ndarray:
    out = crop.astype(np.float32)
    # A face 12-40 px wide in a full-body street photo reaches the classifier aligned up to 64 px, without the fine
    # detail of CelebA's crops (the 2026-12-04 classifier gave such masked faces < 0.5). So a share `low_res` of the
    # crops is shrunk to that side and, after the camera's noise and JPEG act at that size, brought back to 64 px by
    # bilinear interpolation as the alignment does. No draw from `rng` when `low_res` is 0 (earlier runs' files stay).
    small = aug.low_res > 0 and rng.random() < aug.low_res
    if small:
        side = int(rng.integers(12, 41))
        out = cv2.resize(out, (side, side), interpolation=cv2.INTER_AREA)
    out = out * rng.uniform(0.6, 1.3) + rng.uniform(-30, 30)  # exposure
    out = (out - out.mean()) * rng.uniform(0.7, 1.3) + out.mean()  # contrast
    out = out * rng.uniform(0.85, 1.15, 3)  # colour cast
    if aug.colour_jitter > 0:
        # Real photos' white balance and saturation range far wider than CelebA's: a classifier trained without
        # this gave ~0 to plainly masked faces in warm light that it found in greyscale.
        grey = out.mean(2, keepdims=True)
        jitter = aug.colour_jitter
        out = grey + (out - grey) * rng.uniform(1 - jitter, 1 + jitter)  # saturation
        out = out * rng.uniform(1 - jitter / 2, 1 + jitter / 2, 3)  # a stronger cast
        if rng.random() < jitter:
            out = np.clip(out, 0, 255).astype(np.uint8)
            hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
            hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.integers(-12, 13))) % 180
            out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).astype(np.float32)
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.5))
    if rng.random() < 0.3:
        out = out + rng.normal(0, rng.uniform(2, 10), out.shape)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if rng.random() < aug.greyscale:
        out = np.repeat(cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    if rng.random() < 0.4:
        ok, data = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 95))])
        out = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if small:
        out = cv2.resize(out, crop.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


# Colours of real masks (RGB): black, navy and grey are the commonest, then white and the surgical blue.
DARK_MASKS = ((22, 22, 24), (35, 38, 45), (25, 30, 62), (55, 55, 58), (90, 90, 95), (45, 40, 38))
LIGHT_MASKS = (
    (238, 238, 235),
    (215, 220, 225),
    (150, 195, 225),
    (200, 215, 235),
    (235, 215, 200),
    (240, 200, 210),
)


def mask_colour(rng, aug: Augmentation = DEFAULT_AUGMENTATION) -> np.ndarray:
    """One mask colour (RGB float): dark, light, any hue, or (a share `pastel` of draws) pastel."""
    if aug.pastel > 0 and rng.random() < aug.pastel:
        # Pale, little saturated: pink, peach, lavender, mint, sky. Near skin in hue and value (the shipped
        # classifier gave pale pink surgical masks ~0 in colour and 0.99 in grey).
        hsv = np.array([[[rng.integers(180), rng.uniform(25, 110), rng.uniform(185, 250)]]], np.uint8)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)
    kind = rng.random()
    if kind < 0.45:
        base = np.array(DARK_MASKS[int(rng.integers(len(DARK_MASKS)))], np.float32)
        return base * rng.uniform(0.7, 1.3)
    if kind < 0.75:
        base = np.array(LIGHT_MASKS[int(rng.integers(len(LIGHT_MASKS)))], np.float32)
        return np.clip(base * rng.uniform(0.85, 1.05), 0, 255)
    hsv = np.array([[[rng.integers(180), rng.uniform(60, 255), rng.uniform(60, 250)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def print_texture(
    height: int, width: int, scale: float, rng, aug: Augmentation = DEFAULT_AUGMENTATION
) -> np.ndarray:
    """A print-like colour field (float RGB): blotches (camouflage, tie-dye), dots, stripes or small figures (floral,
    animal prints), in 2-4 random mask colours. Made here: no texture library draws cloth prints."""
    palette = [mask_colour(rng, aug) for _ in range(int(rng.integers(2, 5)))]
    kind = int(rng.integers(4))
    out = np.empty((height, width, 3), np.float32)
    out[:] = palette[0]
    if kind == 0:  # blotches: smooth noise cut into levels
        noise = cv2.GaussianBlur(
            rng.normal(0, 1, (height, width)).astype(np.float32), (0, 0), max(1.0, scale / 2)
        )
        levels = np.quantile(noise, np.linspace(0, 1, len(palette) + 1)[1:-1])
        index = np.digitize(noise, levels)
        out = np.asarray(palette, np.float32)[index]
    elif kind == 1:  # dots on a grid, jittered
        step = max(3, int(scale))
        radius = max(1, int(step * rng.uniform(0.15, 0.4)))
        for y in range(int(rng.integers(step)), height, step):
            for x in range(int(rng.integers(step)), width, step):
                centre = (
                    x + int(rng.integers(-radius, radius + 1)),
                    y + int(rng.integers(-radius, radius + 1)),
                )
                colour = palette[1 + int(rng.integers(len(palette) - 1))]
                cv2.circle(out, centre, radius, tuple(float(c) for c in colour), -1)
    elif kind == 2:  # stripes at any angle
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        phase = (xx * np.cos(angle) + yy * np.sin(angle)) / max(2.0, scale)
        out = np.asarray(palette, np.float32)[np.floor(phase).astype(np.int64) % len(palette)]
    else:  # small figures (petals, leaves, spots) scattered over the field
        for _ in range(int(height * width / max(4.0, scale) ** 2 * rng.uniform(0.3, 1.0))):
            centre = (int(rng.integers(width)), int(rng.integers(height)))
            axes = (max(1, int(scale * rng.uniform(0.2, 0.6))), max(1, int(scale * rng.uniform(0.1, 0.4))))
            colour = palette[1 + int(rng.integers(len(palette) - 1))]
            cv2.ellipse(out, centre, axes, rng.uniform(0, 180), 0, 360, tuple(float(c) for c in colour), -1)
    return out


def recolour_mask(
    image: np.ndarray, mask: np.ndarray, rng, aug: Augmentation = DEFAULT_AUGMENTATION
) -> np.ndarray:
    """`image` with its mask region (`mask`: image-sized, > 0.5 = mask, soft at the rim) repainted in another
    colour (dark, light, any hue) or a print, keeping the mask's own light and folds: so the classifier learns a mask
    by its shape and place on the face, not by the colours the synthetic masks happen to have (the classifier shipped
    on 2026-12-04 scored plain black, white and printed real masks near 0 and some of them 0.97-1.00 in grey)."""
    weight = np.clip(cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.8), 0, 1)
    inside = mask > 0.5
    if inside.sum() < 16:
        return image
    out = image.astype(np.float32)
    grey = out.mean(2)
    shading = np.clip(grey / max(1.0, float(np.median(grey[inside]))), 0.3, 1.7)
    shading = 1 + (shading - 1) * rng.uniform(0.3, 1.0)  # the template's own print shows less
    ys, xs = np.nonzero(inside)
    side = max(np.ptp(ys), np.ptp(xs)) + 1
    if rng.random() < 0.3:
        field = print_texture(*image.shape[:2], side / rng.uniform(4, 16), rng, aug)
    else:
        field = np.broadcast_to(mask_colour(rng, aug), out.shape)
    painted = field * shading[..., None]
    out = out * (1 - weight[..., None]) + painted * weight[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def maybe_recolour(image: np.ndarray, mask: np.ndarray | None, rng, aug: Augmentation) -> np.ndarray:
    """recolour_mask for a share `recolour` of the masked faces (no draw from `rng` when it is 0, so runs without
    --recolour make the same file as before)."""
    if mask is None or aug.recolour <= 0 or rng.random() >= aug.recolour:
        return image
    return recolour_mask(image, mask, rng, aug)


def negative_crops(n: int, photos: list[Path], rng) -> list[np.ndarray]:
    """Things a detector may take for a face that are none: crops of CelebA photos away from the face (hair,
    background, shoulders, half a face) and synthetic textures (gratings, checkerboards, rectangles, multi-scale
    noise, drawn with other seeds than the faceless images benchmarks/real_masks.py counts detections on, and none of
    scikit-image's photos: those are the benchmark's)."""
    from unmask import synthetic_textures  # benchmarks/unmask.py

    from m2u.masking import read_image

    crops = []
    for _ in range(n // 2):
        image = read_image(photos[int(rng.integers(len(photos)))])
        height, width = image.shape[:2]
        side = int(rng.integers(20, min(height, width) // 2))
        # Corners and edges of an aligned CelebA photo: the face sits in the middle.
        y = int(rng.choice([0, height - side, int(rng.integers(0, height - side + 1))]))
        x = (
            int(rng.choice([0, width - side]))
            if y not in (0, height - side)
            else int(rng.integers(0, width - side + 1))
        )
        crops.append(cv2.resize(image[y : y + side, x : x + side], (64, 64), interpolation=cv2.INTER_AREA))
    textures = []
    for seed in range(1000, 1000 + max(1, n // 80)):
        textures += [image for _, image in synthetic_textures(np.random.default_rng(seed))]
    while len(crops) < n:
        image = textures[int(rng.integers(len(textures)))]
        height, width = image.shape[:2]
        side = int(rng.integers(24, min(height, width)))
        y, x = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        crops.append(cv2.resize(image[y : y + side, x : x + side], (64, 64), interpolation=cv2.INTER_AREA))
    return crops


def print_negatives(n: int, rng, aug: Augmentation) -> list[np.ndarray]:
    """Faceless crops of the cloth --recolour paints masks with (plain mask colours with folds of light, prints):
    with painted masks among the positives, a print or a black cloth without a face round it must still count as
    no masked face (a candidate trained without these restored scikit-image's coins, a faceless image)."""
    crops = []
    for _ in range(n):
        if rng.random() < 0.6:
            field = print_texture(64, 64, rng.uniform(3, 20), rng, aug)
        else:
            field = np.broadcast_to(mask_colour(rng, aug), (64, 64, 3)).astype(np.float32)
        folds = cv2.GaussianBlur(rng.normal(0, 1, (64, 64)).astype(np.float32), (0, 0), rng.uniform(2, 8))
        shading = np.clip(1 + folds / (folds.std() + 1e-6) * rng.uniform(0.05, 0.3), 0.3, 1.7)
        crops.append(np.clip(field * shading[..., None], 0, 255).astype(np.uint8))
    return crops


def real_positives(folder: Path, variants: int, rng, aug: Augmentation) -> list[np.ndarray]:
    """Faces really wearing masks (the 102 tight crops of real-mask-seg), found and aligned as m2u-unmask does
    (RealFaceDetector, every detection), each in `variants` augmented crops: synthetic masks alone leave black,
    patterned and high-reaching real masks unrecognised."""
    from m2u.evaluation.real_masks import read_label
    from m2u.masking import read_image
    from m2u.masking.masked_faces import RealFaceDetector

    if variants <= 0 or not folder.is_dir():
        return []
    detector = RealFaceDetector()
    crops = []
    for path in sorted(folder.iterdir()):
        image = read_image(path)
        label = folder.parent / "mask" / path.name  # the hand-drawn mask, for --recolour
        mask = None
        if aug.recolour > 0 and label.is_file():
            mask = read_label(label).astype(np.float32)
            mask = mask if mask.shape == image.shape[:2] else None
        for face in detector.detect(image)[:1]:
            for _ in range(variants):
                painted = maybe_recolour(image, mask, rng, aug)
                crop = jittered_crop(painted, face.landmarks, rng, strength=0.7, aug=aug)
                crops.append(photometric(crop, rng, aug))
    return crops


def real_upside_down(folder: Path, variants: int, rng, aug: Augmentation) -> list[np.ndarray]:
    """The real masked crops of `folder` turned 180 degrees, every face m2u-unmask's detector finds there (its
    landmarks fitted as if upright), each in `variants` * --upside-down augmented crops: negatives."""
    from m2u.masking import read_image
    from m2u.masking.masked_faces import RealFaceDetector

    count = int(round(variants * aug.upside_down))
    if count <= 0 or not folder.is_dir():
        return []
    detector = RealFaceDetector()
    crops = []
    for path in sorted(folder.iterdir()):
        turned = np.ascontiguousarray(read_image(path)[::-1, ::-1])
        for face in detector.detect(turned):
            for _ in range(count):
                crop = jittered_crop(turned, face.landmarks, rng, strength=0.7, aug=aug)
                crops.append(photometric(crop, rng, aug))
    return crops


def realism_pairs(
    data: Path, celeba: Path, limit: int | None, rng
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(masked photo, bare photo, 68 landmarks, the mask in the photo: float 0..1) of the TRAIN split of a dataset `m2u-make-dataset` built from CelebA
    (its WebDataset shards: the realism engine's masks, split by identity). Its members are aligned by the dataset
    alignment (the 68 points' mouth), not by the visible points m2u-unmask aligns with, so each masked member is
    pasted back into its CelebA photo inside its mask (`paste_face`) and the pair is then cropped as every other
    training face is (`jittered_crop`). Only identities of the train split of the benchmarks' split (`assign_split`,
    seed 0) are read: the measured CelebA photos are of its test split."""
    import json
    import tarfile

    from m2u.datasets.align import paste_face, transform_points
    from m2u.datasets.splits import assign_split
    from m2u.masking import read_image

    shards = sorted((data / "train").glob("train-*.tar"))
    if not shards:
        raise SystemExit(f"no train shards under {data / 'train'}")
    members: dict[str, dict] = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for info in tar:
                key, _, kind = info.name.partition(".")
                handle = tar.extractfile(info)
                if handle is not None:
                    members.setdefault(key, {})[kind] = handle.read()
    keys = sorted(k for k, m in members.items() if {"masked.jpg", "mask.png", "json"} <= m.keys())
    rng.shuffle(keys)
    pairs = []
    for key in keys:
        meta = json.loads(members[key]["json"])
        if assign_split(meta["identity"], 0) != "train":
            raise SystemExit(f"{key} is not of the train split of the benchmarks' identity split")
        source = celeba / Path(meta["source"]).name
        if not source.is_file():
            continue
        bare = read_image(source)
        masked_crop = cv2.imdecode(np.frombuffer(members[key]["masked.jpg"], np.uint8), cv2.IMREAD_COLOR)
        mask = cv2.imdecode(np.frombuffer(members[key]["mask.png"], np.uint8), cv2.IMREAD_GRAYSCALE)
        matrix = np.asarray(meta["align_matrix"], np.float64)
        # The mask's soft rim and the realism engine's shading just outside it come along.
        region = cv2.dilate((mask > 127).astype(np.uint8), np.ones((5, 5), np.uint8))
        masked = paste_face(bare, cv2.cvtColor(masked_crop, cv2.COLOR_BGR2RGB), matrix, region)
        inverse = cv2.invertAffineTransform(matrix)
        landmarks = transform_points(inverse, meta["landmarks"]).astype(np.float32)
        photo_mask = cv2.warpAffine(
            (mask > 127).astype(np.float32), inverse, bare.shape[1::-1], borderValue=0.0
        )
        pairs.append((masked, bare, landmarks, photo_mask))
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


def hard_negative(
    image: np.ndarray, landmarks: np.ndarray, rng, aug: Augmentation = DEFAULT_AUGMENTATION
) -> np.ndarray:
    """A bare face with what a bare face may show round the mouth and that a mask-finder must not take for a mask:
    dark lipstick, a beard, a high collar or scarf up to the chin (the bare faces the earlier candidates touched:
    benchmarks/tune_masked_rule.py). The mouth stays visible in every one."""
    out = image.astype(np.float32)
    points = np.asarray(landmarks, np.float32)
    kind = rng.integers(3)
    layer = np.zeros(image.shape[:2], np.uint8)
    if kind == 0:  # lipstick (dark red, plum, brown, black): the lips (48-59 outer, 60-67 inner left bare)
        colour = np.array([rng.uniform(20, 160), rng.uniform(0, 40), rng.uniform(0, 90)])
        cv2.fillPoly(layer, [points[48:60].astype(np.int32)], 1)
        cv2.fillPoly(layer, [points[60:68].astype(np.int32)], 0)
        alpha = rng.uniform(0.5, 0.9)
    elif kind == 1:  # a beard: the lower jaw and the upper lip, the lips left out
        top = (points[33][1] + points[51][1]) / 2
        jaw = points[3:14]
        polygon = np.concatenate([jaw, [[points[54][0] + 2, top], [points[48][0] - 2, top]]])
        cv2.fillPoly(layer, [polygon.astype(np.int32)], 1)
        cv2.fillPoly(layer, [points[48:60].astype(np.int32)], 0)
        colour = rng.uniform(15, 60) * np.array([1.0, rng.uniform(0.75, 0.95), rng.uniform(0.55, 0.85)])
        alpha = rng.uniform(0.4, 0.85)
        noise = rng.normal(0, 25, image.shape[:2]).astype(np.float32)
        out += (cv2.GaussianBlur(noise, (0, 0), 0.7) * layer)[..., None]
    else:  # a collar or scarf: everything below the jaw line, up to the chin
        jaw = points[0:17]
        bottom = image.shape[0]
        lift = rng.uniform(0.0, aug.collar_height) * (points[8][1] - points[33][1])
        polygon = np.concatenate(
            [
                [[0, jaw[0][1]]],
                jaw - [0, lift] * (np.arange(17)[:, None] > 3) * (np.arange(17)[:, None] < 13),
                [[image.shape[1], jaw[-1][1]], [image.shape[1], bottom], [0, bottom]],
            ]
        )
        cv2.fillPoly(layer, [polygon.astype(np.int32)], 1)
        cv2.fillPoly(layer, [points[48:60].astype(np.int32)], 0)
        colour = rng.uniform(0, 255, 3) if rng.random() < 0.5 else rng.uniform(0, 90, 3)
        alpha = rng.uniform(0.85, 1.0)
        if aug.painted_collars and rng.random() < 0.5:
            # In the colours and prints --recolour paints masks with: cloth below the mouth must not pass for a
            # mask by its colour or print, only a cover over the mouth and nose does.
            side = float(np.ptp(points[:, 0])) + 1
            colour = (
                print_texture(*image.shape[:2], side / rng.uniform(4, 16), rng, aug)
                if rng.random() < 0.3
                else mask_colour(rng, aug)
            )
    soft = cv2.GaussianBlur(layer.astype(np.float32), (0, 0), 1.0)[..., None] * alpha
    shade = out.mean(2, keepdims=True) / 128.0  # keep the face's own light and texture
    out = out * (1 - soft) + colour * np.clip(shade, 0.3, 1.6) * soft
    return np.clip(out, 0, 255).astype(np.uint8)


def train_net(
    train: tuple[list, list],
    test: tuple[list, list],
    epochs: int,
    positives: str,
    negatives: str,
    width: int = 16,
    label_smoothing: float = 0.0,
    mixup: float = 0.0,
):
    """A MaskPresenceNet of `width` trained on (crops, 0/1 labels) `train` (AdamW, one-cycle at 3e-3, batches of 64),
    printing each epoch's loss and its held-out accuracy on `test` (labels 1 named `positives`, 0 `negatives`).
    `label_smoothing` pulls the targets that far towards 0.5 (to 1 - s/2 and s/2) and `mixup` > 0 blends each batch
    with itself shuffled (weights from Beta(mixup, mixup)): both against the overconfidence that makes a small net
    flip between 0 and 1 on crops unlike its training (a real close-up and its mirror image)."""
    import torch

    from m2u.inference.mask_presence import MaskPresenceNet, to_input

    x, y = to_input(train[0]), torch.tensor(train[1], dtype=torch.float32)
    y = y * (1 - label_smoothing) + label_smoothing / 2
    net = MaskPresenceNet(width)
    beta = torch.distributions.Beta(mixup, mixup) if mixup > 0 else None
    optimiser = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(y) + 63) // 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(y))
        total = 0.0
        for k in range(0, len(y), 64):
            batch = order[k : k + 64]
            inputs, targets = x[batch], y[batch]
            if beta is not None:
                share = beta.sample((len(batch),))
                other = torch.randperm(len(batch))
                inputs = share.view(-1, 1, 1, 1) * inputs + (1 - share.view(-1, 1, 1, 1)) * inputs[other]
                targets = share * targets + (1 - share) * targets[other]
            total += optimiser_step(optimiser, schedule, loss_fn(net(inputs), targets)) * len(batch)
        net.eval()
        with torch.no_grad():
            p = torch.sigmoid(net(to_input(test[0]))).numpy()
        labels = np.array(test[1])
        accuracy = float(((p >= 0.5) == labels).mean())
        print(
            f"epoch {epoch + 1}: loss {total / len(y):.4f}, held-out accuracy {accuracy:.4f} "
            f"({positives} found {float((p[labels == 1] >= 0.5).mean()):.4f}, "
            f"{negatives} kept {float((p[labels == 0] < 0.5).mean()):.4f})",
            flush=True,
        )
    return net


def save_net(net, out: Path) -> None:
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))


def optimiser_step(optimiser, schedule, loss) -> float:
    """One training step on `loss` (the optimiser, then its learning-rate schedule); returns the loss's value."""
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    schedule.step()
    return float(loss.detach())


def classifier_parser(description: str, photos: int, epochs: int, out_name: str) -> argparse.ArgumentParser:
    """The arguments every classifier-training script here takes, their defaults that script's shipped command:
    --photos, --epochs, --seed, --shared and -o/--out, which is never the shipped file by default (a checked result
    is copied there by hand)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photos", type=int, default=photos)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("-o", "--out", type=Path, default=REPO / "runs" / out_name)
    return parser


def training_photos(shared: Path, count: int, seed: int) -> tuple[np.random.Generator, list[Path], set[str]]:
    """The run's generator (torch seeded alike, 2 threads), `count` CelebA photos of the TRAIN split of the identity
    hash split (seed 0), and the names of the last tenth of them (held out)."""
    import torch
    from unmask import split_photos  # benchmarks/unmask.py

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    photos = split_photos(shared / "faces" / "celeba", count, "train")
    if not photos:
        raise SystemExit(f"no CelebA photos under {shared / 'faces' / 'celeba'} (give --shared)")
    return rng, photos, {p.name for p in photos[int(0.9 * len(photos)) :]}


def main() -> None:
    from unmask import build_eval_set  # benchmarks/unmask.py

    from m2u.masking import read_image

    parser = classifier_parser(__doc__, photos=1200, epochs=8, out_name="mask_presence.safetensors")
    parser.add_argument("--textures", type=int, default=1200)
    parser.add_argument("--variants", type=int, default=3, help="Augmented crops per face and class.")
    parser.add_argument(
        "--real-variants", type=int, default=8, help="Augmented crops per real-mask-seg face."
    )
    parser.add_argument("--width", type=int, default=16, help="the net's base width (MaskPresenceNet)")
    parser.add_argument(
        "--label-smoothing", type=float, default=0.0, help="targets pulled that far towards 0.5"
    )
    parser.add_argument("--mixup", type=float, default=0.0, help="mixup's Beta parameter (0: no mixup)")
    parser.add_argument(
        "--realism",
        type=Path,
        help="a dataset m2u-make-dataset built from CelebA (split by identity, seed 0): its train pairs are added",
    )
    parser.add_argument("--realism-pairs", type=int, help="at most this many of its pairs (default: all)")
    parser.add_argument(
        "--colour-jitter",
        type=float,
        default=DEFAULT_AUGMENTATION.colour_jitter,
        help="saturation (1 +- J), a further colour cast (1 +- J/2) and, with probability J, a hue shift",
    )
    parser.add_argument(
        "--hard-negatives",
        type=float,
        default=0.0,
        help="share of the bare faces of --realism that give one more bare crop with lipstick, a beard or a collar",
    )
    parser.add_argument(
        "--recolour",
        type=float,
        default=DEFAULT_AUGMENTATION.recolour,
        help="share of the masked faces whose mask (its exact pixels) is repainted dark, light, any hue or a print",
    )
    parser.add_argument(
        "--greyscale",
        type=float,
        default=DEFAULT_AUGMENTATION.greyscale,
        help="share of the training crops turned grey",
    )
    parser.add_argument(
        "--print-negatives",
        type=int,
        default=0,
        help="faceless crops of painted mask cloth (plain colours, prints) as further negatives",
    )
    parser.add_argument(
        "--painted-collars",
        action="store_true",
        help="half the hard negatives' collars and scarves in --recolour's mask colours and prints",
    )
    parser.add_argument(
        "--tight-depth",
        type=float,
        default=DEFAULT_AUGMENTATION.tight_depth,
        help="how far above the chin (share of the face's height) a tight crop may cut",
    )
    parser.add_argument(
        "--low-res",
        type=float,
        default=DEFAULT_AUGMENTATION.low_res,
        help="share of the training crops shrunk to a 12-40 px side and brought back to 64 px (small faces)",
    )
    parser.add_argument(
        "--upside-down",
        type=float,
        default=DEFAULT_AUGMENTATION.upside_down,
        help="share of the masked faces that also give an upside-down negative (the face turned 180 degrees, its "
        "landmarks fitted as if upright), and of --real-variants given by each real-mask-seg crop turned",
    )
    parser.add_argument(
        "--pastel",
        type=float,
        default=DEFAULT_AUGMENTATION.pastel,
        help="share of the mask colours drawn (--recolour, --painted-collars, prints) that are pastel: pale pink, "
        "peach, lavender, mint (near skin; 0 draws nothing, so earlier commands make the same file)",
    )
    parser.add_argument(
        "--collar-height",
        type=float,
        default=DEFAULT_AUGMENTATION.collar_height,
        help="how far a hard negative's collar may rise over the chin, as a share of the nose-to-chin height (a "
        "turtleneck or scarf up to the lower lip; the lips stay bare)",
    )
    parser.add_argument(
        "--cache", type=Path, help="keep the aligned crops in this .npz (reruns skip m2u-mask)"
    )
    parser.add_argument(
        "--training-set",
        type=Path,
        help="every crop of the run (training and held out) in this .npz: written after building them, read "
        "instead of building them when it exists (to compare training settings on the same crops)",
    )
    args = parser.parse_args()
    for given in (args.cache, args.training_set):
        if given and given.suffix != ".npz":
            parser.error(f"{given}: give a .npz file name (numpy adds the suffix to any other)")
    aug = Augmentation(
        tight_depth=args.tight_depth,
        colour_jitter=args.colour_jitter,
        greyscale=args.greyscale,
        recolour=args.recolour,
        painted_collars=args.painted_collars,
        low_res=args.low_res,
        upside_down=args.upside_down,
        pastel=args.pastel,
        collar_height=args.collar_height,
    )
    rng, photos, held_out = training_photos(args.shared, args.photos, args.seed)
    start = time.perf_counter()
    if args.training_set and args.training_set.is_file():
        # Every crop comes from the file: the options that choose and draw the crops are not used.
        print(f"crops read from {args.training_set} (not built)", flush=True)
        train_and_save(*load_crop_sets(args.training_set), args, start)
        return
    train, test = ([], []), ([], [])  # (crops, labels)
    if args.cache and args.cache.is_file():
        train, test = load_crop_sets(args.cache)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            records = build_eval_set(photos, Path(tmp), seed=2)
            for r in records:
                landmarks = np.asarray(r["landmarks"], np.float32)
                split = test if Path(r["original"]).name in held_out else train
                # m2u-mask's exact mask beside each masked photo (name_<type>_mask.png), for --recolour
                mask_file = Path(r["masked"]).with_name(Path(r["masked"]).stem + "_mask.png")
                mask = None
                if aug.recolour > 0 and split is train and mask_file.is_file():
                    mask = (cv2.imread(str(mask_file), cv2.IMREAD_GRAYSCALE) > 127).astype(np.float32)
                for label, path in ((1, r["masked"]), (0, r["original"])):
                    image = read_image(path)
                    for _ in range(args.variants if split is train else 1):
                        painted = maybe_recolour(image, mask, rng, aug) if label else image
                        strength = 1.0 if split is train else 0.5
                        crop = jittered_crop(painted, landmarks, rng, strength=strength, aug=aug)
                        split[0].append(photometric(crop, rng, aug) if split is train else crop)
                        split[1].append(label)
                    if label and split is train and wants_upside_down(rng, aug):
                        turned = upside_down_crop(image, landmarks, rng, aug)
                        split[0].append(photometric(turned, rng, aug))
                        split[1].append(0)
        if args.cache:
            save_crop_sets(args.cache, train, test)
    if args.realism:
        pairs = realism_pairs(args.realism, args.shared / "faces" / "celeba", args.realism_pairs, rng)
        cut = int(0.9 * len(pairs))
        for k, (masked, bare, landmarks, mask) in enumerate(pairs):
            split = train if k < cut else test
            strength = 1.0 if split is train else 0.5
            faces = [(1, maybe_recolour(masked, mask, rng, aug) if split is train else masked), (0, bare)]
            if split is train and rng.random() < args.hard_negatives:
                faces.append((0, hard_negative(bare, landmarks, rng, aug)))
            if split is train and wants_upside_down(rng, aug):
                turned = upside_down_crop(faces[0][1], landmarks, rng, aug)
                split[0].append(photometric(turned, rng, aug))
                split[1].append(0)
            for label, image in faces:
                crop = jittered_crop(image, landmarks, rng, strength=strength, aug=aug)
                split[0].append(photometric(crop, rng, aug) if split is train else crop)
                split[1].append(label)
        print(f"realism pairs: {cut} for training, {len(pairs) - cut} held out", flush=True)
    real = real_positives(args.shared / "faces" / "real-mask-seg" / "image", args.real_variants, rng, aug)
    train[0].extend(real)
    train[1].extend([1] * len(real))
    if aug.upside_down > 0:
        turned = real_upside_down(
            args.shared / "faces" / "real-mask-seg" / "image", args.real_variants, rng, aug
        )
        train[0].extend(turned)
        train[1].extend([0] * len(turned))
    textures = negative_crops(args.textures, photos, rng)
    if args.print_negatives:
        textures += print_negatives(args.print_negatives, rng, aug)
        order = rng.permutation(len(textures))  # the held-out tenth takes some of each kind
        textures = [textures[k] for k in order]
    cut = int(0.9 * len(textures))
    train[0].extend(photometric(t, rng, aug) for t in textures[:cut])
    train[1].extend([0] * cut)
    test[0].extend(textures[cut:])
    test[1].extend([0] * (len(textures) - cut))
    print(
        f"data: {len(train[1])} training crops ({sum(train[1])} masked), {len(test[1])} held out, "
        f"{time.perf_counter() - start:.0f} s"
    )
    if args.training_set:
        save_crop_sets(args.training_set, train, test)
    train_and_save(train, test, args, start)


def save_crop_sets(path: Path, train: tuple[list, list], test: tuple[list, list]) -> None:
    """(crops, labels) for training and held out into one .npz (`load_crop_sets` reads it back), written whole or
    not at all: a run stopped while saving leaves no half file for the next run to read."""
    from m2u.core.fileio import atomic_write

    def write(temp: str) -> None:
        with open(temp, "wb") as handle:  # a handle: np.savez would add ".npz" to the temporary name
            np.savez(
                handle,
                train_x=np.stack(train[0]),
                train_y=np.array(train[1]),
                test_x=np.stack(test[0]),
                test_y=np.array(test[1]),
            )

    atomic_write(path, write)


def load_crop_sets(path: Path) -> tuple[tuple[list, list], tuple[list, list]]:
    """What `save_crop_sets` wrote: ((crops, labels) for training, (crops, labels) held out)."""
    saved = np.load(path)
    return (list(saved["train_x"]), list(saved["train_y"])), (list(saved["test_x"]), list(saved["test_y"]))


def train_and_save(train: tuple[list, list], test: tuple[list, list], args, start: float) -> None:
    """Train the net the options ask for on `train` (checked on `test`) and write it to `args.out`."""
    net = train_net(
        train,
        test,
        args.epochs,
        positives="masked",
        negatives="unmasked/faceless",
        width=args.width,
        label_smoothing=args.label_smoothing,
        mixup=args.mixup,
    )
    save_net(net, args.out)
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB) in {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()
