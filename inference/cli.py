"""m2u-unmask and m2u-export: thin Click layers over `m2u.inference`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import click

from m2u.core.cli import (
    CONTEXT_SETTINGS,
    EXIT_SOME_FAILED,
    Refused,
    alias_option,
    apply_aliases,
    cli_message,
    device_option,
    exit_codes_help,
    given_options,
    input_line,
    inputs_argument,
    limit_option,
    min_score_option,
    out_option,
    progress_of,
    progress_options,
    size_option,
    threshold_option,
    warn_unused,
)
from m2u.core.guard import guard_command
from m2u.datasets.layout import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from m2u.inference.export import MIN_OPSET, ExportConfig
from m2u.inference.mask_refine import MaskRefineConfig
from m2u.inference.unmask import ALIGNMENTS, DETECTORS, MAX_DILATE, MAX_FEATHER, OUTPUT_FORMATS, UnmaskConfig
from m2u.training.cliutil import model_file_options, model_warnings, user_errors


def refine_mask_option() -> Callable:
    """--refine-mask/--no-refine-mask (m2u-unmask, m2u-eval real-masks): GrabCut on M-Seg's mask or not."""
    return click.option(
        "--refine-mask/--no-refine-mask",
        default=MaskRefineConfig.enabled,
        show_default=True,
        help="Refine M-Seg's mask by the crop's colours (OpenCV's GrabCut) before restoring, so less of the skin "
        "around a real mask is repainted; the masked-face decision reads M-Seg's own mask either way.",
    )


def refine_config(enabled: bool) -> MaskRefineConfig:
    return MaskRefineConfig(enabled=enabled)


# Options with no effect where another is given: said on stderr instead of silently ignored.
_UNUSED_WITH_ALIGNED = ("detector_model", "tiles", "alignment", "min_score", "whole_frame", "try_turned")


def _warn_unused_options(ctx: click.Context, kw: dict) -> None:
    if kw["aligned"]:
        warn_unused(
            _UNUSED_WITH_ALIGNED, "--aligned takes every input whole as one face, without detection", ctx
        )
    elif (
        given_options(("try_turned",), ctx)
        and kw["try_turned"]
        and kw["detector_model"] != UnmaskConfig.detector_model
    ):
        click.echo(
            f"warning: --try-turned works with --detector {UnmaskConfig.detector_model} only: not used with "
            f"--detector {kw['detector_model']}",
            err=True,
        )


# How a photo is restored: m2u-unmask's options that m2u-eval real-masks ("m2u-unmask on the PHOTOS, scored") takes
# too. Defined once, here, so the two commands cannot drift apart in names, defaults, ranges or help; each command
# adds its own output options (--format, --keep-crops, --limit; --labels ...).
_RESTORATION_OPTIONS: tuple[Callable, ...] = (
    size_option(
        UnmaskConfig.crop_size,
        "Aligned crop size (default: the size the model files record; another is honoured with a warning).",
        MIN_IMAGE_SIZE,
        MAX_IMAGE_SIZE,
        dest="crop_size",  # UnmaskConfig's field: a refusal names --size
    ),
    threshold_option(UnmaskConfig.mask_threshold, "mask_threshold"),
    click.option(
        "--grow",
        "dilate",
        default=UnmaskConfig.dilate,
        show_default=True,
        type=click.FloatRange(0, MAX_DILATE),
        help="How far the restored region reaches past the predicted mask, fraction of the crop size (0.008: 1 px "
        "at 128). More repaints more of a real mask's rim that M-Seg misses (0.02: 3 px), and blurs more face "
        "around it.",
    ),
    click.option(
        "--feather",
        default=UnmaskConfig.feather,
        show_default=True,
        type=click.FloatRange(0, MAX_FEATHER),
        help="Soft outer edge of the pasted region, fraction of the crop size.",
    ),
    click.option(
        "--detector",
        "detector_model",
        default=UnmaskConfig.detector_model,
        show_default=True,
        type=click.Choice(DETECTORS),
        help="blazeface: MediaPipe's BlazeFace (short and full range), then the masked cascade where it finds "
        "nothing; masked: the masked-face cascade (dlib's HOG with a HOG trained on masked faces, then both at "
        "lower thresholds, then at upsample 1, then dlib's CNN); hog / cnn: dlib's plain detector ladder.",
    ),
    click.option(
        "--tiles",
        is_flag=True,
        help="With --detector blazeface: also look for faces too small to find in the whole photo (a crowd, a wide "
        "strip) on overlapping tiles. Slower on such photos, and off by default: on group photos of bare faces it "
        "found faces the masked-face decision then restored (see the README).",
    ),
    min_score_option(UnmaskConfig.min_score),
    click.option(
        "--all-faces",
        is_flag=True,
        help="Restore every face found, even where no mask is found on it (default: such faces are left exactly "
        "as they are, with the reason in faces.jsonl).",
    ),
    refine_mask_option(),
    click.option(
        "--whole-frame/--no-whole-frame",
        default=UnmaskConfig.whole_frame,
        show_default=True,
        help="A photo in which no face is found is tried as one face crop (a tight crop cut at the forehead or "
        "chin), restored only where the mask classifier and M-Seg's mask shape both say it is a masked face.",
    ),
    click.option(
        "--try-turned/--no-try-turned",
        default=UnmaskConfig.try_turned,
        show_default=True,
        help="A photo in which nothing is restored, with a face left because it looks upside down or no face found "
        "at all, is tried again turned (180 degrees, then 90 either way); so is a photo whose faces lie on their "
        "side, or whose restorations rest only on uncertain detections or the whole frame (a quarter turn each "
        "way), or whose faces' boxes the box orientation net reads turned (that turn). Faces restored there (by "
        "the same decision) are turned back into the photo. With the default --detector only.",
    ),
    click.option(
        "--alignment",
        default=UnmaskConfig.alignment,
        show_default=True,
        type=click.Choice(ALIGNMENTS),
        help="visible: dlib's eye centres + a mouth centre placed from them (fitted on unmasked faces), and a face "
        "left as not masked is looked at again aligned on BlazeFace's eye keypoints; visible-dlib: without that "
        "second look; landmarks: the 68-point mouth (guessed under a mask).",
    ),
    click.option(
        "--aligned",
        is_flag=True,
        default=UnmaskConfig.aligned,
        help="Inputs are aligned face crops already: no detection; each is taken whole as one face (resized to "
        "--size if needed) and restored where the masked-face decision finds a mask on it, as a detected face is; "
        "one judged bare is left as it is (not_masked, no output) unless --all-faces.",
    ),
    device_option(UnmaskConfig.device),
)


def restoration_options(function: Callable) -> Callable:
    """The restoration options (`_RESTORATION_OPTIONS`) of m2u-unmask and m2u-eval real-masks, in that order;
    `restoration_config` reads them back."""
    for option in reversed(_RESTORATION_OPTIONS):
        function = option(function)
    return function


def restoration_config(kw: dict, **settings) -> UnmaskConfig:
    """The UnmaskConfig of the `restoration_options` in a command's parameters `kw`, with the command's own
    `settings` (output format, limit, progress...); options with no effect beside another are said on stderr.
    ValueError where UnmaskConfig refuses a value."""
    _warn_unused_options(click.get_current_context(), kw)
    overrides = {"crop_size": kw["crop_size"]} if kw["crop_size"] is not None else {}
    return UnmaskConfig(
        mask_threshold=kw["mask_threshold"],
        dilate=kw["dilate"],
        feather=kw["feather"],
        detector_model=kw["detector_model"],
        tiles=kw["tiles"],
        min_score=kw["min_score"],
        masked_only=not kw["all_faces"],
        refine=refine_config(kw["refine_mask"]),
        whole_frame=kw["whole_frame"],
        try_turned=kw["try_turned"],
        alignment=kw["alignment"],
        aligned=kw["aligned"],
        device=kw["device"],
        **overrides,
        **settings,
    )


@click.command(
    context_settings=CONTEXT_SETTINGS,
    epilog=exit_codes_help("photos without a face are counted, not failures"),
)
@inputs_argument
@model_file_options
@out_option("Output folder.")
@click.option(
    "--format",
    "output_format",
    default=UnmaskConfig.output_format,
    show_default=True,
    type=click.Choice(OUTPUT_FORMATS),
    help="Restored photos' format: same = the input's own (a PNG stays lossless PNG, a JPEG stays JPEG), png, jpg.",
)
@limit_option()
@click.option(
    "--keep-crops",
    is_flag=True,
    help="Also write each restored face's aligned crop, predicted mask and restoration as "
    "OUT/crops/<output name>_face<k>_{input,mask,restored}.png.",
)
@restoration_options
@progress_options
def unmask_main(**kw) -> None:
    """Unmask every face in the INPUT photos (files or folders) and write OUT/<name>.<format> plus OUT/report.csv
    (one row per file: status and reason) and OUT/faces.jsonl (one line per face: detector, score, box,
    alignment source, mask fraction). Without --mseg/--generator: the model shipped with m2u. m2u-mask's mask
    files (NAME_mask.png beside NAME.json) are passed over and counted."""
    from m2u.core.inputs import InputError, OutputFolderError, find_inputs
    from m2u.inference.photos import (
        earlier_restorations,
        implausible_masks_warning,
        kept_for_photos_not_restored,
        summarize,
        unmask_files,
    )

    kw["progress"] = progress_of(kw)
    if not kw["inputs"]:
        raise click.UsageError("give at least one input (an image, a folder, a glob or a list file)")
    try:
        # The run's one discovery (a path that names nothing: a usage error before any model loads).
        found = find_inputs(kw["inputs"], kw["out_dir"])
    except InputError as exc:
        raise click.UsageError(cli_message(exc)) from None
    try:
        config = restoration_config(
            kw,
            keep_crops=kw["keep_crops"],
            progress=kw["progress"],
            output_format=kw["output_format"],
            limit=kw["limit"],
        )
    except ValueError as exc:
        raise click.UsageError(cli_message(exc)) from None
    refused: tuple[type[BaseException], ...] = (OutputFolderError, *user_errors())
    try:
        with model_warnings():
            results = unmask_files(found, kw["mseg_path"], kw["generator_path"], kw["out_dir"], config)
    except InputError as exc:
        raise click.UsageError(cli_message(exc)) from None
    except OSError:
        raise  # a full disk, a folder that cannot be made: m2u.core.guard says which file in words, exit 1
    except refused as exc:
        raise Refused(cli_message(exc)) from exc
    for r in results:
        if r.status != "ok" or r.left_faces:
            input_line(r.status, r.input, r.reason)
    click.echo(summarize(results, Path(kw["out_dir"]) / "faces.jsonl"))
    warning = implausible_masks_warning(results)
    if warning:
        click.secho(warning, err=True, fg="red")
    ignored = found.describe_skipped()
    if ignored:
        click.echo(ignored, err=True)
    earlier = earlier_restorations(kw["out_dir"], results)
    given = kept_for_photos_not_restored(earlier, results)
    if given:
        click.echo(
            f"note: {len(given)} restoration(s) of an earlier run here are kept, though their photos were given and "
            f"not restored this time (each row's reason says why): {_some(given)}",
            err=True,
        )
    others = [path for path in earlier if path not in given]
    if others:
        click.echo(
            f"note: {len(others)} restoration(s) of an earlier run here are kept but not in this report (their photos "
            f"were not given this time, or were written under other names, e.g. in another --format): {_some(others)}",
            err=True,
        )
    click.echo(f"report: {Path(kw['out_dir']) / 'report.csv'}")
    if any(r.status in ("unreadable", "missing", "error") for r in results):
        sys.exit(EXIT_SOME_FAILED)


def _some(paths: list[Path]) -> str:
    """The first three of `paths`, and how many more."""
    return ", ".join(str(path) for path in paths[:3]) + (
        f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def export_main() -> None:
    """Export trained models."""


@export_main.command(
    "onnx",
    epilog=exit_codes_help(
        failed="an ONNX file differs from PyTorch beyond --atol (nothing of this export is written)",
        refused="a model file of the wrong kind, an earlier export in OUT",
    ),
)
@click.option(
    "--mseg",
    "mseg_path",
    type=click.Path(exists=True, dir_okay=False),
    help="M-Seg model file (default, with no --generator either: the model shipped with m2u).",
)
@click.option(
    "--generator",
    "generator_path",
    type=click.Path(exists=True, dir_okay=False),
    help="CARU2-Net model file (default, with no --mseg either: the model shipped with m2u).",
)
@out_option("Output folder: mseg.onnx, generator.onnx and export.json.")
@size_option(
    ExportConfig.image_size,
    "Size of the tracing input (default: the size the model file records).",
    minimum=MIN_IMAGE_SIZE,
    maximum=MAX_IMAGE_SIZE,
    dest="image_size",  # ExportConfig's name: the library's messages about `image_size` are said as --size
)
@alias_option("--image-size", target="image_size", type=click.IntRange(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE))
@click.option(
    "--opset",
    default=ExportConfig.opset,
    show_default=True,
    type=click.IntRange(min=MIN_OPSET),
    help="ONNX opset: from 11 up to the newest this torch's exporter writes (a newer one is refused, naming it).",
)
@click.option(
    "--atol",
    default=ExportConfig.atol,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Accepted |onnxruntime - torch|.",
)
@click.option("--static-shape", is_flag=True, help="Fix batch, height and width to the tracing input.")
@click.option(
    "--overwrite",
    is_flag=True,
    help="Remove the files of an earlier export in OUT that this export does not replace (only files m2u "
    "wrote), and replace an earlier export of other model files; without it both are refused (the same model "
    "files again replace their export).",
)
def export_onnx_cmd(**kw) -> None:
    """ONNX files OUT/mseg.onnx and OUT/generator.onnx, each checked against PyTorch with onnxruntime, and
    OUT/export.json (each file's inputs and outputs: names, shapes, value ranges). Without --mseg/--generator:
    the model shipped with m2u. A model file of the other kind (a generator given as --mseg) is refused, and so
    is an earlier export's file in OUT that this export does not replace, or an earlier export of other model
    files (unless --overwrite). export.json records absolute paths."""
    from m2u.inference.export import check_export_folder, export_models, source_digests
    from m2u.training.checkpoint import load_model
    from m2u.training.models import CARU2Net, MSeg

    apply_aliases(kw)
    mseg_path, generator_path, out_dir = kw["mseg_path"], kw["generator_path"], kw["out_dir"]
    static_shape = kw["static_shape"]
    if not mseg_path and not generator_path:
        from m2u.inference.pretrained import pretrained_paths

        mseg_path, generator_path = (str(p) for p in pretrained_paths())
    kinds = {"mseg": (MSeg, "an M-Seg model"), "generator": (CARU2Net, "a CARU2-Net generator")}
    sources = {name: path for name, path in (("mseg", mseg_path), ("generator", generator_path)) if path}
    try:
        # Checked before any model loads or any file is written: the settings, every output name (a person's
        # own generator.onnx was refused only after mseg.onnx had been written) and an earlier export's files.
        config = ExportConfig(
            image_size=kw["image_size"], opset=kw["opset"], atol=kw["atol"], dynamic_axes=not static_shape
        )
        digests = source_digests(sources)  # read once: this check, the export's own and export.json's record
        check_export_folder(out_dir, list(sources), kw["overwrite"], sources, digests)
        models = {}
        for name, path in sources.items():
            model, info = load_model(path)
            cls, wanted = kinds[name]
            if not isinstance(model, cls):
                other = "generator" if name == "mseg" else "mseg"
                hint = (
                    f"give it as --{other}"
                    if isinstance(model, kinds[other][0])
                    else "m2u-export exports only M-Seg and generator model files (a run's mseg.safetensors and "
                    "generator.safetensors)"
                )
                held = next(
                    (w for c, w in kinds.values() if isinstance(model, c)), f"a {type(model).__name__}"
                )
                raise Refused(f"--{name} {path} holds {held}, not {wanted}; {hint}")
            models[name] = (path, model, info)
    except Refused:
        raise
    except user_errors() as exc:
        raise Refused(cli_message(exc)) from exc
    try:
        with model_warnings():
            summary = export_models(models, out_dir, config, overwrite=kw["overwrite"], digests=digests)
    except OSError:
        raise  # a full disk, a read-only folder: the export ran and failed, said in one line (m2u.core.guard)
    except user_errors() as exc:  # refused before anything was written (a second export, a person's file)
        raise Refused(cli_message(exc)) from exc
    except RuntimeError as exc:  # the exported graph disagrees with PyTorch: the export ran and failed
        raise click.ClickException(cli_message(exc)) from exc
    for name, entry in summary.items():
        click.echo(
            f"{name}: {entry['onnx']} (max |onnxruntime - torch| = {entry['max_abs_diff_vs_torch']:.2e})"
        )


# SIGTERM takes the workers with it; a full disk or a refused output is one line (m2u.core.guard).
guard_command(unmask_main)
guard_command(export_main)
