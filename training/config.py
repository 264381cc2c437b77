"""Training configuration dataclasses; defaults are the paper's (section 4.1) unless noted."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from m2u.core.checks import check_types
from m2u.core.configfile import config_from_dict
from m2u.core.errors import SettingError
from m2u.core.runtime import runtime_field
from m2u.datasets.augment import AugmentConfig
from m2u.training.losses import (
    GanLossConfig,
    SegmentationLossConfig,
)
from m2u.training.models import DiscriminatorConfig, GeneratorConfig, MSegConfig
from m2u.training.models.mseg import DEFAULT_MASK_THRESHOLD, check_mask_threshold

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MASK_SOURCES = ("mseg", "gt")


@dataclass
class OptimizerConfig:
    learning_rate: float = 1e-3  # Adam, paper 4.1
    betas: tuple[float, float] = (0.9, 0.999)  # not stated in the paper: PyTorch's Adam defaults
    # Iterations of one process; under DDP the trainer divides them by the world size (same samples seen).
    milestones: tuple[int, ...] = (50_000, 75_000, 90_000)
    decay: float = 0.1

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.milestones = tuple(int(m) for m in self.milestones)
        if not 0 < self.learning_rate < float("inf"):  # NaN fails too
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate}")
        # The rate is multiplied by `decay` at each milestone: 0 or less would stop or reverse training (a
        # negative rate is gradient ascent), more than 1 would raise it.
        if not 0 < self.decay <= 1:  # NaN fails too
            raise ValueError(f"decay must be a number in (0, 1], got {self.decay}")
        if any(m < 1 for m in self.milestones):
            raise ValueError(f"milestones must be steps >= 1, got {list(self.milestones)}")
        # Adam's two decay rates: checked here, not by torch's "Invalid beta parameter at index 0" at the start.
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):  # NaN fails too
            raise ValueError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")


@dataclass
class RunConfig:
    """What every trainer shares: data, schedule, logging, checkpoints, devices and precision."""

    data: str = ""  # dataset folder OUT (m2u-make-dataset layout)
    out: str = ""  # run folder
    batch_size: int = 8
    epochs: int = 100
    max_steps: int | None = None  # stop earlier than `epochs` (counts optimiser steps)
    max_seconds: float | None = (
        None  # this process's wall-clock budget; stops at a step boundary, checkpointed
    )
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    val_every: int = 1000  # steps; 0 disables periodic validation
    # Per validation: the split's first N batches of one process, the same samples on any DDP world size (each
    # rank evaluates its part: m2u.training.loop.Trainer.evaluate); None = the whole split.
    val_batches: int | None = 50
    grid_every: int = 1000  # steps; PNG grids (masked | mask | output | ground truth)
    checkpoint_every: int = 1000  # steps
    log_every: int = runtime_field(default=50)  # steps
    seed: int = 0
    # Loader processes: they change the order batches arrive in, not what the run is; a finished run is not
    # redone for another value (m2u.core.runtime).
    num_workers: int = runtime_field(default=2)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto (bf16 where the hardware has it natively, else fp32: m2u.training.device.resolve_precision) | fp32 |
    # bf16 (CPU or CUDA autocast) | fp16 (CUDA, with a grad scaler)
    precision: str = "auto"
    channels_last: bool = False
    compile: bool = False  # torch.compile the trained networks
    resume: bool = runtime_field(default=False)
    progress: bool = runtime_field(default=True)
    evaluate_test: bool = True  # evaluate the test split at the end
    recipe: str = ""  # the command (or recipe) that trained the run: model files record it as provenance
    # Training pairs through m2u.datasets.augment (tight crops, scale jitter, noise, blur, JPEG, colour, low light):
    # for real photos. Off by default (the paper trains on the aligned synthetic pairs as they are).
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Fine-tuning: {network name ("mseg", "generator", "discriminator"): model file} loaded before the first step
    # (a resumed run takes its checkpoint instead). The architecture must match the file's.
    init_weights: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.optimizer, dict):
            self.optimizer = OptimizerConfig(**self.optimizer)
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("batch_size", "epochs"):  # each named alone: the message names the one that is wrong
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        for name in ("checkpoint_every", "log_every", "grid_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        # Checked here, where every way in passes (options, --set, config files): the options' own ranges said
        # them on the command line only, and `--set max_seconds=-1` trained a step, `val_batches=0` validated
        # nothing and wrote empty figures.
        if self.val_every < 0:
            raise ValueError(f"val_every must be >= 0 (0: no periodic validation), got {self.val_every}")
        if self.val_batches is not None and self.val_batches < 1:
            raise ValueError(f"val_batches must be >= 1 (or null: the whole split), got {self.val_batches}")
        if self.max_seconds is not None and not self.max_seconds >= 0:  # NaN fails too
            raise ValueError(f"max_seconds must be >= 0, got {self.max_seconds}")

    def to_json(self) -> str:
        """The config as the run folder records it, with the local files it names as absolute paths: a run
        resumed from another working folder (`--out ../run --resume`) finds its dataset and M-Seg again."""
        values = asdict(self)
        for name in _PATH_FIELDS:
            value = values.get(name)
            if isinstance(value, str):
                values[name] = recorded_path(value)
        return json.dumps(values, sort_keys=True, default=str)


# The fields that name local files or folders (a name such as "random" or a URL is left as it is).
_PATH_FIELDS = ("data", "mseg_checkpoint", "vgg_weights")


def recorded_path(value: str) -> str:
    """`value` as a run records a local file or folder it names: absolute where it exists (found again from
    another working folder); a URL, a name or a missing path as it is."""
    if value and "://" not in value and os.path.exists(value):
        return os.path.abspath(value)
    return value


@dataclass
class MSegTrainConfig(SegmentationLossConfig, RunConfig):
    """M-Seg training: the run options, the loss weights (`SegmentationLossConfig`) and the network."""

    model: MSegConfig = field(default_factory=MSegConfig)
    mask_threshold: float = (
        DEFAULT_MASK_THRESHOLD  # recorded in mseg.safetensors: its users read it from there
    )
    # Share of training samples shown as the bare face (the pair's unmasked image) with an empty target. The paper
    # trains on masked faces only (0.0); then M-Seg marks the lower half of any face as mask, so its mask cannot
    # tell a masked face from a bare one. m2u-unmask's decision reads M-Seg's mask fraction as evidence of a mask.
    bare_face_share: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.model, dict):
            self.model = MSegConfig(**self.model)
        check_types(self)  # epochs=nan trained 0 steps and saved an untrained model; NaN loss weights too
        check_mask_threshold(self.mask_threshold)
        if not 0.0 <= self.bare_face_share < 1.0:
            raise ValueError(f"bare_face_share must be within [0, 1), got {self.bare_face_share}")


@dataclass
class GanTrainConfig(GanLossConfig, RunConfig):
    """GAN training: the run options, the paper's loss weights (`GanLossConfig`) and the two networks."""

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    mask_source: str = "mseg"  # "mseg": the frozen M-Seg's prediction feeds G; "gt": the dataset's mask
    mseg_checkpoint: str | None = None  # an M-Seg model file (save_model); required with mask_source="mseg"
    mask_threshold: float | None = None  # None: the M-Seg file's own threshold
    # The hole the generator is trained to fill, grown by a random 0..hole_grow_px pixels per sample (a square
    # neighbourhood): m2u-unmask fills M-Seg's mask grown by UnmaskConfig.dilate, so at inference the hole reaches
    # past the mask's edge onto face the generator must repaint as it was. 0 (the paper's setting): the mask as it
    # is, and no random draw is taken, so runs without it keep their batches. Validation and the test figures read the
    # mask as it is either way (the evaluator's setting).
    hole_grow_px: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            not isinstance(self.hole_grow_px, int)
            or isinstance(self.hole_grow_px, bool)
            or self.hole_grow_px < 0
        ):
            raise ValueError(f"hole_grow_px must be a whole number of pixels >= 0, got {self.hole_grow_px!r}")
        if isinstance(self.generator, dict):
            self.generator = GeneratorConfig(**self.generator)
        if isinstance(self.discriminator, dict):
            self.discriminator = DiscriminatorConfig(**self.discriminator)
        check_types(self)  # NaN or infinite loss weights, epochs=nan: refused before the run folder is made
        if self.mask_source not in MASK_SOURCES:
            raise ValueError(f"mask_source must be one of {MASK_SOURCES}, got {self.mask_source!r}")
        if self.mask_source == "mseg" and not self.mseg_checkpoint:
            raise SettingError(
                "mseg_checkpoint",
                "an M-Seg model file is needed where `mask_source` is 'mseg' (or set `mask_source` to 'gt')",
            )
        check_mask_threshold(self.mask_threshold)


RUN_CONFIG_NAME = "config.json"  # in the run folder: the config the run was started (or last resumed) with

# The fields of each training config that make the network's architecture: a resumed run must keep them.
ARCHITECTURE_FIELDS: dict[str, tuple[str, ...]] = {
    "MSegTrainConfig": ("model",),
    "GanTrainConfig": ("generator", "discriminator"),
}


def architecture(config: RunConfig) -> dict[str, dict[str, Any]]:
    """{field: config as a dict} for the architecture fields of a training config."""
    names = ARCHITECTURE_FIELDS.get(type(config).__name__, ())
    return {name: json.loads(json.dumps(asdict(getattr(config, name)))) for name in names}


def read_run_config(cls: type, out: str | Path) -> Any | None:
    """The config a run folder was trained with (RUN/config.json), or None when there is none."""
    path = Path(out) / RUN_CONFIG_NAME
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
        return config_from_dict(cls, values)
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise ValueError(
            f"{path} is not a readable {cls.__name__} (the run's saved config): {error}"
        ) from None


def architecture_conflicts(saved: RunConfig, requested: RunConfig) -> list[str]:
    """'field.sub: saved -> requested' for every architecture value the requested config changes."""
    conflicts = []
    before, after = architecture(saved), architecture(requested)
    for name, values in before.items():
        for key, value in values.items():
            if after[name].get(key) != value:
                conflicts.append(f"{name}.{key} {value} -> {after[name].get(key)}")
    return conflicts
