"""m2u-eval: a thin Click layer over `m2u.evaluation.evaluator`.

m2u-eval [-c CONFIG_FILE] --data OUT --mseg M --generator G -o REPORT [--set fid=false ...]
A config file (YAML, TOML or JSON) holds the options by their long names and any other EvaluateConfig field by
its (dotted) field name; options given on the command line override it, `--set` overrides both. Every option's
default is EvaluateConfig's.
"""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from m2u.core.cli import (
    CONTEXT_SETTINGS,
    Refused,
    alias_option,
    apply_aliases,
    device_option,
    limit_option,
    out_option,
    progress_options,
    workers_option,
)
from m2u.datasets.storage import check_dataset
from m2u.evaluation.baselines import BASELINES, BaselineConfig
from m2u.evaluation.evaluator import BASELINE_MASKS, EvaluateConfig, MetricsConfig
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
        "download": "metrics.lpips.allow_download",
        "fid_weights": "metrics.fid.weights_path",
        "identity_box": "metrics.identity.box",
        "lpips": "metrics.enable_lpips",
        "fid": "metrics.enable_fid",
        "identity": "metrics.enable_identity",
        "workers": "num_workers",
        "limit": "max_samples",
    },
    other=frozenset({"data", "mseg_path", "generator_path", "out_dir"}),
)


@click.command(context_settings=CONTEXT_SETTINGS)
@config_file_options
@click.option("--data", help="Dataset folder or fsspec URL (m2u-make-dataset's -o); required.")
@click.option(
    "--split", default=EvaluateConfig.split, show_default=True, type=click.Choice(["train", "val", "test"])
)
@model_file_options
@out_option("Report folder; required.", required=False)
@click.option(
    "--batch-size", default=EvaluateConfig.batch_size, show_default=True, type=click.IntRange(min=1)
)
@workers_option(
    EvaluateConfig.num_workers,
    help="Data-loading worker processes; 0 = load in this process (no worker processes).",
)
@alias_option("--num-workers", target="workers", type=click.IntRange(min=0))
@limit_option("Evaluate only the first N samples of the split.")
@alias_option("--max-samples", target="limit", type=click.IntRange(min=1))
@click.option(
    "--threshold",
    default=EvaluateConfig.mask_threshold,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="M-Seg mask threshold (default: the one the M-Seg file records).",
)
@click.option(
    "--baselines",
    multiple=True,
    default=EvaluateConfig.baselines,
    show_default=True,
    type=click.Choice(sorted(BASELINES)),
    help="Baselines to run; repeatable (--baselines telea --baselines navier_stokes).",
)
@alias_option("--baseline", target="baselines", multiple=True, type=click.Choice(sorted(BASELINES)))
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
@click.option(
    "--download/--no-download",
    default=LPIPSConfig.allow_download,
    show_default=True,
    help="--no-download: use only local / cached weights.",
)
@click.option(
    "--identity-box", default=IdentityConfig.box, show_default=True, type=click.Choice(["detect", "frame"])
)
@click.option("--lpips/--no-lpips", default=MetricsConfig.enable_lpips, show_default=True)
@click.option("--fid/--no-fid", default=MetricsConfig.enable_fid, show_default=True)
@click.option("--identity/--no-identity", default=MetricsConfig.enable_identity, show_default=True)
@click.option("--grid-rows", default=EvaluateConfig.grid_rows, show_default=True, type=click.IntRange(min=0))
@click.option(
    "--latency-repeats", default=EvaluateConfig.latency_repeats, show_default=True, type=click.IntRange(min=1)
)
@click.option(
    "--paper-size-cost/--skip-paper-size-cost",
    default=EvaluateConfig.paper_size_cost,
    show_default=True,
    help="Count MACs at 256x256 (one slow forward pass).",
)
@device_option(EvaluateConfig.device)
@progress_options
def main(**kw) -> None:
    """Evaluate M-Seg + CARU2-Net on a dataset split, with OpenCV baselines; write REPORT/metrics.json,
    metrics.md, grid.png and index.html. Without --mseg/--generator: the model shipped with m2u.

    A config file (-c, configs/eval.yaml) holds the options by their long names (data, out, batch_size,
    lpips_net, ...); --print-config prints the resolved one."""
    from m2u.evaluation.evaluator import evaluate

    ctx = click.get_current_context()
    apply_aliases(kw, ctx)
    if kw.pop("quiet"):
        kw["progress"] = False
        ctx.set_parameter_source("progress", ParameterSource.COMMANDLINE)
    config = EVAL_BINDING.build(kw)
    if kw["print_config"]:
        EVAL_BINDING.print_config(ctx.command, config, kw)
        return
    for name, flag in (("data", "--data"), ("out_dir", "-o/--out")):
        if not kw[name]:
            raise click.UsageError(f"{flag} is required (or its key in the config file)")
    # The data first: a wrong --data is one line, before any model loads or weights are looked for.
    try:
        check_dataset(kw["data"])
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        with model_warnings():
            report = evaluate(kw["data"], kw["mseg_path"], kw["generator_path"], kw["out_dir"], config)
    except user_errors() as exc:
        raise Refused(str(exc)) from exc
    out = Path(kw["out_dir"])
    click.echo((out / "metrics.md").read_text())
    click.echo(f"report: {out / 'index.html'}")
    for name, reason in report["unavailable"].items():
        click.echo(f"unavailable: {name}: {reason}", err=True)
