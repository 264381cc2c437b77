"""`m2u-train`: a thin Click layer over `train_mseg` and `train_gan`.

m2u-train mseg --data OUT --out RUN_MSEG
m2u-train gan  --data OUT --mseg RUN_MSEG/mseg.safetensors --out RUN_GAN
m2u-train gan  gan.yaml --set max_steps=100 --set generator.stages=3     (a config file and overrides)
m2u-train gan  --out RUN_GAN --resume [--max-steps N]          (the run's saved config; architecture kept)
torchrun --nproc-per-node 2 -m m2u.training.cli gan ...     (DDP; gloo on CPU, NCCL on CUDA)

Every option's default is its config dataclass's (MSegTrainConfig, GanTrainConfig); a config file (YAML, TOML or
JSON) holds any of their fields, nested ones as mappings; options given on the command line override the file,
and `--set` overrides both.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any

import click
from click.core import ParameterSource

from m2u.training.cliutil import ConfigBinding, config_file_options
from m2u.training.config import (
    MASK_SOURCES,
    PRECISIONS,
    GanTrainConfig,
    MSegTrainConfig,
    OptimizerConfig,
    RunConfig,
)
from m2u.training.losses import GanLossConfig
from m2u.training.models import GeneratorConfig, MSegConfig

_RUN_PATHS = {
    "learning_rate": "optimizer.learning_rate",
    "milestones": "optimizer.milestones",
    "decay": "optimizer.decay",
    "compile_": "compile",
    "no_progress": "!progress",
    "no_test": "!evaluate_test",
}
MSEG_BINDING = ConfigBinding(
    MSegTrainConfig, {**_RUN_PATHS, "base_channels": "model.base_channels", "levels": "model.levels"}
)
GAN_BINDING = ConfigBinding(
    GanTrainConfig,
    {
        **_RUN_PATHS,
        "stages": "generator.stages",
        "no_segmentation_guidance": "!generator.segmentation_guidance",
        "no_channel_attention": "!generator.channel_attention",
        "width_multiplier": "generator.width_multiplier",
    },
)


def _milestones(ctx: click.Context, param: click.Parameter, value: str | tuple) -> tuple[int, ...]:
    if isinstance(value, tuple):
        return value
    try:
        return tuple(int(m) for m in value.split(",") if m.strip())
    except ValueError as error:
        raise click.BadParameter(f"comma-separated integers expected ({error})") from None


def _run_options(function: Callable) -> Callable:
    options = [
        config_file_options,
        click.option(
            "--data",
            default=RunConfig.data,
            type=click.Path(file_okay=False),
            help="Dataset folder (m2u-make-dataset); required, except with --resume of a saved run.",
        ),
        click.option(
            "-o",
            "--out",
            default=RunConfig.out,
            type=click.Path(file_okay=False),
            help="Run folder; required.",
        ),
        click.option("--batch-size", default=RunConfig.batch_size, show_default=True, type=click.IntRange(1)),
        click.option("--epochs", default=RunConfig.epochs, show_default=True, type=click.IntRange(1)),
        click.option(
            "--max-steps",
            default=RunConfig.max_steps,
            type=click.IntRange(1),
            help="Stop after this many steps.",
        ),
        click.option(
            "--max-seconds",
            default=RunConfig.max_seconds,
            type=click.FloatRange(0),
            help="Wall-clock budget.",
        ),
        click.option(
            "--lr", "learning_rate", default=OptimizerConfig.learning_rate, show_default=True, type=float
        ),
        click.option(
            "--milestones",
            default=",".join(str(m) for m in OptimizerConfig.milestones),
            show_default=True,
            callback=_milestones,
            help="Iterations (one process) where the LR is multiplied by --lr-decay (comma-separated); "
            "divided by the DDP world size.",
        ),
        click.option("--lr-decay", "decay", default=OptimizerConfig.decay, show_default=True, type=float),
        click.option("--val-every", default=RunConfig.val_every, show_default=True, type=click.IntRange(0)),
        click.option(
            "--val-batches", default=RunConfig.val_batches, show_default=True, type=click.IntRange(1)
        ),
        click.option("--grid-every", default=RunConfig.grid_every, show_default=True, type=click.IntRange(1)),
        click.option(
            "--checkpoint-every",
            default=RunConfig.checkpoint_every,
            show_default=True,
            type=click.IntRange(1),
        ),
        click.option("--log-every", default=RunConfig.log_every, show_default=True, type=click.IntRange(1)),
        click.option("--seed", default=RunConfig.seed, show_default=True, type=int),
        click.option(
            "--num-workers",
            "--workers",
            "num_workers",
            default=RunConfig.num_workers,
            show_default=True,
            type=click.IntRange(0),
            help="Data-loading worker processes; 0 = load in this process (no worker processes).",
        ),
        click.option(
            "--device", default=RunConfig.device, show_default=True, help="auto, cpu, cuda or cuda:N."
        ),
        click.option(
            "--precision",
            type=click.Choice(PRECISIONS),
            default=RunConfig.precision,
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


def _checked(config: RunConfig) -> RunConfig:
    for name in ("data", "out"):
        if not getattr(config, name):
            flag = "--out/-o" if name == "out" else "--data"
            raise click.UsageError(
                f"{flag} is required (or `{name}:` in the config file; --data may be left out with --resume)"
            )
    return config


def _resolve(binding: ConfigBinding, options: dict[str, Any]) -> RunConfig:
    """The config to train with: a new run from the options (and CONFIG_FILE, --set). --resume of a run with a
    saved config (RUN/config.json): that config, with what this command line gives applied over it, so
    `--resume` alone continues the run as it was started; an architecture option that differs from the run's
    is refused by the trainer before anything is built (one sentence)."""
    from m2u.training.checkpoint import read_run_config_dict

    base = read_run_config_dict(options["out"]) if options.get("resume") and options.get("out") else {}
    config = binding.build(options, base=base or None)
    if base:
        _refuse_architecture_changes(binding, config)
    return _checked(dataclasses.replace(config, recipe=_recipe()))


def _refuse_architecture_changes(binding: ConfigBinding, config: RunConfig) -> None:
    """--resume with an option that changes the run's architecture: one sentence naming the option."""
    from m2u.training.config import architecture_conflicts, read_run_config

    saved = read_run_config(type(config), config.out)
    conflicts = architecture_conflicts(saved, config) if saved is not None else []
    if not conflicts:
        return
    flags = {path.lstrip("!"): "--" + name.replace("_", "-") for name, path in binding.paths.items()}
    named = [f"{flags.get(c.split(' ')[0], c.split(' ')[0])} ({c})" for c in conflicts]
    raise click.UsageError(
        f"--resume: {', '.join(named)} would change the architecture of the run in {config.out}; drop the "
        "option (--resume reads it from the run) or choose another --out"
    )


def _recipe() -> str:
    """The command line that trained the model: model files record it as provenance."""
    return " ".join(["m2u-train", *sys.argv[1:]])


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


def _run(train: Callable[[Any], dict], config: Any) -> None:
    from m2u.training.checkpoint import CheckpointError
    from m2u.training.distributed import is_main_process
    from m2u.training.guards import NonFiniteLossError
    from m2u.training.losses import VGGWeightsUnavailable

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
    if is_main_process():  # under torchrun every rank returns the results: one copy is printed
        click.echo(json.dumps(results, indent=2, sort_keys=True, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def train_main() -> None:
    """Train M-Seg and the M2UNet GAN on shards written by m2u-make-dataset."""


@train_main.command("mseg")
@_run_options
@click.option(
    "--base-channels",
    default=MSegConfig.base_channels,
    show_default=True,
    type=click.IntRange(1),
    help="M-Seg width.",
)
@click.option(
    "--levels",
    default=MSegConfig.levels,
    show_default=True,
    type=click.IntRange(2),
    help="M-Seg resolution levels.",
)
@click.option(
    "--threshold",
    "mask_threshold",
    default=MSegTrainConfig.mask_threshold,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Mask threshold for validation; recorded in mseg.safetensors, which its users read.",
)
def mseg_command(**options: Any) -> None:
    """Train the mask segmenter (BCE + Dice); reports Dice and pixel accuracy on val and test.

    CONFIG_FILE (optional): MSegTrainConfig fields in YAML, TOML or JSON."""
    from m2u.training.trainer import train_mseg

    _run(train_mseg, _resolve(MSEG_BINDING, options))


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
    default=str(GeneratorConfig.stages),
    show_default=True,
    callback=lambda ctx, param, value: int(value),
    help="Generator depth.",
)
@click.option(
    "--no-segmentation-guidance", is_flag=True, help="Ablation: the generator does not see the mask."
)
@click.option("--no-channel-attention", is_flag=True, help="Ablation: CAR layers without channel attention.")
@click.option(
    "--width-multiplier",
    default=GeneratorConfig.width_multiplier,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
)
@click.option(
    "--adversarial-weight",
    default=GanLossConfig.adversarial_weight,
    show_default=True,
    type=click.FloatRange(0),
)
@click.option(
    "--reconstruction-weight",
    default=GanLossConfig.reconstruction_weight,
    show_default=True,
    type=click.FloatRange(0),
)
@click.option(
    "--perceptual-weight",
    default=GanLossConfig.perceptual_weight,
    show_default=True,
    type=click.FloatRange(0),
)
@click.option(
    "--ssim-share",
    default=GanLossConfig.ssim_share,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Reconstruction loss: (1 - share) * SmoothL1 + share * (1 - SSIM).",
)
@click.option(
    "--vgg-weights",
    default=GanLossConfig.vgg_weights,
    show_default=True,
    help="'imagenet' (torch hub cache), a vgg19 .pth/.safetensors path, or 'random' (tests only).",
)
def gan_command(**options: Any) -> None:
    """Train the CARU2-Net generator and the discriminator, the mask from a frozen M-Seg (or the ground truth).

    CONFIG_FILE (optional): GanTrainConfig fields in YAML, TOML or JSON."""
    from m2u.training.trainer import train_gan

    _run(train_gan, _resolve(GAN_BINDING, options))


if __name__ == "__main__":  # torchrun -m m2u.training.cli ...
    train_main()
