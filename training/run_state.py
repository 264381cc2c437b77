"""The training-state checkpoint of a run (RUN/checkpoints/last.pt): where the loop stands, every RNG, the
task's networks, optimisers, schedulers and grad scaler. Written atomically by rank 0 with the model files
beside it; read back for an exact --resume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2u.training.checkpoint import CheckpointError, load_training_state, save_training_state
from m2u.training.config import RunConfig, architecture_conflicts, read_run_config
from m2u.training.rng import capture_rng_state
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
    path: Path, task: Task, position: LoopPosition, config: RunConfig, seconds: float = 0.0
) -> None:
    """The training state to `path`, then the task's model files into the run folder (path's grandparent).
    `seconds`: the run's training time so far, over every process that trained it."""
    state = {
        "format": STATE_FORMAT,
        "task": task.name,
        "step": position.step,
        "epoch": position.epoch,
        "batch_in_epoch": position.batch_in_epoch,
        "seconds": float(seconds),
        "rng": capture_rng_state(),
        "config": config.to_json(),
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
