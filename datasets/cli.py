"""``m2u-make-dataset``: a thin Click layer over ``m2u.datasets.build.build_dataset``."""

from __future__ import annotations

import json
import sys
from typing import Any

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
    inputs_argument,
    limit_option,
    min_score_option,
    out_option,
    progress_of,
    progress_options,
    seed_option,
    size_option,
    workers_option,
)
from m2u.core.guard import guard_command
from m2u.core.parallel import WorkerStartError
from m2u.datasets.build import MASK_ENGINES, BuildConfig, BuildError, build_dataset, url_partition_problem
from m2u.datasets.codecs import ImageFormat
from m2u.datasets.config import DISTRIBUTORS, BuildWriteError, parse_partition
from m2u.datasets.layout import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
from m2u.datasets.splits import SplitBy, parse_fractions
from m2u.datasets.storage import UploadError, build_at_url, is_url

# Shorthand options → m2u.masking.MaskConfig field names.
MASK_SHORTHANDS = {"mask_type": "mask_type", "mask_color": "color", "mask_pattern": "pattern", "pack": "pack"}


def _parse_value(text: str) -> Any:
    """KEY=VALUE values: JSON when it parses (numbers, booleans, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_values(pairs: tuple[str, ...], option: str) -> dict[str, Any]:
    result = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=option)
        key, value = pair.split("=", 1)
        result[key.strip().replace("-", "_")] = _parse_value(value)
    return result


def _partition(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    try:
        return parse_partition(value)
    except ValueError as exc:
        raise click.BadParameter(cli_message(exc)) from None


def _fractions(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, float, float]:
    try:
        return parse_fractions(value)
    except ValueError as exc:
        raise click.BadParameter(cli_message(exc)) from None


@click.command(
    context_settings=CONTEXT_SETTINGS,
    epilog=exit_codes_help(
        "faces not found are counted, not failures", "some inputs could not be read or no pair was written"
    ),
)
@inputs_argument
@out_option("Dataset folder, or an fsspec URL (s3://bucket/prefix, gs://...; built locally, then uploaded).")
@size_option(BuildConfig.size, "Side of the aligned square crop.", MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
@click.option(
    "--split",
    default=",".join(str(f) for f in BuildConfig.split),
    show_default=True,
    callback=_fractions,
    help="Train,val,test fractions.",
)
@seed_option(BuildConfig.seed, "Seed of the splits and of every sample's mask.")
@click.option(
    "--split-by",
    type=click.Choice([s.value for s in SplitBy]),
    default=SplitBy(BuildConfig.split_by).value,
    show_default=True,
    help="Hash each sample, or each identity (no identity in two splits).",
)
@click.option(
    "--identity-file", type=click.Path(dir_okay=False, exists=True), help="CelebA-style '<file> <id>' file."
)
@click.option("--identity-pattern", help="File-name pattern with {identity}, e.g. '{identity}_{id}.jpg'.")
@limit_option(
    "Use only the first N inputs by path (the inputs sorted by full path, in whatever order they are given: "
    "the same N photos on every run)."
)
@click.option(
    "--variants",
    default=BuildConfig.variants,
    show_default=True,
    type=click.IntRange(min=1),
    help="Masked versions per face.",
)
@click.option(
    "--mask-engine",
    type=click.Choice(MASK_ENGINES),
    default=BuildConfig.mask_engine,
    show_default=True,
    help="m2u: the masking engine; synthetic: a procedural stand-in for tests and smoke runs.",
)
@click.option("--mask-type", help="Mask type passed to the masking engine.")
@color_option(
    None,
    "Mask colour: a name, #rrggbb or random (the default: with realism, real masks' colour mix); "
    "--mask-option color=null keeps the template's own colours.",
)
@click.option(
    "--pattern",
    help="Mask pattern, as m2u-mask's --pattern (default: random, a print on some masks); "
    "--mask-option pattern=null draws none.",
)
@alias_option("--mask-color", target="color")
@alias_option("--mask-pattern", target="pattern")
@click.option(
    "--pack",
    type=click.Path(exists=True),
    help="Templates from a MaskTheFace-style masks.cfg, its folder, or a MaskTheFace checkout (like m2u-mask).",
)
@click.option(
    "--mask-option", multiple=True, metavar="KEY=VALUE", help="Any other MaskConfig field (repeatable)."
)
@click.option(
    "--detector-option", multiple=True, metavar="KEY=VALUE", help="A DetectorConfig field (repeatable)."
)
@min_score_option(None)
@workers_option(
    BuildConfig().workers,
    show_default="all cores",
    help="Worker processes (one shard, or part of one, at a time); 0 (or 1) = work in this process, no worker "
    "processes; with --distributor ray, the CPUs of a local Ray.",
)
@click.option("--shard-size", default=BuildConfig.shard_size, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--image-format",
    type=click.Choice([f.value for f in ImageFormat]),
    default=ImageFormat(BuildConfig.image_format).value,
    show_default=True,
    help="Masked/unmasked format: jpg (lossy, fastest), png or webp (lossless).",
)
@click.option("--quality", default=BuildConfig.quality, show_default=True, type=click.IntRange(1, 100))
@click.option(
    "--distributor",
    type=click.Choice(DISTRIBUTORS),
    default=BuildConfig.distributor,
    show_default=True,
    help="Where the shard tasks run: this machine's processes, or a Ray cluster (pip install 'm2u[ray]').",
)
@click.option(
    "--ray-address",
    default=BuildConfig.ray_address,
    help="With --distributor ray: 'auto' (the cluster `ray start` runs) or ray://HOST:PORT; default: a local Ray.",
)
@click.option(
    "--partition",
    callback=_partition,
    metavar="I/N",
    help="Build only partition I of N (0-based) of the shards into a shared OUT, e.g. one Slurm array task each.",
)
@click.option(
    "--finalize",
    is_flag=True,
    help="Only write the manifests and stats.json once every partition is done (refused while shards are missing).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset in OUT instead of resuming it.")
@progress_options
def main(inputs: tuple[str, ...], out_dir: str, **options: Any) -> None:
    """Build paired masked/unmasked WebDataset shards, a Parquet manifest and stats.json from face photos.

    INPUT is a folder (searched recursively), a glob, an image, or a list file (.txt, .csv or .parquet with a
    path column). Rerunning with the same arguments resumes an interrupted build. OUT may be an fsspec URL
    (s3://bucket/prefix): the same files as a local build are written there, and a rerun resumes it.
    """
    apply_aliases(options)
    progress = progress_of(options)
    options.pop("progress")
    if not inputs:
        raise click.UsageError("give at least one input (an image, a folder, a glob or a list file)")
    if is_url(out_dir) and options["partition"] is not None:
        raise Refused(
            url_partition_problem(out_dir)
        )  # before any option is read further (build_dataset says it too)
    mask_options, detector_options = _masking_options(options)
    options["workers"] = max(options["workers"], 1)  # 0 and 1: in this process
    try:
        config = BuildConfig(
            **options, mask_options=mask_options, detector_options=detector_options, progress=progress
        )
        if is_url(out_dir):
            result = build_at_url(  # in_process_ok=False: memory:// would keep nothing once the command exits
                out_dir, lambda local: build_dataset(list(inputs), local, config), in_process_ok=False
            )
        else:
            result = build_dataset(list(inputs), out_dir, config)
    except (BuildWriteError, UploadError) as exc:  # the run started and could not write (a full disk): exit 1
        raise click.ClickException(cli_message(exc)) from None
    except WorkerStartError as exc:
        raise click.ClickException(cli_message(exc)) from None
    except (BuildError, ValueError, FileNotFoundError) as exc:
        raise Refused(cli_message(exc)) from None
    except OSError as exc:  # e.g. a full disk while writing the manifest: say so instead of a traceback
        raise click.ClickException(f"{exc}; rerun the same command to resume once this is fixed") from None
    if result.skipped:  # the build's own discovery says what it passed over
        click.echo(result.skipped, err=True)
    _echo_summary(out_dir, result.stats)


def _masking_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pop the mask and detector options out of the command's `options` (renaming --color and --pattern in
    place): (mask_options over BuildConfig's, detector_options)."""
    options["mask_color"], options["mask_pattern"] = options.pop("color"), options.pop("pattern")
    mask_options = {**BuildConfig().mask_options, **_key_values(options.pop("mask_option"), "--mask-option")}
    for option, field_name in MASK_SHORTHANDS.items():
        value = options.pop(option)
        if value is not None:
            mask_options[field_name] = value
    detector_options = _key_values(options.pop("detector_option"), "--detector-option")
    min_score = options.pop("min_score")
    if min_score is not None:
        detector_options["min_score"] = min_score
    return mask_options, detector_options


def _echo_summary(out_dir: str, stats: dict[str, Any]) -> None:
    """The build's one-line summary; exits EXIT_SOME_FAILED when no pair was written or some inputs failed."""
    from m2u.datasets.writer import describe_counts, describe_failures

    if stats["partition"] is not None:
        built = stats["built_by_status"]
        click.echo(
            f"{out_dir}: partition {stats['partition']}: {stats['shards_built']} shard(s) built "
            f"({built['ok']} pairs; {describe_failures(built)}), "
            f"{stats['shards_kept']} already committed; once every partition is done, run the same command "
            "with --finalize instead of --partition"
        )
        return

    statuses = stats["counts"]["by_status"]
    timings = stats["timings"]
    # The rate counts every sample this run processed, written or not (a photo without a face costs its
    # detection too); a run that only finalised or found everything built processed none.
    rate = f", {timings['pairs_per_s']:.1f} samples processed/s" if timings.get("pairs_per_s") else ""
    click.echo(f"{out_dir}: {describe_counts(stats['counts'])}; {timings['total_s']:.1f} s{rate}")
    if statuses["ok"] == 0:
        click.echo("no pair was written: see the reason column of manifest.parquet", err=True)
    if statuses["ok"] == 0 or statuses["error"]:
        sys.exit(EXIT_SOME_FAILED)


# SIGTERM takes the workers with it; a full disk or a refused output is one line (m2u.core.guard).
guard_command(main)


if __name__ == "__main__":
    main()
