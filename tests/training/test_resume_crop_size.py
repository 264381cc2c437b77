"""A resumed run keeps the crop size its models learned: resuming on crops of another size is refused (one
sentence naming both sizes) before anything is written, instead of the models being relabelled with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from m2u.datasets.synthetic import write_synthetic_dataset
from m2u.training.checkpoint import CheckpointError, read_model_info
from m2u.training.cli import train_main
from m2u.training.config import MSegTrainConfig
from m2u.training.data import TensorDataSource
from m2u.training.models import MSegConfig
from m2u.training.trainer import train_mseg

TINY = {
    "model": MSegConfig(base_channels=4, levels=3),
    "batch_size": 2,
    "evaluate_test": False,
    "progress": False,
    "val_every": 0,
    "num_workers": 0,
}


def _tensors(count: int, size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    unmasked = torch.rand(count, 3, size, size, generator=generator)
    mask = torch.zeros(count, 1, size, size)
    mask[:, :, size // 2 :] = 1
    return {"masked": unmasked * (1 - mask), "unmasked": unmasked, "mask": mask}


class _SizeUntold:
    """A data source that does not tell its crop size ahead (only the protocol's `batches`)."""

    def __init__(self, source: TensorDataSource) -> None:
        self.source = source

    def batches(self, split: str, epoch: int):
        return self.source.batches(split, epoch)


def _files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_resuming_on_crops_of_another_size_is_refused_before_anything_is_written(tmp_path):
    run = tmp_path / "run"
    at16 = TensorDataSource({"train": _tensors(6, 16)}, batch_size=2)
    train_mseg(MSegTrainConfig(out=str(run), max_steps=2, **TINY), at16)
    before = _files(run)

    at32 = TensorDataSource({"train": _tensors(6, 32)}, batch_size=2)
    with pytest.raises(CheckpointError, match=r"trained on 16 px crops, but .* gives 32 px crops") as caught:
        train_mseg(MSegTrainConfig(out=str(run), max_steps=4, resume=True, **TINY), at32)
    assert "\n" not in str(caught.value) and "`init_weights`" in str(caught.value)
    assert {k: v for k, v in _files(run).items() if k != "log.jsonl"} == {
        k: v for k, v in before.items() if k != "log.jsonl"
    }  # config.json included: a later plain resume reads the run as it was
    assert read_model_info(run / "mseg.safetensors").crop_size == 16

    # A source that cannot tell its size ahead: refused at its first batch, the model file still saying 16.
    with pytest.raises(CheckpointError, match=r"trained on 16 px crops, but .* gives 32 px crops"):
        train_mseg(MSegTrainConfig(out=str(run), max_steps=4, resume=True, **TINY), _SizeUntold(at32))
    assert read_model_info(run / "mseg.safetensors").crop_size == 16

    # The same size resumes as before.
    results = train_mseg(MSegTrainConfig(out=str(run), max_steps=3, resume=True, **TINY), at16)
    assert results["steps"] == 3 and read_model_info(run / "mseg.safetensors").crop_size == 16


def test_m2u_train_resume_on_a_dataset_of_another_size_is_one_line(tmp_path):
    ds32, ds64 = tmp_path / "ds32", tmp_path / "ds64"
    write_synthetic_dataset(ds32, 8, size=32, seed=0)
    write_synthetic_dataset(ds64, 8, size=64, seed=0)
    run = tmp_path / "run"
    fast = ["--batch-size", "2", "--workers", "0", "--no-progress", "--no-test", "--val-every", "0",
            "--base-channels", "4", "--levels", "3"]  # fmt: skip
    first = CliRunner().invoke(
        train_main, ["mseg", "--data", str(ds32), "--out", str(run), "--max-steps", "1", *fast]
    )
    assert first.exit_code == 0, first.output
    config = (run / "config.json").read_bytes()

    result = CliRunner().invoke(
        train_main, ["mseg", "--out", str(run), "--resume", "--data", str(ds64), "--max-steps", "2", *fast]
    )
    assert result.exit_code == 2, result.output
    assert "32 px" in result.output and "64 px" in result.output and "--data" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert (run / "config.json").read_bytes() == config
    assert json.loads(config)["data"] == str(ds32)
    assert read_model_info(run / "mseg.safetensors").crop_size == 32
