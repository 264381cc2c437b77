"""The end-to-end run: raw faces → dataset → M-Seg → GAN → evaluation, each stage cached by fingerprint.

Run folder layout (self-describing)::

    RUN/config.json        the resolved configuration (every option of every stage) of the last run through every
                           stage that made anything: what the report was made with (a config file that remakes it)
    RUN/versions.json      that run's library versions and machine
    RUN/config.latest.json the same two of the latest run, whatever it did (--until, stopped, failed)
    RUN/versions.latest.json
    RUN/pipeline.log       what each invocation did (ran, skipped, resumed)
    RUN/dataset/           m2u-make-dataset output (+ stage.json)
    RUN/mseg/              M-Seg run: mseg.safetensors, checkpoints/, log.jsonl, tensorboard, grids
    RUN/gan/               GAN run: generator.safetensors, ...
    RUN/evaluation/        metrics.json, metrics.md, grid.png, index.html, plots/ (the curves of the models it
                           evaluated, which index.html links)
    RUN/plots/             loss and validation curves (PNG) of the training stages as they are now
    RUN/stale/             a stage's earlier output, moved aside when the stage ran again (taken back when a
                           run's settings are again those it was made with)
    RUN/stages/            one record per finished stage: fingerprint, configuration, seconds, result
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from m2u.core.fileio import (
    check_writable,
    content_digest,
    open_append,
    staged_files,
    write_cache_file,
)
from m2u.core.fileio import library_versions as versions_of
from m2u.core.guard import UserError, one_line, stop_name, stop_of
from m2u.core.imageio import DigestCache
from m2u.core.inputs import (
    Discovery,
    changes_in_words,
    discover,
    input_folder_named,
    no_images_error,
    output_lock,
    report_clash,
)
from m2u.core.runtime import runtime_field
from m2u.datasets.build import BuildConfig
from m2u.pipelines.config import PipelineConfig, config_as_dict, in_stage_words
from m2u.pipelines.plots import plot_training_curves
from m2u.pipelines.stages import (
    RECORD_SUFFIX,
    STALE_DIR,
    StageOutcome,
    chain_of,
    describe_change,
    fingerprint,
    read_record,
    run_stage,
)

STAGES = ("dataset", "mseg", "gan", "evaluation")
STAGE_RECORDS = "stages"
# RUN/plots: the training curves of the training stages as they are now; the report keeps its own copy of those of
# the models it evaluated in RUN/evaluation/plots (what its page links).
PLOTS = "plots"
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


class PipelineError(UserError, RuntimeError):
    """A stage could not run (missing inputs, a stage failed); the message says which and why."""


class PipelineRefused(PipelineError):
    """The run was refused before any stage started (no faces given, inputs not found, weights missing): a usage
    error, exit 2 on the command line, as every command's."""


def library_versions() -> dict[str, str]:
    return versions_of(_VERSIONED, platform_info=True)


FACE_HASHES = "face-hashes.tsv"  # in RUN/stages/: the faces' content digests, by path and file status
_HASH_CACHE_HEADER = "# m2u face hashes: sha256, size, mtime_ns, ctime_ns, inode, path\n"
# In RUN/stages/: the faces the dataset stage's output is of (`face_marks`), to say which changed when it reruns.
DATASET_FACES = "dataset-faces.tsv"
_DATASET_FACES_HEADER = "# m2u dataset faces: input index, mark (sha256), name below the input\n"

FaceMark = tuple[int, str, str]  # (index of the `faces` input, the face's name below it, its mark)


def face_marks(
    faces: list[str],
    exclude: Sequence[str | Path] = (),
    *,
    identity: str = "content",
    hash_cache: Path | None = None,
    limit: int | None = None,
) -> list[FaceMark]:
    """The files the dataset stage reads (m2u.core.inputs.discover, nothing under an `exclude` folder: a run folder
    inside the faces folder never counts its own outputs as inputs), each as (index of its `faces` input, its name
    below that input's folder, glob base or list file's folder, a mark): the SHA-256 of its bytes ("-1": counted,
    never read), or with `identity` "sizes" or "spelled" its size. `limit` (`dataset.limit`): only the files the
    build's limit keeps (m2u.datasets.sources.read_sources): a face beyond it is not read, so it is no input.

    `hash_cache`: a file of the digests of an earlier call, by path, size, modification and change times and
    inode (as git's index keeps them), so only files changed since are read again; rewritten with this call's
    (and the digests it held of the faces found beyond `limit`: a record made before the limit counted them
    checks them again, `_inputs_identity`)."""
    from m2u.core.inputs import discover
    from m2u.datasets.sources import read_sources

    if identity not in ("content", "sizes", "spelled"):
        raise ValueError(f"`identity` must be content, sizes or spelled, not {identity!r}")
    read = None if limit is None else set(read_sources(discover(faces, exclude=exclude), limit))
    known = _read_hash_cache(hash_cache) if hash_cache is not None else {}
    digests = DigestCache(known)
    beyond: set[str] = set()
    marks: list[FaceMark] = []
    for index, entry in enumerate(faces):
        for found in discover([entry], exclude=exclude).entries:
            if read is not None and os.path.abspath(found.path) not in read:
                beyond.add(os.path.abspath(found.path))
                continue
            if found.problem:
                mark = "-1"  # counted, never read (a FIFO or device would hang or fill the memory)
            elif identity == "content":
                mark = _content_digest(found.path, digests)
            else:
                mark = str(found.path.stat().st_size)
            marks.append((index, found.relative, mark))
    kept = {where: known[where] for where in beyond if where in known}
    if hash_cache is not None and identity == "content" and {**kept, **digests.used} != known:
        # the faces of this call only: a face gone from the inputs leaves the cache
        lines = "".join(f"{d}\t{s}\t{where}\n" for where, (d, s) in sorted({**kept, **digests.used}.items()))
        hash_cache.parent.mkdir(parents=True, exist_ok=True)
        text = _HASH_CACHE_HEADER + lines
        write_cache_file(
            hash_cache, lambda temp: Path(temp).write_text(text, encoding="utf-8", errors="surrogateescape")
        )
    return marks


def marks_fingerprint(faces: list[str], marks: list[FaceMark], identity: str = "content") -> str:
    """The face inputs' identity: the names and marks of the faces (`face_marks`), by input. Not with the inputs'
    spelling: `faces`, `./faces/` and its absolute path, or the folder of a finished run moved to another machine,
    are the same faces; a face replaced by another, of any size, is not. `identity` "spelled": each input as given
    too, as before 2026-12-06 (what the records of earlier runs hold)."""
    digest = hashlib.sha256()
    at = 0
    for index, entry in enumerate(faces):
        digest.update(str(entry).encode("utf-8", "surrogateescape") if identity == "spelled" else b"\x1e")
        while at < len(marks) and marks[at][0] == index:
            digest.update(f"{marks[at][1]}\0{marks[at][2]}\n".encode("utf-8", "surrogateescape"))
            at += 1
    return digest.hexdigest()


def inputs_fingerprint(
    faces: list[str],
    exclude: Sequence[str | Path] = (),
    *,
    identity: str = "content",
    hash_cache: Path | None = None,
    limit: int | None = None,
) -> str:
    """The face inputs' identity (`marks_fingerprint`) of the files the dataset stage reads (`face_marks`).
    `identity` "sizes": names and sizes instead of the bytes, as m2u recorded on 2026-12-06; "spelled": sizes and
    each input as given, as before (what the records of earlier runs hold)."""
    marks = face_marks(faces, exclude, identity=identity, hash_cache=hash_cache, limit=limit)
    return marks_fingerprint(faces, marks, identity)


def remember_dataset_faces(run: Path, marks: list[FaceMark]) -> None:
    """Keep the faces the dataset stage's output is now of (RUN/stages/dataset-faces.tsv), for a later rerun to
    say which changed; only where they differ from those kept. Never fails the run: it only words a message."""
    path = run / STAGE_RECORDS / DATASET_FACES
    text = _DATASET_FACES_HEADER + "".join(f"{index}\t{mark}\t{name}\n" for index, name, mark in marks)
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8", errors="surrogateescape") == text:
            return
    write_cache_file(
        path, lambda temp: Path(temp).write_text(text, encoding="utf-8", errors="surrogateescape")
    )


def faces_changed(run: Path, marks: list[FaceMark], most: int = 3) -> str:
    """Which faces differ between the dataset stage's output (RUN/stages/dataset-faces.tsv) and `marks`, briefly:
    "2 photos added, 1 changed: a.jpg, b.jpg, c.jpg"; "" when that cannot be told (no such file: a run of an
    earlier m2u) or nothing differs by name and mark."""
    try:
        lines = (run / STAGE_RECORDS / DATASET_FACES).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return ""
    before = {}
    for line in lines.splitlines():
        fields = line.split("\t", 2)
        if len(fields) == 3 and fields[0].isdigit():
            before[(int(fields[0]), fields[2])] = fields[1]
    now = {(index, name): mark for index, name, mark in marks}
    kinds = {
        "added": sorted(key for key in now if key not in before),
        "changed": sorted(key for key in now if key in before and before[key] != now[key]),
        "removed": sorted(key for key in before if key not in now),
    }
    return changes_in_words({kind: [name for _, name in keys] for kind, keys in kinds.items()}, most)


def _read_hash_cache(path: Path) -> dict[str, tuple[str, str]]:
    """path -> (digest, file status) from an earlier call; an unreadable or damaged cache is only slower."""
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except OSError:
        return {}
    known = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) == 6 and len(fields[0]) == 64:
            known[fields[5]] = (fields[0], "\t".join(fields[1:5]))
    return known


def _content_digest(path: Path, digests: DigestCache) -> str:
    """The SHA-256 of a face file's bytes ("-1" when it cannot be read: the dataset stage reports it)."""
    from m2u.core.imageio import ImageReadError

    try:
        return digests.sha256(path)
    except (ImageReadError, OSError):
        return "-1"


class _Logger:
    def __init__(self, path: Path, echo: Callable[[str], None]):
        self.path = path
        self.echo = echo

    def __call__(self, message: str, echo: bool = True) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open_append(self.path) as handle:  # never through a link (m2u.core.fileio)
            handle.write(f"{stamp} {message}\n")
        if echo:
            self.echo(message)


def _how_it_ended(error: BaseException) -> str:
    """A stage's end by `error`, for pipeline.log (the command says it in its own line)."""
    # also a stop whose exception a library turned into its own ("DataLoader worker killed")
    stop = stop_of(error)
    if stop is not None:
        return f"stopped by {stop_name(stop)}: a rerun with the same configuration resumes it"
    return f"failed: {one_line(error)}"


def _stage_prefix(name: str) -> str:
    """How `--set` names a stage's options: the dataset stage's configuration holds `faces` and `dataset` itself."""
    return "" if name == "dataset" else f"{name}."


@dataclasses.dataclass
class DatasetStageConfig:
    """The dataset stage's configuration: the face inputs and the build's options."""

    # Recorded, not fingerprinted: the inputs' identity is upstream of the stage (inputs_fingerprint), which a
    # respelling of the same folder leaves alone.
    faces: list[str] = runtime_field(default_factory=list)
    dataset: BuildConfig = dataclasses.field(default_factory=BuildConfig)


def _stage_config(config: PipelineConfig, name: str) -> Any:
    if name == "dataset":
        return DatasetStageConfig(config.faces, config.dataset)
    return getattr(config, name)


def _input_locations(faces: list[str]) -> str:
    """Where the faces are, as a dataset build records its inputs (absolute paths): a build stopped midway resumes
    only from the same files (the same faces found elsewhere start it again; finished, it stays finished)."""
    return hashlib.sha256(
        "\0".join(os.path.abspath(face) for face in faces).encode("utf-8", "surrogateescape")
    ).hexdigest()


def _dataset_resumes_with(config: PipelineConfig) -> str:
    """What a stopped dataset stage must have been started with to be resumed: the same input files and the same
    mask engine (a build of another engine is set aside and built again, where the build itself would refuse it)."""
    from m2u.datasets.work import engine_version

    version = engine_version(config.dataset)
    locations = _input_locations(config.faces)
    return locations if version is None else f"{locations} mask-engine-{version}"


def _inputs_identity(
    config: PipelineConfig, run: Path
) -> tuple[list[str], Callable[[str], Any], list[FaceMark]]:
    """The first upstream fingerprint of the chain, the stage configurations to fingerprint, and the faces the
    dataset stage reads (`face_marks`): those of this m2u, or of an earlier m2u where the dataset stage's record was
    made by one (every face found, beyond `dataset.limit` too, until 2026-12-08; the faces by names and sizes on
    2026-12-06; before, also as spelled): a finished run made before stays finished."""
    cache = run / STAGE_RECORDS / FACE_HASHES
    marks = face_marks(config.faces, exclude=[run], hash_cache=cache, limit=config.dataset.limit)
    inputs = marks_fingerprint(config.faces, marks)
    record = read_record(run / STAGE_RECORDS / f"dataset{RECORD_SUFFIX}")
    dataset = _stage_config(config, "dataset")
    if record is not None and record.get("fingerprint") != fingerprint(dataset, [inputs]):
        # Read only where no option of the stage changed (it reruns then whatever its faces): every face found.
        if config.dataset.limit is not None and not describe_change(record, dataset, []):
            every = inputs_fingerprint(config.faces, exclude=[run], hash_cache=cache)
            if record.get("fingerprint") == fingerprint(dataset, [every]):
                return [every], lambda name: _stage_config(config, name), marks
        sized = inputs_fingerprint(config.faces, exclude=[run], identity="sizes")
        if record.get("fingerprint") == fingerprint(dataset, [sized]):
            return [sized], lambda name: _stage_config(config, name), marks
        spelled = inputs_fingerprint(config.faces, exclude=[run], identity="spelled")
        earlier = {"faces": config.faces, "dataset": config.dataset}
        if record.get("fingerprint") == fingerprint(earlier, [spelled]):
            return (
                [spelled],
                lambda name: earlier if name == "dataset" else _stage_config(config, name),
                marks,
            )
    return [inputs], lambda name: _stage_config(config, name), marks


def check_stage_weights(config: PipelineConfig, until: str) -> None:
    """Pre-flight: every pretrained network a stage up to `until` needs, loaded before the first stage starts
    (the GAN's VGG19 would otherwise be found missing only after M-Seg has trained). Evaluation metrics whose
    weights are missing are reported as unavailable by that stage, not refused."""
    from m2u.training.losses import RANDOM_BACKBONE, VGGPerceptualLoss, VGGWeightsUnavailable

    gan = config.gan
    if STAGES.index(until) < STAGES.index("gan") or gan.perceptual_weight <= 0:
        return
    if gan.vgg_weights == RANDOM_BACKBONE:
        return
    try:
        VGGPerceptualLoss(gan.vgg_weights, gan.perceptual_layers)  # the same load the gan stage does
    except VGGWeightsUnavailable as error:
        raise PipelineRefused(
            f"the gan stage cannot run (checked before any stage started): {in_stage_words(str(error), 'gan')}"
        ) from None


def check_stage_devices(config: PipelineConfig, until: str) -> None:
    """Pre-flight: each stage's device and precision up to `until`, as the stage would resolve them (`evaluation.device
    cuda` on a machine without CUDA was found only after the three training stages had run)."""
    from m2u.core.errors import SettingError
    from m2u.training.device import resolve_device, usable_precision

    for name in STAGES[1 : STAGES.index(until) + 1]:
        stage = getattr(config, name)
        try:
            device = resolve_device(stage.device)
            if name != "evaluation":  # the training stages, as TrainingTask checks them
                usable_precision(stage.precision, device)
        except SettingError as error:
            raise PipelineRefused(
                f"the {name} stage cannot run (checked before any stage started): `{name}.{error.setting}`: "
                f"{error.message}"
            ) from None


def _before_any_stage(name: str, error: BaseException, setting: str = "") -> PipelineRefused:
    """The refusal of a stage that cannot run, said before any stage started (`setting`: the option at fault, as
    `--set` names it)."""
    said = one_line(error)
    return PipelineRefused(
        f"the {name} stage cannot run (checked before any stage started): {f'`{setting}`: ' if setting else ''}{said}"
    )


def check_stage_settings(config: PipelineConfig, until: str) -> None:
    """Pre-flight: what each stage up to `until` would refuse at its start, found before the first stage starts
    (and before any stage's earlier output is moved aside): the dataset stage's mask options and detector (the
    masking engine's own checks, `make_masker`: an unknown option, a missing mask pack), the training stages'
    `init_weights` model files (found, m2u model files, fitting the network), and the model files named for the
    evaluation's metrics (loaded as the evaluation loads them)."""
    from m2u.core.errors import SettingError
    from m2u.datasets.work import make_detector, make_masker
    from m2u.masking.detect import ModelFileError

    try:
        make_masker(config.dataset)
    except SettingError as error:  # MaskConfig's own setting (`color`, `pattern`)
        raise _before_any_stage(
            "dataset", ValueError(error.message), f"dataset.mask_options.{error.setting}"
        ) from None
    except UserError as error:
        said = one_line(error).removeprefix("mask options: ")
        raise _before_any_stage("dataset", ValueError(said), "dataset.mask_options") from None
    try:
        make_detector(config.dataset)
    except (UserError, ModelFileError, OSError) as error:
        raise _before_any_stage("dataset", error, "dataset.detector_options") from None
    for name in ("mseg", "gan")[: max(0, STAGES.index(until))]:
        _check_init_weights(name, getattr(config, name))
    if until == "evaluation":
        _check_metric_files(config)


# Each training stage's networks, by the name `init_weights` gives them: (model class, the config field).
_NETWORKS = {
    "mseg": {"mseg": ("MSeg", "model")},
    "gan": {"generator": ("CARU2Net", "generator"), "discriminator": ("PatchDiscriminator", "discriminator")},
}


def _check_init_weights(name: str, run: Any) -> None:
    """The model files a training stage's `init_weights` names, checked as the trainer loads them
    (`load_initial_weights`), on networks that allocate nothing."""
    from m2u.training.checkpoint import build_model, load_model
    from m2u.training.trainer import initial_weights_misfit

    networks = _NETWORKS[name]
    for network_name, path in run.init_weights.items():
        setting = f"{name}.init_weights.{network_name}"
        if network_name not in networks:
            raise _before_any_stage(
                name,
                ValueError(f"the {name} stage trains {', '.join(networks)}, not {network_name!r}"),
                setting,
            )
        class_name, field_name = networks[network_name]
        try:
            model, _ = load_model(path, map_location="cpu")
            network = build_model(class_name, getattr(run, field_name), f"the {field_name} config")
            misfit = initial_weights_misfit(run, network_name, network, model)
        except (UserError, ValueError, OSError) as error:
            raise _before_any_stage(name, error, setting) from None
        if misfit:
            raise _before_any_stage(name, ValueError(f"{path} does not fit this network: {misfit}"), setting)


def _check_metric_files(config: PipelineConfig) -> None:
    """The files the evaluation's settings name for its metric networks, loaded as the evaluation loads them
    (`MetricSuite`): a file named there that cannot be used is refused by the evaluation (not reported as a
    metric unavailable), so it is refused now. Only the networks whose files are named are loaded."""
    from m2u.evaluation.suite import MetricSuite

    metrics = config.evaluation.metrics
    named = dataclasses.replace(
        metrics,
        enable_lpips=metrics.enable_lpips and bool(metrics.lpips.trunk_weights or metrics.lpips.head_weights),
        enable_fid=metrics.enable_fid and bool(metrics.fid.weights_path),
        enable_identity=metrics.enable_identity and bool(metrics.identity.models_dir),
    )
    if not (named.enable_lpips or named.enable_fid or named.enable_identity):
        return
    try:
        MetricSuite(named, device="cpu")
    except ValueError as error:  # "`metrics.lpips.trunk_weights`: weights file not found: ..."
        said = one_line(error)
        raise PipelineRefused(
            "the evaluation stage cannot run (checked before any stage started): "
            + (f"`evaluation.{said[1:]}" if said.startswith("`metrics.") else said)
        ) from None


_FAILED_STAGE = "_m2u_pipeline_stage"


def failed_stage(error: BaseException) -> str | None:
    """The stage whose run ended in `error` (None for an error raised before or between stages), for a message in
    the words of that stage's options (`in_stage_words`)."""
    stage = getattr(error, _FAILED_STAGE, None)
    return stage if isinstance(stage, str) else None


def check_dataset_plan(config: PipelineConfig, run: Path, until: str) -> None:
    """Pre-flight: the dataset stage's plan of samples, as the build makes it (no image is read): its identities
    (`dataset.split_by` identity) and that each split a later stage up to `until` reads gets samples (an evaluation
    split the split fractions leave empty was found only after M-Seg and the GAN had trained)."""
    from collections import Counter

    from m2u.core.errors import SettingError
    from m2u.datasets.build import plan_build

    before = "the dataset stage cannot run (checked before any stage started)"
    try:
        plan = plan_build(config.faces, config.dataset, exclude=[run])
    except SettingError as error:
        setting = in_stage_words(f"`{error.setting}`", "dataset")
        raise PipelineRefused(f"{before}: {setting}: {in_stage_words(error.message, 'dataset')}") from None
    except (ValueError, FileNotFoundError) as error:
        raise PipelineRefused(f"{before}: {in_stage_words(one_line(error), 'dataset')}") from None
    planned = Counter(sample.split for sample in plan.samples)
    needs = {"mseg": "train", "evaluation": config.evaluation.split}
    for stage, split in needs.items():
        if STAGES.index(until) < STAGES.index(stage) or planned[split]:
            continue
        where = ", ".join(f"{name} {planned[name]}" for name in ("train", "val", "test"))
        other = " or another `evaluation.split`" if stage == "evaluation" else ""
        raise PipelineRefused(
            f"the {stage} stage cannot run (checked before any stage started): the {split} split has no samples: "
            f"`dataset.split` {list(config.dataset.split)} splits the {len(plan.samples)} samples planned as "
            f"{where}; choose other fractions{other}"
        )


def _check_inputs(config: PipelineConfig, until: str, demo_faces: Path | None = None) -> Discovery | None:
    """Every check of the configuration and the faces that refuses a run before anything is written. `demo_faces`:
    the folder the run writes the embedded demo faces into (the faces to check: those already there). Returns the
    faces found (None for the demo faces)."""
    if until not in STAGES:
        raise PipelineRefused(f"unknown stage {until!r}; stages are {', '.join(STAGES)}")
    found = None
    if demo_faces is not None:
        from m2u.pipelines.demo_faces import demo_faces_problem

        problem = demo_faces_problem(demo_faces)
        if problem:
            raise PipelineRefused(problem)
    elif not config.faces:
        raise PipelineRefused(
            "no face inputs: give `faces` (a folder, glob or list file) on the command line or in the config"
        )
    else:
        missing = [
            face for face in config.faces if not Path(face).exists() and not glob.glob(face, recursive=True)
        ]
        if missing:
            raise PipelineRefused(f"face inputs not found: {', '.join(missing)}")
        found = discover(config.faces)
        if not found.entries:  # said now in one line, not as the dataset stage's traceback
            raise PipelineRefused(str(no_images_error(found)))
    check_stage_weights(config, until)
    check_stage_devices(config, until)
    check_stage_settings(config, until)
    return found


def _with_budget_left(run: Any) -> Any:
    """A training stage's `max_seconds` is the stage's training time: resumed after a stop, it gets what its
    earlier processes left (m2u-train's own `max_seconds` is each process's budget), so a stopped and rerun stage
    trains about as long as one that ran through."""
    from m2u.training.checkpoint import load_training_state
    from m2u.training.run_state import last_checkpoint_path

    last = last_checkpoint_path(run.out)
    if run.max_seconds is None or not last.is_file():
        return run
    spent = load_training_state(last).get("seconds", 0.0)
    spent = float(spent) if isinstance(spent, (int, float)) else 0.0
    return dataclasses.replace(run, max_seconds=max(run.max_seconds - spent, 0.0))


# The file each stage's output is known by: its digest is recorded and chained into the later stages.
_KEY_OUTPUTS = {
    "dataset": "manifest.parquet",
    "mseg": MSEG_WEIGHTS,
    "gan": GENERATOR_WEIGHTS,
    "evaluation": "metrics.json",
}


def _output_digest(name: str, stage_dir: Path) -> Callable[[], str]:
    """The digest of the stage's key output ("" when it made none)."""

    def digest() -> str:
        key = stage_dir / _KEY_OUTPUTS[name]
        return content_digest(key) if key.is_file() else ""

    return digest


def _output_problem(name: str) -> Callable[[dict, Path], str]:
    """What is wrong with a finished stage's output in `stage_dir` now ("" when nothing): its key file gone or not
    the bytes its record made (a record of an older m2u, without a digest: the file is there), a dataset's shards
    gone or cut, an evaluation report without its page. Checked where the record holds the output's digest (this
    m2u's records)."""

    def problem(record: dict, stage_dir: Path) -> str:
        digest = record.get("output_digest")
        if not digest:  # a record of an older m2u: trusted as that m2u trusted it
            return ""
        key = stage_dir / _KEY_OUTPUTS[name]
        if not key.is_file():
            return f"{key} is missing"
        if content_digest(key) != digest:
            return f"{key} is not the file this stage made"
        if name == "evaluation" and not (stage_dir / "index.html").is_file():
            return f"{stage_dir / 'index.html'} is missing"
        if name == "dataset":
            return _dataset_problem(stage_dir)
        return ""

    return problem


def _dataset_problem(folder: Path) -> str:
    """The first shard of a built dataset that is missing or not the size its build recorded ("" when none)."""
    from m2u.datasets.shardcheck import first_shard_problem

    try:
        return first_shard_problem(folder) or ""
    except (OSError, ValueError) as error:
        return f"its manifest cannot be read ({one_line(error)})"


def _partial_output(name: str, stage_dir: Path) -> bool:
    """Whether an interrupted stage left anything to resume from: a training run's checkpoint, a dataset build's
    state folder; an evaluation starts again."""
    from m2u.datasets.layout import STATE_DIR
    from m2u.training.run_state import last_checkpoint_path

    if name == "dataset":
        return (stage_dir / STATE_DIR).is_dir()
    if name in ("mseg", "gan"):
        return last_checkpoint_path(stage_dir).is_file()
    return False


def _stage_actions(
    config: PipelineConfig, dirs: dict[str, Path], metric_suite: Any
) -> dict[str, Callable[[], dict]]:
    """What each stage runs: the library call with the stage's configuration and the run folder's paths."""
    from m2u.datasets.build import build_dataset
    from m2u.evaluation.evaluator import evaluate
    from m2u.training.trainer import train_gan, train_mseg

    def dataset_action() -> dict:
        build = dataclasses.replace(config.dataset, overwrite=False)
        # The run folder may lie inside a faces folder: none of its files is a face.
        result = build_dataset(config.faces, dirs["dataset"], build, exclude=[dirs["dataset"].parent])
        counts = result.stats.get("counts", {})
        trained_on = counts.get("by_split_and_status", {}).get("train", {}).get("ok", 0)
        if not trained_on:  # not done: the mseg stage would only fail later on an empty split
            by_status = counts.get("by_status", {})
            raise PipelineError(
                f"the dataset stage wrote no training pair ({by_status.get('ok', 0)} pairs in all, "
                f"{by_status.get('no_face', 0)} inputs without a face, {by_status.get('error', 0)} errors): "
                f"nothing to train on; the reasons are in {dirs['dataset'] / 'manifest.parquet'}"
            )
        # What the folder scans passed over (a readme.txt), kept with the counts: said again by a rerun that skips.
        return {"counts": counts, "passed_over": result.skipped}

    def mseg_action() -> dict:
        cfg = dataclasses.replace(config.mseg, data=str(dirs["dataset"]), out=str(dirs["mseg"]), resume=True)
        return train_mseg(_with_budget_left(cfg))

    def gan_action() -> dict:
        cfg = dataclasses.replace(
            config.gan,
            data=str(dirs["dataset"]),
            out=str(dirs["gan"]),
            resume=True,
            mseg_checkpoint=str(dirs["mseg"] / MSEG_WEIGHTS) if config.gan.mask_source == "mseg" else None,
        )
        return train_gan(_with_budget_left(cfg))

    def evaluation_action() -> dict:
        # The training curves first, so the report can link to them: its own copy, in the report's folder, so
        # they stay those of the models it evaluated (moved aside with it; RUN/plots follows the latest training).
        curves = plot_training_curves({n: dirs[n] for n in ("mseg", "gan")}, dirs["evaluation"] / PLOTS)
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

    return {
        "dataset": dataset_action,
        "mseg": mseg_action,
        "gan": gan_action,
        "evaluation": evaluation_action,
    }


def _note_stages_left_behind(run: Path, until: str, made_from: str, log: Callable[[str], None]) -> None:
    """Says which finished stages after `until` were not made from the outputs now before them (an evaluation
    report of an earlier generator, after `--until gan` retrained it; `made_from`: the fingerprint of `until`'s
    output): left as they are, but not passed off as current."""
    behind = False
    expected: str | None = made_from
    for name in STAGES[STAGES.index(until) + 1 :]:
        record = read_record(run / STAGE_RECORDS / f"{name}{RECORD_SUFFIX}")
        if record is not None:
            behind = behind or (record.get("upstream") or [None])[-1] != expected
            if behind:
                log(
                    f"[{name}] out of date: {run / name} was made from earlier stages and was left as it is "
                    f"(--until {until}); a run without --until brings it up to date"
                )
        # A stage without a record (never run, or stopped midway) is not what any later stage was made from.
        expected = None if record is None else chain_of(record)


def run_pipeline(
    config: PipelineConfig,
    run_dir: str | Path,
    *,
    echo: Callable[[str], None] = print,
    until: str = "evaluation",
    metric_suite: Any = None,
    demo_faces: bool = False,
) -> dict[str, StageOutcome]:
    """Run (or resume, or skip) each stage up to `until`; returns each stage's outcome. `demo_faces`: the faces are
    the embedded demo faces, in RUN/demo-faces (written there once the run goes ahead, reused by later runs)."""
    run = Path(run_dir)
    config = with_demo_faces(config, run) if demo_faces else config
    with run_folder(config, run, until, demo_faces=demo_faces):
        return run_stages(config, run, echo, until, metric_suite)


DEMO_FACES = "demo-faces"  # RUN/demo-faces: the embedded demo faces (`demo_faces`)


def with_demo_faces(config: PipelineConfig, run: Path) -> PipelineConfig:
    """`config` whose faces are the run folder's demo faces."""
    return dataclasses.replace(config, faces=[str(run / DEMO_FACES)])


@contextlib.contextmanager
def _faces_to_plan(config: PipelineConfig, *, demo_faces: bool) -> Iterator[PipelineConfig]:
    """`config` as the dataset plan's check before anything is written reads it: with `demo_faces`, its faces a
    scratch copy of the demo faces (the run's own copy is written later, under its lock). The plan reads names and
    bytes alone, so the copy plans as the run's folder will: `dataset.split` or `dataset.limit` can leave a split of
    the demo faces empty too, and that is refused before M-Seg and the GAN train, as it is for other faces."""
    if not demo_faces:
        yield config
        return
    import tempfile

    from m2u.pipelines.demo_faces import write_demo_faces

    with tempfile.TemporaryDirectory(prefix="m2u-demo-plan-") as scratch:
        write_demo_faces(scratch)
        yield dataclasses.replace(config, faces=[scratch])


@contextlib.contextmanager
def run_folder(config: PipelineConfig, run: Path, until: str, *, demo_faces: bool = False) -> Iterator[None]:
    """The run folder `run`, held (its lock) while the body writes it: every check that refuses the run is made
    before anything is written, the demo faces (`demo_faces`) too, which are written, where missing, only then."""
    demo = run / DEMO_FACES if demo_faces else None
    found = _check_inputs(config, until, demo)
    # The run's own grids, plots and shards would be read back as faces at every rerun (a faces folder's, or a
    # faces glob's: `faces/*.jpg` with -o faces).
    named = "" if found is None else input_folder_named(run, found, "faces")
    if named:
        raise PipelineRefused(
            f"the run folder {run} is {named}; choose another run folder (one inside the faces folder is fine: it "
            "is never read as faces)"
        )
    with _faces_to_plan(config, demo_faces=demo is not None) as planned:
        check_dataset_plan(planned, run, until)
    for name in PIPELINE_REPORTS:
        check_writable(run / name)  # refused before anything is written
    clash = report_clash(run, PIPELINE_TOOL, PIPELINE_REPORTS)  # an m2u-train run's config.json, say
    if clash:
        raise PipelineRefused(clash)
    _check_run_folder_place(run)  # a dataset folder, another command's output folder
    check_stage_outputs(run, until)
    check_writable(run / STAGE_RECORDS / FACE_HASHES, by_name=True)  # a cache: a damaged one is written again
    run.mkdir(parents=True, exist_ok=True)
    with output_lock(run, PIPELINE_TOOL, reports=PIPELINE_REPORTS):
        if demo is not None:  # under the lock: never beside another run reading them
            from m2u.pipelines.demo_faces import DemoFacesChanged, ensure_demo_faces

            try:
                ensure_demo_faces(demo)
            except DemoFacesChanged as error:  # changed since the check above
                raise PipelineRefused(str(error)) from None
        yield


def _refused_output(problem: str) -> PipelineRefused:
    """A refused output name (m2u.core.fileio's words), said as the run folder's option."""
    return PipelineRefused(
        f"{problem.removesuffix('; move it away or choose another output')}; move it away or choose another run folder (-o)"
    )


def _check_run_folder_place(run: Path) -> None:
    """A run folder that is, or lies inside, a dataset folder (its shards, manifests and build state) would mix its
    stages with the dataset's files, as m2u-eval refuses a report there; one that holds another m2u command's
    output (an m2u-eval report, an m2u-train run) would mix with it."""
    from m2u.core.inputs import LOCK_PREFIX, LOCK_SUFFIX
    from m2u.datasets.layout import LOCK_NAME, MANIFEST_NAME, STATE_DIR

    place = Path(os.path.realpath(run))
    for folder in (place, *place.parents):
        if any(os.path.lexists(folder / name) for name in (STATE_DIR, LOCK_NAME, MANIFEST_NAME)):
            where = "is the dataset folder" if folder == place else f"is inside the dataset folder {folder}"
            raise PipelineRefused(
                f"the run folder {run} {where}; the run would mix with the dataset: choose another run folder (-o)"
            )
    if place.is_dir():
        own = f".{PIPELINE_TOOL}{LOCK_SUFFIX}"
        other = sorted(
            entry
            for entry in os.listdir(place)
            if entry.startswith(LOCK_PREFIX) and entry.endswith(LOCK_SUFFIX) and entry != own
        )
        if other:
            tool = other[0][1 : -len(LOCK_SUFFIX)]  # .m2u-eval.lock: m2u-eval
            raise PipelineRefused(
                f"the run folder {run} holds an {tool} run's output ({other[0]}); the run would mix with it: "
                "choose another run folder (-o)"
            )


def check_stage_outputs(run: Path, until: str) -> None:
    """Pre-flight: every name the stages up to `until` write in the run folder, checked before the first stage
    starts (a person's file at RUN/evaluation/index.html was found only after the three training stages): a file
    m2u did not write at an output's name, a file where a stage's folder goes, other files in a dataset folder
    without a build (the build refuses them). A stage's own files from an earlier run pass."""
    from m2u.core.fileio import OutputRefusedError, replace_problem
    from m2u.datasets.build import foreign_entries
    from m2u.evaluation.report import REPORT_FILES
    from m2u.training.loop import check_run_outputs

    # The run's own folders: a file of someone else's at RUN/stale failed a stage's rerun only once it had to move
    # the earlier output aside (exit 1, "Not a directory"), after every stage before it had run.
    for name, role in ((STALE_DIR, "earlier outputs"), (STAGE_RECORDS, "stage records"), (PLOTS, "plots")):
        folder = run / name
        if os.path.lexists(folder) and not folder.is_dir():
            raise PipelineRefused(
                f"{folder} is in the way of the run's folder of {role}; move it away or choose another run folder (-o)"
            )
    stages = STAGES[: STAGES.index(until) + 1]
    for name in stages:
        folder = run / name
        if os.path.lexists(folder) and not folder.is_dir() and not folder.is_symlink():  # ablate links stages
            raise PipelineRefused(
                f"{folder} is in the way of the {name} stage's folder; move it away or choose another run folder (-o)"
            )
    dataset = run / "dataset"
    foreign = foreign_entries(dataset) if dataset.is_dir() else []
    if foreign:
        raise PipelineRefused(
            f"{dataset} holds files that are not a dataset build's ({', '.join(foreign[:5])}); move them away or "
            "choose another run folder (-o)"
        )
    checked: list[tuple[Path, bool]] = []  # (path, m2u's by name)
    for name in ("mseg", "gan")[: max(0, STAGES.index(until))]:
        folder = run / name
        try:  # what m2u-train checks before its run, found before the first stage
            check_run_outputs(folder, [folder / f"{network}.safetensors" for network in _NETWORKS[name]])
        except FileExistsError as error:
            raise PipelineRefused(f"{str(error).removesuffix(' run folder')} run folder (-o)") from None
        except OutputRefusedError as error:
            raise _refused_output(str(error)) from None
        checked += [(run / PLOTS / f"{name}_train.png", False)]
    if until == "evaluation":
        report = run / "evaluation"
        checked += [(report / n, False) for n in REPORT_FILES]
        checked += [(report / PLOTS / f"{n}_train.png", False) for n in ("mseg", "gan")]
    for path, by_name in checked:
        problem = replace_problem(path, by_name)
        if problem:
            raise _refused_output(problem)


# RUN's own files, at its top; recorded in its lock, so no other command writing such names there replaces them.
# The record of the last run through every stage (what the report was made with), and the latest run's, whatever it
# did: a run stopped by --until, a stop or a failure never replaces the former (`run_stages`).
FULL_RUN_RECORD = ("config.json", "versions.json")
LATEST_RUN_RECORD = ("config.latest.json", "versions.latest.json")
PIPELINE_REPORTS = (*FULL_RUN_RECORD, *LATEST_RUN_RECORD, "pipeline.log")
PIPELINE_TOOL = "m2u-pipeline"


def _publish_together(run: Path, names: tuple[str, ...], texts: tuple[str, ...]) -> None:
    """A record's files (a configuration and its library versions), published together (m2u.core.fileio.
    StagedFiles): a stop while they are written leaves the earlier pair whole, never one of each run."""
    with staged_files() as staged:
        for name, text in zip(names, texts, strict=True):
            staged.write_text(run / name, text)
        staged.publish()


def run_stages(
    config: PipelineConfig, run: Path, echo: Callable[[str], None], until: str, metric_suite: Any
) -> dict[str, StageOutcome]:
    """Each stage up to `until`, in the run folder `run`, which the caller holds (`run_folder`)."""
    record = (json.dumps(config_as_dict(config), indent=2), json.dumps(library_versions(), indent=2))
    _publish_together(run, LATEST_RUN_RECORD, record)
    log = _Logger(run / "pipeline.log", echo)
    dirs = {name: run / name for name in STAGES}
    actions = _stage_actions(config, dirs, metric_suite)
    outcomes: dict[str, StageOutcome] = {}
    upstream, stage_config, faces = _inputs_identity(config, run)
    for name in STAGES[: STAGES.index(until) + 1]:
        try:
            outcome = run_stage(
                name,
                dirs[name],
                run / STAGE_RECORDS,
                stage_config(name),
                upstream,
                actions[name],
                log,
                upstream_names=["the face inputs", *(f"the {stage} stage" for stage in STAGES)],
                config_prefix=_stage_prefix(name),
                resumes_with=_dataset_resumes_with(config) if name == "dataset" else "",
                resumes_with_said="on the faces found elsewhere or with another mask engine",
                resumable=_partial_output(name, dirs[name]),
                output_problem=_output_problem(name),
                output_digest=_output_digest(name, dirs[name]),
                # which faces changed, as far as the faces the dataset stage's output is of were kept
                upstream_detail=lambda index: faces_changed(run, faces) if index == 0 else "",
            )
        except BaseException as error:
            log(f"[{name}] {_how_it_ended(error)}", echo=False)
            setattr(error, _FAILED_STAGE, name)  # for the command to say it in the stage's words
            raise
        outcomes[name] = outcome
        if name == "dataset":  # its output is of these faces now (made, taken back or up to date)
            remember_dataset_faces(run, faces)
        upstream = [*upstream, outcome.chain]
    # A whole record of what made the outputs, rather than one merged stage by stage: config.json loads back as a
    # config file that remakes them. Left alone when nothing ran (a rerun on another machine made nothing there).
    whole = until == STAGES[-1]
    made = not all(outcome.skipped and not outcome.taken_back for outcome in outcomes.values())
    if whole and (made or not all((run / name).exists() for name in FULL_RUN_RECORD)):
        _publish_together(run, FULL_RUN_RECORD, record)
    _note_stages_left_behind(run, until, upstream[-1], log)
    plots = plot_training_curves({n: dirs[n] for n in ("mseg", "gan") if n in outcomes}, run / PLOTS)
    if not made:
        last = until != STAGES[-1]
        log(f"nothing to do: every stage{f' up to {until}' if last else ''} is up to date")
    for plot in plots:
        log(f"plot: {plot}")
    return outcomes
