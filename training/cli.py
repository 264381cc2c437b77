"""`m2u-train`: a thin Click layer over `train_mseg` and `train_gan`.

m2u-train mseg --data OUT --out RUN_MSEG
m2u-train gan  --data OUT --mseg RUN_MSEG/mseg.safetensors --out RUN_GAN
torchrun --nproc-per-node 2 -m m2u.training.cli gan ...     (DDP; gloo on CPU, NCCL on CUDA)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from m2u.training.config import MASK_SOURCES, PRECISIONS, GanTrainConfig, MSegTrainConfig, OptimizerConfig
from m2u.training.losses import IMAGENET_BACKBONE

_defaults = GanTrainConfig(mask_source="gt")
_optimizer_defaults = OptimizerConfig()


def _run_options(function: Callable) -> Callable:
    options = [
        click.option(
            "--data",
            required=True,
            type=click.Path(file_okay=False),
            help="Dataset folder (m2u-make-dataset).",
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
            help="Iterations (one process) where the LR is multiplied by --lr-decay (comma-separated); divided by the DDP world size.",
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
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True),
        click.option("--channels-last", is_flag=True, help="Channels-last memory format."),
        click.option("--compile", "compile_", is_flag=True, help="torch.compile the trained networks."),
        click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint."),
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
        "data": options.pop("data"),
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
    ) as error:
        raise click.ClickException(str(error)) from None
    click.echo(json.dumps(results, indent=2, sort_keys=True, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def train_main() -> None:
    """Train M-Seg and the M2UNet GAN on shards written by m2u-make-dataset."""


@train_main.command("mseg")
@_run_options
@click.option("--base-channels", default=16, show_default=True, type=click.IntRange(1), help="M-Seg width.")
@click.option(
    "--levels", default=5, show_default=True, type=click.IntRange(2), help="M-Seg resolution levels."
)
def mseg_command(base_channels: int, levels: int, **options: Any) -> None:
    """Train the mask segmenter (BCE + Dice); reports Dice and pixel accuracy on val and test."""
    from m2u.training.models import MSegConfig
    from m2u.training.trainer import train_mseg

    try:
        config = MSegTrainConfig(
            model=MSegConfig(base_channels=base_channels, levels=levels), **_run_kwargs(options)
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    _run(train_mseg, config)


@train_main.command("gan")
@_run_options
@click.option(
    "--mseg", "mseg_checkpoint", type=click.Path(dir_okay=False), help="M-Seg model file (mseg.safetensors)."
)
@click.option("--mask-source", type=click.Choice(MASK_SOURCES), default="mseg", show_default=True)
@click.option(
    "--stages", type=click.Choice(["3", "5"]), default="5", show_default=True, help="Generator depth."
)
@click.option(
    "--no-segmentation-guidance", is_flag=True, help="Ablation: the generator does not see the mask."
)
@click.option("--no-channel-attention", is_flag=True, help="Ablation: CAR layers without channel attention.")
@click.option("--width-multiplier", default=1.0, show_default=True, type=click.FloatRange(0, min_open=True))
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
def gan_command(
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
        config = GanTrainConfig(
            generator=GeneratorConfig(
                stages=int(stages),
                segmentation_guidance=not no_segmentation_guidance,
                channel_attention=not no_channel_attention,
                width_multiplier=width_multiplier,
            ),
            adversarial_weight=adversarial_weight,
            reconstruction_weight=reconstruction_weight,
            perceptual_weight=perceptual_weight,
            vgg_weights=vgg_weights,
            mask_source=mask_source,
            mseg_checkpoint=mseg_checkpoint,
            **_run_kwargs(options),
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    _run(train_gan, config)


if __name__ == "__main__":  # torchrun -m m2u.training.cli ...
    train_main()
