"""m2u-eval: a thin Click layer over `m2u.training.evaluation.evaluate`."""

from __future__ import annotations

from pathlib import Path

import click

from m2u.training.cliutil import model_file_options, model_warnings, user_errors
from m2u.training.evaluation.baselines import BASELINES, BaselineConfig
from m2u.training.evaluation.fid import FIDConfig
from m2u.training.evaluation.identity import IdentityConfig
from m2u.training.evaluation.lpips import LPIPSConfig
from m2u.training.evaluation.suite import MetricsConfig


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data", required=True, type=click.Path(exists=True), help="Dataset folder (m2u-make-dataset output)."
)
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]))
@model_file_options
@click.option(
    "-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Report folder."
)
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--num-workers", default=0, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--max-samples", default=None, type=click.IntRange(min=1), help="Evaluate only the first N samples."
)
@click.option(
    "--threshold",
    default=None,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="M-Seg mask threshold (default: the one the M-Seg file records).",
)
@click.option(
    "--baseline",
    "baselines",
    multiple=True,
    type=click.Choice(sorted(BASELINES)),
    help="Baselines to run (default: all).",
)
@click.option(
    "--baseline-mask",
    default="predicted",
    show_default=True,
    type=click.Choice(["predicted", "ground_truth"]),
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
@click.option("--grid-rows", default=8, show_default=True, type=click.IntRange(min=0))
@click.option("--latency-repeats", default=10, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--skip-paper-size-cost", is_flag=True, help="Do not count MACs at 256x256 (one slow forward pass)."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def main(**kw) -> None:
    """Evaluate M-Seg + CARU2-Net on a dataset split, with OpenCV baselines; write REPORT/metrics.json,
    metrics.md, grid.png and index.html. Without --mseg/--generator: the model shipped with m2u."""
    from m2u.training.evaluation.evaluate import EvaluateConfig, evaluate

    metrics = MetricsConfig(
        lpips=LPIPSConfig(
            net=kw["lpips_net"],
            trunk_weights=kw["lpips_trunk_weights"],
            head_weights=kw["lpips_head_weights"],
            allow_download=not kw["no_download"],
        ),
        fid=FIDConfig(weights_path=kw["fid_weights"]),
        identity=IdentityConfig(box=kw["identity_box"]),
        enable_lpips=not kw["no_lpips"],
        enable_fid=not kw["no_fid"],
        enable_identity=not kw["no_identity"],
    )
    try:
        config = EvaluateConfig(
            split=kw["split"],
            batch_size=kw["batch_size"],
            num_workers=kw["num_workers"],
            max_samples=kw["max_samples"],
            mask_threshold=kw["threshold"],
            baselines=tuple(kw["baselines"]) or EvaluateConfig.baselines,
            baseline=BaselineConfig(radius=kw["inpaint_radius"]),
            baseline_mask=kw["baseline_mask"],
            metrics=metrics,
            grid_rows=kw["grid_rows"],
            latency_repeats=kw["latency_repeats"],
            paper_size_cost=not kw["skip_paper_size_cost"],
            device=kw["device"],
            progress=not kw["quiet"],
        )
        with model_warnings():
            report = evaluate(kw["data"], kw["mseg_path"], kw["generator_path"], kw["out_dir"], config)
    except user_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    out = Path(kw["out_dir"])
    click.echo((out / "metrics.md").read_text())
    click.echo(f"report: {out / 'index.html'}")
    for name, reason in report["unavailable"].items():
        click.echo(f"unavailable: {name}: {reason}", err=True)
