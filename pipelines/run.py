"""The end-to-end run: raw faces → dataset → M-Seg → GAN → evaluation, each stage cached by fingerprint.

Run folder layout (self-describing)::

    RUN/config.json        the resolved configuration (every option of every stage)
    RUN/versions.json      library versions and the machine
    RUN/pipeline.log       what each invocation did (ran, skipped, resumed)
    RUN/dataset/           m2u-make-dataset output (+ stage.json)
    RUN/mseg/              M-Seg run: mseg.safetensors, checkpoints/, log.jsonl, tensorboard, grids
    RUN/gan/               GAN run: generator.safetensors, ...
    RUN/evaluation/        metrics.json, metrics.md, grid.png, index.html
    RUN/plots/             loss and validation curves (PNG)
    RUN/stages/            one record per finished stage: fingerprint, configuration, seconds, result
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from m2u.pipelines.config import PipelineConfig, config_as_dict
from m2u.pipelines.plots import plot_training_curves
from m2u.pipelines.stages import StageOutcome, run_stage

STAGES = ("dataset", "mseg", "gan", "evaluation")
STAGE_RECORDS = "stages"
MSEG_WEIGHTS = "mseg.safetensors"
GENERATOR_WEIGHTS = "generator.safetensors"
_VERSIONED = (
    "m2u",
    "torch",
    "numpy",
    "opencv-python-headless",
    "dlib-bin",
    "webdataset",
    "pyarrow",
    "scikit-image",
)


class PipelineError(RuntimeError):
    """A stage could not run (missing inputs, a stage failed); the message says which and why."""


def library_versions() -> dict[str, str]:
    versions = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "system": platform.system(),
    }
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def inputs_fingerprint(faces: list[str]) -> str:
    """Names and sizes of every file under the inputs: cheap, and changes when the face set changes."""
    digest = hashlib.sha256()
    for entry in faces:
        root = Path(entry)
        digest.update(str(root).encode())
        if root.is_dir():
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                digest.update(f"{path.relative_to(root)}\0{path.stat().st_size}\n".encode())
        elif root.is_file():
            digest.update(f"{root.stat().st_size}".encode())
    return digest.hexdigest()


class _Logger:
    def __init__(self, path: Path, echo: Callable[[str], None]):
        self.path = path
        self.echo = echo

    def __call__(self, message: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self.path.open("a") as handle:
            handle.write(f"{stamp} {message}\n")
        self.echo(message)


def _stage_config(config: PipelineConfig, name: str) -> Any:
    if name == "dataset":
        return {"faces": config.faces, "dataset": config.dataset}
    return getattr(config, name)


def run_pipeline(
    config: PipelineConfig,
    run_dir: str | Path,
    *,
    echo: Callable[[str], None] = print,
    until: str = "evaluation",
    metric_suite: Any = None,
) -> dict[str, StageOutcome]:
    """Run (or resume, or skip) each stage up to `until`; returns each stage's outcome."""
    from m2u.datasets.build import build_dataset
    from m2u.training.evaluation.evaluate import evaluate
    from m2u.training.trainer import train_gan, train_mseg

    if until not in STAGES:
        raise PipelineError(f"unknown stage {until!r}; stages are {', '.join(STAGES)}")
    if not config.faces:
        raise PipelineError(
            "no face inputs: give --faces (a folder, glob or list file) or `faces:` in the config"
        )
    missing = [face for face in config.faces if not Path(face).exists() and not glob.glob(face)]
    if missing:
        raise PipelineError(f"face inputs not found: {', '.join(missing)}")

    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps(config_as_dict(config), indent=2))
    (run / "versions.json").write_text(json.dumps(library_versions(), indent=2))
    log = _Logger(run / "pipeline.log", echo)
    dirs = {name: run / name for name in STAGES}
    outcomes: dict[str, StageOutcome] = {}

    def dataset_action() -> dict:
        build = dataclasses.replace(config.dataset, overwrite=False)
        result = build_dataset(config.faces, dirs["dataset"], build)
        return {"counts": result.stats.get("counts", {})}

    def mseg_action() -> dict:
        cfg = dataclasses.replace(config.mseg, data=str(dirs["dataset"]), out=str(dirs["mseg"]), resume=True)
        return train_mseg(cfg)

    def gan_action() -> dict:
        cfg = dataclasses.replace(
            config.gan,
            data=str(dirs["dataset"]),
            out=str(dirs["gan"]),
            resume=True,
            mseg_checkpoint=str(dirs["mseg"] / MSEG_WEIGHTS) if config.gan.mask_source == "mseg" else None,
        )
        return train_gan(cfg)

    def evaluation_action() -> dict:
        # The training curves first, so the report can link to them.
        curves = plot_training_curves({n: dirs[n] for n in ("mseg", "gan")}, run / "plots")
        report = evaluate(
            dirs["dataset"],
            dirs["mseg"] / MSEG_WEIGHTS,
            dirs["gan"] / GENERATOR_WEIGHTS,
            dirs["evaluation"],
            config.evaluation,
            metric_suite=metric_suite,
            links={path.stem: os.path.relpath(path, dirs["evaluation"]) for path in curves},
        )
        return {"rows": report.get("rows", {}), "n_samples": report.get("n_samples")}

    actions = {
        "dataset": dataset_action,
        "mseg": mseg_action,
        "gan": gan_action,
        "evaluation": evaluation_action,
    }
    upstream = [inputs_fingerprint(config.faces)]
    for name in STAGES:
        outcome = run_stage(
            name, dirs[name], run / STAGE_RECORDS, _stage_config(config, name), upstream, actions[name], log
        )
        outcomes[name] = outcome
        upstream = [*upstream, outcome.fingerprint]
        if name == until:
            break
    plots = plot_training_curves({n: dirs[n] for n in ("mseg", "gan") if n in outcomes}, run / "plots")
    if all(outcome.skipped for outcome in outcomes.values()):
        log("nothing to do: every stage is up to date")
    for plot in plots:
        log(f"plot: {plot}")
    return outcomes
