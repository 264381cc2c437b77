"""The training loop's own behaviour: the progress bar's total (and so its ETA), one results JSON under DDP,
and that the loop knows tasks only through their protocol."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from m2u.training import cli as training_cli
from m2u.training.config import MSegTrainConfig
from m2u.training.data import TensorDataSource
from m2u.training.loop import planned_steps
from m2u.training.models import MSegConfig
from m2u.training.trainer import train_mseg

TINY_MSEG = MSegConfig(base_channels=4, levels=3)
TRAINING = Path(training_cli.__file__).parent


def _tensors(count: int, size: int = 16) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    unmasked = torch.rand(count, 3, size, size, generator=generator)
    mask = torch.zeros(count, 1, size, size)
    mask[:, :, size // 2 :] = 1
    return {"masked": unmasked * (1 - mask), "unmasked": unmasked, "mask": mask}


def test_planned_steps_is_the_first_limit_reached():
    data = TensorDataSource({"train": _tensors(10)}, batch_size=3)  # 3 full batches an epoch
    assert data.steps_per_epoch("train") == 3
    assert planned_steps(MSegTrainConfig(epochs=2, max_steps=None), data) == 6
    assert planned_steps(MSegTrainConfig(epochs=2, max_steps=4), data) == 4
    two_ranks = TensorDataSource({"train": _tensors(10)}, batch_size=2, world_size=2)  # 5 samples a rank
    assert two_ranks.steps_per_epoch("train") == 2

    class Endless:  # a source that cannot say its length: the bar has no total unless max_steps gives one
        def batches(self, split, epoch):
            return iter(())

    assert planned_steps(MSegTrainConfig(epochs=3, max_steps=None), Endless()) is None
    assert planned_steps(MSegTrainConfig(epochs=3, max_steps=7), Endless()) == 7


def test_progress_bar_counts_to_the_planned_total(tmp_path, capsys):
    data = TensorDataSource({"train": _tensors(8)}, batch_size=2)
    config = MSegTrainConfig(
        out=str(tmp_path / "run"), model=TINY_MSEG, batch_size=2, epochs=2, max_steps=None, progress=True,
        val_every=0, num_workers=0, evaluate_test=False,
    )  # fmt: skip
    results = train_mseg(config, data)
    assert results["steps"] == 8 and results["stop_reason"] == "epochs"
    bar = capsys.readouterr().err
    assert "8/8" in bar  # tqdm's n/total: a total means a rate and an ETA


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False)])
def test_only_rank_zero_prints_the_results(monkeypatch, capsys, rank, printed):
    monkeypatch.setenv("RANK", rank)
    training_cli._run(lambda config: {"task": "mseg", "steps": 3}, None, training_cli.MSEG_BINDING)
    out = capsys.readouterr().out
    assert (json.loads(out)["steps"] == 3) if printed else out == ""


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return names | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_the_loop_knows_tasks_only_through_the_protocol_and_imports_no_reporting():
    imported = _imports(TRAINING / "loop.py")
    assert "m2u.training.task" in imported
    assert not {"m2u.training.mseg_task", "m2u.training.gan_task", "m2u.training.losses"} & imported
    assert not [m for m in imported if m.startswith(("m2u.evaluation", "m2u.inference", "m2u.pipelines"))]


def test_shard_source_epoch_length_is_an_upper_bound_from_the_manifest(tmp_path):
    from m2u.datasets.loader import count_samples
    from m2u.datasets.synthetic import write_synthetic_dataset
    from m2u.training.data import ShardDataSource

    write_synthetic_dataset(tmp_path / "ds", 40, size=32, seed=0, shard_size=4)
    source = ShardDataSource(str(tmp_path / "ds"), batch_size=4, num_workers=0)
    planned = source.steps_per_epoch("train")
    assert planned == count_samples(tmp_path / "ds", "train") // 4 > 0
    assert 0 < sum(1 for _ in source.batches("train", 0)) <= planned
    assert (
        ShardDataSource(str(tmp_path / "ds"), batch_size=4, world_size=2).steps_per_epoch("train")
        == planned // 2
    )
