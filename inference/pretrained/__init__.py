"""The models that ship with m2u, loaded by name.

    from m2u.inference import load_pretrained           # (m2u.inference.restore; this package only finds files)
    model = load_pretrained()                           # the default model, ready (eval mode): a TwoStageModel
    model = load_pretrained("m2unet-celeba-128", device="cpu")
    model.mseg, model.generator, model.mseg_info.crop_size

Each model is one folder in this package, `<name>/` with `mseg.safetensors`, `generator.safetensors` (fp16;
`load_model` reads them back in fp32), `MODEL_CARD.md`, `card.json` (the measured figures the card is made
from) and `checksums.json` (the SHA-256 of each weight file, verified every time the model loads: a flipped
byte in the weights is refused instead of restoring faces badly). `m2u-unmask` and `m2u-eval` use DEFAULT_MODEL when no model file is given. The weights are written by
the release recipe (benchmarks/release_recipe.py); until they are committed, loading says so.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from m2u.core.fileio import atomic_write_text
from m2u.training.checkpoint import CheckpointError

__all__ = [
    "DEFAULT_MODEL",
    "MSEG_FILE",
    "GENERATOR_FILE",
    "MASK_CLASSIFIER_FILE",
    "UPSIDE_DOWN_FILE",
    "BOX_ORIENTATION_FILE",
    "PretrainedDamaged",
    "PretrainedUnavailable",
    "available_models",
    "checksum_record",
    "pretrained_dir",
    "pretrained_paths",
    "verify_checksums",
    "write_checksums",
]

DEFAULT_MODEL = "m2unet-celeba-128"
MSEG_FILE = "mseg.safetensors"
GENERATOR_FILE = "generator.safetensors"
MASK_CLASSIFIER_FILE = (
    "mask_presence.safetensors"  # m2u.inference.mask_presence: which found faces wear a mask
)
UPSIDE_DOWN_FILE = (
    "upside_down.safetensors"  # m2u.inference.mask_presence: which aligned faces are turned 180°
)
# m2u.inference.mask_presence: which way up the face in a detector's box is
BOX_ORIENTATION_FILE = "box_orientation.safetensors"
CARD_FILE = "MODEL_CARD.md"
CARD_JSON = "card.json"
CHECKSUMS_FILE = "checksums.json"
# Where the model folders live: this package's folder (tests point it elsewhere with monkeypatch).
PRETRAINED_ROOT = Path(__file__).resolve().parent


class PretrainedUnavailable(CheckpointError):
    """The named model's weights are not in this installation."""


class PretrainedDamaged(CheckpointError):
    """A shipped weight file whose bytes differ from the checksum shipped with it."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(folder: Path) -> Path:
    """Write `folder/checksums.json`: the SHA-256 of its two weight files and of the mask and upside-down
    classifiers and the box orientation net where the folder has them (the release recipe calls this)."""
    return atomic_write_text(folder / CHECKSUMS_FILE, checksum_record(folder))


def checksum_record(folder: Path) -> str:
    """The text of `folder`'s checksums.json: the SHA-256 of each weight file it holds."""
    names = [MSEG_FILE, GENERATOR_FILE]
    names += [
        name
        for name in (MASK_CLASSIFIER_FILE, UPSIDE_DOWN_FILE, BOX_ORIENTATION_FILE)
        if (folder / name).is_file()
    ]
    sums = {name: file_sha256(folder / name) for name in names}
    return json.dumps(sums, indent=2, sort_keys=True) + "\n"


def verify_checksums(folder: Path, names: tuple[str, ...] = (MSEG_FILE, GENERATOR_FILE)) -> None:
    """PretrainedDamaged unless each of the weight files `names` in `folder` has the SHA-256 its checksums.json
    records."""
    record = folder / CHECKSUMS_FILE
    try:
        sums = json.loads(record.read_text())
    except (OSError, ValueError) as error:
        raise PretrainedDamaged(
            f"{record} is missing or unreadable ({error}): the shipped weights cannot be verified; reinstall m2u"
        ) from None
    for name in names:
        if not isinstance(sums, dict) or sums.get(name) != file_sha256(folder / name):
            raise PretrainedDamaged(
                f"{folder / name} does not match its SHA-256 in {record}: the shipped weights are damaged; "
                "reinstall m2u (or pass your own `mseg` and `generator`)"
            )


def pretrained_dir(name: str = DEFAULT_MODEL) -> Path:
    return PRETRAINED_ROOT / name


def available_models() -> list[str]:
    """Names of the model folders that hold both weight files."""
    if not PRETRAINED_ROOT.is_dir():
        return []
    return sorted(
        p.name
        for p in PRETRAINED_ROOT.iterdir()
        if (p / MSEG_FILE).is_file() and (p / GENERATOR_FILE).is_file()
    )


def pretrained_paths(name: str = DEFAULT_MODEL) -> tuple[Path, Path]:
    """(M-Seg file, generator file) of a shipped model; PretrainedUnavailable when they are not there."""
    folder = pretrained_dir(name)
    paths = (folder / MSEG_FILE, folder / GENERATOR_FILE)
    if not all(p.is_file() for p in paths):
        others = [m for m in available_models() if m != name]
        hint = f" (this installation has: {', '.join(others)})" if others else ""
        raise PretrainedUnavailable(
            f"no pretrained weights for {name!r} ship with this m2u yet ({folder} has no {MSEG_FILE} and "
            f"{GENERATOR_FILE}){hint}: pass `mseg` and `generator` model files, or train them with "
            "benchmarks/release_recipe.py"
        )
    verify_checksums(folder)
    return paths
