"""What a resumed (or stopped) run records: each step once in RUN/log.jsonl and TensorBoard after a kill, the
loss sums between two log lines kept across a stop, the DDP world size and batch size checked on resume, the
precision `auto` chose, the final validation logged once, and the stop said by rank 0 only."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
import torch

from m2u.training.checkpoint import CheckpointError, load_training_state, save_training_state
from m2u.training.config import MSegTrainConfig
from m2u.training.data import TensorDataSource
from m2u.training.distributed import DistributedContext
from m2u.training.loop import Trainer
from m2u.training.models import MSegConfig
from m2u.training.mseg_task import MSegTask
from m2u.training.rng import seed_everything
from m2u.training.trainer import train_mseg

TINY = {
    "model": MSegConfig(base_channels=4, levels=3),
    "batch_size": 2,
    "evaluate_test": False,
    "progress": False,
    "val_every": 0,
    "log_every": 1,
    "checkpoint_every": 100,
    "num_workers": 0,
    "precision": "fp32",
}
_BOOKKEEPING = {"time", "step", "epoch", "split", "lr"}


def _tensors(count: int, size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    unmasked = torch.rand(count, 3, size, size, generator=generator)
    mask = torch.zeros(count, 1, size, size)
    mask[:, :, size // 2 :] = 1
    return {"masked": unmasked * (1 - mask), "unmasked": unmasked, "mask": mask}


def _source(source_class: type = TensorDataSource, batch_size: int = 2, **kwargs) -> TensorDataSource:
    splits = {"train": _tensors(6), "val": _tensors(2, seed=1), "test": _tensors(2, seed=2)}
    return source_class(splits, batch_size=batch_size, seed=3, **kwargs)


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _rewrite_checkpoint(run: Path, **changes) -> Path:
    """The run's last checkpoint with `changes` to its state (as other ranks or another layout would write it)."""
    path = run / "checkpoints" / "last.pt"
    save_training_state(path, {**load_training_state(path), **changes})
    return path


def _steps(records: list[dict], split: str) -> list[int]:
    return [r["step"] for r in records if r.get("split") == split]


def _losses(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in _BOOKKEEPING}


class _AtBatch(TensorDataSource):
    """Hands out training batches and, as the batch number `at` (from 1) is handed to the loop, does `act()`."""

    def __init__(self, *args, at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.at, self.handed = at, 0

    def act(self) -> None:
        raise NotImplementedError

    def batches(self, split, epoch):
        for batch in super().batches(split, epoch):
            if split == "train":
                self.handed += 1
                if self.handed == self.at:
                    self.act()
            yield batch


class _FailsAt(_AtBatch):
    """Fails as a killed process ends: no checkpoint of the stop, the log as it was."""

    def act(self) -> None:
        raise RuntimeError("killed")


class _SignalledAt(_AtBatch):
    """Sends this process a Ctrl-C."""

    def act(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)


def _trainer(config: MSegTrainConfig, data, dist: DistributedContext | None = None) -> Trainer:
    dist = dist or DistributedContext()
    seed_everything(config.seed)
    return Trainer(MSegTask(config, torch.device("cpu"), dist), data, config, dist)


def _scalar_steps(run: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [event.step for event in events.Scalars(tag)]


def test_a_run_killed_after_its_checkpoint_logs_each_step_once_when_resumed(tmp_path):
    """Killed after logging steps 6 and 9 with its last checkpoint at step 5: the resumed run logged steps 6 and
    9 again (log.jsonl: train 3, val 5, train 6, train 9, resume 5, train 6, train 9, ...; two TensorBoard points
    at each). The killed process's records after the checkpoint are dropped and TensorBoard purges its points."""
    run = tmp_path / "run"
    config = MSegTrainConfig(
        out=str(run), max_steps=12, **{**TINY, "log_every": 3, "val_every": 5, "checkpoint_every": 5}
    )
    killed = _trainer(config, _source(_FailsAt, at=10))
    with pytest.raises(RuntimeError, match="killed"):
        killed.run()
    killed.runlog.close()  # what it had logged reached TensorBoard's file before the kill
    assert load_training_state(run / "checkpoints" / "last.pt")["step"] == 5
    assert _steps(_records(run), "train") == [3, 6, 9]

    train_mseg(dataclasses.replace(config, resume=True), _source())
    records = _records(run)
    assert _steps(records, "train") == [3, 6, 9, 12]
    assert _steps(records, "val") == [5, 10, 12]
    assert [(r["event"], r["step"]) for r in records if "event" in r] == [("resume", 5)]
    pairs = Counter((r.get("split"), r["step"]) for r in records if "split" in r)
    assert max(pairs.values()) == 1, pairs
    assert _scalar_steps(run, "mseg/train/loss") == [3, 6, 9, 12]
    assert _scalar_steps(run, "mseg/val/dice") == [5, 10, 12]


def test_the_log_keeps_events_and_earlier_resumes_and_drops_a_line_cut_short(tmp_path):
    from m2u.core.fileio import open_append
    from m2u.training.runlog import RunLog

    run = tmp_path / "run"
    log = RunLog(run, "mseg", is_main=True)
    for record in (
        {"split": "train", "step": 2},
        {"event": "resume", "step": 2},
        {"split": "train", "step": 4},
        {"event": "stopped", "by": "Ctrl-C", "step": 4},
        {"event": "removed_stale_temp_file", "path": "x"},
        {"split": "val", "step": 5},
    ):
        log.log(record)
    with open_append(run / "log.jsonl") as handle:
        handle.write('{"split": "train", "st')  # killed mid-write
    kept = log.keep_records_through(3)
    assert [(r.get("event"), r.get("split"), r.get("step")) for r in kept] == [
        (None, "train", 2),
        ("resume", None, 2),
        ("stopped", None, 4),
        ("removed_stale_temp_file", None, None),
    ]
    assert [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()] == kept
    # Nothing to drop: the file is left as it is.
    before = (run / "log.jsonl").stat().st_mtime_ns
    assert log.keep_records_through(3) == kept and (run / "log.jsonl").stat().st_mtime_ns == before
    assert RunLog(run, "mseg", is_main=False).keep_records_through(0) == []  # another rank reads nothing


def test_a_stop_between_log_lines_keeps_their_losses_for_the_next_record(tmp_path):
    """The loss sums since the last log line were not in the checkpoint: a run stopped at step 4 (log every 3
    steps) and resumed logged at step 6 the mean of steps 5 and 6 alone. Now the same record as a straight run's."""
    every_3 = {**TINY, "log_every": 3}
    train_mseg(MSegTrainConfig(out=str(tmp_path / "straight"), max_steps=6, **every_3), _source())
    stopped = MSegTrainConfig(out=str(tmp_path / "stopped"), max_steps=6, **every_3)
    with pytest.raises(KeyboardInterrupt, match="checkpoint of step 4"):
        train_mseg(stopped, _source(_SignalledAt, at=4))
    state = load_training_state(tmp_path / "stopped" / "checkpoints" / "last.pt")
    assert state["running_means"]["count"] == 1 and "loss" in state["running_means"]["sums"]
    train_mseg(MSegTrainConfig(out=str(tmp_path / "stopped"), max_steps=6, resume=True, **every_3), _source())

    def train(run: str) -> list[dict]:
        return [_losses(r) for r in _records(tmp_path / run) if r.get("split") == "train"]

    assert train("stopped") == train("straight") and len(train("straight")) == 2


def test_a_checkpoint_without_the_loops_new_parts_still_resumes(tmp_path):
    """Checkpoints written before the running sums, world size and batch size were recorded load as before: a
    resume mid-epoch with another batch size goes on (nothing to compare with) and its steps count as unknown."""
    run = tmp_path / "run"
    train_mseg(MSegTrainConfig(out=str(run), max_steps=2, **TINY), _source())
    path = run / "checkpoints" / "last.pt"
    state = load_training_state(path)
    assert state["world_size"] == 1 and state["batch_size"] == 2 and state["batch_in_epoch"] == 2
    for key in ("running_means", "world_size", "batch_size", "steps_by_world_size"):
        del state[key]
    save_training_state(path, state)
    results = train_mseg(
        MSegTrainConfig(out=str(run), max_steps=3, resume=True, **{**TINY, "batch_size": 3}),
        _source(batch_size=3),
    )
    assert results["steps"] == 3 and results["steps_by_world_size"] == {"unknown": 2, "1": 1}


def test_resuming_mid_epoch_with_another_batch_size_or_world_size_is_refused(tmp_path):
    """The skip to the run's place in the epoch (`batch_in_epoch`) counts batches of the checkpoint's layout: on
    another world size or batch size it landed on other samples, silently."""
    run = tmp_path / "run"
    train_mseg(MSegTrainConfig(out=str(run), max_steps=2, **TINY), _source())  # 3 batches an epoch: mid-epoch
    log = (run / "log.jsonl").read_bytes()
    with pytest.raises(
        CheckpointError, match=r"`batch_size` 2 and `seed` 0, but this run has .*`batch_size` 3"
    ) as refused:
        train_mseg(
            MSegTrainConfig(out=str(run), max_steps=4, resume=True, **{**TINY, "batch_size": 3}),
            _source(batch_size=3),
        )
    message = str(refused.value)
    assert "\n" not in message and "--" not in message and "DDP world size 1" in message
    assert (run / "log.jsonl").read_bytes() == log  # refused before anything was written
    # Another seed orders the epoch's samples otherwise: refused the same way (it was taken, silently).
    with pytest.raises(CheckpointError, match=r"`seed` 0, but this run has .*`seed` 5: skipping"):
        train_mseg(MSegTrainConfig(out=str(run), max_steps=4, resume=True, **{**TINY, "seed": 5}), _source())
    assert (run / "log.jsonl").read_bytes() == log

    _rewrite_checkpoint(run, world_size=2)
    with pytest.raises(CheckpointError, match=r"with DDP world size 2, .* this run has DDP world size 1"):
        train_mseg(MSegTrainConfig(out=str(run), max_steps=4, resume=True, **TINY), _source())


def test_a_new_world_size_at_an_epochs_start_is_allowed_and_counted(tmp_path, capsys):
    run = tmp_path / "run"
    train_mseg(MSegTrainConfig(out=str(run), max_steps=3, **TINY), _source())
    # As if two ranks had trained the first epoch (3 steps) and stopped as the next one began.
    _rewrite_checkpoint(run, world_size=2, steps_by_world_size={"2": 3}, epoch=1, batch_in_epoch=0)
    capsys.readouterr()
    results = train_mseg(MSegTrainConfig(out=str(run), max_steps=5, resume=True, **TINY), _source())
    assert (
        "m2u-train: resuming at the start of epoch 1 with DDP world size 2 -> 1\n" in capsys.readouterr().err
    )
    assert results["world_size"] == 1 and results["steps_by_world_size"] == {"2": 3, "1": 2}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps_by_world_size"] == {"2": 3, "1": 2}
    resumed = [r for r in _records(run) if r.get("event") == "resume"]
    assert resumed[-1]["world_size"] == 1


def test_a_run_resumed_on_another_world_size_keeps_its_lr_decays_at_the_same_samples(tmp_path):
    """The schedulers counted steps of every world size alike: 3 steps on 2 ranks (12 samples) then a resume on
    one rank put the decays at 1-rank step counts, late here, and (the other way) all at once."""
    from m2u.training.config import OptimizerConfig

    run = tmp_path / "run"
    schedule = {**TINY, "optimizer": OptimizerConfig(learning_rate=1e-3, milestones=(4, 6), decay=0.1)}
    train_mseg(MSegTrainConfig(out=str(run), max_steps=3, **schedule), _source())
    # As if two ranks had trained the 3 steps (6 one-rank iterations: both milestones passed) and the next epoch began.
    path = _rewrite_checkpoint(run, world_size=2, steps_by_world_size={"2": 3}, epoch=1, batch_in_epoch=0)
    train_mseg(MSegTrainConfig(out=str(run), max_steps=4, resume=True, **schedule), _source())
    (group,) = load_training_state(path)["optimizers"]["mseg"]["param_groups"]
    assert group["lr"] == pytest.approx(
        1e-3 * 0.1**2
    )  # decayed at 4 and 6 samples-equivalent steps; not at 4 only
    lrs = [r["lr"] for r in _records(run) if r.get("split", "train") == "train" and "lr" in r]
    assert lrs[-1] == pytest.approx(1e-5)


def test_an_epoch_finished_on_another_world_size_is_not_trained_again(tmp_path, capsys):
    run = tmp_path / "run"
    train_mseg(MSegTrainConfig(out=str(run), max_steps=1, **TINY), _source())
    # As if two ranks had finished epoch 0 (6 samples: one batch of 2 on each) and stopped there.
    _rewrite_checkpoint(run, world_size=2, steps_by_world_size={"2": 1}, epoch_batches=1, batch_in_epoch=1)
    capsys.readouterr()
    results = train_mseg(MSegTrainConfig(out=str(run), max_steps=2, resume=True, **TINY), _source())
    assert "resuming at the start of epoch 1 with DDP world size 2 -> 1" in capsys.readouterr().err
    (trained,) = [r for r in _records(run) if r.get("split") == "train" and r.get("step") == 2]
    assert trained["epoch"] == 1  # not a second pass over epoch 0
    assert results["epoch"] == 1


def test_precision_auto_says_what_it_chose_and_records_it(tmp_path, capsys, monkeypatch):
    import m2u.training.device as device

    monkeypatch.setattr(device, "cpu_native_bf16", lambda cpuinfo=None: False)
    run = tmp_path / "run"
    auto = {**TINY, "precision": "auto"}
    results = train_mseg(MSegTrainConfig(out=str(run), max_steps=1, **{**auto, "progress": True}), _source())
    said = capsys.readouterr().err
    assert "m2u-train: precision auto -> fp32 (this CPU has no native bf16" in said
    assert results["precision"] == "fp32"
    assert json.loads((run / "metrics.json").read_text())["precision"] == "fp32"
    # Quiet (no progress bar): not said, still recorded, in the resume record too.
    train_mseg(MSegTrainConfig(out=str(run), max_steps=2, resume=True, **auto), _source())
    assert "precision auto" not in capsys.readouterr().err
    assert [r["precision"] for r in _records(run) if r.get("event") == "resume"] == ["fp32"]
    monkeypatch.setattr(device, "cpu_native_bf16", lambda cpuinfo=None: True)
    train_mseg(
        MSegTrainConfig(out=str(tmp_path / "bf16"), max_steps=1, **{**auto, "progress": True}), _source()
    )
    assert "m2u-train: precision auto -> bf16 (this CPU has native bf16)\n" in capsys.readouterr().err
    # A precision named is not announced.
    train_mseg(
        MSegTrainConfig(out=str(tmp_path / "named"), max_steps=1, **{**TINY, "progress": True}), _source()
    )
    assert "precision auto" not in capsys.readouterr().err


def test_the_recorded_precision_is_that_of_the_runs_steps_over_every_process(tmp_path):
    """A finished bf16 run resumed with --precision fp32 (nothing left to train: its models are written again)
    recorded fp32 in its model files and metrics.json, though no step trained in fp32; a run continued in
    another precision recorded only the last process's."""
    from m2u.training.checkpoint import read_model_info

    run = tmp_path / "run"
    train_mseg(MSegTrainConfig(out=str(run), max_steps=2, **{**TINY, "precision": "bf16"}), _source())
    again = train_mseg(MSegTrainConfig(out=str(run), max_steps=2, resume=True, **TINY), _source())
    assert again["precision"] == "bf16" and again["steps_by_precision"] == {"bf16": 2}
    assert read_model_info(run / "mseg.safetensors").provenance["precision"] == "bf16"
    more = train_mseg(MSegTrainConfig(out=str(run), max_steps=3, resume=True, **TINY), _source())
    assert more["precision"] == "bf16 then fp32" and more["steps_by_precision"] == {"bf16": 2, "fp32": 1}
    assert read_model_info(run / "mseg.safetensors").provenance["precision"] == "bf16 then fp32"
    assert json.loads((run / "metrics.json").read_text())["precision"] == "bf16 then fp32"
    # A checkpoint from before the record, of a run resumed before (its log's resume events), whose earlier
    # processes' precision nothing recorded: its steps' precision is unknown, not this process's (trained on: a
    # finished run resumed with nothing to train is left as it is).
    _rewrite_checkpoint(run, steps_by_precision=None)
    older = train_mseg(MSegTrainConfig(out=str(run), max_steps=4, resume=True, **TINY), _source())
    assert older["precision"] == "unknown then fp32"
    assert older["steps_by_precision"] == {"unknown": 3, "fp32": 1}


def test_an_older_checkpoint_of_a_run_in_one_process_resumes_with_the_precision_it_trained_in(
    tmp_path, monkeypatch
):
    """A checkpoint written before `steps_by_precision` resumed with its steps recorded as "unknown", though the
    run trained in one process, as its checkpoint's config says (`precision` bf16) or, for `auto`, its model
    files written with it (bf16 on a CPU with native bf16)."""
    import m2u.training.device as device
    from m2u.training.checkpoint import read_model_info

    run = tmp_path / "named"
    train_mseg(MSegTrainConfig(out=str(run), max_steps=2, **{**TINY, "precision": "bf16"}), _source())
    _rewrite_checkpoint(run, steps_by_precision=None)
    more = train_mseg(MSegTrainConfig(out=str(run), max_steps=3, resume=True, **TINY), _source())
    assert more["steps_by_precision"] == {"bf16": 2, "fp32": 1} and more["precision"] == "bf16 then fp32"
    assert read_model_info(run / "mseg.safetensors").provenance["precision"] == "bf16 then fp32"
    auto = {**TINY, "precision": "auto"}
    monkeypatch.setattr(device, "cpu_native_bf16", lambda cpuinfo=None: True)
    run = tmp_path / "auto"
    train_mseg(MSegTrainConfig(out=str(run), max_steps=2, **auto), _source())
    _rewrite_checkpoint(run, steps_by_precision=None)
    monkeypatch.setattr(device, "cpu_native_bf16", lambda cpuinfo=None: False)  # resumed on another CPU
    more = train_mseg(MSegTrainConfig(out=str(run), max_steps=3, resume=True, **auto), _source())
    assert more["steps_by_precision"] == {"bf16": 2, "fp32": 1}


def test_the_final_validation_is_logged_once_also_when_a_finished_run_is_resumed(tmp_path):
    """val_every dividing the last step logged its validation twice at that step, and once more on each resume
    of the finished run (which writes its models again)."""
    run = tmp_path / "run"
    config = {**TINY, "val_every": 2, "evaluate_test": True}
    first = train_mseg(MSegTrainConfig(out=str(run), max_steps=4, **config), _source())
    records = _records(run)
    assert _steps(records, "val") == [2, 4] and _steps(records, "test") == [4]
    assert _losses([r for r in records if r.get("split") == "val"][-1]) == first["val"]
    again = train_mseg(MSegTrainConfig(out=str(run), max_steps=4, resume=True, **config), _source())
    records = _records(run)
    assert _steps(records, "val") == [2, 4] and _steps(records, "test") == [4]
    assert again["val"] == pytest.approx(first["val"]) and again["test"] == pytest.approx(first["test"])


def test_a_finished_run_resumed_without_the_test_keeps_its_test_figures(tmp_path):
    """A finished run resumed with evaluate_test off (--no-test) and nothing left to train wrote its metrics.json
    again without the test figures of its models (kept only in log.jsonl); trained on, it has none of its own."""
    run = tmp_path / "run"
    config = {**TINY, "evaluate_test": True}
    first = train_mseg(MSegTrainConfig(out=str(run), max_steps=2, **config), _source())
    untested = {**config, "evaluate_test": False}
    again = train_mseg(MSegTrainConfig(out=str(run), max_steps=2, resume=True, **untested), _source())
    assert again["test"] == first["test"]
    assert json.loads((run / "metrics.json").read_text())["test"] == pytest.approx(first["test"])
    more = train_mseg(MSegTrainConfig(out=str(run), max_steps=3, resume=True, **untested), _source())
    assert "test" not in more and "test" not in json.loads((run / "metrics.json").read_text())


def _files(run: Path) -> dict[str, bytes]:
    """Every file of a run folder (its hidden lock and written-record too), by relative path."""
    return {
        path.relative_to(run).as_posix(): path.read_bytes()
        for path in sorted(run.rglob("*"))
        if path.is_file()
    }


def test_a_finished_run_resumed_with_nothing_to_train_leaves_its_files_as_they_are(tmp_path, capsys):
    """A finished run resumed with nothing left to train wrote its models, metrics.json, log and config.json again,
    the last with this resume's settings (--precision, --no-test, --lr): none of its files changes now, the
    resume says so in one line and gives the run's results."""
    run = tmp_path / "run"
    config = {**TINY, "evaluate_test": True, "val_every": 2}
    first = train_mseg(MSegTrainConfig(out=str(run), max_steps=2, **config), _source())
    before = _files(run)
    capsys.readouterr()
    other = {**config, "precision": "bf16", "evaluate_test": False, "val_batches": 1}
    resumed = MSegTrainConfig(out=str(run), max_steps=2, resume=True, **other)
    again = train_mseg(
        dataclasses.replace(resumed, optimizer=dataclasses.replace(resumed.optimizer, learning_rate=1e-5)),
        _source(),
    )
    assert capsys.readouterr().err == (
        f"m2u-train: {run} finished at step 2 of 2: nothing to train; its files are left as they are\n"
    )
    assert _files(run) == before
    assert again == json.loads((run / "metrics.json").read_text()) and again["test"] == first["test"]


def test_m2u_train_resuming_a_finished_run_exits_0_and_writes_nothing(tmp_path, tiny_dataset):
    from click.testing import CliRunner

    from m2u.training.cli import train_main

    run = tmp_path / "run"
    common = ["mseg", "-o", str(run), "--max-steps", "2", "--workers", "0", "-q", "--val-every", "0"]
    tiny = ["--data", str(tiny_dataset), "--base-channels", "4", "--levels", "2", "--batch-size", "4"]
    assert CliRunner().invoke(train_main, [*common, *tiny]).exit_code == 0
    before = _files(run)
    done = CliRunner().invoke(train_main, [*common, "--resume", "--no-test", "--precision", "bf16"])
    assert done.exit_code == 0, done.output
    assert (
        f"m2u-train: {run} finished at step 2 of 2: nothing to train; its files are left as they are\n"
        in (done.stderr)
    )
    assert _files(run) == before


def test_another_rank_says_nothing_of_the_stop_and_claims_no_checkpoint(tmp_path, capfd):
    """Under torchrun every rank said "stopping..." and "checkpoint of step 4 in ..." (rank 1 wrote none)."""
    config = MSegTrainConfig(out=str(tmp_path / "run"), max_steps=6, **TINY)
    rank1 = _trainer(config, _source(_SignalledAt, at=3), DistributedContext(rank=1, world_size=1))
    with pytest.raises(KeyboardInterrupt) as stopped:
        rank1.run()
    assert str(stopped.value) == ""
    assert "stopping" not in capfd.readouterr().err
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()  # rank 0 writes it, not this one
    # Rank 0 says it (the one notice of the run) and names its checkpoint.
    rank0 = _trainer(config, _source(_SignalledAt, at=3))
    with pytest.raises(KeyboardInterrupt, match="checkpoint of step 3 in "):
        rank0.run()
    assert "Ctrl-C: stopping once the training step under way is done" in capfd.readouterr().err


def test_a_run_stopped_after_an_epochs_last_batch_may_resume_with_another_batch_size(tmp_path, capsys):
    """6 training pairs at batch 2 are 3 batches an epoch: stopped by max_steps 3, after the epoch's last batch,
    the run is at an epoch's boundary, where another batch size takes over (it was refused as mid-epoch)."""
    run = tmp_path / "run"
    train_mseg(MSegTrainConfig(out=str(run), max_steps=3, **TINY), _source())
    state = load_training_state(run / "checkpoints" / "last.pt")
    assert state["batch_in_epoch"] in (0, state["epoch_batches"]) and state["epoch_batches"] == 3
    capsys.readouterr()
    wider = {**TINY, "batch_size": 3}
    train_mseg(MSegTrainConfig(out=str(run), max_steps=5, resume=True, **wider), _source(batch_size=3))
    assert "resuming at the start of epoch" in capsys.readouterr().err
    # one batch into the next epoch is mid-epoch: refused, as before
    train_mseg(MSegTrainConfig(out=str(tmp_path / "mid"), max_steps=4, **TINY), _source())
    with pytest.raises(CheckpointError, match="in the middle of epoch"):
        train_mseg(
            MSegTrainConfig(out=str(tmp_path / "mid"), max_steps=6, resume=True, **wider),
            _source(batch_size=3),
        )


def test_what_killed_writes_left_in_the_run_folder_is_removed_and_logged(tmp_path):
    """The run folder's lock (m2u.core.inputs.output_lock) clears a killed write's temporary file before the run
    starts; the trainer logs each one it or the lock removed, a person's own `notes.tmp` stays."""
    run = tmp_path / "run"
    config = MSegTrainConfig(out=str(run), max_steps=2, **TINY)
    train_mseg(config, _source())
    killed = [run / ".config.json.0123abcd.tmp", run / "checkpoints" / ".last.pt.89abcdef.tmp"]
    for path in killed:
        path.write_bytes(b"half")
    (run / "notes.tmp").write_text("mine")
    train_mseg(dataclasses.replace(config, resume=True, max_steps=3), _source())
    assert not any(path.exists() for path in killed) and (run / "notes.tmp").read_text() == "mine"
    logged = {r["path"] for r in _records(run) if r.get("event") == "removed_stale_temp_file"}
    assert logged == {str(path) for path in killed}


def test_a_ddp_resume_mid_epoch_from_another_rank_split_says_so(tmp_path):
    """Checkpoints record how the source shared its samples among the ranks: one written before the loader's even
    split (no record: every n-th) or by another resumes a dataset folder mid-epoch on other samples for the rest of
    that epoch, which the resume says; one of this split, one process, or an epoch's start says nothing. A source
    whose split never changed (every n-th: in memory, on the fly) says nothing for a checkpoint without the record."""
    from m2u.datasets.loader import RANK_SPLIT
    from m2u.training.run_state import EVERY_NTH, check_resume_layout

    config = MSegTrainConfig(out=str(tmp_path / "run"), **TINY)
    earlier = {
        "world_size": 2,
        "batch_size": config.batch_size,
        "epoch": 3,
        "batch_in_epoch": 5,
        "epoch_batches": 9,
    }
    note = check_resume_layout(earlier, config, world_size=2, split=RANK_SPLIT)
    assert note is not None and "middle of epoch 3" in note and "some samples twice" in note
    ours = {**earlier, "rank_split": RANK_SPLIT}
    assert check_resume_layout(ours, config, world_size=2, split=RANK_SPLIT) is None
    assert check_resume_layout(ours, config, world_size=2, split=EVERY_NTH) is not None
    assert check_resume_layout(earlier, config, world_size=2, split=EVERY_NTH) is None
    assert check_resume_layout({**earlier, "world_size": 1}, config, world_size=1, split=RANK_SPLIT) is None
    assert (
        check_resume_layout({**earlier, "batch_in_epoch": 0}, config, world_size=2, split=RANK_SPLIT) is None
    )
    assert (
        check_resume_layout({**earlier, "batch_in_epoch": 9}, config, world_size=2, split=RANK_SPLIT) is None
    )


def test_each_source_says_its_own_rank_split():
    """A dataset folder's source says the loader's split; a source that does not say (in memory, on the fly) shares
    every n-th sample, as every source did before checkpoints recorded it."""
    from m2u.datasets.augment import AugmentConfig
    from m2u.datasets.loader import RANK_SPLIT
    from m2u.training.data import AugmentedSource, ShardDataSource
    from m2u.training.onthefly import OnTheFlyDataSource
    from m2u.training.run_state import EVERY_NTH, rank_split

    assert rank_split(ShardDataSource.__new__(ShardDataSource)) == RANK_SPLIT != EVERY_NTH
    assert rank_split(_source()) == EVERY_NTH
    # The face pack's on-the-fly source (the device kit's) shares every n-th sample and always did.
    assert rank_split(OnTheFlyDataSource.__new__(OnTheFlyDataSource)) == EVERY_NTH
    # Augmentation (the release recipe's --augment) keeps the wrapped source's split and epoch length.
    shards = ShardDataSource.__new__(ShardDataSource)
    assert rank_split(AugmentedSource(shards, AugmentConfig())) == RANK_SPLIT
    tensors = _source(batch_size=2)
    assert (
        AugmentedSource(tensors, AugmentConfig()).steps_per_epoch("train")
        == tensors.steps_per_epoch("train")
        == 3
    )


def test_checkpoints_record_the_rank_split(tmp_path):
    from m2u.training.run_state import EVERY_NTH

    run = tmp_path / "run"
    train_mseg(MSegTrainConfig(out=str(run), max_steps=1, **TINY), _source())
    assert load_training_state(run / "checkpoints" / "last.pt")["rank_split"] == EVERY_NTH


class _Dataset(TensorDataSource):
    """Says which dataset it reads by content, as a dataset folder's source does (its manifest's SHA-256)."""

    def __init__(self, *args, digest: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.digest = digest

    def dataset_digest(self) -> str:
        return self.digest


def test_resuming_mid_epoch_on_another_dataset_is_refused_and_at_an_epochs_start_recorded(tmp_path, capsys):
    """The skip to the run's place in the epoch landed on another dataset's samples, silently, and the model files
    named only the last dataset. The same dataset elsewhere (same content) is the same; at an epoch's start
    another may take over, and the provenance keeps both."""
    from m2u.training.checkpoint import read_model_info

    run = tmp_path / "run"
    config = {**TINY, "out": str(run)}
    train_mseg(MSegTrainConfig(data="dsA", max_steps=2, **config), _source(_Dataset, digest="a"))  # mid-epoch
    log = (run / "log.jsonl").read_bytes()
    with pytest.raises(
        CheckpointError, match=r"on the dataset dsA, but `data` dsB is another dataset"
    ) as refused:
        train_mseg(
            MSegTrainConfig(data="dsB", max_steps=3, resume=True, **config), _source(_Dataset, digest="b")
        )
    assert "\n" not in str(refused.value) and "would land on other samples" in str(refused.value)
    assert (run / "log.jsonl").read_bytes() == log  # refused before anything was written

    # dsA moved: the same content, the same dataset; it ends the epoch (3 batches).
    train_mseg(
        MSegTrainConfig(data="moved", max_steps=3, resume=True, **config), _source(_Dataset, digest="a")
    )
    capsys.readouterr()
    train_mseg(MSegTrainConfig(data="dsB", max_steps=5, resume=True, **config), _source(_Dataset, digest="b"))
    assert "resuming at the start of epoch 1 with another dataset (dsB)" in capsys.readouterr().err
    provenance = read_model_info(run / "mseg.safetensors").provenance
    assert provenance["data"] == "dsB" and provenance["datasets"] == [
        {"data": "dsA", "manifest_sha256": "a", "from_step": 0},
        {"data": "dsB", "manifest_sha256": "b", "from_step": 3},
    ]


def test_metrics_json_lists_the_datasets_the_checkpoint_and_model_files_record(tmp_path):
    """metrics.json named no dataset while the checkpoint and the model files' provenance listed every one the run
    trained on: it carries the same record."""
    from m2u.training.checkpoint import read_model_info

    run = tmp_path / "run"
    config = {**TINY, "out": str(run)}
    train_mseg(MSegTrainConfig(data="dsA", max_steps=3, **config), _source(_Dataset, digest="a"))  # one epoch
    train_mseg(MSegTrainConfig(data="dsB", max_steps=4, resume=True, **config), _source(_Dataset, digest="b"))
    datasets = json.loads((run / "metrics.json").read_text())["datasets"]
    assert [(d["data"], d["manifest_sha256"], d["from_step"]) for d in datasets] == [
        ("dsA", "a", 0),
        ("dsB", "b", 3),
    ]
    assert datasets == read_model_info(run / "mseg.safetensors").provenance["datasets"]
    assert datasets == load_training_state(run / "checkpoints" / "last.pt")["datasets"]


def test_a_resume_mid_epoch_whose_dataset_cannot_be_told_by_content_says_so_once(tmp_path, capsys):
    """A checkpoint from before `datasets` were recorded, or a source without a content digest (here in memory),
    resumed mid-epoch without a word: whether it was the same dataset was never checked. Now it is said once; at an
    epoch's start (any dataset may take over) nothing is said."""
    unchecked = "could not check that `data` dsA is the dataset the run stopped on in the middle of epoch 0"
    for name, source, digest in (("earlier", _Dataset, "a"), ("no-digest", TensorDataSource, None)):
        run = tmp_path / name
        config = {**TINY, "out": str(run), "data": "dsA"}
        extra = {"digest": digest} if digest else {}
        train_mseg(MSegTrainConfig(max_steps=1, **config), _source(source, **extra))  # mid-epoch (3 batches)
        if name == "earlier":
            state = load_training_state(run / "checkpoints" / "last.pt")
            del state["datasets"]
            save_training_state(run / "checkpoints" / "last.pt", state)
        capsys.readouterr()
        train_mseg(MSegTrainConfig(max_steps=3, resume=True, **config), _source(source, **extra))
        said = capsys.readouterr().err
        assert said.count(unchecked) == 1, said
        why = "does not record which dataset" if name == "earlier" else "gives no content digest to compare"
        assert why in said
        # Finished the epoch (3 batches): another dataset may take over, nothing to check.
        train_mseg(MSegTrainConfig(max_steps=4, resume=True, **config), _source(source, **extra))
        assert "could not check" not in capsys.readouterr().err


def _fake_pack(folder: Path, keys: list[bytes]) -> Path:
    """A face pack's pack.json and index files (no faces: only what tells the pack by content)."""
    import numpy as np

    folder.mkdir()
    (folder / "pack.json").write_text(json.dumps({"format": 1, "size": 16, "store_size": 16}))
    for split in ("train", "val"):
        np.savez(folder / f"{split}.index.npz", keys=np.asarray(keys, dtype=bytes))
    return folder


def test_a_face_pack_and_a_dataset_folder_without_manifest_are_checked_as_far_as_they_can_be(tmp_path):
    """The on-the-fly source (a face pack) gave no content digest: a resume mid-epoch on another pack at the same
    path went on, and one on the same pack moved was refused. It is now told by its pack.json and indexes; a
    dataset folder without manifest.parquet has none, which the resume says."""
    import shutil

    from m2u.training.data import ShardDataSource
    from m2u.training.onthefly import OnTheFlyDataSource
    from m2u.training.run_state import (
        check_resume_layout,
        dataset_digest,
        dataset_record,
        unchecked_dataset_note,
    )

    pack_a = _fake_pack(tmp_path / "a", [b"k1", b"k2"])
    pack_b = _fake_pack(tmp_path / "b", [b"k1", b"k3"])
    shutil.copytree(pack_a, tmp_path / "a moved")
    digest = {
        name: dataset_digest(OnTheFlyDataSource(str(tmp_path / name), 2)) for name in ("a", "b", "a moved")
    }
    assert digest["a"] is not None and digest["a"] == digest["a moved"] != digest["b"]

    state = {"epoch": 1, "batch_in_epoch": 2, "datasets": [dataset_record(str(pack_a), digest["a"], 0)]}
    with pytest.raises(CheckpointError, match=r"`data` .*b is another dataset"):
        check_resume_layout(
            state, MSegTrainConfig(data=str(pack_b), **TINY), 1, split="every-nth", digest=digest["b"]
        )
    moved = MSegTrainConfig(data=str(tmp_path / "a moved"), **TINY)
    assert check_resume_layout(state, moved, 1, split="every-nth", digest=digest["a moved"]) is None
    assert unchecked_dataset_note(state, moved.data, digest["a moved"]) is None

    folder = tmp_path / "shards"
    (folder / "train").mkdir(parents=True)  # shards without manifest.parquet
    assert dataset_digest(ShardDataSource(str(folder), 2)) is None
    state = {"epoch": 1, "batch_in_epoch": 2, "datasets": [dataset_record(str(folder), None, 0)]}
    note = unchecked_dataset_note(state, str(folder), None)
    assert note is not None and "without manifest.parquet" in note and "\n" not in note


def test_m2u_train_names_data_when_a_resume_mid_epoch_is_on_another_dataset_folder(tmp_path):
    """The dataset folder is told by its manifest's content, not its path: a copy resumes, another is refused."""
    import shutil

    from click.testing import CliRunner

    from m2u.datasets.synthetic import write_synthetic_dataset
    from m2u.training.cli import train_main

    for name, seed in (("a", 0), ("b", 1)):
        write_synthetic_dataset(tmp_path / name, 12, size=32, seed=seed, split=(1.0, 0.0, 0.0))
    shutil.copytree(tmp_path / "a", tmp_path / "a copy")
    run, tiny = str(tmp_path / "run"), ["--base-channels", "4", "--levels", "3", "--workers", "0", "-q"]
    first = ["mseg", "--data", str(tmp_path / "a"), "--out", run, "--max-steps", "1", "--batch-size", "2"]
    assert CliRunner().invoke(train_main, [*first, *tiny]).exit_code == 0
    resume = ["mseg", "--out", run, "--resume", "--max-steps", "2", "-q", "--data"]
    refused = CliRunner().invoke(train_main, [*resume, str(tmp_path / "b")])
    assert refused.exit_code == 2 and f"--data {tmp_path / 'b'} is another dataset" in refused.output
    assert "Traceback" not in refused.output and len(refused.output.strip().splitlines()) == 1
    resumed = CliRunner().invoke(train_main, [*resume, str(tmp_path / "a copy")])
    assert resumed.exit_code == 0, resumed.output


def test_both_data_sources_read_their_dataset_digest_once_through_one_cache(tmp_path, monkeypatch):
    """ShardDataSource and OnTheFlyDataSource each kept their digest in a one-tuple of their own; both keep it in
    m2u.training.data.DigestOnce now: read once, and a dataset that cannot be read is None, not read again."""
    from m2u.datasets.facepack import FacePack
    from m2u.training.data import DigestOnce, ShardDataSource
    from m2u.training.onthefly import OnTheFlyDataSource

    reads: list[str] = []

    def read(what: str, fails: bool = False) -> str:
        reads.append(what)
        if fails:
            raise OSError("unreadable")
        return f"digest of {what}"

    monkeypatch.setattr("m2u.core.fileio.content_digest", lambda path: read("manifest"))
    monkeypatch.setattr(FacePack, "digest", lambda self: read("pack"))
    folder = tmp_path / "shards"
    (folder / "train").mkdir(parents=True)
    shards, pack = ShardDataSource(str(folder), 2), OnTheFlyDataSource(str(tmp_path / "pack"), 2)
    monkeypatch.setattr(FacePack, "__init__", lambda self, root: None)
    for source, what in ((shards, "manifest"), (pack, "pack")):
        assert isinstance(source._digest, DigestOnce)
        assert source.dataset_digest() == source.dataset_digest() == f"digest of {what}"
    assert reads == ["manifest", "pack"]

    once = DigestOnce()
    assert once.get(lambda: read("gone", fails=True), (OSError,)) is None
    assert once.get(lambda: read("gone"), (OSError,)) is None
    assert reads[2:] == ["gone"]
