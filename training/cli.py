"""`m2u-train`: a thin Click layer over `train_mseg` and `train_gan`.

m2u-train mseg --data OUT --out RUN_MSEG
m2u-train gan  --data OUT --mseg RUN_MSEG/mseg.safetensors --out RUN_GAN
m2u-train gan  -c configs/gan.yaml --set max_steps=100 --set stages=3   (a config file and overrides)
m2u-train gan  -c configs/gan.yaml --print-config                       (the resolved config, as a config file)
m2u-train gan  --out RUN_GAN --resume [--max-steps N]          (the run's saved config; architecture kept)
torchrun --nproc-per-node 2 -m m2u.training.cli gan ...     (DDP; gloo on CPU, NCCL on CUDA)

Every option's default is its config dataclass's (MSegTrainConfig, GanTrainConfig); a config file (YAML, TOML or
JSON) holds options by their long names (batch_size, lr, mseg, stages) and any other field by its (nested) field
name; options given on the command line override the file, and `--set` overrides both.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from m2u.core.cli import (
    CONTEXT_SETTINGS,
    Refused,
    alias_option,
    apply_aliases,
    device_option,
    exit_codes_help,
    notice,
    out_option,
    progress_options,
    seed_option,
    threshold_option,
    workers_option,
)
from m2u.core.guard import guard_command
from m2u.training.cliutil import ConfigBinding, config_file_options, model_warnings
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
    "test": "evaluate_test",
    "workers": "num_workers",
}
MSEG_BINDING = ConfigBinding(
    MSegTrainConfig, {**_RUN_PATHS, "base_channels": "model.base_channels", "levels": "model.levels"}
)
GAN_BINDING = ConfigBinding(
    GanTrainConfig,
    {
        **_RUN_PATHS,
        "stages": "generator.stages",
        "segmentation_guidance": "generator.segmentation_guidance",
        "channel_attention": "generator.channel_attention",
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
    options: list[Callable[[Callable], Callable]] = [
        config_file_options,
        click.option(
            "--data",
            default=RunConfig.data,
            type=click.Path(file_okay=False),
            help="Dataset folder or fsspec URL (m2u-make-dataset's -o); required, except with --resume of a saved "
            "run.",
        ),
        out_option("Run folder; required.", required=False, dest="out", default=RunConfig.out),
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
            help="Wall-clock budget of this process (a resumed run gets it anew).",
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
            "--val-batches",
            default=RunConfig.val_batches,
            show_default=True,
            type=click.IntRange(1),
            help="Batches each validation reads: the val split's first N batches as one process reads them, the "
            "same samples (and figures) on any number of DDP ranks, each evaluating its part (the test split is "
            "always read whole).",
        ),
        click.option("--grid-every", default=RunConfig.grid_every, show_default=True, type=click.IntRange(1)),
        click.option(
            "--checkpoint-every",
            default=RunConfig.checkpoint_every,
            show_default=True,
            type=click.IntRange(1),
        ),
        click.option("--log-every", default=RunConfig.log_every, show_default=True, type=click.IntRange(1)),
        seed_option(RunConfig.seed),
        workers_option(
            RunConfig.num_workers,
            help="Data-loading worker processes; 0 = load in this process (no worker processes).",
        ),
        alias_option("--num-workers", target="workers", type=click.IntRange(0)),
        device_option(RunConfig.device),
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
        progress_options,
        click.option(
            "--test/--no-test",
            default=RunConfig.evaluate_test,
            show_default=True,
            help="Evaluate the test split at the end.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _checked(config: RunConfig, nothing_to_resume: bool = False) -> RunConfig:
    """`config` when it names its data and run folder; `nothing_to_resume`: --resume found no run in --out."""
    _check_something_to_resume(config, nothing_to_resume)
    for name in ("data", "out"):
        if not getattr(config, name):
            flag = "--out/-o" if name == "out" else "--data"
            raise click.UsageError(
                f"{flag} is required (or `{name}:` in the config file; --data may be left out with --resume)"
            )
    if nothing_to_resume:
        # A script that always passes --resume (a batch job requeued) starts the run the first time: said so.
        notice(f"--resume: no run in {config.out} yet (no config.json); starting one")
    return config


def _check_something_to_resume(config: RunConfig, nothing_to_resume: bool) -> None:
    """--resume on a folder without a run, and no --data to start one: refused (--print-config too, which printed a
    config with no data that could not train)."""
    if nothing_to_resume and config.out and not config.data:
        raise click.UsageError(
            f"--resume: no run in {config.out} to continue (no config.json); give --data to start one there"
        )


def _check_run_kind(binding: ConfigBinding, base: dict[str, Any], run: str | None) -> None:
    """--resume of a run another command trained (m2u-train mseg on a GAN's run folder): one sentence saying so,
    instead of the first of its options this command does not know."""
    if not base:
        return
    known = {f.name for f in dataclasses.fields(binding.cls)}
    foreign = sorted(set(base) - known)
    if foreign:
        own = "gan" if "adversarial_weight" in known else "mseg"
        kind = "gan" if "adversarial_weight" in base else "mseg" if "bare_face_share" in base else None
        if kind is not None and kind != own:
            raise click.UsageError(
                f"--resume: {run} holds a run of m2u-train {kind}, not of this command (its config.json has "
                f"{', '.join(foreign[:3])}); resume it with m2u-train {kind} or choose another --out"
            )
        # The run's own kind (or none told) with options this m2u does not know: another version's, or edited.
        raise click.UsageError(
            f"--resume: {run}/config.json has options m2u-train {own} does not know ({', '.join(foreign[:3])}): "
            "written by another m2u version, or edited; remove them from it (the rest is kept) or choose another "
            "--out"
        )


def _resolve(binding: ConfigBinding, options: dict[str, Any]) -> RunConfig | None:
    """The config to train with: a new run from the options (and the config file, --set). --resume of a run
    with a saved config (RUN/config.json): that config, with what this command line gives applied over it, so
    `--resume` alone continues the run as it was started; an architecture option that differs from the run's
    is refused before anything is built (one sentence). The run's config.json then records this merged
    configuration, and its recipe keeps the command that started the run. None after --print-config."""
    from m2u.training.checkpoint import CheckpointError, read_run_config_dict

    ctx = click.get_current_context()
    apply_aliases(options, ctx)
    if options.pop("quiet", False):
        options["progress"] = False
        ctx.set_parameter_source("progress", click.core.ParameterSource.COMMANDLINE)
    try:
        base = read_run_config_dict(options["out"]) if options.get("resume") and options.get("out") else {}
    except (
        CheckpointError
    ) as error:  # a damaged config.json refuses the run as a bad value in it does (exit 2)
        raise Refused(str(error)) from None
    _check_run_kind(binding, base, options["out"] if base else None)
    nothing_to_resume = bool(options.get("resume") and options.get("out") and not base)
    saved = f"the run's saved config {Path(options['out']) / 'config.json'}" if base else None
    # The saved recipe is left out of the build: what `recipe` holds after it is the one this command gives
    # (a config file's or --set's; no option sets it), "" when it gives none.
    started = str(base.get("recipe") or "") if base else ""
    config = binding.build(options, base={**base, "recipe": ""} if base else None, base_source=saved)
    if base:
        _refuse_architecture_changes(binding, config, options)
    if options.get("print_config"):
        _check_something_to_resume(config, nothing_to_resume)
        binding.print_config(ctx.command, _with(config, config.recipe or started), {})
        return None
    return _checked(_with(config, _recorded_recipe(config.recipe, started)), nothing_to_resume)


def _with(config: RunConfig, recipe: str) -> RunConfig:
    return dataclasses.replace(config, recipe=recipe)


def _recorded_recipe(given: str, started: str) -> str:
    """The recipe the run records (config.json, each model file's provenance): the one given (a config file's
    or --set's `recipe`), else this command line, quoted so that it runs again. A resumed run keeps the recipe
    that started it and says how it went on: "STARTED (resumed: THIS)"."""
    recipe = given or _recipe()
    if started and started != recipe:
        return f"{started} (resumed: {recipe})"
    return recipe


def _refuse_architecture_changes(binding: ConfigBinding, config: RunConfig, options: dict[str, Any]) -> None:
    """--resume with a value that changes the run's architecture: one sentence naming where it was given (the
    option, the --set key or the config file's key: "drop the option" sent a user who wrote it in a config file
    looking for an option the command line did not have)."""
    from m2u.training.config import architecture_conflicts, read_run_config

    saved = read_run_config(type(config), config.out)
    conflicts = architecture_conflicts(saved, config) if saved is not None else []
    if not conflicts:
        return
    names = {path.lstrip("!"): name for name, path in binding.paths.items()}
    named = [f"{_given_as(names, c.split(' ')[0], options)} ({c})" for c in conflicts]
    raise click.UsageError(
        f"--resume: {', '.join(named)} would change the architecture of the run in {config.out}; drop {'them' if len(named) > 1 else 'it'} "
        "(--resume reads it from the run) or choose another --out"
    )


def _given_as(names: dict[str, str], path: str, options: dict[str, Any]) -> str:
    """How the user gave the field `path`: its option ("--base-channels"), the --set key ("--set base_channels")
    or the config file's key ("base_channels in c.yaml"), by precedence (--set over the command line over the
    file)."""
    name = names.get(path)
    keys = [key for key in (name, path) if key]
    groups = [path.rsplit(".", 1)[0]] if "." in path else []  # --set model={...} sets model.levels too
    for item in reversed(tuple(options.get("sets") or ())):
        key = str(item).split("=", 1)[0].strip()
        if key in keys or key in groups:
            return f"--set {key}"
    ctx = click.get_current_context()
    if name and ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
        return "--" + name.replace("_", "-")
    config_file = options.get("config_file") or options.get("legacy_config_file")
    if config_file:
        return f"{name or path} in {config_file}"
    return "--" + name.replace("_", "-") if name else path


def _recipe() -> str:
    """The command line that trained the model, shell-quoted (an argument with a space stays one argument), so
    that it can be run again: model files record it as provenance when no recipe is given."""
    return shlex.join(["m2u-train", *sys.argv[1:]])


def _run(train: Callable[[Any], dict], config: Any, binding: ConfigBinding) -> None:
    from m2u.training.checkpoint import CheckpointError
    from m2u.training.distributed import is_main_process
    from m2u.training.guards import NonFiniteLossError
    from m2u.training.losses import VGGWeightsUnavailable

    try:
        with model_warnings():
            results = train(config)
    except NonFiniteLossError as error:  # the run started and failed
        raise click.ClickException(binding.message(error)) from None
    except (VGGWeightsUnavailable, CheckpointError, FileExistsError, FileNotFoundError, ValueError) as error:
        raise Refused(binding.message(error)) from None
    if is_main_process():  # under torchrun every rank returns the results: one copy is printed
        click.echo(json.dumps(results, indent=2, sort_keys=True, default=str))


# mseg's and gan's.
TRAIN_EXIT_CODES = exit_codes_help(
    "trained, or nothing left to train",
    "the run failed (a non-finite loss)",
    "a bad option, a run folder holding another run, a model file of the wrong kind",
    "after the step under way, with its checkpoint: --resume continues",
)


@click.group(context_settings=CONTEXT_SETTINGS)
def train_main() -> None:
    """Train M-Seg and the M2UNet GAN on shards written by m2u-make-dataset."""


@train_main.command("mseg", epilog=TRAIN_EXIT_CODES)
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
    "--bare-face-share",
    default=MSegTrainConfig.bare_face_share,
    show_default=True,
    type=click.FloatRange(0.0, 1.0, max_open=True),
    help="Share of samples shown as the bare face with an empty mask (0: the paper; m2u's release uses 0.25, so "
    "M-Seg's mask tells masked faces from bare ones).",
)
@threshold_option(
    MSegTrainConfig.mask_threshold,
    "mask_threshold",
    help="Mask threshold for validation; recorded in mseg.safetensors, which its users read.",
    show_default=True,
)
def mseg_command(**options: Any) -> None:
    """Train the mask segmenter (BCE + Dice); reports Dice and pixel accuracy on val and test.

    -c/--config FILE (optional): options by their long names, other MSegTrainConfig fields by name
    (configs/mseg.yaml)."""
    from m2u.training.trainer import train_mseg

    config = _resolve(MSEG_BINDING, options)
    if config is not None:
        _run(train_mseg, config, MSEG_BINDING)


@train_main.command("gan", epilog=TRAIN_EXIT_CODES)
@_run_options
@click.option(
    "--mseg", "mseg_checkpoint", type=click.Path(dir_okay=False), help="M-Seg model file (mseg.safetensors)."
)
@click.option(
    "--mask-source", type=click.Choice(MASK_SOURCES), default=GanTrainConfig.mask_source, show_default=True
)
@click.option(
    "--hole-grow",
    "hole_grow_px",
    default=GanTrainConfig.hole_grow_px,
    show_default=True,
    type=click.IntRange(0),
    help="Train on holes grown by a random 0..N pixels each (m2u-unmask fills its mask grown by --grow).",
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
    "--segmentation-guidance/--no-segmentation-guidance",
    default=GeneratorConfig.segmentation_guidance,
    show_default=True,
    help="Ablation (--no-...): the generator does not see the mask.",
)
@click.option(
    "--channel-attention/--no-channel-attention",
    default=GeneratorConfig.channel_attention,
    show_default=True,
    help="Ablation (--no-...): CAR layers without channel attention.",
)
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

    -c/--config FILE (optional): options by their long names, other GanTrainConfig fields by name
    (configs/gan.yaml)."""
    from m2u.training.trainer import train_gan

    config = _resolve(GAN_BINDING, options)
    if config is not None:
        _run(train_gan, config, GAN_BINDING)


# SIGTERM takes the workers with it; a full disk or a refused output is one line (m2u.core.guard).
guard_command(train_main)


if __name__ == "__main__":  # torchrun -m m2u.training.cli ...
    train_main()
