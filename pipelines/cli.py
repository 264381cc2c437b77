"""`m2u-pipeline`: the whole paper in one command (`run`), and the section 4.3 ablation (`ablate`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import yaml

from m2u.core.cli import (
    CONTEXT_SETTINGS,
    Refused,
    alias_option,
    apply_aliases,
    cli_message,
    config_options,
    inputs_argument,
    out_option,
    progress_of,
    progress_options,
)
from m2u.core.configfile import CONFIG_SUFFIXES, ConfigError, parse_overrides
from m2u.core.guard import guard_command
from m2u.pipelines.config import PRESETS, PipelineConfig, config_as_dict, load_config


def _resolve(
    config_file: str | None,
    preset: str | None,
    faces: tuple[str, ...],
    demo: Path | None,
    sets: tuple[str, ...],
) -> PipelineConfig:
    try:
        extra = parse_overrides(sets)
        if faces:
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
        out_option("Run folder.", dest="run_dir"),
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

    demo = Path(kw["run_dir"]) / DEMO_FACES if kw["demo_faces"] else None
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


@main.command()
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
    from m2u.core.inputs import OutputFolderError
    from m2u.pipelines.run import PipelineError, PipelineRefused, run_pipeline

    run_dir = kw["run_dir"]
    config = _prepare(kw)
    if config is None:
        return
    try:
        outcomes = run_pipeline(config, run_dir, echo=click.echo, until=until, demo_faces=kw["demo_faces"])
    except (PipelineRefused, OutputFolderError) as error:
        raise Refused(cli_message(error)) from error  # before any stage (the run folder's lock too): exit 2
    except PipelineError as error:
        raise click.ClickException(cli_message(error)) from error  # a stage ran and failed: exit 1
    evaluation = outcomes.get("evaluation")
    if evaluation is not None:
        report = Path(run_dir) / "evaluation"
        click.echo(f"report: {report / 'index.html'} (tables in {report / 'metrics.md'})")
        rows = evaluation.result.get("rows", {})
        if rows:
            click.echo(
                json.dumps(
                    {name: {k: row.get(k) for k in ("psnr", "ssim")} for name, row in rows.items()}, indent=1
                )
            )


@main.command()
@_common
def ablate(**kw) -> None:
    """Train and evaluate the six section 4.3 variants on the same data; writes ablation.md/json."""
    from m2u.core.inputs import OutputFolderError
    from m2u.pipelines.ablate import run_ablation
    from m2u.pipelines.run import PipelineError, PipelineRefused

    run_dir = kw["run_dir"]
    config = _prepare(kw)
    if config is None:
        return
    try:
        run_ablation(config, run_dir, echo=click.echo, demo_faces=kw["demo_faces"])
    except (PipelineRefused, OutputFolderError) as error:
        raise Refused(cli_message(error)) from error  # before any stage (the run folder's lock too): exit 2
    except PipelineError as error:
        raise click.ClickException(cli_message(error)) from error  # a stage ran and failed: exit 1
    click.echo((Path(run_dir) / "ablation.md").read_text())


# SIGTERM takes the workers with it; a full disk or a refused output is one line (m2u.core.guard).
guard_command(main)


if __name__ == "__main__":
    sys.exit(main())
