"""Does an aligned face crop show a face wearing a mask? A small CNN that says so, for m2u-unmask's decision.

M-Seg cannot answer it: it was trained only on masked faces, and on unmasked CelebA faces the shipped M-Seg marks
the lower face as "mask" (benchmarks/results/real_masks.json: median_mseg_mouth_coverage on unmasked CelebA). This
classifier sees both kinds: m2u-mask's masked CelebA faces and the realism engine's (a dataset's train pairs) against
the same faces unmasked, bare faces with dark lipstick, a beard or a collar, real masked crops (real-mask-seg), plus
crops of faceless images and of plain and printed cloth as "no masked face"; the masks of half the masked faces are
repainted (dark, light, any hue, prints) so that their place on the face, not their colour, tells. At 64x64 from
the dataset alignment with jitter, blur, noise, JPEG and lighting (benchmarks/train_mask_classifier.py makes it). Its weights ship beside the shipped model's
(`MASK_CLASSIFIER`).

A second net of the same shape answers the other question the decision needs: is the aligned crop a face turned 180
degrees (`upside_down_probabilities`, `UPSIDE_DOWN_CLASSIFIER`)? On an upside-down face the 68 points come out
upright-looking on the wrong features, and the mask classifier takes the result (the mask above the "eyes") for a
masked face; the detectors' HOG orientation check barely sees masked faces (benchmarks/train_orientation_classifier.py).

A third net of the same shape reads the crop round a detector's box, before any landmark fit, in its four quarter
turns, and says which shows the face upright (`box_orientations`, `BOX_ORIENTATION_NET`;
benchmarks/train_box_orientation.py): a face lying on its side or upside down shows which way it lies there, where its
68 points, fitted as if upright, do not.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

__all__ = [
    "BOX_ORIENTATION_NET",
    "MASK_CLASSIFIER",
    "UPSIDE_DOWN_CLASSIFIER",
    "box_crop",
    "box_orientations",
    "classifier_from_weights",
    "MaskPresenceEnsemble",
    "MaskPresenceNet",
    "load_box_orientation_net",
    "load_mask_classifier",
    "load_upside_down_classifier",
    "mask_probabilities",
    "upside_down_probabilities",
]

from m2u.core.lazy import loaded_once
from m2u.inference.pretrained import (
    BOX_ORIENTATION_FILE,
    CHECKSUMS_FILE,
    MASK_CLASSIFIER_FILE,
    UPSIDE_DOWN_FILE,
    pretrained_dir,
    verify_checksums,
)

# They ship in the shipped model's folder: m2u keeps every weight file it ships in one place. Benchmarks point these
# at a candidate file to measure it instead (benchmarks/real_masks.py --classifier, --upside-down-classifier,
# --box-orientation).
MASK_CLASSIFIER = pretrained_dir() / MASK_CLASSIFIER_FILE
UPSIDE_DOWN_CLASSIFIER = pretrained_dir() / UPSIDE_DOWN_FILE
BOX_ORIENTATION_NET = pretrained_dir() / BOX_ORIENTATION_FILE
_SHIPPED = (MASK_CLASSIFIER, UPSIDE_DOWN_CLASSIFIER, BOX_ORIENTATION_NET)
INPUT_SIZE = 64
# The box orientation net's crop: the detector's box grown this much (its training draws 1.0-1.6), so the whole face
# is in it even where BlazeFace's box on a lying face sits off its middle.
BOX_CROP_GROW = 1.4


class MaskPresenceNet(nn.Module):
    """Four strided 3x3 conv blocks (64 -> 4 px), global average pooling, one logit: masked face or not."""

    def __init__(self, width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for k, out in enumerate((width, 2 * width, 4 * width, 4 * width)):
            layers += [
                nn.Conv2d(channels, out, 3, stride=2 if k else 1, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.Conv2d(out, out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) in [-1, 1] -> (B,) logits."""
        return self.head(self.features(x).mean(dim=(2, 3)))[:, 0]

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) in [-1, 1] -> (B,) probabilities."""
        return torch.sigmoid(self(x))


class MaskPresenceEnsemble(nn.Module):
    """Several MaskPresenceNets trained by one command with different seeds; their probabilities averaged. One small
    net is a lottery on the hard bare faces: the shipped command with seeds 0, 1 and 2 gives the tuning photos'
    white turtleneck 0.77, 1.00 and 0.98. A file of such nets (benchmarks/pack_classifier_ensemble.py) loads as one
    classifier; the one measured was not shipped (docs/real-masks.md, "Three retrains averaged")."""

    def __init__(self, members: list[MaskPresenceNet]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) in [-1, 1] -> (B,) the members' mean probability."""
        return torch.stack([torch.sigmoid(member(x)) for member in self.members]).mean(0)


def to_input(crops: list[np.ndarray]) -> torch.Tensor:
    """Aligned uint8 RGB crops (any size, the dataset alignment) -> the network's (B, 3, 64, 64) in [-1, 1]."""
    small = [
        c
        if c.shape[:2] == (INPUT_SIZE, INPUT_SIZE)
        else cv2.resize(
            c,
            (INPUT_SIZE, INPUT_SIZE),
            interpolation=cv2.INTER_AREA if c.shape[0] > INPUT_SIZE else cv2.INTER_LINEAR,
        )
        for c in crops
    ]
    return torch.from_numpy(np.stack(small)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def _net(weights: dict[str, torch.Tensor]) -> MaskPresenceNet:
    # The base width is the first convolution's output channels (a wider net is a training option).
    net = MaskPresenceNet(int(weights["features.0.weight"].shape[0]))
    net.load_state_dict(weights)
    return net


def classifier_from_weights(weights: dict[str, torch.Tensor]) -> MaskPresenceNet | MaskPresenceEnsemble:
    """A net from its state dict, or an ensemble from one whose keys are `members.<k>.<net key>`
    (MaskPresenceEnsemble's own state dict)."""
    if not any(key.startswith("members.") for key in weights):
        return _net(weights)
    members: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in weights.items():
        _, index, rest = key.split(".", 2)
        members.setdefault(int(index), {})[rest] = value
    if sorted(members) != list(range(len(members))):
        raise ValueError(f"ensemble members are numbered {sorted(members)}, not 0..{len(members) - 1}")
    return MaskPresenceEnsemble([_net(members[k]) for k in range(len(members))])


def _load(file: Path, what: str) -> MaskPresenceNet | MaskPresenceEnsemble:
    from safetensors.torch import load_file

    if not file.is_file():
        raise FileNotFoundError(f"{what} weights not found: {file} (a broken install?)")
    # A file in a model folder (the shipped one above all) is checked against the folder's checksums.json, as its
    # weights are; a candidate file elsewhere has no record to be checked against.
    if file in _SHIPPED or (file.parent / CHECKSUMS_FILE).is_file():
        verify_checksums(file.parent, (file.name,))
    weights = load_file(str(file))
    try:
        return classifier_from_weights(weights).eval()
    except (
        RuntimeError,
        KeyError,
        ValueError,
    ) as error:  # torch's refusal lists every tensor: its first line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{file} is not a {what} m2u can load: {first}") from None


@loaded_once
def load_mask_classifier(path: str | None = None) -> MaskPresenceNet | MaskPresenceEnsemble:
    """The shipped classifier (or the one at `path`), on the CPU, in eval mode; loaded once per process."""
    return _load(Path(path) if path else MASK_CLASSIFIER, "mask classifier")


@loaded_once
def load_box_orientation_net(path: str | None = None) -> MaskPresenceNet | MaskPresenceEnsemble:
    """The shipped box orientation net (or the one at `path`), as `load_mask_classifier`."""
    return _load(Path(path) if path else BOX_ORIENTATION_NET, "box orientation net")


@loaded_once
def load_upside_down_classifier(path: str | None = None) -> MaskPresenceNet | MaskPresenceEnsemble:
    """The shipped upside-down classifier (or the one at `path`), as `load_mask_classifier`."""
    return _load(Path(path) if path else UPSIDE_DOWN_CLASSIFIER, "upside-down classifier")


def box_crop(
    image: np.ndarray,
    box: tuple[float, float, float, float],
    grow: float = BOX_CROP_GROW,
    shift: tuple[float, float] | np.ndarray = (0.0, 0.0),
) -> np.ndarray:
    """The square around a detector's `box` (left, top, right, bottom) grown `grow` times its longer side and moved by
    `shift` (fractions of that side), as the box orientation net's 64 px input (uint8 RGB); the photo's edge pixels
    repeat past its border."""
    left, top, right, bottom = (float(v) for v in box)
    side = max(right - left, bottom - top, 1.0) * grow
    centre_x = (left + right) / 2 + shift[0] * side
    centre_y = (top + bottom) / 2 + shift[1] * side
    scale = INPUT_SIZE / side
    matrix = np.array(
        [[scale, 0, INPUT_SIZE / 2 - centre_x * scale], [0, scale, INPUT_SIZE / 2 - centre_y * scale]],
        np.float32,
    )
    return cv2.warpAffine(
        image, matrix, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE
    )


@torch.no_grad()
def _mirror_averaged(crops: list[np.ndarray], net: MaskPresenceNet | MaskPresenceEnsemble) -> np.ndarray:
    """The mean of the net's probability for each crop and for its mirror image, (N,) float."""
    batch = to_input(crops)
    both = net.probabilities(torch.cat([batch, batch.flip(3)]))
    return both.view(2, len(crops)).mean(0).numpy().astype(np.float64)


def mask_probabilities(
    crops: list[np.ndarray], net: MaskPresenceNet | MaskPresenceEnsemble | None = None
) -> np.ndarray:
    """P(masked face) for each aligned crop, (N,) float: the mean of the crop's and its mirror image's (a face and
    its mirror image wear the same mask, so the answer should not depend on which way the face turns)."""
    if not crops:
        return np.zeros(0)
    return _mirror_averaged(crops, net or load_mask_classifier())


def upside_down_probabilities(
    crops: list[np.ndarray], net: MaskPresenceNet | MaskPresenceEnsemble | None = None
) -> np.ndarray:
    """P(the face is turned 180 degrees, its landmarks fitted as if upright) for each aligned crop, (N,) float,
    mirror-averaged as `mask_probabilities`."""
    if not crops:
        return np.zeros(0)
    return _mirror_averaged(crops, net or load_upside_down_classifier())


@torch.no_grad()
def box_orientations(
    image: np.ndarray,
    boxes: list[tuple[float, float, float, float]],
    net: MaskPresenceNet | MaskPresenceEnsemble | None = None,
) -> np.ndarray:
    """For each detector box of `image`, how sure the box orientation net is that turning the photo 0, 1, 2 or 3
    quarter turns anticlockwise (np.rot90) shows the face upright: (N, 4) float, each row summing to 1. The net gives
    one logit per crop (`box_crop` turned each way), "not upright"; it was trained on the four turns of a crop
    together (a softmax over them), so only their differences mean something, and a face and its mirror image lie
    the same way up (the logits averaged over both)."""
    if not boxes:
        return np.zeros((0, 4))
    net = net or load_box_orientation_net()
    batch = to_input(
        [
            np.ascontiguousarray(np.rot90(box_crop(image, box), quarter_turns))
            for box in boxes
            for quarter_turns in range(4)
        ]
    )
    members = net.members if isinstance(net, MaskPresenceEnsemble) else [net]
    logits = torch.stack([m(torch.cat([batch, batch.flip(3)])) for m in members]).mean(0)
    logits = logits.view(2, len(boxes), 4).mean(0)
    return torch.softmax(-logits, dim=1).numpy().astype(np.float64)
