"""Click layers over evaluation, inference and export: m2u-eval, m2u-unmask, m2u-export."""

from __future__ import annotations

import json
from pathlib import Path

import click

from m2u.training.baselines import BASELINES, BaselineConfig
from m2u.training.metrics import FIDConfig, IdentityConfig, LPIPSConfig, MetricsConfig

# Errors a user can cause with bad arguments or files: shown as one clean line, not a traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, OSError)


def _user_errors() -> tuple[type[BaseException], ...]:
    from m2u.training.checkpoint import CheckpointError

    return (*_USER_ERRORS, CheckpointError)


def _MODEL_FILES(function):  # noqa: N802 (a decorator used like the click options beside it)
    """The two model files every two-stage command takes."""
    model_file = click.Path(exists=True, dir_okay=False)
    function = click.option(
        "--generator", "generator_path", required=True, type=model_file, help="CARU2-Net model file."
    )(function)
    return click.option("--mseg", "mseg_path", required=True, type=model_file, help="M-Seg model file.")(
        function
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--data", required=True, type=click.Path(exists=True), help="Dataset folder (m2u-make-dataset output)."
)
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]))
@_MODEL_FILES
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
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="M-Seg mask threshold.",
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
def eval_main(**kw) -> None:
    """Evaluate M-Seg + CARU2-Net on a dataset split, with OpenCV baselines; write REPORT/metrics.json,
    metrics.md, grid.png and index.html."""
    from m2u.training.evaluate import EvaluateConfig, evaluate

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
        report = evaluate(kw["data"], kw["mseg_path"], kw["generator_path"], kw["out_dir"], config)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    out = Path(kw["out_dir"])
    click.echo((out / "metrics.md").read_text())
    click.echo(f"report: {out / 'index.html'}")
    for name, reason in report["unavailable"].items():
        click.echo(f"unavailable: {name}: {reason}", err=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@_MODEL_FILES
@click.option(
    "-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder."
)
@click.option(
    "--size",
    default=None,
    type=click.IntRange(min=16),
    help="Aligned crop size: the --size the models were trained on (default: 256, the paper's).",
)
@click.option(
    "--threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True)
)
@click.option(
    "--feather", default=None, type=click.FloatRange(min=0), help="Feathered edge, fraction of the crop size."
)
@click.option(
    "--keep-crops", is_flag=True, help="Also write the aligned crops (input, predicted mask, restored)."
)
@click.option("--detector", default="hog", show_default=True, type=click.Choice(["hog", "cnn"]))
@click.option("--device", default="auto", show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def unmask_main(**kw) -> None:
    """Unmask every face in the INPUT photos (files or folders) and write OUT/<name>.png plus OUT/report.csv
    (one row per file: status and reason)."""
    from m2u.training.infer import UnmaskConfig, unmask_files

    overrides = {k: v for k, v in (("crop_size", kw["size"]), ("feather", kw["feather"])) if v is not None}
    try:
        config = UnmaskConfig(
            mask_threshold=kw["threshold"],
            keep_crops=kw["keep_crops"],
            detector_model=kw["detector"],
            device=kw["device"],
            progress=not kw["quiet"],
            **overrides,
        )
        results = unmask_files(kw["inputs"], kw["mseg_path"], kw["generator_path"], kw["out_dir"], config)
    except _user_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
        if r.status != "ok":
            click.echo(f"{r.status}: {r.input}: {r.reason}", err=True)
    click.echo(f"{len(results)} files: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    from m2u.masking.imageio import describe_ignored_files

    ignored = describe_ignored_files(kw["inputs"], exclude=[kw["out_dir"]])
    if ignored:
        click.echo(ignored, err=True)
    click.echo(f"report: {Path(kw['out_dir']) / 'report.csv'}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def export_main() -> None:
    """Export trained models."""


@export_main.command("onnx")
@click.option("--mseg", "mseg_path", type=click.Path(exists=True, dir_okay=False), help="M-Seg model file.")
@click.option(
    "--generator",
    "generator_path",
    type=click.Path(exists=True, dir_okay=False),
    help="CARU2-Net model file.",
)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option(
    "--image-size",
    default=256,
    show_default=True,
    type=click.IntRange(min=16),
    help="Size of the tracing input.",
)
@click.option("--opset", default=17, show_default=True, type=click.IntRange(min=11))
@click.option("--atol", default=1e-4, show_default=True, type=float, help="Accepted |onnxruntime - torch|.")
@click.option("--static-shape", is_flag=True, help="Fix batch, height and width to the tracing input.")
def export_onnx_cmd(mseg_path, generator_path, out_dir, image_size, opset, atol, static_shape) -> None:
    """ONNX files OUT/mseg.onnx and OUT/generator.onnx, each checked against PyTorch with onnxruntime."""
    from m2u.training.checkpoint import load_model
    from m2u.training.export import ExportConfig, export_onnx

    if not mseg_path and not generator_path:
        raise click.UsageError("give --mseg and/or --generator")
    config = ExportConfig(image_size=image_size, opset=opset, atol=atol, dynamic_axes=not static_shape)
    summary = {}
    try:
        for name, path in (("mseg", mseg_path), ("generator", generator_path)):
            if not path:
                continue
            result = export_onnx(load_model(path), Path(out_dir) / f"{name}.onnx", config)
            summary[name] = {
                "source": str(path),
                "onnx": str(result.path),
                "inputs": result.input_names,
                "outputs": result.output_names,
                "max_abs_diff_vs_torch": result.max_abs_diff,
            }
            click.echo(f"{name}: {result.path} (max |onnxruntime - torch| = {result.max_abs_diff:.2e})")
    except (*_user_errors(), RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    (Path(out_dir) / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
