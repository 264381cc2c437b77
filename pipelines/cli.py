"""`m2u-pipeline`: the whole paper in one command (`run`), and the section 4.3 ablation (`ablate`)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import yaml

from m2u.core.cli import (
    CONTEXT_SETTINGS,
    EXIT_SOME_FAILED,
    Refused,
    alias_option,
    apply_aliases,
    cli_message,
    config_options,
    exit_codes_help,
    inputs_argument,
    out_option,
    progress_of,
    progress_options,
)
from m2u.core.configfile import CONFIG_SUFFIXES, ConfigError, parse_overrides
from m2u.core.guard import guard_command
from m2u.pipelines.config import PRESETS, PipelineConfig, config_as_dict, in_stage_words, load_config


def _resolve(
    config_file: str | None,
    preset: str | None,
    faces: tuple[str, ...],
    demo: Path | None,
    sets: tuple[str, ...],
) -> PipelineConfig:
    try:
        extra = parse_overrides(sets)
        if demo is not None and (faces or "faces" in extra):  # the demo faces would silently replace them
            given = "INPUTS" if faces else "--set faces"
            raise click.UsageError(
                f"--demo-faces uses the embedded demo faces, and {given} gave faces too: give one or the other"
            )
        if (
            faces and "faces" not in extra
        ):  # `--set faces=...` wins over INPUTS, as over every option (README)
            extra["faces"] = list(faces)
        if demo is not None:
            extra["faces"] = [str(demo)]  # written by the run, once every check has passed (run_folder)
        return load_config(preset, config_file, extra)
    except ConfigError as error:
        raise click.UsageError(cli_message(error)) from error


def _common(function):
    options = [
        inputs_argument,
        config_options,
        click.option("--preset", type=click.Choice(PRESETS), help="Start from a named preset."),
        alias_option("--faces", target="inputs", multiple=True),
        click.option(
            "--demo-faces",
            is_flag=True,
            help="Use the embedded demo portrait variants (a fresh clone without CelebA).",
        ),
        # out_dir: so a library message naming `out_dir` names -o/--out. Not required by Click: --print-config
        # needs no run folder (as m2u-train's and m2u-eval's); a run is refused without one (`_prepare`).
        out_option("Run folder; required to run.", required=False),
        progress_options,  # off: every stage's `progress` false (a --set item still wins)
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _prepare(kw: dict) -> PipelineConfig | None:
    """The run's configuration from the options; None after --print-config. INPUTS are the faces (--faces, the
    previous spelling, still works); a lone INPUT that is a config file (.yaml, .toml, .json) is taken as
    --config, as the previous release's positional CONFIG_FILE was."""
    apply_aliases(kw)
    inputs = list(kw["inputs"])
    config_file = kw["config_file"]
    if (
        config_file is None
        and len(inputs) == 1
        and Path(inputs[0]).suffix in CONFIG_SUFFIXES
        and Path(inputs[0]).is_file()
    ):
        config_file, inputs = inputs[0], []
    from m2u.pipelines.run import DEMO_FACES, STAGES

    if kw["out_dir"] is None and (kw["demo_faces"] or not kw["print_config"]):
        # The demo faces' folder is the run folder's: without one, a printed config would name no faces.
        with_demo = " (--demo-faces puts its faces in the run folder)" if kw["print_config"] else ""
        raise click.UsageError(f"-o/--out is required{with_demo}: name the run folder")
    demo = Path(kw["out_dir"]) / DEMO_FACES if kw["demo_faces"] else None
    # -q / --no-progress as every command has them: each stage's progress off, before the --set items (which win).
    quiet = () if progress_of(kw) else tuple(f"{stage}.progress=false" for stage in STAGES)
    config = _resolve(config_file, kw["preset"], tuple(inputs), demo, (*quiet, *kw["sets"]))
    if kw["print_config"]:
        click.echo(yaml.safe_dump(config_as_dict(config), sort_keys=False), nl=False)
        return None
    return config


@click.group(context_settings=CONTEXT_SETTINGS)
def main() -> None:
    """Raw faces → dataset → M-Seg → GAN → evaluation report, each stage cached and resumable."""


@contextlib.contextmanager
def _said_in_one_line() -> Iterator[None]:
    """A library error of the run as one line, with the exit code the other m2u commands give it: a refusal (a
    run refused before any stage, a stage's library refusing its settings or files, as m2u-make-dataset, m2u-train
    and m2u-eval refuse them) 2; a stage that ran and failed (a full disk, a loss gone NaN) 1. A stage's settings
    are named as the pipeline's keys (`gan.vgg_weights`)."""
    from m2u.core.guard import UserError
    from m2u.core.inputs import OutputFolderError
    from m2u.core.parallel import WorkerStartError
    from m2u.datasets.config import BuildError, BuildWriteError
    from m2u.pipelines.run import PipelineError, PipelineRefused, failed_stage
    from m2u.training.cliutil import user_errors
    from m2u.training.guards import NonFiniteLossError
    from m2u.training.losses import VGGWeightsUnavailable

    try:
        yield
    except (PipelineRefused, OutputFolderError) as error:
        raise Refused(_message(error)) from error  # before any stage (the run folder's lock too): exit 2
    except (BuildWriteError, WorkerStartError, NonFiniteLossError) as error:
        raise click.ClickException(_message(error)) from None  # the stage ran and could not finish: exit 1
    except (BuildError, VGGWeightsUnavailable) as error:
        raise Refused(_message(error)) from None
    except PipelineError as error:
        raise click.ClickException(_message(error)) from error  # a stage ran and failed: exit 1
    except OSError as error:
        if failed_stage(error) is None:
            raise  # before any stage: m2u.core.guard says which file, exit 1
        raise click.ClickException(_message(error)) from None  # the guard's line and exit 1, with the stage
    except user_errors() as error:  # ValueError, a damaged checkpoint
        raise Refused(_message(error)) from None
    except UserError as error:  # a damaged shard, an empty split: the guard's exit 1, with the stage
        raise click.ClickException(_message(error)) from None


def _message(error: BaseException) -> str:
    """cli_message, in the words of the stage `error` ended (its settings as `--set` names them)."""
    from m2u.core.errors import SettingError
    from m2u.core.guard import as_one_line, describe_os_error, one_line
    from m2u.datasets.build import BuildClashError
    from m2u.pipelines.run import failed_stage

    stage = failed_stage(error)
    if stage is None:
        return one_line(error)
    if isinstance(error, BuildClashError):  # `dataset.overwrite` is the pipeline's: the user moves the folder
        text = f"{error.held}; move it out of the run folder (or delete it) and rerun"
    elif isinstance(error, SettingError):
        text = f"`{error.setting}`: {error.message}"
    elif isinstance(error, OSError):  # which file and what went wrong, as every command says it
        text = describe_os_error(error)
    else:
        text = str(error)
    # Shortened before the stage's name goes in front: a worker's traceback in the text ends in its error's line.
    return cli_message(ValueError(f"the {stage} stage: {in_stage_words(as_one_line(text), stage)}"))


def _dataset_summary(out_dir: str, result: dict | None) -> bool:
    """The dataset stage's summary, as m2u-make-dataset says it (from the stage's record on a rerun that skips it):
    its pairs, the inputs without a face and those that could not be read, and what the folder scans passed over.
    Returns whether some inputs could not be read."""
    from m2u.datasets.writer import describe_counts

    result = result or {}
    counts = result.get("counts")
    if not counts:
        return False
    errors = counts["by_status"]["error"]
    where = Path(out_dir) / "dataset"
    reasons = f": the reasons are in {where / 'manifest.parquet'}" if errors else ""
    click.echo(f"[dataset] {where}: {describe_counts(counts)}{reasons}")
    if result.get("passed_over"):
        click.echo(result["passed_over"], err=True)
    return bool(errors)


def _recorded_dataset(out_dir: str) -> dict | None:
    """The dataset stage's result, from its record in the run folder (None when it has none)."""
    from m2u.pipelines.run import STAGE_RECORDS
    from m2u.pipelines.stages import RECORD_SUFFIX, read_record

    record = read_record(Path(out_dir) / STAGE_RECORDS / f"dataset{RECORD_SUFFIX}")
    return None if record is None else record.get("result")


@contextlib.contextmanager
def _dataset_said(out_dir: str) -> Iterator[list[bool]]:
    """Says the dataset stage's summary once the run has ended: done, or failed in a later stage. Yields a list the
    body sets to [True] once the run is done; the command then exits 1 where some inputs could not be read."""
    from m2u.pipelines.run import failed_stage

    done: list[bool] = []
    try:
        yield done
    except Exception as error:
        if failed_stage(error) not in (None, "dataset"):
            _dataset_summary(out_dir, _recorded_dataset(out_dir))
        raise
    if done and _dataset_summary(out_dir, _recorded_dataset(out_dir)):
        click.echo("some inputs could not be read: the run went on without them", err=True)
        sys.exit(EXIT_SOME_FAILED)


# run's and ablate's.
PIPELINE_EXIT_CODES = exit_codes_help(
    failed="some inputs could not be read (the dataset stage's summary says how many; the run goes on without "
    "them) or a stage failed"
)


@main.command(epilog=PIPELINE_EXIT_CODES)
@_common
@click.option(
    "--until",
    type=click.Choice(("dataset", "mseg", "gan", "evaluation")),
    default="evaluation",
    show_default=True,
    help="Stop after this stage.",
)
def run(until, **kw) -> None:
    """Run every stage (skipping those already done with the same configuration) on the face photos INPUTS.

    A config file (-c, e.g. configs/pipeline.yaml) holds each stage's options under its name (dataset, mseg, gan,
    evaluation) and the inputs as `faces`; --print-config prints the resolved one."""
    from m2u.pipelines.run import run_pipeline

    out_dir = kw["out_dir"]
    config = _prepare(kw)
    if config is None:
        return
    with _said_in_one_line(), _dataset_said(out_dir) as done:
        outcomes = run_pipeline(config, out_dir, echo=click.echo, until=until, demo_faces=kw["demo_faces"])
        evaluation = outcomes.get("evaluation")
        if evaluation is not None:
            report = Path(out_dir) / "evaluation"
            click.echo(f"report: {report / 'index.html'} (tables in {report / 'metrics.md'})")
            rows = evaluation.result.get("rows", {})
            if rows:
                click.echo(
                    json.dumps(
                        {name: {k: row.get(k) for k in ("psnr", "ssim")} for name, row in rows.items()},
                        indent=1,
                    )
                )
        done.append(True)


@main.command(epilog=PIPELINE_EXIT_CODES)
@_common
def ablate(**kw) -> None:
    """Train and evaluate the six section 4.3 variants on the same data; writes ablation.md/json."""
    from m2u.pipelines.ablate import run_ablation

    out_dir = kw["out_dir"]
    config = _prepare(kw)
    if config is None:
        return
    with _said_in_one_line(), _dataset_said(out_dir) as done:
        run_ablation(config, out_dir, echo=click.echo, demo_faces=kw["demo_faces"])
        click.echo((Path(out_dir) / "ablation.md").read_text())
        done.append(True)


# SIGTERM takes the workers with it; a full disk or a refused output is one line (m2u.core.guard).
guard_command(main)


if __name__ == "__main__":
    sys.exit(main())
