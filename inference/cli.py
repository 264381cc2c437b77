"""m2u-unmask and m2u-export: thin Click layers over `m2u.inference`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from m2u.inference.export import ExportConfig
from m2u.inference.unmask import ALIGNMENTS, DETECTORS, UnmaskConfig
from m2u.training.cliutil import model_file_options, model_warnings, user_errors


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@model_file_options
@click.option(
    "-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder."
)
@click.option(
    "--size",
    default=None,
    type=click.IntRange(min=16),
    help="Aligned crop size (default: the size the model files record; another is honoured with a warning).",
)
@click.option(
    "--threshold",
    "mask_threshold",
    default=UnmaskConfig.mask_threshold,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="M-Seg mask threshold (default: the one the M-Seg file records).",
)
@click.option(
    "--feather",
    default=UnmaskConfig.feather,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Feathered edge, fraction of the crop size.",
)
@click.option(
    "--keep-crops", is_flag=True, help="Also write the aligned crops (input, predicted mask, restored)."
)
@click.option(
    "--detector",
    "detector_model",
    default=UnmaskConfig.detector_model,
    show_default=True,
    type=click.Choice(DETECTORS),
    help="blazeface: MediaPipe's BlazeFace (short and full range), then the masked cascade where it finds nothing; "
    "masked: the masked-face cascade (dlib's HOG with a HOG trained on masked faces, then both at lower "
    "thresholds, then at upsample 1, then dlib's CNN); hog / cnn: dlib's plain detector ladder.",
)
@click.option(
    "--min-score",
    default=UnmaskConfig.min_score,
    type=float,
    help="Leave faces the detector scores below this as they are (recorded in faces.jsonl). Scores are the "
    "detector's: BlazeFace a probability (it keeps >= 0.5), HOG a margin, the CNN a confidence.",
)
@click.option(
    "--all-faces",
    is_flag=True,
    help="Restore every face found, even where M-Seg finds no mask on it (default: such faces are left as they "
    "are, with the reason in faces.jsonl).",
)
@click.option(
    "--alignment",
    default=UnmaskConfig.alignment,
    show_default=True,
    type=click.Choice(ALIGNMENTS),
    help="visible: eye centres + a mouth centre placed from them (fitted on unmasked faces); landmarks: the 68-point "
    "mouth (guessed under a mask).",
)
@click.option(
    "--aligned",
    is_flag=True,
    default=UnmaskConfig.aligned,
    help="Inputs are aligned face crops already: no detection, each restored whole (resized to --size if needed).",
)
@click.option("--device", default=UnmaskConfig.device, show_default=True)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def unmask_main(**kw) -> None:
    """Unmask every face in the INPUT photos (files or folders) and write OUT/<name>.png plus OUT/report.csv
    (one row per file: status and reason) and OUT/faces.jsonl (one line per face: detector, score, box,
    alignment source, mask fraction). Without --mseg/--generator: the model shipped with m2u."""
    from m2u.inference.unmask import summarize, unmask_files

    overrides = {"crop_size": kw["size"]} if kw["size"] is not None else {}
    try:
        config = UnmaskConfig(
            mask_threshold=kw["mask_threshold"],
            feather=kw["feather"],
            keep_crops=kw["keep_crops"],
            detector_model=kw["detector_model"],
            min_score=kw["min_score"],
            masked_only=not kw["all_faces"],
            alignment=kw["alignment"],
            aligned=kw["aligned"],
            device=kw["device"],
            progress=not kw["quiet"],
            **overrides,
        )
        with model_warnings():
            results = unmask_files(kw["inputs"], kw["mseg_path"], kw["generator_path"], kw["out_dir"], config)
    except user_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    for r in results:
        if r.status != "ok" or r.refused_faces:
            click.echo(f"{r.status}: {r.input}: {r.reason}", err=True)
    click.echo(summarize(results, Path(kw["out_dir"]) / "faces.jsonl"))
    from m2u.core.imageio import describe_ignored_files

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
    default=ExportConfig.image_size,
    type=click.IntRange(min=16),
    help="Size of the tracing input (default: the size the model file records).",
)
@click.option("--opset", default=ExportConfig.opset, show_default=True, type=click.IntRange(min=11))
@click.option(
    "--atol", default=ExportConfig.atol, show_default=True, type=float, help="Accepted |onnxruntime - torch|."
)
@click.option("--static-shape", is_flag=True, help="Fix batch, height and width to the tracing input.")
def export_onnx_cmd(mseg_path, generator_path, out_dir, image_size, opset, atol, static_shape) -> None:
    """ONNX files OUT/mseg.onnx and OUT/generator.onnx, each checked against PyTorch with onnxruntime."""
    from dataclasses import asdict

    from m2u.inference.export import export_onnx, export_size
    from m2u.training.checkpoint import load_model

    if not mseg_path and not generator_path:
        raise click.UsageError("give --mseg and/or --generator")
    summary = {}
    try:
        for name, path in (("mseg", mseg_path), ("generator", generator_path)):
            if not path:
                continue
            model = load_model(path)
            with model_warnings():
                size = export_size(model, image_size, static_shape)
            config = ExportConfig(image_size=size, opset=opset, atol=atol, dynamic_axes=not static_shape)
            result = export_onnx(model, Path(out_dir) / f"{name}.onnx", config)
            summary[name] = {
                "source": str(path),
                "onnx": str(result.path),
                "inputs": result.input_names,
                "outputs": result.output_names,
                "max_abs_diff_vs_torch": result.max_abs_diff,
                "image_size": size,
                "model_info": asdict(model.info),
            }
            click.echo(f"{name}: {result.path} (max |onnxruntime - torch| = {result.max_abs_diff:.2e})")
    except (*user_errors(), RuntimeError) as exc:
        raise click.ClickException(str(exc)) from exc
    (Path(out_dir) / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
