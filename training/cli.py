"""`m2u-train`: a thin Click layer over `train_mseg` and `train_gan`.

m2u-train mseg --data OUT --out RUN_MSEG
m2u-train gan  --data OUT --mseg RUN_MSEG/mseg.safetensors --out RUN_GAN
m2u-train gan  --out RUN_GAN --resume [--max-steps N]          (the run's saved config; architecture kept)
torchrun --nproc-per-node 2 -m m2u.training.cli gan ...     (DDP; gloo on CPU, NCCL on CUDA)
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from m2u.training.config import MASK_SOURCES, PRECISIONS, GanTrainConfig, MSegTrainConfig, OptimizerConfig
from m2u.training.losses import IMAGENET_BACKBONE

_defaults = GanTrainConfig(mask_source="gt")
_mseg_defaults = MSegTrainConfig()
_mseg_model_defaults = _mseg_defaults.model
_optimizer_defaults = OptimizerConfig()


def _run_options(function: Callable) -> Callable:
    options = [
        click.option(
            "--data",
            default=None,
            type=click.Path(file_okay=False),
            help="Dataset folder (m2u-make-dataset); with --resume, the run's own by default.",
        ),
        click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder."),
        click.option("--batch-size", default=_defaults.batch_size, show_default=True, type=click.IntRange(1)),
        click.option("--epochs", default=_defaults.epochs, show_default=True, type=click.IntRange(1)),
        click.option("--max-steps", default=None, type=click.IntRange(1), help="Stop after this many steps."),
        click.option("--max-seconds", default=None, type=click.FloatRange(0), help="Wall-clock budget."),
        click.option("--lr", default=_optimizer_defaults.learning_rate, show_default=True, type=float),
        click.option(
            "--milestones",
            default=",".join(str(m) for m in _optimizer_defaults.milestones),
            show_default=True,
            help="Iterations where the learning rate is multiplied by --lr-decay (comma-separated).",
        ),
        click.option("--lr-decay", default=_optimizer_defaults.decay, show_default=True, type=float),
        click.option("--val-every", default=_defaults.val_every, show_default=True, type=click.IntRange(0)),
        click.option(
            "--val-batches", default=_defaults.val_batches, show_default=True, type=click.IntRange(1)
        ),
        click.option("--grid-every", default=_defaults.grid_every, show_default=True, type=click.IntRange(1)),
        click.option(
            "--checkpoint-every",
            default=_defaults.checkpoint_every,
            show_default=True,
            type=click.IntRange(1),
        ),
        click.option("--log-every", default=_defaults.log_every, show_default=True, type=click.IntRange(1)),
        click.option("--seed", default=_defaults.seed, show_default=True, type=int),
        click.option(
            "--num-workers", default=_defaults.num_workers, show_default=True, type=click.IntRange(0)
        ),
        click.option(
            "--device", default=_defaults.device, show_default=True, help="auto, cpu, cuda or cuda:N."
        ),
        click.option(
            "--precision",
            type=click.Choice(PRECISIONS),
            default=_defaults.precision,
            show_default=True,
            help="auto: bf16 autocast where the CPU/GPU has native bf16 (checked at start-up), else fp32.",
        ),
        click.option("--channels-last", is_flag=True, help="Channels-last memory format."),
        click.option("--compile", "compile_", is_flag=True, help="torch.compile the trained networks."),
        click.option(
            "--resume",
            is_flag=True,
            help="Continue the run in --out from its last checkpoint, with its saved config (RUN/config.json); "
            "options given now override it, except architecture options, which must match.",
        ),
        click.option("--no-progress", is_flag=True, help="No progress bar."),
        click.option("--no-test", is_flag=True, help="Skip the test-split evaluation at the end."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _run_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    try:
        milestones = tuple(int(m) for m in options.pop("milestones").split(",") if m.strip())
    except ValueError as error:
        raise click.BadParameter(f"--milestones must be comma-separated integers ({error})") from None
    optimizer = OptimizerConfig(
        learning_rate=options.pop("lr"), milestones=milestones, decay=options.pop("lr_decay")
    )
    return {
        "data": options.pop("data") or "",
        "out": options.pop("out"),
        "optimizer": optimizer,
        "compile": options.pop("compile_"),
        "progress": not options.pop("no_progress"),
        "evaluate_test": not options.pop("no_test"),
        **{name: options.pop(name) for name in list(options) if name in _RUN_FIELDS},
    }


_RUN_FIELDS = {
    "batch_size", "epochs", "max_steps", "max_seconds", "val_every", "val_batches", "grid_every",
    "checkpoint_every", "log_every", "seed", "num_workers", "device", "precision", "channels_last", "resume",
}  # fmt: skip


# CLI parameters that are not named as their config field: parameter -> field.
_PARAMETER_FIELDS = {
    "lr": "optimizer",
    "milestones": "optimizer",
    "lr_decay": "optimizer",
    "compile_": "compile",
    "no_progress": "progress",
    "no_test": "evaluate_test",
}
# Architecture parameters: parameter -> (config field, sub-field). --resume refuses a value that differs.
_ARCHITECTURE_PARAMETERS = {
    "base_channels": ("model", "base_channels"),
    "levels": ("model", "levels"),
    "stages": ("generator", "stages"),
    "no_segmentation_guidance": ("generator", "segmentation_guidance"),
    "no_channel_attention": ("generator", "channel_attention"),
    "width_multiplier": ("generator", "width_multiplier"),
}


def _explicit_parameters(ctx: click.Context) -> list[str]:
    sources = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    return [name for name in ctx.params if ctx.get_parameter_source(name) in sources]


def _option_name(ctx: click.Context, parameter: str) -> str:
    for param in ctx.command.params:
        if param.name == parameter and param.opts:
            return max(param.opts, key=len)
    return parameter


def _build_config(ctx: click.Context, cls: type, kwargs: dict[str, Any]) -> Any:
    """The config to train with. A new run: cls(**kwargs) (from the options). --resume of a run with a saved
    config (RUN/config.json): the saved config, with the options given on this command line applied over it;
    an architecture option that differs from the run's is one UsageError sentence."""
    from dataclasses import fields

    from m2u.training.config import read_run_config

    try:
        saved = read_run_config(cls, kwargs["out"]) if kwargs.get("resume") else None
        if saved is None:
            if not kwargs.get("data"):
                raise click.UsageError(
                    "--data is required (it may be left out only with --resume of a saved run)"
                )
            return cls(**kwargs)
        values = {f.name: getattr(saved, f.name) for f in fields(saved)}
        conflicts = []
        for parameter in _explicit_parameters(ctx):
            if parameter in _ARCHITECTURE_PARAMETERS:
                field_name, sub = _ARCHITECTURE_PARAMETERS[parameter]
                have, want = getattr(values[field_name], sub), getattr(kwargs[field_name], sub)
                if have != want:
                    conflicts.append(
                        f"{_option_name(ctx, parameter)} (the run has {field_name}.{sub}={have})"
                    )
            else:
                name = _PARAMETER_FIELDS.get(parameter, parameter)
                if name in values and name in kwargs:
                    values[name] = kwargs[name]
        if conflicts:
            raise click.UsageError(
                f"--resume: {', '.join(conflicts)} would change the architecture of the run in {kwargs['out']}; "
                "drop the option (--resume reads it from the run) or choose another --out"
            )
        values["resume"] = True
        return cls(**values)
    except ValueError as error:
        raise click.UsageError(str(error)) from None


def _recipe() -> str:
    return " ".join(["m2u-train", *sys.argv[1:]])


def _run(train: Callable[[Any], dict], config: Any) -> None:
    from m2u.training.checkpoint import CheckpointError
    from m2u.training.losses import VGGWeightsUnavailable
    from m2u.training.trainer import NonFiniteLossError

    try:
        results = train(config)
    except (
        VGGWeightsUnavailable,
        NonFiniteLossError,
        CheckpointError,
        FileExistsError,
        FileNotFoundError,
        ValueError,
    ) as error:
        raise click.ClickException(str(error)) from None
    click.echo(json.dumps(results, indent=2, sort_keys=True, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def train_main() -> None:
    """Train M-Seg and the M2UNet GAN on shards written by m2u-make-dataset."""


@train_main.command("mseg")
@_run_options
@click.option(
    "--base-channels",
    default=_mseg_model_defaults.base_channels,
    show_default=True,
    type=click.IntRange(1),
    help="M-Seg width.",
)
@click.option(
    "--levels",
    default=_mseg_model_defaults.levels,
    show_default=True,
    type=click.IntRange(2),
    help="M-Seg resolution levels.",
)
@click.option(
    "--threshold",
    default=_mseg_defaults.threshold,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Mask threshold for validation; recorded in mseg.safetensors, which its users read.",
)
@click.pass_context
def mseg_command(
    ctx: click.Context, base_channels: int, levels: int, threshold: float, **options: Any
) -> None:
    """Train the mask segmenter (BCE + Dice); reports Dice and pixel accuracy on val and test."""
    from m2u.training.models import MSegConfig
    from m2u.training.trainer import train_mseg

    try:
        kwargs = {
            "model": MSegConfig(base_channels=base_channels, levels=levels),
            "threshold": threshold,
            "recipe": _recipe(),
            **_run_kwargs(options),
        }
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    _run(train_mseg, _build_config(ctx, MSegTrainConfig, kwargs))


@train_main.command("gan")
@_run_options
@click.option(
    "--mseg", "mseg_checkpoint", type=click.Path(dir_okay=False), help="M-Seg model file (mseg.safetensors)."
)
@click.option(
    "--mask-source", type=click.Choice(MASK_SOURCES), default=GanTrainConfig.mask_source, show_default=True
)
@click.option(
    "--stages",
    type=click.Choice(["3", "5"]),
    default=str(_defaults.generator.stages),
    show_default=True,
    help="Generator depth.",
)
@click.option(
    "--no-segmentation-guidance", is_flag=True, help="Ablation: the generator does not see the mask."
)
@click.option("--no-channel-attention", is_flag=True, help="Ablation: CAR layers without channel attention.")
@click.option(
    "--width-multiplier",
    default=_defaults.generator.width_multiplier,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
)
@click.option("--adversarial-weight", default=_defaults.adversarial_weight, show_default=True, type=float)
@click.option(
    "--reconstruction-weight", default=_defaults.reconstruction_weight, show_default=True, type=float
)
@click.option("--perceptual-weight", default=_defaults.perceptual_weight, show_default=True, type=float)
@click.option(
    "--vgg-weights",
    default=IMAGENET_BACKBONE,
    show_default=True,
    help="'imagenet' (torch hub cache), a vgg19 .pth/.safetensors path, or 'random' (tests only).",
)
@click.pass_context
def gan_command(
    ctx: click.Context,
    mseg_checkpoint: str | None,
    mask_source: str,
    stages: str,
    no_segmentation_guidance: bool,
    no_channel_attention: bool,
    width_multiplier: float,
    adversarial_weight: float,
    reconstruction_weight: float,
    perceptual_weight: float,
    vgg_weights: str,
    **options: Any,
) -> None:
    """Train the CARU2-Net generator and the discriminator, the mask from a frozen M-Seg (or the ground truth)."""
    from m2u.training.models import GeneratorConfig
    from m2u.training.trainer import train_gan

    try:
        kwargs = {
            "generator": GeneratorConfig(
                stages=int(stages),
                segmentation_guidance=not no_segmentation_guidance,
                channel_attention=not no_channel_attention,
                width_multiplier=width_multiplier,
            ),
            "adversarial_weight": adversarial_weight,
            "reconstruction_weight": reconstruction_weight,
            "perceptual_weight": perceptual_weight,
            "vgg_weights": vgg_weights,
            "mask_source": mask_source,
            "mseg_checkpoint": mseg_checkpoint,
            "recipe": _recipe(),
            **_run_kwargs(options),
        }
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    _run(train_gan, _build_config(ctx, GanTrainConfig, kwargs))


if __name__ == "__main__":  # torchrun -m m2u.training.cli ...
    train_main()
