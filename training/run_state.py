"""The training-state checkpoint of a run (RUN/checkpoints/last.pt): where the loop stands, every RNG, the
task's networks, optimisers, schedulers and grad scaler. Written atomically by rank 0 with the model files
beside it; read back for an exact --resume."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from m2u.training.checkpoint import CheckpointError, load_training_state, read_model_info, save_training_state
from m2u.training.config import PRECISIONS, RunConfig, architecture_conflicts, read_run_config, recorded_path
from m2u.training.rng import capture_rng_state
from m2u.training.runlog import LOG_NAME
from m2u.training.task import Task, resume_crop_size_error

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
STATE_FORMAT = 1
# What read_checkpoint needs of a state beyond the task's own parts.
_STATE_KEYS = ("step", "epoch", "batch_in_epoch", "rng", "networks", "optimizers", "schedulers")


def last_checkpoint_path(out: str | Path) -> Path:
    return Path(out) / CHECKPOINT_DIR / LAST_CHECKPOINT


@dataclass
class LoopPosition:
    """Where the loop stands: optimiser steps done, the epoch, and the batches of that epoch consumed."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    # Training seconds the run's earlier processes spent (a run resumed in pieces reports its whole time).
    seconds_before: float = 0.0


def write_checkpoint(
    path: Path,
    task: Task,
    position: LoopPosition,
    config: RunConfig,
    seconds: float = 0.0,
    loop_state: dict[str, Any] | None = None,
) -> None:
    """The training state to `path`, then the task's model files into the run folder (path's grandparent).
    `seconds`: the run's training time so far, over every process that trained it. `loop_state`: the loop's own
    parts beside the position ("running_means": the running loss sums since the last log line; "world_size":
    the DDP world size the position was reached with, beside `batch_size`; "steps_by_world_size"). Checkpoints
    written before these parts were recorded lack them (see `read_running_means`, `check_resume_layout`)."""
    state = {
        "format": STATE_FORMAT,
        "task": task.name,
        "step": position.step,
        "epoch": position.epoch,
        "batch_in_epoch": position.batch_in_epoch,
        "seconds": float(seconds),
        "rng": capture_rng_state(),
        "config": config.to_json(),
        "batch_size": config.batch_size,
        **(loop_state or {}),
        **task.state_dict(),
    }
    save_training_state(path, state)
    task.export_models(path.parent.parent, position.step)


def read_checkpoint(
    path: Path, task: Task, state: dict[str, Any] | None = None
) -> tuple[LoopPosition, dict[str, Any]]:
    """Load the state at `path` into `task`; (the loop's position, the RNG state to restore when it resumes).
    `state`: the file's content when the caller has read it already (`load_training_state`)."""
    state = load_training_state(path) if state is None else state
    if not isinstance(state, dict) or "task" not in state:
        held = "no task" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise CheckpointError(f"{path} is not a checkpoint m2u-train wrote (it holds {held})")
    if state.get("task") != task.name:
        raise CheckpointError(f"{path} is a {state.get('task')!r} run, not {task.name!r}")
    if state.get("format") != STATE_FORMAT:
        raise CheckpointError(
            f"{path} is a checkpoint of format {state.get('format')!r}; this m2u reads format {STATE_FORMAT}"
        )
    missing = [key for key in _STATE_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} is damaged: it lacks {', '.join(missing)}")
    bad = [
        key
        for key in ("step", "epoch", "batch_in_epoch")
        if not isinstance(state[key], int) or isinstance(state[key], bool) or state[key] < 0
    ]
    if bad:
        values = ", ".join(f"{key} {state[key]!r}" for key in bad)
        raise CheckpointError(f"{path} is damaged: {values} (whole numbers >= 0)")
    try:
        task.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        # A state of other shapes (a checkpoint of a run with another --base-channels copied in) or parts.
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise CheckpointError(
            f"{path} does not fit this run's networks (a checkpoint of another run?): {first}"
        ) from error
    # Checkpoints written before the time was recorded count as 0 s.
    seconds = float(state.get("seconds", 0.0))
    return LoopPosition(state["step"], state["epoch"], state["batch_in_epoch"], seconds), state["rng"]


def read_running_means(path: Path, state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], int]:
    """The loss sums and the step count since the last log line a checkpoint records (the loop's RunningMeans,
    so a resumed run's next train record averages the same steps as a straight run's); none in a checkpoint
    written before they were recorded."""
    running = state.get("running_means")
    if running is None:
        return {}, 0
    count = running.get("count") if isinstance(running, dict) else None
    sums = running.get("sums") if isinstance(running, dict) else None
    if (
        not isinstance(count, int)
        or isinstance(count, bool)
        or count < 0
        or not isinstance(sums, dict)
        or not all(isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in sums.items())
    ):
        raise CheckpointError(f"{path} is damaged: its running_means are not loss sums and a step count")
    return dict(sums), count


def read_steps_by(state: dict[str, Any], key: str) -> dict[str, int]:
    """The steps a checkpoint's run trained under each value of what `key` records ("steps_by_world_size":
    {"2": 800, "1": 200}; "steps_by_precision": {"bf16": 800}); a checkpoint written before it was recorded gives
    its steps as "unknown"."""
    counts = state.get(key)
    if isinstance(counts, dict) and all(
        isinstance(name, str) and isinstance(value, int) and not isinstance(value, bool)
        for name, value in counts.items()
    ):
        return dict(counts)
    step = state.get("step")
    return {"unknown": step} if isinstance(step, int) and step > 0 else {}


def read_steps_by_precision(state: dict[str, Any], out: Path, model_paths: list[Path]) -> dict[str, int]:
    """`read_steps_by(state, "steps_by_precision")`, and for a checkpoint written before that record the
    precision its steps trained in where the run tells it: a run its log shows trained in one process (no resume
    event) trained them all as the process that wrote the checkpoint did, whose config the checkpoint records: its
    `precision`, for `auto` the one its model files record at that step (written with it, as resolved). A run
    resumed before (its earlier processes' precision not recorded) or without its log keeps "unknown"."""
    counts = read_steps_by(state, "steps_by_precision")
    if set(counts) != {"unknown"}:
        return counts
    precision = _single_process_precision(state, out, model_paths)
    return {precision: counts["unknown"]} if precision else counts


def _single_process_precision(state: dict[str, Any], out: Path, model_paths: list[Path]) -> str | None:
    try:
        with (out / LOG_NAME).open(encoding="utf-8", errors="replace") as log:
            for line in log:
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict) and record.get("event") == "resume":
                        return None
    except OSError:
        return None
    named = _saved_config_value(state, "precision")
    resolved = [precision for precision in PRECISIONS if precision != "auto"]
    if named in resolved:
        return str(named)
    if named != "auto":
        return None
    for path in model_paths:
        try:
            provenance = read_model_info(path).provenance
        except (CheckpointError, OSError):
            continue
        if provenance.get("steps") == state.get("step") and provenance.get("precision") in resolved:
            return str(provenance["precision"])
    return None


def trained_precision(steps_by_precision: dict[str, int], current: str) -> str:
    """What a run records as its precision: that of its steps ("bf16"; "bf16 then fp32" when its processes
    trained in several, in that order), `current` (this process's) before any step."""
    names = [name for name, steps in steps_by_precision.items() if steps > 0]
    return " then ".join(names) if names else current


# Each rank takes every world_size-th sample (or shard): how every source shared its samples before checkpoints
# recorded it, and how a source that does not say otherwise (TensorDataSource, OnTheFlyDataSource) still does. A
# checkpoint without "rank_split" is read as this, so only a source whose split changed since (the dataset folder's
# loader: m2u.datasets.loader.RANK_SPLIT) gets the resume's sentence.
EVERY_NTH = "every-nth"


def rank_split(source: Any) -> str:
    """How `source` shares its samples among DDP ranks, as checkpoints record it: its own `rank_split()`
    (ShardDataSource: the loader's), EVERY_NTH for a source without one."""
    own = getattr(source, "rank_split", None)
    return str(own()) if callable(own) else EVERY_NTH


def dataset_digest(source: Any) -> str | None:
    """Which dataset `source` reads, by content: its own `dataset_digest()` (ShardDataSource: its manifest's
    SHA-256; OnTheFlyDataSource: its face pack's, `FacePack.digest`); None for a source without one (checked by
    path on resume, and said: `unchecked_dataset_note`)."""
    own = getattr(source, "dataset_digest", None)
    return own() if callable(own) else None


def dataset_record(data: str, digest: str | None, from_step: int) -> dict[str, Any]:
    """One entry of a run's `datasets` (checkpoints and model files' provenance): the dataset as given (absolute
    where local), its manifest's SHA-256 (a face pack's digest; None where unknown) and the step the run began
    training on it."""
    return {"data": recorded_path(data), "manifest_sha256": digest, "from_step": from_step}


def _recorded_datasets(state: Any) -> list[dict[str, Any]]:
    """The `datasets` a checkpoint records; for one written before they were recorded, its config's `data` with
    no digest (the same dataset is then told by its path); [] where neither says."""
    recorded = state.get("datasets") if isinstance(state, dict) else None
    if isinstance(recorded, list) and all(isinstance(record, dict) for record in recorded):
        return [dict(record) for record in recorded]
    data = _saved_config_value(state, "data") if isinstance(state, dict) else None
    return [dataset_record(data, None, 0)] if isinstance(data, str) and data else []


def _same_dataset(record: dict[str, Any], data: str, digest: str | None) -> bool:
    """Whether `record` names the dataset at `data` of `digest`: by content where both digests are known (moved
    or fetched again, it is the same), else by path."""
    if isinstance(record.get("manifest_sha256"), str) and digest is not None:
        return bool(record["manifest_sha256"] == digest)
    return bool(record.get("data") == recorded_path(data))


def trained_datasets(state: Any, data: str, digest: str | None, step: int) -> list[dict[str, Any]]:
    """Every dataset a run has trained on, in order, once this process trains on `data` (`digest`) from `step`:
    its checkpoint's (`state`; None for a new run) and this one where it is another than the last."""
    datasets = _recorded_datasets(state)
    if data and not (datasets and _same_dataset(datasets[-1], data, digest)):
        datasets.append(dataset_record(data, digest, step))
    return datasets


def check_resume_layout(
    state: Any, config: RunConfig, world_size: int, *, split: str, digest: str | None = None
) -> str | None:
    """A run resumed mid-epoch (`batch_in_epoch` > 0) with another DDP world size or batch size than its
    checkpoint's is refused in one sentence: the skip to its place in the epoch counts batches of the earlier
    layout, so it would land on other samples (some seen twice, others never). So is one on another dataset than
    the one it stopped on (`digest`: this run's, `dataset_digest`; by path where either is unknown). At an epoch's
    start the change is harmless: the sentence saying so is returned (None when nothing changed). Checkpoints
    written before these were recorded resume as before. A DDP run resumed mid-epoch from a checkpoint of a loader
    that shared the samples among the ranks otherwise than `split` does now (`rank_split`; a checkpoint without
    it: EVERY_NTH) resumes, with a sentence saying what that costs."""
    if not isinstance(state, dict):
        return None
    changes = []
    saved_world, saved_batch = state.get("world_size"), state.get("batch_size")
    if isinstance(saved_world, int) and saved_world != world_size:
        changes.append(f"DDP world size {saved_world} -> {world_size}")
    if isinstance(saved_batch, int) and saved_batch != config.batch_size:
        changes.append(f"`batch_size` {saved_batch} -> {config.batch_size}")
    # The seed orders each epoch's samples (m2u.training.data): the skip lands on other samples under another.
    saved_seed = _saved_seed(state)
    if saved_seed is not None and saved_seed != config.seed:
        changes.append(f"`seed` {saved_seed} -> {config.seed}")
    epoch, batch = state.get("epoch"), state.get("batch_in_epoch")
    mid_epoch = _stopped_mid_epoch(state)
    # A checkpoint written before `datasets` were recorded names its dataset by path alone: not checked (a dataset
    # moved since is the same one); unchecked_dataset_note says so.
    stopped_on = _recorded_datasets(state)[-1:] if "datasets" in state else []
    if config.data and stopped_on and not _same_dataset(stopped_on[0], config.data, digest):
        if mid_epoch:
            # The skip counts batches of the epoch's order of that dataset's samples: here it lands on others'.
            raise CheckpointError(
                f"resume: the run in {config.out} stopped in the middle of epoch {epoch} (after {batch} of its "
                f"batches) on the dataset {stopped_on[0].get('data')}, but `data` {config.data} is another dataset: "
                "skipping to its place in the epoch would land on other samples; resume "
                "it on its dataset, or start a new run from its model files (`init_weights`)"
            )
        changes.append(f"another dataset ({recorded_path(config.data)})")
    if not changes:
        if (
            world_size > 1
            and mid_epoch
            and isinstance(batch, int)
            and state.get("rank_split", EVERY_NTH) != split
        ):
            # Not refused: an upgrade must not strand a run; only the rest of this one epoch is affected.
            return (
                f"resuming in the middle of epoch {epoch} with DDP world size {world_size}, from a checkpoint of an "
                "m2u whose loader shared a dataset's samples among the ranks otherwise: the rest of this epoch may "
                "see some samples twice and others not (every later epoch sees each once)"
            )
        return None
    if not mid_epoch:
        ended = (
            isinstance(batch, int) and batch > 0 and isinstance(epoch, int)
        )  # after the epoch's last batch
        start = epoch + 1 if ended else epoch  # type: ignore[operator]
        return f"resuming at the start of epoch {start} with {' and '.join(changes)}"
    was = f"DDP world size {saved_world if isinstance(saved_world, int) else world_size}"
    was += f", `batch_size` {saved_batch if isinstance(saved_batch, int) else config.batch_size}"
    was += f" and `seed` {config.seed if saved_seed is None else saved_seed}"
    raise CheckpointError(
        f"resume: the run in {config.out} stopped in the middle of epoch {epoch} (after {batch} of its batches) with "
        f"{was}, but this run has DDP world size {world_size}, `batch_size` {config.batch_size} and `seed` "
        f"{config.seed}: skipping to its place in the epoch would land on other samples; resume it with the same "
        "world size, `batch_size` and `seed`, or start a new run from its model files (`init_weights`)"
    )


def _stopped_mid_epoch(state: dict) -> bool:
    """Whether a checkpoint's run stopped inside an epoch: not before the epoch's first batch nor after its last
    (max_steps at the epoch's end), where there is no place to skip to."""
    batch = state.get("batch_in_epoch")
    return not (batch == 0 or (isinstance(batch, int) and batch == state.get("epoch_batches")))


def unchecked_dataset_note(state: Any, data: str, digest: str | None) -> str | None:
    """The sentence a resume mid-epoch says where `check_resume_layout` could not tell by content that `data`
    (`digest`: this run's, `dataset_digest`) is the dataset the run stopped on: its checkpoint records none (an
    earlier m2u's) or one side has no digest (a dataset folder without manifest.parquet; an in-memory source), so
    only the path was compared. None where it could tell, at an epoch's start (any dataset may take over) and for
    a run on unnamed data."""
    if not (isinstance(state, dict) and data and _stopped_mid_epoch(state)):
        return None
    stopped_on = _recorded_datasets(state)[-1:] if "datasets" in state else []
    if not stopped_on:
        why = "its checkpoint does not record which dataset that was (an earlier m2u's)"
    elif digest is None:
        why = (
            "it gives no content digest to compare (a dataset folder without manifest.parquet has none), "
            "only the same path"
        )
    elif not isinstance(stopped_on[0].get("manifest_sha256"), str):
        why = "its checkpoint records no content digest of that dataset, only the same path"
    else:
        return None
    # Said, not refused: a dataset the run did stop on must still resume; another would skip to other samples.
    return (
        f"could not check that `data` {data} is the dataset the run stopped on in the middle of epoch "
        f"{state.get('epoch')}: {why}; resumed on another, the rest of this epoch lands on other samples"
    )


def _saved_seed(state: dict) -> int | None:
    """The seed a checkpoint's run trained with (its recorded config); None where it cannot be read."""
    seed = _saved_config_value(state, "seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def _saved_config_value(state: dict, name: str) -> Any:
    """The value of `name` in a checkpoint's recorded config; None where it cannot be read."""
    try:
        return json.loads(state.get("config") or "{}").get(name)
    except (TypeError, ValueError, AttributeError):
        return None


def checkpoint_step(path: Path) -> int | None:
    """The step of the checkpoint at `path`, None when there is none."""
    if not path.exists():
        return None
    state = load_training_state(path)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise CheckpointError(f"{path} is not a checkpoint m2u-train wrote (no step in it)")
    return state["step"]


def check_resume(config: RunConfig) -> None:
    """Resuming keeps the run's architecture: a config that changes it is one CheckpointError sentence, raised
    before anything is built or written (the run folder stays as it is)."""
    if not config.resume or not last_checkpoint_path(config.out).exists():
        return
    saved = read_run_config(type(config), config.out)
    if saved is None:
        return
    conflicts = architecture_conflicts(saved, config)
    if conflicts:
        raise CheckpointError(
            f"resume: the run in {config.out} was trained with another architecture ({'; '.join(conflicts)}); "
            "leave the architecture as the run has it (resuming reads it from the run) or choose another run folder"
        )


def check_resume_init_weights(config: RunConfig) -> None:
    """A resume that names other starting files (`init_weights`) than its run was started from is refused: every
    weight of a resumed run comes from its checkpoint, so the file would not be read, yet config.json would name it
    as the one the run started from (and --print-config reproduce the run from it). The same file by content or
    real path is the same (a relative path given from another folder, the file moved or copied)."""
    saved = read_run_config(type(config), config.out)
    if saved is None:
        return
    changed = sorted(
        name
        for name in {*saved.init_weights, *config.init_weights}
        if not _same_starting_file(
            config.out, name, saved.init_weights.get(name), config.init_weights.get(name)
        )
    )
    if changed:
        said = "; ".join(
            f"init_weights.{name} {saved.init_weights.get(name, 'none')} -> {config.init_weights.get(name, 'none')}"
            for name in changed
        )
        raise CheckpointError(
            f"resume: the run in {config.out} reads every weight from its checkpoint, so another starting file "
            f"would not be used ({said}); leave init_weights as the run has it (resuming reads it from the run) "
            "or start a new run in another folder from that file"
        )


def _same_starting_file(out: str, name: str, saved: str | None, given: str | None) -> bool:
    """Whether `given` names the file the run's network `name` started from (`saved`, as the run was given it):
    the same path, or by content the file the run's model file records (`init_from`: a relative path given from
    another folder, the file moved or copied), else the same file by its real path."""
    if saved == given:
        return True
    if saved is None or given is None:
        return False
    from m2u.core.fileio import content_digest
    from m2u.training.checkpoint import read_model_info

    try:
        recorded = (
            read_model_info(Path(out) / f"{name}.safetensors").provenance.get("init_from", {}).get("sha256")
        )
        if recorded and Path(given).is_file():
            return bool(content_digest(given) == recorded)
    except (CheckpointError, OSError, AttributeError):
        pass
    return os.path.realpath(saved) == os.path.realpath(given)


def check_resume_crop_size(state: Any, data: Any, config: RunConfig) -> None:
    """A resumed run on a data source of another crop size than its checkpoint's (`state`, read with
    `load_training_state`) is refused before it starts: its models would be relabelled with a size they never
    learned. Only where both tell their size (`crop_size` of the state; the source's `crop_size()`); the task
    refuses the first batch of another size in any case (TrainingTask.observe_batch)."""
    trained = state.get("crop_size") if isinstance(state, dict) else None
    crop_size = getattr(data, "crop_size", None)
    given = crop_size() if callable(crop_size) else None
    if isinstance(trained, int) and given is not None and given != trained:
        raise resume_crop_size_error(trained, given, config)
