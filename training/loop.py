"""The training loop: one for M-Seg and the M2UNet GAN, knowing only the task protocol (`m2u.training.task`).

The loop owns what both tasks share: step/epoch bookkeeping, exact resume (the task's state, every RNG and the
position in the epoch, `run_state`), validation every N steps, the run log (`runlog`), checkpoints, the NaN/inf
stop (`guards`), the wall-clock budget and keeping DDP ranks in step (`distributed`). A task owns the networks
and what one step, one evaluation and one grid do.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from m2u.core.fileio import OutputRefusedError, atomic_write, check_writable, remove_written, replace_problem
from m2u.core.guard import DeferredStops, Terminated, defer_stops, describe_os_error, stop_name
from m2u.core.inputs import OutputFolderError, export_folder_problem, output_lock, whole_folder_problem
from m2u.datasets.storage import local_location
from m2u.training.checkpoint import (
    CheckpointError,
    load_training_state,
    remove_stale_temp_files,
    unwrap_model,
)
from m2u.training.config import RunConfig
from m2u.training.data import DataSource, batch_head, check_batch
from m2u.training.distributed import DistributedContext, collective_device
from m2u.training.guards import EmptySplitError, NonFiniteLossError, RunningMeans
from m2u.training.rng import restore_rng_state
from m2u.training.run_state import (
    LoopPosition,
    check_resume_crop_size,
    check_resume_layout,
    checkpoint_step,
    dataset_digest,
    last_checkpoint_path,
    rank_split,
    read_checkpoint,
    read_running_means,
    read_steps_by,
    read_steps_by_precision,
    trained_datasets,
    trained_precision,
    unchecked_dataset_note,
    write_checkpoint,
)
from m2u.training.runlog import GRID_DIR, LOG_NAME, METRICS_NAME, TENSORBOARD_DIR, RunLog, open_progress
from m2u.training.task import Task

# What a Ctrl-C or SIGTERM during training does, said when it arrives (before the first step nothing is written, and
# a new run's folder is removed: the run's last line says which).
RUN_LOCK_TOOL = "m2u-train"  # RUN/.m2u-train.lock (m2u.core.inputs.output_lock)
# Why a run in a folder holding an earlier run's log and nothing else starts from step 0.
RESTARTED_OVER = "the earlier run there stopped before its first checkpoint, so nothing of it can be resumed"
# The run's files at its folder's top that other commands write by the same names (m2u-pipeline's config.json,
# m2u-eval's metrics.json): recorded in its lock, so neither command replaces the other's.
RUN_REPORTS = ("config.json", "metrics.json")
STOP_NOTICE = "stopping once the training step under way is done, with its checkpoint"


def precision_note(setting: str, resolved: str, device: torch.device) -> str | None:
    """The start-up line saying what `precision` auto chose, and why (m2u.training.device.resolve_precision
    decides); None for a precision that was named."""
    if setting != "auto":
        return None
    if device.type == "cuda":
        why = "this GPU supports bf16" if resolved == "bf16" else "this GPU has no bf16"
    elif resolved == "bf16":
        why = "this CPU has native bf16"
    else:
        why = "this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 would be far slower there"
    return f"m2u-train: precision auto -> {resolved} ({why})"


def _epoch_batches(data: DataSource) -> int | None:
    """The training split's batches per epoch for this rank, where the source knows them (`steps_per_epoch`)."""
    steps_per_epoch = getattr(data, "steps_per_epoch", None)
    return steps_per_epoch("train") if callable(steps_per_epoch) else None


def planned_steps(config: RunConfig, data: DataSource) -> int | None:
    """The steps this run will take, for the progress bar's total and ETA: max_steps, or fewer when the source
    knows its epoch length (`steps_per_epoch`) and the epochs end first; None when nothing bounds it."""
    steps_per_epoch = getattr(data, "steps_per_epoch", None)
    per_epoch = steps_per_epoch("train") if callable(steps_per_epoch) else None
    by_epochs = per_epoch * config.epochs if per_epoch is not None else None
    bounds = [n for n in (config.max_steps, by_epochs) if n is not None]
    return min(bounds) if bounds else None


def nothing_left(state: Any, config: RunConfig, data: DataSource) -> bool:
    """Whether a run resumed from the checkpoint `state` has no step left to train, as the loop would find it: at
    `max_steps`, or in no epoch below `epochs` (a run stopped after an epoch's last batch is at the next epoch)."""
    if not isinstance(state, dict):
        return False
    step, epoch, batch = (state.get(key) for key in ("step", "epoch", "batch_in_epoch"))
    if not (isinstance(step, int) and isinstance(epoch, int) and isinstance(batch, int)):
        return False  # read_checkpoint refuses it
    if config.max_steps is not None and step >= config.max_steps:
        return True
    ended = batch > 0 and batch in (state.get("epoch_batches"), _epoch_batches(data))
    return epoch + int(ended) >= config.epochs


def check_run_outputs(out: Path, model_paths: list[Path]) -> None:
    """Every file and folder a run writes in its folder `out` (its model files `model_paths`), checked before the
    run writes anything (m2u-pipeline checks its training stages' folders with it before the first stage):
    FileExistsError for a file where a folder goes, OutputRefusedError for a person's file or a link at an
    output's name."""
    # The folders the run fills as it goes: a file in the way was found at the first grid (step 1000 by default),
    # every step before it lost.
    for folder in (last_checkpoint_path(out).parent, out / GRID_DIR, out / TENSORBOARD_DIR):
        if os.path.lexists(folder) and not folder.is_dir():
            raise FileExistsError(
                f"{folder} is in the way of the folder the run writes there; move it away or choose another run "
                "folder"
            )
    # Every file the run will write: a person's own metrics.json or mseg.safetensors in the run folder was refused
    # only after the whole training (OutputRefusedError: one line, exit 2).
    for path in (
        out / LOG_NAME,
        out / METRICS_NAME,
        last_checkpoint_path(out),
        *model_paths,
        # The grids already there that a step may write again (any step can be the last): a person's own file of
        # that name was found only at that step's grid, the steps before it lost.
        *sorted((out / GRID_DIR).glob("step-*.png")),
    ):
        check_writable(path)
    # The run's config.json is m2u's by name: --resume reads it back, edited by hand or not, and rewrites it.
    check_writable(out / "config.json", by_name=True)


class Trainer:
    """Runs a task over a data source; see the module docstring."""

    def __init__(self, task: Task, data: DataSource, config: RunConfig, dist: DistributedContext) -> None:
        self.task, self.data, self.config, self.dist = task, data, config, dist
        self.out = Path(config.out)
        self.checkpoint_path = last_checkpoint_path(self.out)
        self.position = LoopPosition()
        self.runlog = RunLog(self.out, task.name, dist.is_main)
        self._pending_rng: dict[str, Any] | None = None
        self._grid_batch: dict | None = None
        self._running = RunningMeans()
        self._started: float | None = None  # time.monotonic() when this process began training
        self._made_folder = False  # this run created RUN (see _forget_unstarted_run)
        self._stops = DeferredStops()  # the Ctrl-C / SIGTERM recorded while the loop runs (see run)
        self._checkpointed_step: int | None = None  # the step of the checkpoint last written or read
        self._resume_state: dict[str, Any] | None = None  # the checkpoint, read once to check it (see there)
        # A finished run resumed with nothing to train: its metrics.json, returned as the run's results and nothing
        # written (_finished_results).
        self._finished: dict[str, Any] | None = None
        self._lock = contextlib.ExitStack()  # the run folder's lock while the run writes it (main process)
        self._locked = False
        self._removed_on_lock: list[Path] = []  # temporary files output_lock cleared (_hold_lock)
        self._lock_file_made = False  # this run created the lock file (removed again if it is refused)
        # Said on resume: a change of world size or batch size at an epoch's start, harmless (check_resume_layout);
        # a dataset that could not be told by content (unchecked_dataset_note).
        self._resume_notes: list[str] = []
        self._restarted_over = False
        # The steps each DDP world size trained before this process (from the checkpoint) and the step it began at.
        self._steps_by_world_before: dict[str, int] = {}
        # The steps each precision trained before this process (from the checkpoint; see trained_precision).
        self._steps_by_precision_before: dict[str, int] = {}
        self._first_step = 0
        # The last validation (step, values) this process ran, and the steps whose val / test record the log holds
        # already (a resumed finished run): the final evaluation at that step is logged once.
        self._last_val: tuple[int, dict[str, float]] | None = None
        self._said_empty: set[str] = set()  # the splits that gave no batch (said once)
        self._logged: dict[str, int] = {}

    # The position's fields, as the loop and its tests read them.
    @property
    def step(self) -> int:
        return self.position.step

    @property
    def epoch(self) -> int:
        return self.position.epoch

    def training_seconds(self) -> float:
        """The run's training time so far: this process's and, for a resumed run, its earlier processes'."""
        now = 0.0 if self._started is None else time.monotonic() - self._started
        return self.position.seconds_before + now

    def save_checkpoint(self) -> None:
        # The model files record the precision their steps trained in, not this process's alone (a finished
        # run resumed with --precision fp32 writes its models again: they were still trained in bf16).
        self.task.trained_precision = self.trained_precision()
        if self.dist.is_main:
            write_checkpoint(
                self.checkpoint_path,
                self.task,
                self.position,
                self.config,
                self.training_seconds(),
                self._loop_state(),
            )
        self._checkpointed_step = self.step

    def _loop_state(self) -> dict[str, Any]:
        """What the checkpoint keeps of the loop beside its position: the loss sums since the last log line (a
        stop between two log lines loses none of their steps), the DDP world size it trained with (a resume
        mid-epoch on another is refused: check_resume_layout) and the steps of each world size."""
        running = self._running
        return {
            "running_means": {
                "count": running.count,
                "sums": {name: value.detach().cpu().clone() for name, value in running.sums.items()},
            },
            "world_size": self.dist.world_size,
            "rank_split": rank_split(self.data),
            "steps_by_world_size": self.steps_by_world_size(),
            "steps_by_precision": self.steps_by_precision(),
            # The epoch's batches in this layout where the source knows them: a run stopped after its last batch
            # stopped at the epoch's end, where another layout may take over (check_resume_layout).
            "epoch_batches": _epoch_batches(self.data),
            # Where each fine-tuned network started (TrainingTask.initial_weights): a resume does not read the
            # starting files again, and its model files still name them.
            "initial_weights": {name: dict(record) for name, record in self.task.initial_weights.items()},
            # Every dataset the run trained on (trained_datasets): a resume mid-epoch on another is refused.
            "datasets": [dict(record) for record in self.task.datasets],
        }

    def steps_by_world_size(self) -> dict[str, int]:
        """The steps the run trained at each DDP world size, over every process that trained it ({"2": 800,
        "1": 200}; "unknown" for those of a checkpoint written before this was recorded)."""
        counts = dict(self._steps_by_world_before)
        trained = self.step - self._first_step
        if trained > 0:
            key = str(self.dist.world_size)
            counts[key] = counts.get(key, 0) + trained
        return counts

    def steps_by_precision(self) -> dict[str, int]:
        """The steps the run trained in each precision, over every process that trained it ({"bf16": 800,
        "fp32": 200}; "unknown" for those of a checkpoint written before this was recorded)."""
        counts = dict(self._steps_by_precision_before)
        trained = self.step - self._first_step
        if trained > 0:
            key = self._precision()
            counts[key] = counts.get(key, 0) + trained
        return counts

    def trained_precision(self) -> str:
        """The precision the run's steps trained in: one name ("bf16"), the names in the order the run used them
        where its processes differed ("bf16 then fp32"), this process's before any step."""
        return trained_precision(self.steps_by_precision(), self._precision())

    def load_checkpoint(self) -> None:
        state, self._resume_state = self._resume_state, None
        if state is None:
            state = load_training_state(self.checkpoint_path)
        try:
            self.position, self._pending_rng = read_checkpoint(self.checkpoint_path, self.task, state)
        except CheckpointError as error:
            raise CheckpointError(f"{error}; {self._unusable_checkpoint_advice()}") from error
        self._checkpointed_step = self.step
        sums, count = read_running_means(self.checkpoint_path, state)
        device = getattr(self.task, "device", torch.device("cpu"))
        self._running.sums = {name: value.to(device) for name, value in sums.items()}
        self._running.count = count
        self._steps_by_world_before = read_steps_by(state, "steps_by_world_size")
        self._steps_by_precision_before = read_steps_by_precision(
            state, self.out, self.task.model_paths(self.out)
        )
        self._first_step = self.step
        world = self.dist.world_size
        earlier = self._steps_by_world_before
        if earlier and "unknown" not in earlier and set(earlier) != {str(world)}:
            # Steps of other world sizes saw other numbers of samples: the LR schedule counts in this one's steps.
            self.task.rebase_schedule(sum(int(size) * steps for size, steps in earlier.items()) // world)
        saved_world, saved_batch = state.get("world_size"), state.get("batch_size")
        ended = self.position.batch_in_epoch > 0 and self.position.batch_in_epoch == state.get(
            "epoch_batches"
        )
        if ended and (saved_world, saved_batch) != (world, self.config.batch_size):
            # The epoch was finished in another layout: skipping its batch count in this one would train the rest
            # of that epoch again (more batches on fewer ranks).
            self.position.epoch += 1
            self.position.batch_in_epoch = 0
        recorded = state.get("initial_weights")
        if isinstance(recorded, dict):  # older checkpoints: the paths of the run's config alone
            # Provenance only: a damaged entry is left out rather than stopping the run.
            self.task.initial_weights = {
                str(name): {key: value for key, value in record.items() if isinstance(value, str)}
                for name, record in recorded.items()
                if isinstance(record, dict)
            }
        self.task.datasets = trained_datasets(state, self.config.data, dataset_digest(self.data), self.step)

    def _save_grid(self) -> None:
        if not self.dist.is_main or self._grid_batch is None:
            return
        self.task.set_train(False)
        image = self.task.grid(self._grid_batch)
        self.task.set_train(True)
        self.runlog.save_grid(image, self.task.grid_columns, self.step)

    def _evaluated_share(self, split: str, max_batches: int) -> tuple[int | None, int | None]:
        """(samples, batches) this rank evaluates of `split` limited to `max_batches` batches, one of the two
        None. These are the first `max_batches` batches of one process, whatever the number of ranks: each rank
        evaluates its part of them, the first samples of its own order (the source's `leading_share`). Counting
        batches per rank read world_size x as many, so a DDP run's val figures were another run's. A source that
        does not say how it deals its samples: `max_batches` batches in all, the ranks taking turns."""
        leading_share = getattr(self.data, "leading_share", None)
        samples = leading_share(split, max_batches) if callable(leading_share) else None
        if samples is not None:
            return samples, None
        return None, len(range(self.dist.rank, max_batches, self.dist.world_size))

    @torch.no_grad()
    def evaluate(self, split: str, max_batches: int | None) -> dict[str, float]:
        for network in self.task.networks.values():  # the figures of the weights the checkpoint holds
            self.dist.share_buffers(unwrap_model(network))
        samples, batches = (None, None) if max_batches is None else self._evaluated_share(split, max_batches)
        self.task.set_train(False)
        sums: dict[str, list[float]] = {}
        try:
            # A rank whose share is none reads nothing (not even the split's loader) and sends zeros below.
            source = () if 0 in (samples, batches) else self.data.batches(split, 0)
            seen = 0
            for index, batch in enumerate(source):
                check_batch(batch)
                if samples is not None and seen + batch["masked"].shape[0] > samples:
                    batch = batch_head(batch, samples - seen)  # the share ends inside this batch
                seen += batch["masked"].shape[0]
                for name, (total, count) in self.task.eval_batch(self._on_device(batch)).items():
                    entry = sums.setdefault(name, [0.0, 0.0])
                    entry[0] += total
                    entry[1] += count
                # Stopped here, not at the next batch: that one would be read and decoded for nothing.
                if (batches is not None and index + 1 >= batches) or (
                    samples is not None and seen >= samples
                ):
                    break
        finally:
            self.task.set_train(True)
        # Every rank reduces the same names in the same order; a rank without batches sends zeros.
        names = sorted(set(sums) | set(self.task.eval_metric_names()))
        values = torch.tensor([sums.get(name, [0.0, 0.0]) for name in names], dtype=torch.float64)
        values = self.dist.all_reduce_sum(values.to(collective_device())).cpu()
        figures = {name: total / count for name, (total, count) in zip(names, values.tolist()) if count > 0}
        if not figures and split not in self._said_empty:
            # An empty split (a dataset built with a 0 fraction, or too small to give it a sample) gives no
            # figures: said once, so an empty "val" in metrics.json is not taken for a fault.
            self._said_empty.add(split)
            self.runlog.log({"event": "empty_split", "split": split})
            if self.dist.is_main:
                print(
                    f"m2u-train: the dataset's {split} split has no samples: no {split} figures",
                    file=sys.stderr,
                )
        return figures

    def _prepare_run_folder(self) -> None:
        # An m2u-pipeline run folder (or one inside it) is refused before the run folder is made, not at its lock.
        problem = whole_folder_problem(self.out, RUN_LOCK_TOOL)
        if problem:
            raise OutputFolderError(problem)
        data = local_location(self.config.data) if self.config.data else ""  # file:// too
        if data and "://" not in data and Path(data).is_dir():
            inside = Path(os.path.realpath(self.out))
            if Path(os.path.realpath(data)) in (inside, *inside.parents):
                raise FileExistsError(
                    f"the run folder {self.out} is inside the dataset {data}: its files would mix with the "
                    "dataset's (a later rebuild with `overwrite` refuses them); choose another run folder"
                )
        if not self.checkpoint_path.exists() and (problem := export_folder_problem(self.out)):
            # A new run there would put its checkpoints, log and model files among the ONNX files an export.json
            # describes (a run folder an export was written into afterwards still resumes).
            raise FileExistsError(
                f"the run folder {problem}: the run's files would mix with the export's; choose another run folder"
            )
        if self.dist.is_main and self.out.is_dir():
            # Taken before the run folder is read: a second run on a folder being trained is told so, not what
            # the first run's files would make of it.
            self._hold_lock()
        if self.checkpoint_path.exists() and not self.config.resume:
            raise FileExistsError(
                f"{self.out} already holds a run ({self.checkpoint_path}): resume it or choose another run folder"
            )
        # A run whose checkpoint is gone (deleted to save space: the GAN's is 34 MB) still holds its trained
        # model and log: a run from step 0 would replace them, so it is refused, with --resume too.
        earlier = [
            path
            for path in (*self.task.model_paths(self.out), self.out / METRICS_NAME)
            if path.exists() and not replace_problem(path)  # m2u's own (a person's file is refused below)
        ]
        log = self.out / LOG_NAME
        # Only a log: a run killed before its first checkpoint (SIGKILL, a crash) saved nothing a new run could
        # lose, and neither a rerun nor --resume could go on (a pipeline stage was stuck there). It starts from
        # step 0, the log keeping the earlier run's events and a line saying why (`_restarted_over`).
        self._restarted_over = (
            not earlier and not self.checkpoint_path.exists() and log.is_file() and not replace_problem(log)
        )
        if earlier and not self.checkpoint_path.exists():
            asked = (
                "--resume has no checkpoint to continue from"
                if self.config.resume
                else "it already holds a run"
            )
            raise FileExistsError(
                f"{self.out}: {asked} ({self.checkpoint_path} is missing) and a new run would replace "
                f"{earlier[0]}; choose another run folder (or move the earlier run's files away)"
            )
        if self.config.resume and self.checkpoint_path.exists():
            # Before config.json records this resume's settings: a resume refused for its dataset's crop size
            # leaves the run as it was (a later plain --resume must not read the refused dataset back).
            try:
                self._resume_state = load_training_state(self.checkpoint_path)
            except CheckpointError as error:
                raise CheckpointError(f"{error}; {self._unusable_checkpoint_advice()}") from error
            check_resume_crop_size(self._resume_state, self.data, self.config)
            if isinstance(self._resume_state, dict) and (
                problem := self.task.resume_problem(self._resume_state)
            ):
                raise CheckpointError(problem)
            digest = dataset_digest(self.data)
            notes = (
                check_resume_layout(
                    self._resume_state,
                    self.config,
                    self.dist.world_size,
                    split=rank_split(self.data),
                    digest=digest,
                ),
                unchecked_dataset_note(self._resume_state, self.config.data, digest),
            )
            self._resume_notes = [note for note in notes if note]
        if self._resume_state is not None:  # every rank resumes from the checkpoint alike
            # One collective: every rank leaves here (none trains or writes) or none does.
            finished = self._finished_results()
            (done,) = self.dist.all_true(finished is not None)
            if done:
                self._finished = finished
                return
        if self.dist.is_main:
            check_run_outputs(self.out, self.task.model_paths(self.out))
            self._made_folder = not self.out.exists()
            self.out.mkdir(parents=True, exist_ok=True)
            # Held until the run ends, taken before anything is written: a second run on this folder (a --resume
            # while it trains) is refused instead of interleaving its log, checkpoints and config.json.
            self._hold_lock()
            atomic_write(
                self.out / "config.json",
                lambda temp: Path(temp).write_text(self.config.to_json() + "\n"),
                by_name=True,
            )

    def _finished_results(self) -> dict[str, Any] | None:
        """A finished run resumed with nothing left to train (`nothing_left`): its metrics.json of its checkpoint's
        step, with its model files there, else None. Its files were written again before (models, metrics.json,
        log, config.json): nothing is trained, so they are left byte for byte as they are. A run stopped before
        its final records (killed during the final evaluation) is not finished: the resume writes them."""
        state = self._resume_state
        if not (self.config.resume and nothing_left(state, self.config, self.data)):
            return None
        assert isinstance(state, dict)
        metrics = self.out / METRICS_NAME
        if replace_problem(metrics) or not all(path.is_file() for path in self.task.model_paths(self.out)):
            return None
        try:
            results = json.loads(metrics.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(results, dict) or results.get("steps") != state.get("step"):
            return None
        if self.dist.is_main:
            limit = planned_steps(self.config, self.data)
            planned = f"of {limit}" if limit == results["steps"] else f"({limit} steps planned)"
            if limit is None:  # epochs of unknown length
                planned = f"(epoch {state.get('epoch')} of {self.config.epochs})"
            print(
                f"m2u-train: {self.out} finished at step {results['steps']} {planned}: nothing to train; its "
                "files are left as they are",
                file=sys.stderr,
            )
        return results

    def _unusable_checkpoint_advice(self) -> str:
        """What to do when --resume cannot read the run's checkpoint (damaged, cut short, another run's)."""
        models = [path for path in self.task.model_paths(self.out) if path.is_file()]
        start = (
            "start a new run in another folder from this run's model files ("
            + ", ".join(f"--set init_weights.{path.stem}={path}" for path in models)
            + ")"
            if models
            else "start the run again in another folder"
        )
        return (
            f"--resume cannot continue from it: put back an intact copy of {self.checkpoint_path}, or {start}"
        )

    def _hold_lock(self) -> None:
        """Take the run folder's lock unless this run holds it already (kept until `_release_lock`)."""
        if not self._locked:
            self._lock_file_made = not os.path.lexists(self._lock_path())
            # The lock clears what writes killed midway left in the run folder: logged in _clean_and_resume.
            self._removed_on_lock += self._lock.enter_context(
                output_lock(self.out, RUN_LOCK_TOOL, setting="out", reports=RUN_REPORTS)
            )
            self._locked = True

    def _release_lock(self, leave_no_file: bool = False) -> None:
        """Release the lock; `leave_no_file`: a run refused before it wrote anything also takes away the lock
        file it made (a person's folder keeps only what was there)."""
        held = self._locked
        self._lock.close()
        self._locked = False
        if held and leave_no_file and self._lock_file_made:
            with contextlib.suppress(OSError):
                self._lock_path().unlink(missing_ok=True)

    def _lock_path(self) -> Path:
        return self.out / f".{RUN_LOCK_TOOL}.lock"

    def run(self) -> dict[str, Any]:
        try:
            self._prepare_run_folder()
        except BaseException:
            self._release_lock(leave_no_file=True)
            raise
        if self._finished is not None:
            self._release_lock(leave_no_file=True)  # a lock file this call made goes too: nothing else was
            return self._finished
        try:
            return self._run_in_folder()
        finally:
            self._release_lock()

    def _run_in_folder(self) -> dict[str, Any]:
        self._clean_and_resume()
        # A resumed run's TensorBoard points from the step after its checkpoint replace the earlier processes'.
        self.runlog.open_tensorboard(self.step + 1 if self._checkpointed_step is not None else None)
        self._say_precision()
        started = self._started = time.monotonic()
        progress = self._open_progress()
        self.task.set_train(True)
        fresh = self.step == 0
        try:
            # Ctrl-C or SIGTERM stops the run between two steps, with a checkpoint of that step (_stop_here).
            # Rank 0's notice speaks for every rank (the terminal signals them all).
            with defer_stops(STOP_NOTICE, quiet=not self.dist.is_main) as self._stops:
                stop_reason = self._train_epochs(started, progress)
                self._stop_here_if_asked()  # a stop during the last step: its checkpoint, not the final evaluation
            self.task.check_finite_state(self.step)  # the steps since the last log line
        except NonFiniteLossError as error:
            raise self._non_finite_stop(error) from None
        except BaseException:
            if fresh and self.step == 0:
                self._forget_unstarted_run()
            raise
        finally:
            if progress is not None:
                progress.close()
        self.save_checkpoint()
        return self._finish(stop_reason, started)

    def _forget_unstarted_run(self) -> None:
        """A new run that stopped before its first step (no batch of that size, an empty split, Ctrl-C while
        loading) leaves no run behind for `--resume` to find: its config.json and log, and its folder where this
        run made it, only what m2u wrote there (m2u.core.fileio.remove_written; anything else keeps it all)."""
        if not self.dist.is_main:
            return
        self.runlog.close()
        self._release_lock(leave_no_file=True)
        with contextlib.suppress(OutputRefusedError, OSError):
            if self._made_folder:
                remove_written(self.out.parent, [self.out.name])
            else:
                remove_written(self.out, ["config.json", LOG_NAME])

    def _clean_and_resume(self) -> None:
        if self.dist.is_main:
            # What a write killed midway left behind (the files it meant to replace are intact).
            # The lock leaves young ones (another run's, maybe): the run folder and its checkpoints are this run's.
            stale = [
                *self._removed_on_lock,
                *remove_stale_temp_files(self.out),
                *remove_stale_temp_files(self.checkpoint_path.parent),
            ]
            for path in stale:
                self.runlog.log({"event": "removed_stale_temp_file", "path": str(path)})
            self._removed_on_lock = []
        if self._restarted_over and self.dist.is_main:
            self.runlog.keep_records_through(0)  # its steps' records are gone with the weights that made them
            self.runlog.log({"event": "restart", "reason": RESTARTED_OVER})
            print(f"m2u-train: starting {self.out} from step 0: {RESTARTED_OVER}", file=sys.stderr)
        if self.config.resume and self.checkpoint_path.exists():
            self.load_checkpoint()
            # What a process killed after this checkpoint logged (SIGKILL, a crash) is trained and logged again.
            for record in self.runlog.keep_records_through(self.step):
                split, step = record.get("split"), record.get("step")
                if split in ("val", "test") and isinstance(step, int):
                    self._logged[split] = max(step, self._logged.get(split, -1))
            self.runlog.log(
                {
                    "event": "resume",
                    "step": self.step,
                    "epoch": self.epoch,
                    "precision": self._precision(),
                    "world_size": self.dist.world_size,
                }
            )
            if self.dist.is_main:
                limit = planned_steps(self.config, self.data)  # max_steps, or the epochs' steps
                left = (
                    f": nothing left to train ({limit} steps planned); its final records (models, evaluation, "
                    "metrics.json) are written"
                    if limit is not None and self.step >= limit
                    else ""
                )
                print(
                    f"m2u-train: resuming {self.out} at step {self.step} (epoch {self.epoch}){left}",
                    file=sys.stderr,
                )
                for note in self._resume_notes:
                    print(f"m2u-train: {note}", file=sys.stderr)
        else:
            self.task.datasets = trained_datasets(None, self.config.data, dataset_digest(self.data), 0)

    def _precision(self) -> str:
        """The precision this process trains in (`precision` auto resolved by the task)."""
        return str(getattr(self.task, "precision", self.config.precision))

    def _say_precision(self) -> None:
        """What `precision` auto chose, once, on rank 0, unless the run is quiet (no progress bar)."""
        if not (self.dist.is_main and self.config.progress):
            return
        device = getattr(self.task, "device", torch.device("cpu"))
        note = precision_note(self.config.precision, self._precision(), device)
        if note:
            print(note, file=sys.stderr, flush=True)

    def _open_progress(self) -> Any:
        if not (self.config.progress and self.dist.is_main):
            return None
        total = planned_steps(self.config, self.data)
        return open_progress(self.task.name, total, self.step, compile_note=self.config.compile)

    def _train_epochs(self, started: float, progress: Any) -> str:
        """Epochs until one of the limits; returns the stop reason (epochs, max_steps or max_seconds)."""
        config, position = self.config, self.position
        while position.epoch < config.epochs:
            if config.max_steps is not None and position.step >= config.max_steps:
                return "max_steps"
            stop_reason = self._train_epoch(started, progress)
            if stop_reason is not None:
                return stop_reason
            position.epoch += 1
            position.batch_in_epoch = 0
        return "epochs"

    def _epoch_batches(self) -> Any:
        iterator = iter(self.data.batches("train", self.epoch))
        for _ in range(self.position.batch_in_epoch):  # resuming: skip what this epoch already consumed
            next(iterator, None)
        if self._pending_rng is not None:
            # Restored after the epoch's loader exists: creating it may draw from the global RNG.
            restore_rng_state(self._pending_rng)
            self._pending_rng = None
        return iterator

    def _train_epoch(self, started: float, progress: Any) -> str | None:
        """The rest of the current epoch; a stop reason when a limit was reached, None at the epoch's end."""
        config = self.config
        iterator = self._epoch_batches()
        produced = 0
        out_of_time = False
        while True:
            # Read before the fetch, as a stop asked for while a batch is fetched lets that batch's step finish.
            # A rank asked to stop fetches no further batch; the others learn of it in the collective below.
            requested, batch = self._stops.requested, None
            if requested is None:
                try:
                    batch = next(iterator, None)
                except Exception as error:
                    # The same stop reached the loader's workers (SIGTERM to the process group): torch says its
                    # worker was killed. The networks are whole, after the last step: stop with their checkpoint.
                    if self._stops.requested is not None:
                        self._stop_here(self._stops.requested, error)
                    raise
            # One host-side collective per step: ranks stop together (asked to, at an epoch's end or out of time).
            carry_on, have_batch, in_time = self.dist.all_true(
                requested is None, batch is not None, not out_of_time
            )
            if not carry_on:
                self._stop_here(requested or Terminated("another rank was stopped"), together=True)
            if not in_time:
                return "max_seconds"
            if batch is None or not have_batch:
                break
            check_batch(batch)
            produced += 1
            self._train_one(batch, progress)
            if config.max_steps is not None and self.step >= config.max_steps:
                return "max_steps"
            out_of_time = config.max_seconds is not None and time.monotonic() - started >= config.max_seconds
        if produced == 0 and self.position.batch_in_epoch == 0:
            raise EmptySplitError(
                f"the training split of {config.data or 'the data source'} gave no batch "
                f"(fewer samples per rank than the batch size {config.batch_size}?)"
            )
        return None

    def _stop_here_if_asked(self) -> None:
        """After the last step: stop if a rank was asked to (one host-side collective, so every DDP rank stops
        alike; during the epochs the step's own collective carries this flag)."""
        requested = self._stops.requested
        (carry_on,) = self.dist.all_true(requested is None)
        if not carry_on:
            self._stop_here(requested or Terminated("another rank was stopped"), together=True)

    def _stop_here(
        self, stop: KeyboardInterrupt, cause: BaseException | None = None, together: bool = False
    ) -> None:
        """Write the checkpoint of the last whole step (when it is not the last one written) and raise `stop`,
        saying so: a resumed run continues from that step, not from the last periodic checkpoint. What kept it
        from being written is said instead (weights gone non-finite, a full disk). `together`: every DDP rank stops
        here at once (the step's collective told them), and none leaves before rank 0's checkpoint is written:
        a rank that exited first made torchrun terminate rank 0 in the middle of writing it."""
        step = self.step
        said = ""
        if step > 0 and self._checkpointed_step != step:
            try:
                self.task.check_finite_state(step)  # never a checkpoint of diverged weights
                self.save_checkpoint()
                said = (
                    f"checkpoint of step {step} in {self.checkpoint_path}: resuming the run continues from it"
                )
            except NonFiniteLossError as error:
                said = f"no checkpoint written: {self._non_finite_stop(error)}"
            except OSError as error:
                said = f"the checkpoint of step {step} could not be written: {describe_os_error(error)}"
        elif step > 0:
            said = f"the checkpoint of step {step} in {self.checkpoint_path} is up to date"
        if step > 0:  # a run stopped before its first step is forgotten (see run): nothing to record
            self.runlog.log({"event": "stopped", "by": stop_name(stop), "step": step})
        if together and self.dist.enabled:
            self.dist.all_true(True)  # the barrier: rank 0 has written the checkpoint
        if not self.dist.is_main:
            said = ""  # rank 0 wrote the checkpoint and says so: another rank claims none
        raise type(stop)(said) from cause

    def _train_one(self, batch: dict, progress: Any) -> None:
        if self._grid_batch is None and self.dist.is_main:
            # A fixed validation batch shows progress on the same faces (else the first train batch).
            self._grid_batch = self._on_device(self._first_batch("val") or batch)
        metrics = self.task.train_step(self._on_device(batch), self.step)
        self.position.step += 1
        self.position.batch_in_epoch += 1
        self._running.add(metrics)
        if progress is not None:
            progress.update(1)
        self._after_step(progress)

    def _on_device(self, batch: dict) -> dict:
        """A loader's uint8 batch (the CUDA path: 4x fewer bytes to copy) as the float batch, on the task's
        device; a float batch as it is (the task moves it)."""
        if batch["masked"].dtype != torch.uint8:
            return batch
        from m2u.datasets.loader import to_float_batch

        return to_float_batch(batch, self.task.device)

    def _non_finite_stop(self, error: NonFiniteLossError) -> NonFiniteLossError:
        last = checkpoint_step(self.checkpoint_path)
        # What to do: a resume repeats the run's steps exactly, so as it was it meets the same loss again. The
        # settings by their config keys, which each way in says as its user gives them (m2u-train: --lr,
        # m2u.training.cliutil.ConfigBinding.message; m2u-pipeline: `mseg.lr`, m2u.pipelines.config.in_stage_words).
        lower = "a lower `optimizer.learning_rate`" + (
            "" if self._precision() == "fp32" else " or `precision` fp32"
        )
        message = (
            f"{error}. Stopped; the last good checkpoint is {self.checkpoint_path} (step {last}): resume it "
            f"with {lower} (resumed as it is, the run repeats the same steps)"
            if last is not None
            else f"{error}. Stopped; no checkpoint had been written yet: run it again with {lower}"
        )
        self.runlog.log({"event": "non_finite_loss", "step": self.step, "message": message})
        return NonFiniteLossError(message)

    def _finish(self, stop_reason: str, started: float) -> dict[str, Any]:
        """Final validation (and test), grid and metrics.json after the last checkpoint."""
        results: dict[str, Any] = {
            "task": self.task.name,
            "steps": self.step,
            "epoch": self.epoch,
            "stop_reason": stop_reason,
            "seconds": round(self.training_seconds(), 3),  # over every piece of a resumed run
            "seconds_this_process": round(time.monotonic() - started, 3),
            "world_size": self.dist.world_size,  # processes that trained in this process's piece (DDP ranks)
            # Over the whole run: a run resumed on another number of ranks trained its steps on several.
            "steps_by_world_size": self.steps_by_world_size(),
            # What `precision` (auto: the hardware) gave the run's steps, over every process that trained it.
            "precision": self.trained_precision(),
            "steps_by_precision": self.steps_by_precision(),
            # Every dataset the run trained on, the record its checkpoint and model files keep (trained_datasets).
            "datasets": [dict(record) for record in self.task.datasets],
        }
        if self._last_val is not None and self._last_val[0] == self.step:
            results["val"] = self._last_val[1]  # validated at this very step (val_every divides it): once
        else:
            results["val"] = self.evaluate("val", self.config.val_batches)
            self._log_once("val", results["val"])
        if self.config.evaluate_test:
            results["test"] = self.evaluate("test", None)
            self._log_once("test", results["test"])
        elif (earlier := self._earlier_test(self.out / METRICS_NAME)) is not None:
            results["test"] = earlier  # a finished run resumed with --no-test keeps its models' test figures
        self._save_grid()
        self.runlog.write_metrics(results)
        self.runlog.close()
        return results

    def _earlier_test(self, path: Path) -> dict[str, Any] | None:
        """The test figures metrics.json holds for this very step (a finished run's, written again by a resume
        with nothing left to train), else None: the same checkpoint, the same models, the same figures."""
        try:
            earlier = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(earlier, dict) or earlier.get("steps") != self.step:
            return None
        test = earlier.get("test")
        return test if isinstance(test, dict) and self._logged.get("test") == self.step else None

    def _log_once(self, split: str, values: dict[str, float]) -> None:
        """The final `split` record, unless the log holds one of this step already (a finished run resumed: its
        models are written again, its results are not logged twice)."""
        if self._logged.get(split) != self.step:
            self.runlog.log({"split": split, "step": self.step, **values})
            self._logged[split] = self.step

    def _first_batch(self, split: str) -> dict | None:
        return next(iter(self.data.batches(split, 0)), None)

    def _after_step(self, progress: Any = None) -> None:
        config, step = self.config, self.step
        due_log = step % config.log_every == 0
        due_val = bool(config.val_every) and step % config.val_every == 0
        due_grid = step % config.grid_every == 0
        due_checkpoint = step % config.checkpoint_every == 0
        if due_log or due_val or due_grid or due_checkpoint:
            # One host sync for the steps since the last one; nothing is logged or saved after a NaN.
            self.task.check_finite_state(step)
        if due_log:
            averaged = self._running.means()
            record = {"split": "train", "step": step, "epoch": self.epoch, "lr": self.task.learning_rate()}
            self.runlog.log({**record, **averaged})
            if progress is not None:
                progress.set_postfix({k: f"{v:.4g}" for k, v in averaged.items() if "loss" in k})
        if due_val:
            values = self.evaluate("val", config.val_batches)
            self._last_val = (step, values)
            self.runlog.log({"split": "val", "step": step, **values})
            self._logged["val"] = step
        if due_grid:
            self._save_grid()
        if due_checkpoint:
            self.save_checkpoint()
