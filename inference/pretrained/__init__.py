"""The models that ship with m2u, loaded by name.

    from m2u.inference import load_pretrained           # (m2u.inference.restore; this package only finds files)
    mseg, generator = load_pretrained()                 # the default model, ready (eval mode)
    mseg, generator = load_pretrained("m2unet-celeba-128", device="cpu")

Each model is one folder in this package, `<name>/` with `mseg.safetensors`, `generator.safetensors` (fp16;
`load_model` reads them back in fp32), `MODEL_CARD.md` and `card.json` (the measured figures the card is made
from). `m2u-unmask` and `m2u-eval` use DEFAULT_MODEL when no model file is given. The weights are written by
the release recipe (benchmarks/release_recipe.py); until they are committed, loading says so.
"""

from __future__ import annotations

from pathlib import Path

from m2u.training.checkpoint import CheckpointError

__all__ = [
    "DEFAULT_MODEL",
    "MSEG_FILE",
    "GENERATOR_FILE",
    "PretrainedUnavailable",
    "available_models",
    "pretrained_dir",
    "pretrained_paths",
]

DEFAULT_MODEL = "m2unet-celeba-128"
MSEG_FILE = "mseg.safetensors"
GENERATOR_FILE = "generator.safetensors"
CARD_FILE = "MODEL_CARD.md"
CARD_JSON = "card.json"
# Where the model folders live: this package's folder (tests point it elsewhere with monkeypatch).
PRETRAINED_ROOT = Path(__file__).resolve().parent


class PretrainedUnavailable(CheckpointError):
    """The named model's weights are not in this installation."""


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
            f"{GENERATOR_FILE}){hint}: pass --mseg and --generator model files, or train them with "
            "benchmarks/release_recipe.py"
        )
    return paths
