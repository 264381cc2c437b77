"""`val_batches` N under DDP: the ranks together evaluate the first N batches one process evaluates, the same
samples and so the same figures, whatever the number of ranks (it counted batches per rank: 2 ranks read 2N)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from m2u.training.config import MSegTrainConfig
from m2u.training.data import AugmentedSource, ShardDataSource, TensorDataSource
from m2u.training.distributed import DistributedContext
from m2u.training.loop import Trainer


class _KeyTask:
    """A task whose only figure is each sample's mean pixel, and which records the samples it evaluated."""

    name = "keys"
    networks: dict = {}
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.keys: list[str] = []

    def set_train(self, mode: bool) -> None:
        pass

    def eval_metric_names(self) -> tuple[str, ...]:
        return ("mean",)

    def eval_batch(self, batch: dict) -> dict[str, tuple[float, int]]:
        self.keys.extend(batch["key"])
        masked = batch["masked"].float()
        return {"mean": (float(masked.mean(dim=(1, 2, 3)).sum()), masked.shape[0])}


class _OneRankOf(DistributedContext):
    """Rank `rank` of `world_size`, in this process: the all-reduce is left to the test, which adds the ranks."""

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        self.sent = values.clone()
        return values

    def share_buffers(self, module: torch.nn.Module) -> None:
        pass


def _evaluate(make_source, world_size: int, val_batches: int | None, out: Path) -> tuple[list[str], float]:
    """The keys the ranks evaluated and the figure the all-reduce of their sums gives."""
    keys, total = [], torch.zeros(1, 2, dtype=torch.float64)
    for rank in range(world_size):
        task, dist = _KeyTask(), _OneRankOf(rank, world_size)
        config = MSegTrainConfig(out=str(out / f"{world_size}-{rank}"), batch_size=2, progress=False)
        Trainer(task, make_source(rank, world_size), config, dist).evaluate("val", val_batches)  # type: ignore[arg-type]
        keys += task.keys
        total += dist.sent
    return sorted(keys), float(total[0, 0] / total[0, 1])


def _tensors(count: int) -> dict[str, torch.Tensor]:
    images = torch.rand(count, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return {"masked": images, "unmasked": images, "mask": torch.zeros(count, 1, 8, 8)}


@pytest.fixture(scope="module")
def val_in_three_shards(tmp_path_factory) -> Path:
    from m2u.datasets import write_synthetic_dataset

    out = tmp_path_factory.mktemp("data")
    # val: 9 samples in shards of 3, so a rank's even run starts inside a shard.
    write_synthetic_dataset(out, 28, size=32, seed=0, split=(0.5, 0.25, 0.25), shard_size=3)
    return out


def _sources(dataset: Path) -> dict:
    return {
        "tensors": lambda rank, world: TensorDataSource(
            {"val": _tensors(7)}, batch_size=2, rank=rank, world_size=world
        ),
        "shards": lambda rank, world: ShardDataSource(
            str(dataset), batch_size=2, num_workers=0, rank=rank, world_size=world
        ),
        "augmented shards": lambda rank, world: AugmentedSource(
            ShardDataSource(str(dataset), batch_size=2, num_workers=0, rank=rank, world_size=world), None
        ),
    }


@pytest.mark.parametrize("kind", ["tensors", "shards", "augmented shards"])
@pytest.mark.parametrize("val_batches", [1, 2, 3, None])
def test_ranks_together_evaluate_the_samples_one_process_evaluates(
    tmp_path, val_in_three_shards, kind, val_batches
):
    make_source = _sources(val_in_three_shards)[kind]
    one_task = _KeyTask()
    config = MSegTrainConfig(out=str(tmp_path / "one"), batch_size=2, progress=False)
    alone = Trainer(one_task, make_source(0, 1), config, DistributedContext()).evaluate("val", val_batches)  # type: ignore[arg-type]
    expected = sorted(one_task.keys)
    assert len(expected) == (2 * val_batches if val_batches else (7 if kind == "tensors" else 9))
    for world_size in (2, 3):
        keys, figure = _evaluate(make_source, world_size, val_batches, tmp_path)
        assert keys == expected, (world_size, keys)  # each sample once: none twice, none left out
        assert figure == pytest.approx(alone["mean"], rel=1e-6)  # float32 means: summed in another order


class _Untold:
    """A source that does not say how its ranks share the split (no `leading_share`)."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.source = TensorDataSource({"val": _tensors(7)}, batch_size=2, rank=rank, world_size=world_size)

    def batches(self, split: str, epoch: int):
        return self.source.batches(split, epoch)


@pytest.mark.parametrize("val_batches", [1, 2, 3])
def test_a_source_that_does_not_say_how_it_deals_gives_n_batches_in_all(tmp_path, val_batches):
    for world_size in (2, 3):
        keys, _ = _evaluate(_Untold, world_size, val_batches, tmp_path)
        assert len(keys) == len(set(keys)) == min(7, 2 * val_batches)  # not N per rank


@pytest.mark.slow
def test_torchrun_validates_a_trained_run_as_one_process_does(tmp_path, val_in_three_shards):
    """One run's weights, validated again (--resume of the finished run without its metrics.json, which writes its
    final records) by 1 process and by torchrun's 2: the same figures (2 ranks read 4 batches for --val-batches 2
    before, and their figures differed)."""
    import json
    import shutil
    import subprocess
    import sys

    from click.testing import CliRunner

    from m2u.training.cli import train_main

    common = ["--batch-size", "2", "--num-workers", "0", "--no-progress", "--no-test", "--val-every", "0"]
    common += ["--val-batches", "2"]
    first = ["mseg", "--data", str(val_in_three_shards), "--out", str(tmp_path / "one"), "--epochs", "1"]
    trained = CliRunner().invoke(train_main, [*first, "--levels", "2", "--base-channels", "4", *common])
    assert trained.exit_code == 0, trained.output
    # With its metrics.json the run is finished: a resume would leave it as it is, validating nothing.
    (tmp_path / "one" / "metrics.json").unlink()
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    alone = CliRunner().invoke(train_main, ["mseg", "--out", str(tmp_path / "one"), "--resume", *common])
    assert alone.exit_code == 0, alone.output
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]
    command = [
        *torchrun,
        "-m",
        "m2u.training.cli",
        "mseg",
        "--out",
        str(tmp_path / "two"),
        "--resume",
        *common,
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("one", "two"))
    assert two["world_size"] == 2 and set(one["val"]) == {"dice", "pixel_accuracy"}
    assert two["val"] == pytest.approx(one["val"], rel=1e-6)
