"""Train the box orientation net: which way up is the face in a detector's box? (m2u.inference.mask_presence.
box_orientations; shipped as inference/pretrained/m2unet-celeba-128/box_orientation.safetensors.)

    .venv/bin/python benchmarks/train_box_orientation.py [--photos 2000] [--epochs 10] [--width 16] [--seed 0]
        [--crops FILE.npz] [--shared ../shared] [-o runs/box_orientation.safetensors]

Why: the upside-down net reads the ALIGNED crop, whose 68 points dlib fits as if the face were upright; on a face
lying on its side or upside down they land on the wrong features and the crop looks upright enough (18 photos of
real-masked turned 180 degrees were restored upside down; sideways photos were caught by several weaker cues). The
detector's box holds the face as it lies, before any landmark fit, and shows its orientation plainly; the shipped
upside-down net, read on such box crops, does not tell it (a probe: 11 of 31 upside-down faces), never having seen them.

The same small CNN as the mask classifier (MaskPresenceNet, 64 px, one logit). Data: CelebA photos of the TRAIN split
of the identity hash split (seed 0), masked by m2u-mask (its three groups: own colours, random colours, random
patterns) and bare, half of the training photos cut close round the face first (`tight_crop`), each turned 0, 90,
180 and 270 degrees; the box is BlazeFace's (m2u-unmask's detector without its dlib fallback) on the turned photo where
it finds the face (its boxes on faces lying sideways or upside down sit off the face's middle, as at inference), else
the turned landmarks' box; the crop is that box grown 1.0-1.6 times (BOX_CROP_GROW, 1.4, at inference and on the held
out crops) and shifted a little. Each crop is read in its four quarter turns and the net learns which of them is
upright (`train_listwise`), with the mask classifier's photometric augmentation drawn afresh each epoch (small faces,
colour casts, greyscale, blur, noise, JPEG, a mirror image). No real photo is used: real-masked and real-mask-seg stay
measured sets. The last 10 % of the photos are held out.

The shipped file (sha256 3946a6a6...) is what `--photos 2000 --epochs 10` (now the defaults) made on 2026-12-05 (14,240 training crops,
held-out way up right 0.993, 959 s on 2 cores). Two runs before it were measured and dropped (docs/real-masks.md, "The box
orientation net"): each crop labelled alone, upright or not (1,200 photos, held-out accuracy 0.994, yet on real
upside-down faces right for half: it called most real close-ups "not upright" every way they were turned); and the
listwise net with the photometric augmentation drawn before the crop was turned upright, whose mirror image swapped
the labels of 90 and 270 degrees (held-out 0.95 falling to 0.85 as it trained).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def turned_points(points: np.ndarray, quarter_turns: int, width: int, height: int) -> np.ndarray:
    """Pixel points of a width x height image as they lie in np.rot90(image, quarter_turns)."""
    out = np.asarray(points, np.float64)
    for _ in range(quarter_turns % 4):
        out = np.stack([out[:, 1], width - 1 - out[:, 0]], 1)
        width, height = height, width
    return out.astype(np.float32)


def train_listwise(
    groups: tuple[list, list], held_out: tuple[list, list], epochs: int, width: int = 16, augment=None
):
    """A MaskPresenceNet trained on groups of four crops (one crop turned 0-3 quarter turns) with the index of the
    upright one: a softmax over the group's four negated logits, cross-entropy (AdamW, one-cycle at 3e-3, 32 groups a
    batch). Why not each crop labelled alone: a net asked "is this crop upright?" learns what an upright CelebA
    face looks like and calls a real masked close-up unlike them "not upright" every way it is turned (the first
    run: right for half the upside-down real-masked faces, most of the rest near 1.0 all four ways); asked which of the four is upright, it can
    only compare them. `augment(crop)`, where given, draws each training crop afresh every epoch; it gets the crop
    turned upright and its result is turned back, so that a mirror image (which swaps 90 and 270 degrees) keeps the
    label right."""
    import torch
    from train_mask_classifier import optimiser_step

    from m2u.inference.mask_presence import MaskPresenceNet, to_input

    def stacked(crops: list) -> torch.Tensor:
        return to_input([np.ascontiguousarray(np.rot90(c, q)) for c in crops for q in range(4)]).view(
            len(crops), 4, 3, 64, 64
        )

    y = torch.tensor(groups[1])
    test_x, test_y = stacked(held_out[0]), torch.tensor(held_out[1])
    net = MaskPresenceNet(width)
    optimiser = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(y) + 31) // 32)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps)
    for epoch in range(epochs):
        crops = groups[0]
        if augment is not None:
            crops = [
                np.rot90(augment(np.ascontiguousarray(np.rot90(c, q))), -q) for c, q in zip(crops, groups[1])
            ]
        x = stacked(crops)
        net.train()
        order = torch.randperm(len(y))
        total = 0.0
        for k in range(0, len(y), 32):
            batch = order[k : k + 32]
            logits = net(x[batch].flatten(0, 1)).view(len(batch), 4)
            loss = torch.nn.functional.cross_entropy(-logits, y[batch])
            total += optimiser_step(optimiser, schedule, loss) * len(batch)
        net.eval()
        with torch.no_grad():
            chosen = (-net(test_x.flatten(0, 1)).view(len(test_y), 4)).argmax(1)
        print(
            f"epoch {epoch + 1}: loss {total / len(y):.4f}, held-out way up right "
            f"{float((chosen == test_y).float().mean()):.4f}",
            flush=True,
        )
    return net


# Small faces, greyscale and strong colour casts as real photos show them; close-ups cut at the brows or mouth.
AUGMENTATION = dict(tight_depth=0.25, colour_jitter=0.5, low_res=0.25)


def make_crops(photos: list[Path], held_out: set[str], rng) -> tuple[tuple[list, list], tuple[list, list]]:
    """(training, held-out) (box crops, the quarter turns that show each upright), as the docstring says."""
    from train_mask_classifier import Augmentation, tight_crop
    from unmask import build_eval_set  # benchmarks/unmask.py

    from m2u.inference.mask_presence import BOX_CROP_GROW, box_crop
    from m2u.masking import read_image
    from m2u.masking.masked_faces import RealFaceDetector, RealFaceDetectorConfig

    start = time.perf_counter()
    detector = RealFaceDetector(RealFaceDetectorConfig(fallback=None, orientation_check=False))
    train: tuple[list, list] = ([], [])
    test: tuple[list, list] = ([], [])
    found = missed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in build_eval_set(photos, Path(tmp), seed=2):
            training = Path(r["original"]).name not in held_out
            split = train if training else test
            for path in (r["masked"], r["original"]):
                image, points = read_image(path), np.asarray(r["landmarks"], np.float32)
                if training:
                    # Photos cut close round the face (real close-ups: the crop's border repeats the photo's edge).
                    image, points = tight_crop(image, points, rng, Augmentation(**AUGMENTATION))
                height, width = image.shape[:2]
                for quarter_turns in range(4):
                    turned = np.ascontiguousarray(np.rot90(image, quarter_turns))
                    turned_landmarks = turned_points(points, quarter_turns, width, height)
                    nose = turned_landmarks[30]
                    boxes = [
                        f.box
                        for f in detector.detect(turned)
                        if f.box[0] <= nose[0] <= f.box[2] and f.box[1] <= nose[1] <= f.box[3]
                    ]
                    if boxes:
                        found += 1
                        box = boxes[0]
                    else:
                        missed += 1
                        (x0, y0), (x1, y1) = turned_landmarks.min(0), turned_landmarks.max(0)
                        box = (x0, y0, x1, y1)
                    grow = rng.uniform(1.0, 1.6) if training else BOX_CROP_GROW
                    shift = rng.uniform(-0.08, 0.08, 2) if training else np.zeros(2)
                    crop = box_crop(turned, box, grow, shift)
                    split[0].append(crop)  # photometric augmentation: drawn each epoch (train_listwise)
                    # The crop turned this many more quarter turns shows the face upright.
                    split[1].append((4 - quarter_turns) % 4)
    print(
        f"data: {len(train[1])} training crops, each read its four ways, {len(test[1])} held out; BlazeFace found "
        f"{found} of {found + missed} faces turned; {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    return train, test


def main() -> None:
    from train_mask_classifier import Augmentation, classifier_parser, photometric, save_net, training_photos

    parser = classifier_parser(__doc__, photos=2000, epochs=10, out_name="box_orientation.safetensors")
    parser.add_argument("--width", type=int, default=16, help="the net's base width (MaskPresenceNet)")
    parser.add_argument(
        "--crops",
        type=Path,
        help="an .npz of the crops: read where it exists, else written once they are made",
    )
    args = parser.parse_args()
    rng, photos, held_out = training_photos(args.shared, args.photos, args.seed)
    start = time.perf_counter()
    if args.crops and args.crops.is_file():
        with np.load(args.crops) as saved:
            train = (list(saved["train_x"]), saved["train_y"].tolist())
            test = (list(saved["test_x"]), saved["test_y"].tolist())
    else:
        train, test = make_crops(photos, held_out, rng)
        if args.crops:
            arrays = {"train_x": train[0], "train_y": train[1], "test_x": test[0], "test_y": test[1]}
            np.savez(args.crops, **{name: np.asarray(value) for name, value in arrays.items()})
    augmentation = Augmentation(**AUGMENTATION)
    net = train_listwise(
        train, test, args.epochs, args.width, augment=lambda crop: photometric(crop, rng, augmentation)
    )
    save_net(net, args.out)
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
