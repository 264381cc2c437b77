"""m2u-mask: a thin Click layer over `m2u.masking.batch.mask_files` (masked image, binary mask and metadata per
input, report.csv)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from m2u.core.cli import (
    CONTEXT_SETTINGS,
    EXIT_SOME_FAILED,
    Refused,
    alias_option,
    apply_aliases,
    cli_message,
    color_option,
    exit_codes_help,
    input_line,
    inputs_argument,
    limit_option,
    min_score_option,
    out_option,
    progress_of,
    progress_options,
    seed_option,
    warn_unused,
    workers_option,
)
from m2u.core.guard import guard_command
from m2u.core.imageio import ImageReadError, ImageTooLargeError, read_image
from m2u.core.inputs import Discovery, InputError, OutputFolderError, find_inputs
from m2u.core.parallel import WorkerStartError
from m2u.masking.appearance import PATTERNS
from m2u.masking.batch import MAX_PIXELS_HINT, BatchConfig, mask_files
from m2u.masking.detect import DETECTOR_MODELS, DetectorConfig, FaceDetector
from m2u.masking.render import DEFAULT_COLOR_WEIGHT, DEFAULT_PATTERN_WEIGHT, MaskConfig
from m2u.masking.templates import ALL_TYPES, MASK_TYPES

_MASK = MaskConfig()
_DETECTOR = DetectorConfig()
_BATCH = BatchConfig()


# What a contact sheet does not use: it shows every mask type and preset on one face of the first photo with one.
_UNUSED_BY_CONTACT_SHEET = (
    "out_dir",
    "mask_type",
    "color",
    "color_weight",
    "pattern",
    "pattern_weight",
    "code",
    "workers",
    "limit",
)


def _contact_sheet(
    found: Discovery, detector: DetectorConfig, target: Path, seed: int, pack: str | None, max_pixels: int
) -> None:
    from m2u.core.fileio import check_writable
    from m2u.core.imageio import image_suffix_problem, write_image
    from m2u.masking.sheet import face_caution, render_contact_sheet, sheet_face

    inputs = {os.path.realpath(entry.path) for entry in found.entries}
    if (
        os.path.realpath(target) in inputs
    ):  # said as such: check_writable would name the record, not the input
        raise click.BadParameter(
            f"{target} is one of the inputs; choose another file", param_hint="--contact-sheet"
        )
    check_writable(target)  # before any work: never a link, or another file m2u did not write
    problem = image_suffix_problem(target)
    if problem:
        raise click.BadParameter(problem, param_hint="--contact-sheet")
    unread: list[str] = []
    for entry in found.entries:
        if entry.problem:
            unread.append(f"{entry.path}: {entry.problem}")
            continue
        try:
            image = read_image(entry.path, max_pixels=max_pixels)
        except ImageTooLargeError as exc:
            unread.append(f"{entry.path}: {exc.reason} ({MAX_PIXELS_HINT})")
            continue
        except ImageReadError as exc:
            unread.append(f"{entry.path}: {exc.reason}")
            continue
        face = sheet_face(FaceDetector(detector).detect(image))
        if face is not None:
            sheet = render_contact_sheet(image, face, seed=seed, pack=pack)
            write_image(target, sheet)
            click.echo(f"contact sheet of {entry.path} written to {target}", err=True)
            caution = face_caution(face)
            if caution:
                # The masking's report says this of such a face; the sheet (banner) and this line say it too.
                click.echo(
                    f"warning: the contact sheet's face was {caution} (--min-score 0 leaves such faces out)",
                    err=True,
                )
            return
    skipped = f" ({len(unread)} could not be read, first {unread[0]})" if unread else ""
    raise click.ClickException(f"no input image with a face for the contact sheet{skipped}")


@click.command(
    context_settings=CONTEXT_SETTINGS,
    epilog=exit_codes_help("inputs without a face are counted, not failures"),
)
@inputs_argument
@out_option("Output folder (not used by --contact-sheet).", required=False)
@alias_option("--output", target="out_dir", type=click.Path(file_okay=False))
@click.option(
    "--mask-type",
    default=_MASK.mask_type,
    show_default=True,
    help=f"One of {', '.join(MASK_TYPES)} (any case: N95, KN95), random, {ALL_TYPES} (every type, one output "
    "each), or a template of --pack.",
)
@color_option(_MASK.color, "Mask colour: a name or #rrggbb (or random); default: the template's own colours.")
@click.option(
    "--color-weight",
    default=_MASK.color_weight,
    type=click.FloatRange(0, 1),
    help=f"How strongly --color dyes the fabric (0..1). Default: {DEFAULT_COLOR_WEIGHT:g}; with --color random "
    "each mask's own realistic weight (0.85-1). Given, it holds for every colour, random ones included.",
)
@click.option(
    "--pattern", default=_MASK.pattern, help=f"One of {', '.join(PATTERNS)}, an image file, or random."
)
@click.option(
    "--pattern-weight",
    default=_MASK.pattern_weight,
    type=click.FloatRange(0, 1),
    help=f"How strongly --pattern covers the fabric (0..1). Default: {DEFAULT_PATTERN_WEIGHT:g}; with --pattern "
    "random a drawn print its own opaque weight. Given, it holds for every pattern, drawn prints included.",
)
@click.option(
    "--pack",
    default=_MASK.pack,
    type=click.Path(exists=True),
    help="A MaskTheFace-style masks.cfg, its folder, or a MaskTheFace checkout (its masks/masks.cfg).",
)
@click.option(
    "--code",
    default=_BATCH.mask_code,
    help="MaskTheFace's --code: comma-separated type[-#rrggbb|-colour|-pattern or texture|-random_color|"
    "-random_pattern] entries, cycled "
    "over the inputs (input i gets entry i mod N); replaces --mask-type, and an entry's colour or pattern "
    "replaces --color or --pattern (-random_color and -random_pattern draw as --color random and --pattern "
    "random do: with the real-mask finish, a print on about 3 masks in 10 and no pattern on the others).",
)
@seed_option(_BATCH.seed, "Same seed and inputs: byte-identical outputs.")
@workers_option(_BATCH.workers)
@limit_option()
@click.option("--detector", default=_DETECTOR.model, show_default=True, type=click.Choice(DETECTOR_MODELS))
@click.option(
    "--upsample",
    default=_DETECTOR.upsample,
    show_default=True,
    type=click.IntRange(0, 4),
    help="First detection pass upsampling.",
)
@click.option(
    "--cnn-fallback/--no-cnn-fallback",
    default=_DETECTOR.cnn_fallback,
    show_default=True,
    help="Try the CNN when HOG finds nothing.",
)
@click.option(
    "--blazeface/--no-blazeface",
    "blazeface_first",  # the DetectorConfig key: a library message naming `blazeface_first` reads as this flag
    # (and "`blazeface_first`=false" as --no-blazeface: m2u.core.cli.cli_message)
    default=_DETECTOR.blazeface_first,
    show_default=True,
    help="BlazeFace first on photos up to 256 px (HOG where it finds nothing); --no-blazeface: HOG alone.",
)
@min_score_option(_DETECTOR.min_score)
@click.option(
    "--max-pixels",
    default=_BATCH.max_pixels,
    show_default=True,
    type=click.IntRange(1),
    help="Refuse larger images.",
)
@click.option(
    "--contact-sheet",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Only render an image (in its suffix's format) of all mask types and presets on the first face found.",
)
@progress_options
def main(**kw) -> None:
    """Put masks on every face in INPUTS (image files, folders searched recursively, globs or list files).

    For x/name.jpg with a face: OUT/name_<type>.jpg (masked), OUT/name_<type>_mask.png (0/255, same size as the
    input) and OUT/name_<type>.json; OUT/report.csv has one row per input and mask type (status ok / no_face /
    refused / error). OUT must not be an input folder; files inside OUT are never read as inputs, and m2u-unmask
    and m2u-make-dataset pass over (and count) the mask files when given OUT."""
    apply_aliases(kw)
    kw["progress"] = progress_of(kw)
    if not kw["inputs"]:
        raise click.UsageError("give at least one input (an image, a folder, a glob or a list file)")
    if kw["out_dir"] is None and kw["contact_sheet"] is None:
        raise click.UsageError("Missing option '-o' / '--out'.")
    _mask(**kw)


def _mask(
    inputs,
    out_dir,
    mask_type,
    color,
    color_weight,
    pattern,
    pattern_weight,
    pack,
    code,
    seed,
    workers,
    detector,
    upsample,
    cnn_fallback,
    blazeface_first,
    min_score,
    max_pixels,
    contact_sheet,
    limit,
    progress,
) -> None:
    out_dir = None if out_dir is None else Path(out_dir)  # None: a contact sheet only
    try:
        config = _batch_config(
            MaskConfig(
                mask_type=mask_type,
                color=color,
                color_weight=color_weight,
                pattern=pattern,
                pattern_weight=pattern_weight,
                pack=pack,
            ),
            DetectorConfig(
                model=detector,
                upsample=upsample,
                max_upsample=max(upsample, 1),
                cnn_fallback=cnn_fallback,
                min_score=min_score,
                blazeface_first=blazeface_first,
            ),
            code,
            seed,
            max_pixels,
            workers=workers,
            progress=progress,
            limit=limit,
        )
    except ValueError as exc:
        raise click.BadParameter(cli_message(exc)) from exc
    try:
        if contact_sheet is not None:
            warn_unused(
                _UNUSED_BY_CONTACT_SHEET, "--contact-sheet shows every mask type and preset on one face"
            )
            found = find_inputs(inputs, out_dir)
            _contact_sheet(found, config.detector, contact_sheet, seed, pack, max_pixels)
            return
        result = mask_files(inputs, out_dir, config)
    except InputError as exc:
        raise click.UsageError(cli_message(exc)) from None
    except OutputFolderError as exc:
        raise Refused(cli_message(exc)) from None
    except WorkerStartError as exc:
        raise click.ClickException(cli_message(exc)) from None
    _report(result)


def _batch_config(
    mask_config: MaskConfig, detector_config: DetectorConfig, code, seed, max_pixels, **runtime
) -> BatchConfig:
    """The run's BatchConfig; a bad --code entry is refused (ValueError) before any work."""
    config = BatchConfig(mask_config, code, detector_config, seed, max_pixels, **runtime)
    config.mask_configs()
    return config


def _report(result) -> None:
    """The run's summary line on stderr; exits EXIT_SOME_FAILED when nothing could be read or some inputs
    failed."""
    said = set()
    for row in result.rows:  # one line per input that could not be used (--mask-type all: one row per type)
        if row["status"] == "error" and row["path"] not in said:
            said.add(row["path"])
            input_line("error", row["path"], str(row["reason"]))
    if result.skipped:
        click.echo(result.skipped, err=True)
    rows = len(result.rows)
    inputs = len({row["path"] for row in result.rows})
    # With several mask types (--mask-type all) each input gives one row per type: both counts are said.
    counted = f"{inputs} inputs" if inputs == rows else f"{inputs} inputs ({rows} input and mask type pairs)"
    click.echo(
        f"{counted}: {result.count('ok')} masked ({result.faces} faces), {result.count('no_face')} without a "
        f"face, {result.count('refused')} refused, {result.count('error')} errors; {rows / max(result.seconds, 1e-9):.1f} images/s with "
        f"{result.workers} worker(s). Report: {result.report}",
        err=True,
    )
    if result.kept:
        click.echo(
            f"note: {len(result.kept)} output(s) of an earlier run here are kept, though their inputs were given and "
            f"got none this time (each row's reason says why): {_some(result.kept)}",
            err=True,
        )
    kept = {path.with_suffix(".json") for path in result.kept}
    others = [path.with_suffix(".jpg") for path in result.earlier if path not in kept]
    if others:
        click.echo(
            f"note: {len(others)} output(s) of an earlier run here are kept but not in this report (its "
            f"inputs were not given this time, or took other names): {_some(others)}",
            err=True,
        )
    if not result.anything_read:
        click.echo("nothing could be read", err=True)
    if not result.anything_read or result.count("error"):
        sys.exit(EXIT_SOME_FAILED)


def _some(paths: list[Path] | tuple[Path, ...]) -> str:
    """The first three of `paths`, and how many more."""
    return ", ".join(str(path) for path in paths[:3]) + (
        f" and {len(paths) - 3} more" if len(paths) > 3 else ""
    )


# SIGTERM takes the workers with it; a full disk or a refused output is one line (m2u.core.guard).
guard_command(main)
