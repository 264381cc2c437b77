"""`m2u-pipeline`: the whole paper in one command (`run`), and the section 4.3 ablation (`ablate`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import yaml

from m2u.core.configfile import ConfigError, parse_overrides
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
            from m2u.pipelines.demo_faces import write_demo_faces

            write_demo_faces(demo)
            extra["faces"] = [str(demo)]
        return load_config(preset, config_file, extra)
    except ConfigError as error:
        raise click.UsageError(str(error)) from error


def _common(function):
    options = [
        click.argument("config_file", required=False, type=click.Path(exists=True, dir_okay=False)),
        click.option("--preset", type=click.Choice(PRESETS), help="Start from a named preset."),
        click.option("--faces", multiple=True, help="Face inputs (folders, globs, list files); repeatable."),
        click.option(
            "--demo-faces",
            is_flag=True,
            help="Use the embedded demo portrait variants (a fresh clone without CelebA).",
        ),
        click.option(
            "-o", "--out", "run_dir", required=True, type=click.Path(file_okay=False), help="Run folder."
        ),
        click.option(
            "--set",
            "sets",
            multiple=True,
            metavar="STAGE.OPTION=VALUE",
            help="Override one option, e.g. --set gan.max_steps=100; repeatable.",
        ),
        click.option("--print-config", is_flag=True, help="Print the resolved configuration and exit."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _prepare(config_file, preset, faces, demo_faces, run_dir, sets, print_config) -> PipelineConfig | None:
    demo = Path(run_dir) / "demo-faces" if demo_faces else None
    config = _resolve(config_file, preset, faces, demo, sets)
    if print_config:
        click.echo(yaml.safe_dump(config_as_dict(config), sort_keys=False))
        return None
    return config


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
def run(config_file, preset, faces, demo_faces, run_dir, sets, print_config, until) -> None:
    """Run every stage (skipping those already done with the same configuration)."""
    from m2u.pipelines.run import PipelineError, run_pipeline

    config = _prepare(config_file, preset, faces, demo_faces, run_dir, sets, print_config)
    if config is None:
        return
    try:
        outcomes = run_pipeline(config, run_dir, echo=click.echo, until=until)
    except PipelineError as error:
        raise click.ClickException(str(error)) from error
    evaluation = outcomes.get("evaluation")
    if evaluation is not None:
        click.echo(f"report: {Path(run_dir) / 'evaluation' / 'metrics.md'}")
        rows = evaluation.result.get("rows", {})
        if rows:
            click.echo(
                json.dumps(
                    {name: {k: row.get(k) for k in ("psnr", "ssim")} for name, row in rows.items()}, indent=1
                )
            )


@main.command()
@_common
def ablate(config_file, preset, faces, demo_faces, run_dir, sets, print_config) -> None:
    """Train and evaluate the six section 4.3 variants on the same data; writes ablation.md/json."""
    from m2u.pipelines.ablate import run_ablation
    from m2u.pipelines.run import PipelineError

    config = _prepare(config_file, preset, faces, demo_faces, run_dir, sets, print_config)
    if config is None:
        return
    try:
        run_ablation(config, run_dir, echo=click.echo)
    except PipelineError as error:
        raise click.ClickException(str(error)) from error
    click.echo((Path(run_dir) / "ablation.md").read_text())


# SIGTERM takes the workers with it; a full disk or a refused output is one line (m2u.core.guard).
guard_command(main)


if __name__ == "__main__":
    sys.exit(main())
