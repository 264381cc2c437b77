"""m2u-eval: a thin Click layer over `m2u.evaluation.evaluator`.

m2u-eval [CONFIG_FILE] --data OUT --mseg M --generator G -o REPORT [--set metrics.enable_fid=false ...]
CONFIG_FILE (YAML, TOML or JSON) holds EvaluateConfig fields (nested ones as mappings); options given on the
command line override it, `--set` overrides both. Every option's default is EvaluateConfig's.
"""

from __future__ import annotations

from pathlib import Path

import click

from m2u.core.guard import guard_command
from m2u.evaluation.baselines import BASELINES, BaselineConfig
from m2u.evaluation.evaluator import BASELINE_MASKS, EvaluateConfig
from m2u.evaluation.identity import IdentityConfig
from m2u.evaluation.lpips import LPIPSConfig
from m2u.training.cliutil import (
    ConfigBinding,
    config_file_options,
    model_file_options,
    model_warnings,
    user_errors,
)

EVAL_BINDING = ConfigBinding(
    EvaluateConfig,
    {
        "threshold": "mask_threshold",
        "inpaint_radius": "baseline.radius",
        "lpips_net": "metrics.lpips.net",
        "lpips_trunk_weights": "metrics.lpips.trunk_weights",
        "lpips_head_weights": "metrics.lpips.head_weights",
        "no_download": "!metrics.lpips.allow_download",
        "fid_weights": "metrics.fid.weights_path",
        "identity_box": "metrics.identity.box",
        "no_lpips": "!metrics.enable_lpips",
        "no_fid": "!metrics.enable_fid",
        "no_identity": "!metrics.enable_identity",
        "skip_paper_size_cost": "!paper_size_cost",
        "quiet": "!progress",
    },
    other=frozenset({"data", "mseg_path", "generator_path", "out_dir"}),
)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@config_file_options
@click.option(
    "--data", required=True, type=click.Path(exists=True), help="Dataset folder (m2u-make-dataset output)."
)
@click.option(
    "--split", default=EvaluateConfig.split, show_default=True, type=click.Choice(["train", "val", "test"])
)
@model_file_options
@click.option(
    "-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Report folder."
)
@click.option(
    "--batch-size", default=EvaluateConfig.batch_size, show_default=True, type=click.IntRange(min=1)
)
@click.option(
    "--num-workers",
    "--workers",
    "num_workers",
    default=EvaluateConfig.num_workers,
    show_default=True,
    type=click.IntRange(min=0),
    help="Data-loading worker processes; 0 = load in this process (no worker processes).",
)
@click.option(
    "--max-samples",
    default=EvaluateConfig.max_samples,
    type=click.IntRange(min=1),
    help="Evaluate only the first N samples.",
)
@click.option(
    "--threshold",
    default=EvaluateConfig.mask_threshold,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="M-Seg mask threshold (default: the one the M-Seg file records).",
)
@click.option(
    "--baseline",
    "baselines",
    multiple=True,
    default=EvaluateConfig.baselines,
    show_default=True,
    type=click.Choice(sorted(BASELINES)),
    help="Baselines to run; repeatable.",
)
@click.option(
    "--baseline-mask",
    default=EvaluateConfig.baseline_mask,
    show_default=True,
    type=click.Choice(BASELINE_MASKS),
    help="Masks the inpainting baselines get: M-Seg's prediction, the ground truth, or both (two rows each).",
)
@click.option("--inpaint-radius", default=BaselineConfig.radius, show_default=True, type=float)
@click.option("--lpips-net", default=LPIPSConfig.net, show_default=True, type=click.Choice(["alex", "vgg16"]))
@click.option(
    "--lpips-trunk-weights",
    type=click.Path(exists=True, dir_okay=False),
    help="torchvision AlexNet/VGG16 .pth.",
)
@click.option(
    "--lpips-head-weights", type=click.Path(exists=True, dir_okay=False), help="LPIPS v0.1 linear heads .pth."
)
@click.option(
    "--fid-weights",
    type=click.Path(exists=True, dir_okay=False),
    help="FID Inception weights (pt_inception-2015-12-05).",
)
@click.option("--no-download", is_flag=True, help="Use only local / cached weights.")
@click.option(
    "--identity-box", default=IdentityConfig.box, show_default=True, type=click.Choice(["detect", "frame"])
)
@click.option("--no-lpips", is_flag=True)
@click.option("--no-fid", is_flag=True)
@click.option("--no-identity", is_flag=True)
@click.option("--grid-rows", default=EvaluateConfig.grid_rows, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--latency-repeats", default=EvaluateConfig.latency_repeats, show_default=True, type=click.IntRange(min=1)
)
@click.option(
    "--skip-paper-size-cost", is_flag=True, help="Do not count MACs at 256x256 (one slow forward pass)."
)
@click.option(
    "--device", default=EvaluateConfig.device, show_default=True, help="auto, cpu, cuda, cuda:1 ..."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def main(**kw) -> None:
    """Evaluate M-Seg + CARU2-Net on a dataset split, with OpenCV baselines; write REPORT/metrics.json,
    metrics.md, grid.png and index.html. Without --mseg/--generator: the model shipped with m2u."""
    from m2u.evaluation.evaluator import evaluate

    config = EVAL_BINDING.build(kw)
    try:
        with model_warnings():
            report = evaluate(kw["data"], kw["mseg_path"], kw["generator_path"], kw["out_dir"], config)
    except user_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    out = Path(kw["out_dir"])
    click.echo((out / "metrics.md").read_text())
    click.echo(f"report: {out / 'index.html'}")
    for name, reason in report["unavailable"].items():
        click.echo(f"unavailable: {name}: {reason}", err=True)


# SIGTERM takes the workers with it; a full disk or a refused output is one line (m2u.core.guard).
guard_command(main)
