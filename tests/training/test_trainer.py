"""The training loop: exact resume, NaN stop, precision/memory-format options, CLI, DDP."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from click.testing import CliRunner

from m2u.training.checkpoint import CheckpointError, load_model, load_training_state
from m2u.training.cli import train_main
from m2u.training.config import MSegTrainConfig, OptimizerConfig
from m2u.training.data import TensorDataSource
from m2u.training.models import MSegConfig

sys.path.insert(0, str(Path(__file__).parent))
import training_ddp_worker

from m2u.training.distributed import DistributedContext
from m2u.training.gan_task import GanTask
from m2u.training.guards import NonFiniteLossError
from m2u.training.rng import seed_everything
from m2u.training.trainer import train_gan, train_mseg

TINY_MSEG = MSegConfig(base_channels=4, levels=3)
QUIET = {"progress": False, "val_every": 0, "log_every": 1, "num_workers": 0}
_tensors = training_ddp_worker.tensors
_gan_config = training_ddp_worker.tiny_gan_config


def _states_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            if not _states_equal(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif isinstance(x, list | tuple):
            if len(x) != len(y) or not all(_states_equal({0: p}, {0: q}) for p, q in zip(x, y)):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.slow
def test_resume_gives_the_same_weights_as_a_straight_run(tmp_path):
    # Through the real shard loader (shuffled, flipped per epoch) on a synthetic dataset; 5 steps cross an
    # epoch boundary (train split: 3 batches of 2 + 1 partial at 32 px, 12 samples).
    from m2u.datasets import write_synthetic_dataset

    data_dir = tmp_path / "data"
    write_synthetic_dataset(data_dir, 12, size=32, seed=1, split=(0.6, 0.2, 0.2))
    common = {"data": str(data_dir), "optimizer": OptimizerConfig(milestones=(3,))}
    straight = train_gan(_gan_config(tmp_path / "straight", max_steps=5, **common))
    train_gan(_gan_config(tmp_path / "resumed", max_steps=2, **common))
    resumed = train_gan(_gan_config(tmp_path / "resumed", max_steps=5, resume=True, **common))
    assert straight["steps"] == resumed["steps"] == 5 and straight["epoch"] >= 1
    a = load_training_state(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_training_state(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] and a["batch_in_epoch"] == b["batch_in_epoch"]
    for part in ("networks", "optimizers", "schedulers"):
        assert _states_equal(a[part], b[part]), part
    assert a["optimizers"]["generator"]["param_groups"][0]["lr"] == pytest.approx(1e-4)  # decayed at step 3
    # The resumed run continued from step 2: its log holds the resume event.
    events = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "resume" and e["step"] == 2 for e in events)


def test_the_loader_worker_count_leaves_the_trained_weights_alone(tmp_path):
    """--workers is a runtime setting (m2u-pipeline leaves it out of its fingerprints): 0 and 2 loader workers
    train to the same weights (they differed by up to 0.014 after 3 steps: each worker shuffled its own share)."""
    from m2u.datasets import write_synthetic_dataset

    data_dir = tmp_path / "data"
    write_synthetic_dataset(data_dir, 24, size=32, seed=1, split=(0.8, 0.1, 0.1), shard_size=4)
    weights = []
    for workers in (0, 2):
        out = tmp_path / f"w{workers}"
        train_gan(_gan_config(out, max_steps=3, data=str(data_dir), num_workers=workers))
        weights.append(load_training_state(out / "checkpoints" / "last.pt")["networks"])
    assert _states_equal(*weights)


def test_resume_on_tensors_is_exact_and_refuses_to_overwrite(tmp_path):
    data = TensorDataSource({"train": _tensors(6)}, batch_size=2, seed=3)
    config = {"model": TINY_MSEG, "batch_size": 2, "checkpoint_every": 100, "evaluate_test": False, **QUIET}
    train_mseg(MSegTrainConfig(out=str(tmp_path / "a"), max_steps=5, **config), data)
    train_mseg(MSegTrainConfig(out=str(tmp_path / "b"), max_steps=4, **config), data)
    with pytest.raises(FileExistsError, match="already holds a run"):
        train_mseg(MSegTrainConfig(out=str(tmp_path / "b"), max_steps=5, **config), data)
    train_mseg(MSegTrainConfig(out=str(tmp_path / "b"), max_steps=5, resume=True, **config), data)
    a = load_training_state(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_training_state(tmp_path / "b" / "checkpoints" / "last.pt")
    assert _states_equal(a["networks"], b["networks"]) and _states_equal(a["optimizers"], b["optimizers"])
    # The exported model file holds the same weights as the training state.
    model = load_model(tmp_path / "b" / "mseg.safetensors").module
    assert _states_equal(model.state_dict(), b["networks"]["mseg"])


@pytest.mark.parametrize("resume", [False, True])
def test_a_finished_run_whose_checkpoint_was_deleted_is_not_trained_over(tmp_path, resume):
    """Deleting last.pt to save space left the run's model unprotected: a run from step 0 replaced it (exit 0,
    with --resume too)."""
    data = TensorDataSource({"train": _tensors(6)}, batch_size=2, seed=3)
    config = {"model": TINY_MSEG, "batch_size": 2, "checkpoint_every": 100, "evaluate_test": False, **QUIET}
    run = tmp_path / "run"
    train_mseg(MSegTrainConfig(out=str(run), max_steps=3, **config), data)
    (run / "checkpoints" / "last.pt").unlink()
    model = (run / "mseg.safetensors").read_bytes()
    said = "--resume has no checkpoint to continue from" if resume else "it already holds a run"
    with pytest.raises(FileExistsError, match=f"{said} .*last.pt is missing.*replace .*mseg.safetensors"):
        train_mseg(MSegTrainConfig(out=str(run), max_steps=2, resume=resume, **config), data)
    assert (run / "mseg.safetensors").read_bytes() == model


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_killed_before_its_first_checkpoint_starts_again_from_step_0(tmp_path, resume, capsys):
    """A run killed (SIGKILL) before its first checkpoint leaves only its log: a rerun and --resume were both
    refused ("a new run would replace log.jsonl"), so a pipeline stage could never go on. Nothing was saved, so
    the run starts from step 0, says so, and its log keeps the earlier run's events but not its lost steps."""
    import json

    data = TensorDataSource({"train": _tensors(6)}, batch_size=2, seed=3)
    config = {"model": TINY_MSEG, "batch_size": 2, "checkpoint_every": 100, "evaluate_test": False, **QUIET}
    run = tmp_path / "run"
    train_mseg(MSegTrainConfig(out=str(run), max_steps=3, **config), data)
    for path in (run / "checkpoints" / "last.pt", run / "mseg.safetensors", run / "metrics.json"):
        path.unlink()  # what a kill before the first checkpoint leaves: the log of steps that are lost
    assert (run / "log.jsonl").is_file()
    train_mseg(MSegTrainConfig(out=str(run), max_steps=2, resume=resume, **config), data)
    assert "from step 0: the earlier run there stopped before its first checkpoint" in capsys.readouterr().err
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    restart = next(k for k, r in enumerate(records) if r.get("event") == "restart")
    assert not any("event" not in r and r.get("step", 0) > 0 for r in records[:restart])  # lost steps dropped
    assert max(r["step"] for r in records if "event" not in r and "step" in r) == 2
    assert (run / "mseg.safetensors").is_file()


def test_a_learning_rate_given_on_resume_is_the_one_trained_with(tmp_path):
    """`--resume --lr 1e-9` recorded 1e-9 in config.json but trained on at the checkpoint's rate; milestones and
    decay likewise. The configured schedule now takes over from the step the run is at."""
    data = TensorDataSource({"train": _tensors(6)}, batch_size=2, seed=3)
    config = {"model": TINY_MSEG, "batch_size": 2, "checkpoint_every": 100, "evaluate_test": False, **QUIET}
    run = tmp_path / "run"
    train_mseg(MSegTrainConfig(out=str(run), max_steps=3, **config), data)
    before = load_training_state(run / "checkpoints" / "last.pt")
    slow = OptimizerConfig(learning_rate=1e-9, milestones=(4,), decay=0.5, betas=(0.9, 0.99))
    train_mseg(MSegTrainConfig(out=str(run), max_steps=5, resume=True, optimizer=slow, **config), data)
    after = load_training_state(run / "checkpoints" / "last.pt")
    group = after["optimizers"]["mseg"]["param_groups"][0]
    assert group["lr"] == pytest.approx(0.5e-9) and tuple(group["betas"]) == (0.9, 0.99)  # decayed at step 4
    moved = max(
        (after["networks"]["mseg"][k].float() - before["networks"]["mseg"][k].float()).abs().max().item()
        for k in before["networks"]["mseg"]
        if before["networks"]["mseg"][k].is_floating_point() and "running" not in k
    )
    assert moved < 1e-6  # two Adam steps of at most ~1e-9 each


def test_a_second_run_on_a_folder_being_trained_is_refused_before_it_writes(tmp_path):
    """Two runs on one folder (a --resume while it trains) both wrote it: the log held every line twice."""
    from m2u.core.inputs import OutputFolderError, output_lock

    data = TensorDataSource({"train": _tensors(6)}, batch_size=2, seed=3)
    config = {"model": TINY_MSEG, "batch_size": 2, "checkpoint_every": 100, "evaluate_test": False, **QUIET}
    run = tmp_path / "run"
    train_mseg(MSegTrainConfig(out=str(run), max_steps=2, **config), data)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with (
        output_lock(run, "m2u-train"),  # as the first run holds it while it trains
        pytest.raises(OutputFolderError, match="another m2u-train run is writing"),
    ):
        train_mseg(MSegTrainConfig(out=str(run), max_steps=4, resume=True, **config), data)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    # Before the first run's first checkpoint (its log there, no last.pt): still "another run is writing", not
    # "--resume has no checkpoint to continue from".
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "log.jsonl").write_text("")
    with (
        output_lock(fresh, "m2u-train"),
        pytest.raises(OutputFolderError, match="another m2u-train run is writing .*choose another `out`"),
    ):
        train_mseg(MSegTrainConfig(out=str(fresh), max_steps=4, resume=True, **config), data)
    train_mseg(MSegTrainConfig(out=str(run), max_steps=4, resume=True, **config), data)  # once it is done


@pytest.mark.parametrize("name", ["grids", "tensorboard", "checkpoints"])
def test_a_file_in_the_way_of_a_run_folder_is_refused_before_training(tmp_path, name):
    """A file named `grids` stopped the run at its first grid (step 1000 by default), every step lost."""
    data = TensorDataSource({"train": _tensors(6)}, batch_size=2, seed=3)
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_text("a person's")
    config = MSegTrainConfig(out=str(run), model=TINY_MSEG, batch_size=2, max_steps=2, grid_every=1, **QUIET)
    with pytest.raises(FileExistsError, match=f"{name} is in the way"):
        train_mseg(config, data)
    assert sorted(p.name for p in run.iterdir()) == [name]


def test_a_run_folder_inside_its_dataset_is_refused(tmp_path, tiny_dataset):
    spellings = [(str(tiny_dataset), tiny_dataset), (str(tiny_dataset), tiny_dataset / "train")]
    for data, out in [*spellings, (f"file://{tiny_dataset}", tiny_dataset)]:  # file:// slipped past
        config = MSegTrainConfig(data=data, out=str(out), model=TINY_MSEG, max_steps=1, **QUIET)
        with pytest.raises(FileExistsError, match="is inside the dataset"):
            train_mseg(config)
    for folder in (tiny_dataset, tiny_dataset / "train"):
        assert not (folder / "config.json").exists() and not (folder / ".m2u-train.lock").exists()


def test_a_damaged_or_foreign_checkpoint_is_one_clear_refusal(tmp_path):
    """A checkpoint without its step or RNG state, a list, another format, another run's networks, cut short:
    one sentence naming the file (KeyError, AttributeError, a size-mismatch page, or format 99 taken silently)."""
    from m2u.training.checkpoint import CheckpointError, save_training_state

    data = TensorDataSource({"train": _tensors(6)}, batch_size=2, seed=3)
    config = {"model": TINY_MSEG, "batch_size": 2, "checkpoint_every": 100, "evaluate_test": False, **QUIET}
    run = tmp_path / "run"
    train_mseg(MSegTrainConfig(out=str(run), max_steps=2, **config), data)
    wider = tmp_path / "wider"
    train_mseg(
        MSegTrainConfig(
            out=str(wider), max_steps=1, **{**config, "model": MSegConfig(base_channels=8, levels=3)}
        ),
        data,
    )
    path = run / "checkpoints" / "last.pt"
    good, good_bytes = load_training_state(path), path.read_bytes()
    advice = (
        f"; --resume cannot continue from it: put back an intact copy of {path}, or start a new run in another "
        f"folder from this run's model files (--set init_weights.mseg={run / 'mseg.safetensors'})"
    )
    cases = {
        "lacks rng": {k: v for k, v in good.items() if k != "rng"},
        "holds a list": [1, 2],
        "holds no task": {"step": 1},
        "step 2.5": {**good, "step": 2.5},
        "step -5": {**good, "step": -5},
        "of format 99": {**good, "format": 99},
        "does not fit this run's networks": load_training_state(wider / "checkpoints" / "last.pt"),
    }
    for said, state in cases.items():
        save_training_state(path, state)
        with pytest.raises(CheckpointError, match=said) as refused:
            train_mseg(MSegTrainConfig(out=str(run), max_steps=3, resume=True, **config), data)
        assert "\n" not in str(refused.value)
        # Each says what to do: the run's model files are still there to start from.
        assert str(refused.value).endswith(advice), said
    path.write_bytes(b"\x80\x02 not a checkpoint at all")
    with pytest.raises(CheckpointError, match="damaged or not a checkpoint m2u-train wrote") as refused:
        train_mseg(MSegTrainConfig(out=str(run), max_steps=3, resume=True, **config), data)
    assert "weights_only" not in str(refused.value)
    assert str(refused.value).endswith(advice)
    path.write_bytes(good_bytes[: len(good_bytes) // 2])  # cut short
    with pytest.raises(CheckpointError, match="damaged or not a checkpoint m2u-train wrote") as refused:
        train_mseg(MSegTrainConfig(out=str(run), max_steps=3, resume=True, **config), data)
    assert str(refused.value).endswith(advice)


def test_a_resume_says_where_it_continues_and_when_nothing_is_left(tmp_path, capsys):
    data = TensorDataSource({"train": _tensors(6)}, batch_size=2, seed=3)
    config = {"model": TINY_MSEG, "batch_size": 2, "checkpoint_every": 100, "evaluate_test": False, **QUIET}
    run = tmp_path / "run"
    train_mseg(MSegTrainConfig(out=str(run), max_steps=3, **config), data)
    capsys.readouterr()
    train_mseg(MSegTrainConfig(out=str(run), max_steps=4, resume=True, **config), data)
    assert f"m2u-train: resuming {run} at step 3 (epoch 0)\n" in capsys.readouterr().err
    train_mseg(MSegTrainConfig(out=str(run), max_steps=2, resume=True, **config), data)
    assert (
        f"m2u-train: {run} finished at step 4 (2 steps planned): nothing to train" in capsys.readouterr().err
    )
    finished = MSegTrainConfig(
        out=str(run), max_steps=None, epochs=1, resume=True, **config
    )  # 3 steps an epoch
    train_mseg(finished, data)
    assert f"{run} finished at step 4 (3 steps planned): nothing to train" in capsys.readouterr().err
    assert load_training_state(run / "checkpoints" / "last.pt")["step"] == 4
    # Stopped before its final records (killed in the final evaluation): the resume writes them.
    (run / "metrics.json").unlink()
    train_mseg(MSegTrainConfig(out=str(run), max_steps=2, resume=True, **config), data)
    assert "at step 4 (epoch 1): nothing left to train (2 steps planned); its final records" in (
        capsys.readouterr().err
    )
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4


def test_a_run_resumed_in_pieces_reports_its_whole_training_time(tmp_path):
    from m2u.training.checkpoint import save_training_state

    data = TensorDataSource({"train": _tensors(6)}, batch_size=2, seed=3)
    config = {"model": TINY_MSEG, "batch_size": 2, "checkpoint_every": 100, "evaluate_test": False, **QUIET}
    first = train_mseg(MSegTrainConfig(out=str(tmp_path / "a"), max_steps=2, **config), data)
    checkpoint = tmp_path / "a" / "checkpoints" / "last.pt"
    state = load_training_state(checkpoint)
    assert state["seconds"] > 0 and first["seconds"] == pytest.approx(state["seconds"], abs=0.5)
    # As if the first piece had trained for an hour: the second piece adds its own time to that.
    save_training_state(checkpoint, {**state, "seconds": 3600.0})
    resumed = train_mseg(MSegTrainConfig(out=str(tmp_path / "a"), max_steps=4, resume=True, **config), data)
    assert resumed["steps"] == 4
    assert resumed["seconds"] == pytest.approx(3600.0 + resumed["seconds_this_process"], abs=1e-2)
    # The last checkpoint (written before the final validation) carries the sum on to a third piece.
    assert 3600.0 < load_training_state(checkpoint)["seconds"] <= resumed["seconds"]


def test_m2u_train_names_the_options_of_the_non_finite_loss_advice_as_its_own(
    tmp_path, tiny_dataset, monkeypatch
):
    """The advice named --lr in the library's message, which m2u-pipeline said too (its users give `mseg.lr`): the
    message names settings by their config keys, and m2u-train says them as its options."""
    import m2u.training.trainer as trainer

    config = MSegTrainConfig(
        out=str(tmp_path / "run"),
        model=TINY_MSEG,
        batch_size=2,
        checkpoint_every=2,
        precision="bf16",
        **QUIET,
    )
    with pytest.raises(NonFiniteLossError) as stopped:  # the loop's own error, advice and all
        train_mseg(config, _PoisonedSource(poison_at=2))
    error = stopped.value

    def failing(config):
        raise error

    monkeypatch.setattr(trainer, "train_mseg", failing)
    args = ["mseg", "--data", str(tiny_dataset), "-o", str(tmp_path / "other"), "--workers", "0", "-q"]
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == 1, result.output
    assert "(step 2): resume it with a lower --lr or --precision fp32 (resumed as it is, the run repeats" in (
        result.output
    )
    assert "`" not in result.output


class _PoisonedSource:
    """Clean batches, then NaN inputs from batch `poison_at` on."""

    def __init__(self, poison_at: int) -> None:
        self.poison_at = poison_at
        self.tensors = _tensors(2)

    def batches(self, split: str, epoch: int):
        for index in range(6 if split == "train" else 1):
            batch = {name: value.clone() for name, value in self.tensors.items()}
            if split == "train" and index >= self.poison_at:
                batch["masked"][:] = float("nan")
            yield batch


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = MSegTrainConfig(
        out=str(tmp_path), model=TINY_MSEG, batch_size=2, checkpoint_every=2, precision="fp32", **QUIET
    )
    with pytest.raises(NonFiniteLossError, match=r"step 3.*last good checkpoint.*step 2") as stopped:
        train_mseg(config, _PoisonedSource(poison_at=2))
    # It says what to do (a resume as it is repeats the same steps), the settings by their config keys.
    assert str(stopped.value).endswith(
        "(step 2): resume it with a lower `optimizer.learning_rate` (resumed as it is, the run repeats the same "
        "steps)"
    )
    fresh = tmp_path / "fresh"
    with pytest.raises(
        NonFiniteLossError,
        match=r"written yet: run it again with a lower `optimizer.learning_rate` or `precision` fp32$",
    ):
        train_mseg(
            dataclasses.replace(config, out=str(fresh), precision="bf16"), _PoisonedSource(poison_at=0)
        )
    state = load_training_state(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 2
    weights = state["networks"]["mseg"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert _states_equal(load_model(tmp_path / "mseg.safetensors").module.state_dict(), weights)
    assert not (tmp_path / "metrics.json").exists()
    events = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "non_finite_loss"


def test_weights_that_overflow_while_the_losses_stay_finite_stop_the_run(tmp_path):
    """--lr 1e12: the losses stay finite (1e23) while an update leaves NaN weights; the run stops instead of
    writing a model no m2u tool loads."""
    config = MSegTrainConfig(
        out=str(tmp_path),
        model=TINY_MSEG,
        batch_size=2,
        optimizer=OptimizerConfig(learning_rate=1e12),
        **QUIET,
    )
    data = TensorDataSource({"train": _tensors(6)}, batch_size=2, seed=3)
    with pytest.raises(
        NonFiniteLossError, match=r"mseg network's weights became NaN or infinite by step \d+"
    ):
        train_mseg(dataclasses.replace(config, max_steps=12), data)
    assert not (tmp_path / "mseg.safetensors").exists() and not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize(
    "bad",
    [
        {"decay": -1.0},
        {"decay": 0.0},
        {"decay": float("nan")},
        {"milestones": (-5,)},
        {"betas": ()},  # an IndexError inside torch's Adam
        {"betas": (1.5, 0.9)},  # torch's "Invalid beta parameter at index 0", naming no setting
        {"betas": (0.9, float("nan"))},
    ],
)
def test_a_learning_rate_schedule_that_would_reverse_training_is_refused(bad):
    with pytest.raises(
        ValueError, match="decay must be a number in|milestones must be steps|betas must be two"
    ):
        OptimizerConfig(**bad)


def test_bf16_autocast_and_channels_last_train_the_gan(tmp_path):
    data = TensorDataSource({"train": _tensors(4), "val": _tensors(2, seed=1)}, batch_size=2)
    results = train_gan(_gan_config(tmp_path, max_steps=2, precision="bf16", channels_last=True), data)
    assert results["steps"] == 2
    assert 0 < results["val"]["psnr"] < 100 and -1 <= results["val"]["ssim"] <= 1
    # The composite keeps visible pixels: it is never worse than the raw output outside the mask.
    assert results["val"]["psnr"] >= results["val"]["psnr_raw_output"] - 1e-6
    grids = sorted((tmp_path / "grids").glob("*.png"))
    assert grids, "a final grid is written"
    from PIL import Image

    grid = Image.open(grids[-1])
    # A labelled header (masked | mask | output | ground truth) over 2 rows of 32 px samples.
    assert grid.size == (4 * 32, 18 + 2 * 32)
    header = np.asarray(grid.convert("L"))[:18]
    assert (header > 200).sum() > 20 and (header == 48).mean() > 0.5  # white text on the dark strip


def test_gan_with_mseg_masks_and_wall_clock_budget(tmp_path):
    data = TensorDataSource({"train": _tensors(4), "val": _tensors(2, seed=1)}, batch_size=2)
    train_mseg(
        MSegTrainConfig(out=str(tmp_path / "mseg"), model=TINY_MSEG, batch_size=2, max_steps=1, **QUIET), data
    )
    results = train_gan(
        _gan_config(
            tmp_path / "gan", mask_source="mseg", mseg_checkpoint=str(tmp_path / "mseg" / "mseg.safetensors"),
            max_seconds=0.0, perceptual_weight=0.0, vgg_weights="imagenet",  # weight 0: VGG never loaded
        ),
        data,
    )  # fmt: skip
    assert results["stop_reason"] == "max_seconds" and results["steps"] == 1
    assert "mseg_dice" in results["val"]


def test_a_gan_resume_refuses_a_frozen_mseg_changed_since_the_run_began(tmp_path):
    """The checkpoint does not hold the frozen M-Seg: a resume reads its file again. Another file there (a package
    reinstalled at the path) is refused in one sentence before anything is written; the same file resumes."""
    from m2u.core.fileio import content_digest

    data = TensorDataSource({"train": _tensors(4)}, batch_size=2)
    mseg = tmp_path / "mseg" / "mseg.safetensors"
    train_mseg(
        MSegTrainConfig(out=str(mseg.parent), model=TINY_MSEG, batch_size=2, max_steps=1, **QUIET), data
    )
    original = mseg.read_bytes()
    config = _gan_config(
        tmp_path / "gan", mask_source="mseg", mseg_checkpoint=str(mseg), max_steps=1, perceptual_weight=0.0,
        vgg_weights="imagenet",
    )  # fmt: skip
    train_gan(config, data)
    info = load_model(tmp_path / "gan" / "generator.safetensors")[1]
    assert info.provenance["mseg_sha256"] == content_digest(mseg)
    train_mseg(
        MSegTrainConfig(
            out=str(tmp_path / "other"), model=TINY_MSEG, batch_size=2, max_steps=1, seed=7, **QUIET
        ),
        data,
    )
    mseg.write_bytes((tmp_path / "other" / "mseg.safetensors").read_bytes())  # reinstalled
    before = (tmp_path / "gan" / "config.json").read_bytes()
    resumed = dataclasses.replace(config, max_steps=2, resume=True)
    with pytest.raises(
        CheckpointError, match=r"^resume: the frozen M-Seg .* is not the file this run began with"
    ):
        train_gan(resumed, data)
    assert (tmp_path / "gan" / "config.json").read_bytes() == before
    mseg.write_bytes(original)
    assert train_gan(resumed, data)["steps"] == 2
    # Moved: the error says which file and what to do; the same file at its new path resumes.
    moved = tmp_path / "moved.safetensors"
    mseg.rename(moved)
    with pytest.raises(
        CheckpointError, match=r"^the frozen M-Seg \(`mseg_checkpoint`.*not found.*give its new path"
    ):
        train_gan(dataclasses.replace(resumed, max_steps=3), data)
    # A copy cut short at its path is not said to be moved: what is wrong with it, and what to give instead.
    mseg.write_bytes(original[: len(original) // 2])
    with pytest.raises(CheckpointError, match=r"cut short or of another format; give a whole copy") as cut:
        train_gan(dataclasses.replace(resumed, max_steps=3), data)
    assert "give its new path" not in str(cut.value)
    assert (
        train_gan(dataclasses.replace(resumed, max_steps=3, mseg_checkpoint=str(moved)), data)["steps"] == 3
    )


def test_a_frozen_mseg_trained_at_another_size_is_warned_about(tmp_path):
    small = TensorDataSource({"train": _tensors(4)}, batch_size=2)
    train_mseg(
        MSegTrainConfig(out=str(tmp_path / "mseg"), model=TINY_MSEG, batch_size=2, max_steps=1, **QUIET),
        small,
    )
    bigger = {name: torch.nn.functional.interpolate(t, scale_factor=2.0) for name, t in _tensors(4).items()}
    config = _gan_config(
        tmp_path / "gan", mask_source="mseg", mseg_checkpoint=str(tmp_path / "mseg" / "mseg.safetensors"),
        max_steps=1, perceptual_weight=0.0, vgg_weights="imagenet",
    )  # fmt: skip
    with pytest.warns(UserWarning, match=r"trained on 32 px crops, this dataset's are 64 px"):
        train_gan(config, TensorDataSource({"train": bigger}, batch_size=2))


@pytest.mark.slow
def test_torch_compile_trains_on_cpu(tmp_path):
    data = TensorDataSource({"train": _tensors(4)}, batch_size=2)
    config = MSegTrainConfig(
        out=str(tmp_path), model=TINY_MSEG, batch_size=2, max_steps=2, compile=True, **QUIET
    )
    results = train_mseg(config, data)
    assert results["steps"] == 2
    assert load_model(tmp_path / "mseg.safetensors").module.config == TINY_MSEG


def test_cli_trains_mseg_then_gan_on_a_synthetic_dataset(tmp_path, monkeypatch):
    from m2u.datasets import write_synthetic_dataset

    data_dir = tmp_path / "data"
    write_synthetic_dataset(data_dir, 12, size=32, seed=0, split=(0.5, 0.25, 0.25))
    runner = CliRunner()
    common = [
        "--data",
        str(data_dir),
        "--batch-size",
        "2",
        "--max-steps",
        "2",
        "--num-workers",
        "0",
        "--no-progress",
    ]
    result = runner.invoke(
        train_main,
        ["mseg", *common, "--out", str(tmp_path / "mseg"), "--base-channels", "4", "--levels", "3"],
    )
    assert result.exit_code == 0, result.output
    mseg_results = json.loads((tmp_path / "mseg" / "metrics.json").read_text())
    assert set(mseg_results["test"]) == {"dice", "pixel_accuracy"}
    gan_args = [
        "gan", *common, "--out", str(tmp_path / "gan"), "--mseg", str(tmp_path / "mseg" / "mseg.safetensors"),
        "--width-multiplier", "0.125", "--stages", "3", "--no-channel-attention", "--hole-grow", "1",
    ]  # fmt: skip

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    refused = runner.invoke(train_main, gan_args)
    assert refused.exit_code != 0 and "--vgg-weights" in refused.output
    assert not (tmp_path / "gan" / "checkpoints").exists()
    result = runner.invoke(train_main, [*gan_args, "--vgg-weights", "random"])
    assert result.exit_code == 0, result.output
    generator = load_model(tmp_path / "gan" / "generator.safetensors").module
    assert generator.config.stages == 3 and not generator.config.channel_attention
    assert json.loads((tmp_path / "gan" / "config.json").read_text())["hole_grow_px"] == 1
    log = [json.loads(line) for line in (tmp_path / "gan" / "log.jsonl").read_text().splitlines()]
    assert {"val", "test"} <= {record.get("split") for record in log}
    assert any((tmp_path / "gan" / "tensorboard").iterdir())
    missing = runner.invoke(train_main, ["gan", *common, "--out", str(tmp_path / "x")])
    # The option the user gives, not the config field behind it (mseg_checkpoint)
    assert missing.exit_code == 2 and "--mseg: an M-Seg model file is needed" in missing.output
    assert "mseg_checkpoint" not in missing.output


def test_a_gan_on_the_datasets_masks_says_it_does_not_read_the_given_mseg_file(tmp_path):
    config = _gan_config(
        tmp_path, max_steps=1, mask_source="gt", mseg_checkpoint=str(tmp_path / "typo.safetensors")
    )
    with pytest.warns(
        UserWarning, match=r"`mseg_checkpoint` .*typo\.safetensors not read: with `mask_source` 'gt'"
    ):
        GanTask(config, torch.device("cpu"), DistributedContext())


def test_an_empty_validation_split_is_said_once_not_passed_over(tmp_path):
    from m2u.datasets import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data", 8, size=32, seed=0, split=(0.75, 0.0, 0.25))
    args = ["mseg", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--max-steps", "2"]
    args += ["--batch-size", "2", "--num-workers", "0", "--no-progress", "--val-every", "1"]
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("the dataset's val split has no samples: no val figures") == 1
    assert "test split" not in result.stderr  # the test split has samples
    events = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [e["split"] for e in events if e.get("event") == "empty_split"] == ["val"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val"] == {} and metrics["test"]


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_identical_weights(tmp_path):
    mp.spawn(
        training_ddp_worker.ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert rank0["schedule.milestones"].tolist() == [25_000, 37_500, 45_000]  # 50k/75k/90k on 2 ranks
    # Training moved the weights away from rank 0's initialisation (the exported files are rank 0's).
    seed_everything(0)
    initial = GanTask(
        _gan_config(tmp_path / "unused", max_steps=1), torch.device("cpu"), DistributedContext()
    ).networks["generator"]
    assert any(not torch.equal(v, rank0[f"generator.{k}"]) for k, v in initial.named_parameters())
    assert (tmp_path / "run" / "generator.safetensors").exists()


@pytest.mark.slow
def test_torchrun_launches_the_cli_on_two_cpu_processes(tmp_path):
    # The README's torchrun command, on CPU (gloo) at a tiny size: ranks from torchrun's environment, one run.
    import subprocess

    from m2u.datasets import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data", 16, size=32, seed=0, split=(0.5, 0.25, 0.25))
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "m2u.training.cli", "gan"]
    command += ["--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--mask-source", "gt"]
    command += ["--vgg-weights", "random", "--width-multiplier", "0.125", "--stages", "3", "--max-steps", "3"]
    command += [
        "--batch-size",
        "2",
        "--num-workers",
        "0",
        "--no-progress",
        "--val-every",
        "0",
        "--device",
        "cpu",
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 3 and metrics["stop_reason"] == "max_steps"
    assert (tmp_path / "run" / "generator.safetensors").exists()


def test_cli_takes_a_config_file_and_set_overrides_and_names_a_bad_key(tmp_path):
    from m2u.datasets import write_synthetic_dataset

    data_dir = tmp_path / "data"
    write_synthetic_dataset(data_dir, 8, size=32, seed=0, split=(0.5, 0.25, 0.25))
    config_file = tmp_path / "mseg.yaml"
    config_file.write_text(
        f"data: {data_dir}\nbatch_size: 2\nmax_steps: 3\nnum_workers: 0\nprogress: false\nevaluate_test: false\n"
        "model: {base_channels: 4, levels: 3}\noptimizer: {decay: 0.5}\n"
    )
    runner = CliRunner()
    out = tmp_path / "run"
    # precedence: file < options given on the command line < --set
    args = ["mseg", str(config_file), "-o", str(out), "--max-steps", "2", "--set", "model.base_channels=2"]
    result = runner.invoke(train_main, [*args, "--set", "seed=7"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["max_steps"] == 2 and saved["seed"] == 7 and saved["batch_size"] == 2
    assert saved["model"]["base_channels"] == 2 and saved["model"]["levels"] == 3
    assert saved["optimizer"]["decay"] == 0.5 and saved["optimizer"]["learning_rate"] == 1e-3
    assert load_model(out / "mseg.safetensors").module.config.base_channels == 2

    bad_set = runner.invoke(
        train_main, ["mseg", str(config_file), "-o", str(tmp_path / "b"), "--set", "model.widht=3"]
    )
    assert bad_set.exit_code == 2 and "'model.widht'" in bad_set.output and "Traceback" not in bad_set.output
    config_file.write_text(f"data: {data_dir}\nbatchsize: 2\n")
    bad_file = runner.invoke(train_main, ["mseg", str(config_file), "-o", str(tmp_path / "c")])
    assert bad_file.exit_code == 2 and "'batchsize'; did you mean 'batch_size'?" in bad_file.output
    config_file.write_text("base: &b 1\nseed: *b\n")
    alias = runner.invoke(train_main, ["mseg", str(config_file), "-o", str(tmp_path / "d")])
    assert alias.exit_code == 2 and "aliases" in alias.output
    no_data = runner.invoke(train_main, ["mseg", "-o", str(tmp_path / "e")])
    assert no_data.exit_code == 2 and "--data" in no_data.output
    assert not any((tmp_path / name).exists() for name in "bcde")


def test_resume_says_which_run_a_folder_holds_and_when_there_is_none(tmp_path, tiny_dataset):
    gan_run = tmp_path / "gan_run"
    gan_run.mkdir()
    (gan_run / "config.json").write_text(json.dumps({"adversarial_weight": 1.0, "batch_size": 2}))
    result = CliRunner().invoke(train_main, ["mseg", "--out", str(gan_run), "--resume"])
    assert result.exit_code == 2 and "holds a run of m2u-train gan, not of this command" in result.output
    # A run of this command whose config.json has an option this m2u does not know (an older m2u's name):
    # said so, not "a run of m2u-train another ... resume it with m2u-train another".
    for config in ({"threshold": 0.5, "batch_size": 2}, {"bare_face_share": 0.1, "threshold": 0.5}):
        (gan_run / "config.json").write_text(json.dumps(config))
        result = CliRunner().invoke(train_main, ["mseg", "--out", str(gan_run), "--resume"])
        assert (
            result.exit_code == 2 and "has options m2u-train mseg does not know (threshold)" in result.output
        )
        assert "m2u-train another" not in result.output

    fresh = tmp_path / "fresh"
    args = ["mseg", "--data", str(tiny_dataset), "--out", str(fresh), "--resume", "--max-steps", "1"]
    result = CliRunner().invoke(
        train_main, [*args, "--batch-size", "2", "--workers", "0", "--levels", "2", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert f"--resume: no run in {fresh} yet (no config.json); starting one" in result.output
    # Without --data there is nothing to start: said as that, not "--data may be left out with --resume".
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(train_main, ["mseg", "--out", str(empty), "--resume"])
    assert result.exit_code == 2 and "starting one" not in result.output
    assert (
        f"--resume: no run in {empty} to continue (no config.json); give --data to start one" in result.output
    )
    # A damaged config.json is refused as a bad value in it is (exit 2; it was 1, "some inputs failed")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text("{not json")
    result = CliRunner().invoke(train_main, ["mseg", "--out", str(damaged), "--resume"])
    assert result.exit_code == 2 and "(the run's saved config) cannot be read" in result.output
    # --print-config said nothing of it: it printed a config with `data: ''` (rc 0) that could not train
    result = CliRunner().invoke(train_main, ["mseg", "--out", str(empty), "--resume", "--print-config"])
    assert result.exit_code == 2 and "data: ''" not in result.output
    assert f"--resume: no run in {empty} to continue" in result.output


def test_a_run_started_with_relative_paths_resumes_from_another_folder(tmp_path, tiny_dataset, monkeypatch):
    """config.json kept `--data ds` as typed: `--out ../run --resume` from a subfolder found no dataset."""
    import shutil

    shutil.copytree(tiny_dataset, tmp_path / "ds")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    common = ["--batch-size", "2", "--workers", "0", "--levels", "2", "--base-channels", "4", "-q"]
    first = CliRunner().invoke(
        train_main, ["mseg", "--data", "ds", "--out", "run", "--max-steps", "1", *common]
    )
    assert first.exit_code == 0, first.output
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"] == str(tmp_path / "ds")
    monkeypatch.chdir(tmp_path / "sub")
    resumed = CliRunner().invoke(
        train_main, ["mseg", "--out", "../run", "--resume", "--max-steps", "2", "-q"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert load_training_state(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 2


class _LengthUnknown(TensorDataSource):
    """A source that does not say its epoch's length (a stream): an empty split is found by training."""

    def steps_per_epoch(self, split):
        return None


def test_a_batch_size_the_training_split_cannot_fill_is_refused_before_the_run_begins(tmp_path, tiny_dataset):
    """It was found after the first epoch and ended as a failure (exit 1): "gave no batch (fewer samples per rank
    than the batch size 32?)"."""
    from m2u.core.errors import SettingError

    data = TensorDataSource({"train": _tensors(2)}, batch_size=4)  # drop_last: no full batch at all
    config = MSegTrainConfig(out=str(tmp_path / "run"), model=TINY_MSEG, batch_size=4, max_steps=2, **QUIET)
    with pytest.raises(SettingError, match="^batch_size: 4 is more than the training data holds per process"):
        train_mseg(config, data)
    assert not (tmp_path / "run").exists()
    out = tmp_path / "cli-run"
    args = ["mseg", "--data", str(tiny_dataset), "--out", str(out), "--batch-size", "1000", "--workers", "0"]
    result = CliRunner().invoke(train_main, [*args, "--levels", "2", "-q"])
    assert result.exit_code == 2 and not out.exists(), result.output
    assert f"--batch-size: 1000 is more than the training split of {tiny_dataset} holds" in result.output


def test_a_data_source_of_another_batch_size_than_the_configs_is_refused_before_the_run_begins(tmp_path):
    """train_mseg and train_gan trained on the source's batches of 2 while the checkpoint, config.json and the
    resume checks said the config's 8. Now refused in one line naming both, nothing written; augmentation keeps
    the wrapped source's size."""
    from m2u.core.errors import SettingError
    from m2u.datasets.augment import AugmentConfig

    data = TensorDataSource({"train": _tensors(4)}, batch_size=2)
    mseg = MSegTrainConfig(out=str(tmp_path / "mseg"), model=TINY_MSEG, max_steps=1, **QUIET)
    said = r"^batch_size: 8, but the data source gives batches of 2: "
    with pytest.raises(SettingError, match=said) as refused:
        train_mseg(mseg, data)
    assert "\n" not in str(refused.value)
    with pytest.raises(SettingError, match=said):
        train_mseg(dataclasses.replace(mseg, augment=AugmentConfig(enabled=True)), data)
    with pytest.raises(SettingError, match=said):
        train_gan(_gan_config(tmp_path / "gan", batch_size=8, max_steps=1), data)
    assert not (tmp_path / "mseg").exists() and not (tmp_path / "gan").exists()


def test_a_run_that_never_got_a_batch_leaves_no_run_behind(tmp_path):
    from m2u.training.guards import EmptySplitError

    data = _LengthUnknown({"train": _tensors(2)}, batch_size=4)  # drop_last: no full batch at all
    config = MSegTrainConfig(out=str(tmp_path / "run"), model=TINY_MSEG, batch_size=4, max_steps=2, **QUIET)
    with pytest.raises(EmptySplitError, match="gave no batch"):
        train_mseg(config, data)
    assert not (tmp_path / "run").exists()  # made by this run, holding only what it wrote: gone
    # A folder that was there before keeps what it held; only the run's own config.json goes.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a person's")
    with pytest.raises(EmptySplitError):
        train_mseg(dataclasses.replace(config, out=str(mine)), data)
    assert sorted(p.name for p in mine.iterdir() if p.name != ".m2u-written") == ["notes.txt"]


class _SignalledAt(TensorDataSource):
    """Sends this process `times` Ctrl-Cs as the training batch number `at` (from 1) is handed to the loop."""

    def __init__(self, *args, at: int, times: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.at, self.times, self.handed = at, times, 0

    def batches(self, split, epoch):
        import os
        import signal

        if (
            self.at == 0 and split == "train"
        ):  # while the epoch's batches are set up, before a step is under way
            os.kill(os.getpid(), signal.SIGINT)
        return self._handed_out(split, epoch)

    def _handed_out(self, split, epoch):
        import os
        import signal

        for batch in super().batches(split, epoch):
            if split == "train":
                self.handed += 1
                if self.handed == self.at:
                    for _ in range(self.times):
                        os.kill(os.getpid(), signal.SIGINT)
            yield batch


def test_ctrl_c_stops_after_the_step_with_its_checkpoint_and_resume_is_exact(tmp_path):
    """Ctrl-C while a step's batch is fetched: that step finishes, its checkpoint is written (none was due: every
    100 steps), and the resumed run ends with the weights of a straight one."""
    config = {"model": TINY_MSEG, "batch_size": 2, "checkpoint_every": 100, "evaluate_test": False, **QUIET}
    straight = TensorDataSource({"train": _tensors(6)}, batch_size=2, seed=3)
    train_mseg(MSegTrainConfig(out=str(tmp_path / "a"), max_steps=6, **config), straight)
    stopped = _SignalledAt({"train": _tensors(6)}, batch_size=2, seed=3, at=3)
    with pytest.raises(
        KeyboardInterrupt, match="checkpoint of step 3 in .*: resuming the run continues from it"
    ):
        train_mseg(MSegTrainConfig(out=str(tmp_path / "b"), max_steps=6, **config), stopped)
    assert load_training_state(tmp_path / "b" / "checkpoints" / "last.pt")["step"] == 3
    events = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert {"event": "stopped", "by": "Ctrl-C", "step": 3}.items() <= events[-1].items()
    resumed = TensorDataSource({"train": _tensors(6)}, batch_size=2, seed=3)
    train_mseg(MSegTrainConfig(out=str(tmp_path / "b"), max_steps=6, resume=True, **config), resumed)
    a = load_training_state(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_training_state(tmp_path / "b" / "checkpoints" / "last.pt")
    assert _states_equal(a["networks"], b["networks"]) and _states_equal(a["optimizers"], b["optimizers"])
    import signal

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the loop's deferral is undone


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    config = {"model": TINY_MSEG, "batch_size": 2, "checkpoint_every": 100, "evaluate_test": False, **QUIET}
    insisted = _SignalledAt({"train": _tensors(6)}, batch_size=2, seed=3, at=3, times=2)
    with pytest.raises(KeyboardInterrupt) as stopped:
        train_mseg(MSegTrainConfig(out=str(tmp_path / "b"), max_steps=6, **config), insisted)
    assert str(stopped.value) == ""  # raised where it landed, nothing written for it
    assert not (tmp_path / "b" / "checkpoints" / "last.pt").exists()


def test_ctrl_c_in_the_last_step_stops_with_its_checkpoint_before_the_final_evaluation(tmp_path):
    """The stop was ignored: the final evaluation ran and the command exited 0. The run resumed later does only
    what was left, the final evaluation."""
    config = {"model": TINY_MSEG, "batch_size": 2, "checkpoint_every": 100, "evaluate_test": False, **QUIET}
    last = _SignalledAt({"train": _tensors(6)}, batch_size=2, seed=3, at=4)
    run = MSegTrainConfig(out=str(tmp_path / "b"), max_steps=4, **config)
    with pytest.raises(KeyboardInterrupt, match="checkpoint of step 4"):
        train_mseg(run, last)
    assert not (tmp_path / "b" / "metrics.json").exists()
    results = train_mseg(
        dataclasses.replace(run, resume=True), TensorDataSource({"train": _tensors(6)}, 2, seed=3)
    )
    assert results["steps"] == 4 and (tmp_path / "b" / "metrics.json").exists()


def test_a_stop_before_the_first_step_leaves_no_run(tmp_path, capfd):
    config = {"model": TINY_MSEG, "batch_size": 2, "checkpoint_every": 100, "evaluate_test": False, **QUIET}
    first = _SignalledAt({"train": _tensors(6)}, batch_size=2, seed=3, at=0)
    with pytest.raises(KeyboardInterrupt) as stopped:
        train_mseg(MSegTrainConfig(out=str(tmp_path / "new"), max_steps=4, **config), first)
    assert str(stopped.value) == "" and not (tmp_path / "new").exists()
    assert "Ctrl-C: stopping once the training step under way is done" in capfd.readouterr().err


def test_weights_gone_non_finite_at_the_stop_are_said_not_checkpointed(tmp_path, monkeypatch):
    from m2u.training.mseg_task import MSegTask

    config = {"model": TINY_MSEG, "batch_size": 2, "checkpoint_every": 100, "evaluate_test": False, **QUIET}
    stopped_at = _SignalledAt({"train": _tensors(6)}, batch_size=2, seed=3, at=3)

    def diverged(self, step):
        if step >= 3:
            raise NonFiniteLossError(f"non-finite weights after step {step}")

    monkeypatch.setattr(MSegTask, "check_finite_state", diverged)
    quiet = {**config, "log_every": 100}  # no check after each step: the stop's own finds the divergence
    with pytest.raises(KeyboardInterrupt, match="^no checkpoint written: non-finite weights after step 3"):
        train_mseg(MSegTrainConfig(out=str(tmp_path / "b"), max_steps=6, **quiet), stopped_at)
    assert not (tmp_path / "b" / "checkpoints" / "last.pt").exists()


def test_one_host_collective_per_training_step(tmp_path, monkeypatch):
    """Ranks agree on stopping, on a batch being left and on time being left in one collective per step (there
    were two: the stop check, then the batch and time flags)."""
    calls = []
    original = DistributedContext.all_true

    def counted(self, *flags):
        calls.append(len(flags))
        return original(self, *flags)

    monkeypatch.setattr(DistributedContext, "all_true", counted)
    config = {"model": TINY_MSEG, "batch_size": 2, "checkpoint_every": 100, "evaluate_test": False, **QUIET}
    data = TensorDataSource({"train": _tensors(6)}, batch_size=2, seed=3)
    result = train_mseg(MSegTrainConfig(out=str(tmp_path / "a"), max_steps=6, **config), data)
    assert result["steps"] == 6
    # 6 steps over two epochs of 3 batches: a collective per step, one at the first epoch's end, one at the finish.
    assert len(calls) <= 6 + 2, calls


def test_a_stop_on_another_rank_reaches_this_one_in_the_steps_collective(tmp_path, monkeypatch):
    """The step's one collective carries the stop flag: when another rank was asked to stop (its flag False in the
    reduction), this rank stops after the same step, with its checkpoint, and trains no further batch."""
    from m2u.core.guard import Terminated

    calls = []
    original = DistributedContext.all_true

    def another_rank_stops_at_the_fourth(self, *flags):
        calls.append(flags)
        result = original(self, *flags)
        return (False, *result[1:]) if len(calls) == 4 and len(flags) == 3 else result

    monkeypatch.setattr(DistributedContext, "all_true", another_rank_stops_at_the_fourth)
    config = {"model": TINY_MSEG, "batch_size": 2, "checkpoint_every": 100, "evaluate_test": False, **QUIET}
    data = TensorDataSource({"train": _tensors(6)}, batch_size=2, seed=3)
    with pytest.raises(Terminated, match="checkpoint of step 3"):
        train_mseg(MSegTrainConfig(out=str(tmp_path / "a"), max_steps=6, **config), data)
    assert load_training_state(tmp_path / "a" / "checkpoints" / "last.pt")["step"] == 3


def test_refusals_name_the_options_the_user_gave(tmp_path, tiny_dataset):
    """A GAN without --mseg said "invalid value under the top level: mask_source 'mseg' needs an M-Seg model file
    (mseg_checkpoint)", and a network too large for memory printed its whole config dataclass."""
    base = ["gan", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), "--vgg-weights", "random"]
    result = CliRunner().invoke(train_main, base)
    assert result.exit_code == 2 and "under the top level" not in result.output, result.output
    assert "Error: --mseg: an M-Seg model file is needed where --mask-source is 'mseg'" in result.output
    result = CliRunner().invoke(train_main, [*base, "--mask-source", "gt", "--width-multiplier", "1e6"])
    assert result.exit_code == 2 and "GeneratorConfig(" not in result.output, result.output
    assert "the generator (--width-multiplier 1000000.0) has" in result.output
    assert not (tmp_path / "run").exists()
