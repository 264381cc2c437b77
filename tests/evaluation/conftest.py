"""Fixtures for the evaluation tests: a tiny synthetic dataset and tiny M-Seg / generator checkpoints trained
here for a few steps (small widths, 32 px), so every test runs in seconds on a CPU."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from m2u.datasets.loader import LoaderConfig, make_loader
from m2u.datasets.synthetic import write_synthetic_dataset
from m2u.training.checkpoint import save_model
from m2u.training.imagespace import to_model_range
from m2u.training.models import CARU2Net, GeneratorConfig, MSeg, MSegConfig

IMAGE_SIZE = 32
N_SAMPLES = 40


@contextmanager
def _single_thread():
    # The models here are tiny: one thread is as fast, and on a loaded shared machine two threads that wait on
    # each other were measured 5x slower (77 s vs 14 s for the fixture's training).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def single_thread_torch():
    with _single_thread():
        yield


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(out, N_SAMPLES, size=IMAGE_SIZE, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_dataset, tmp_path_factory) -> tuple[Path, Path]:
    """(mseg.safetensors, generator.safetensors), each trained briefly on the tiny train split."""
    with _single_thread():
        return _train_tiny_checkpoints(tiny_dataset, tmp_path_factory.mktemp("checkpoints"))


def _train_tiny_checkpoints(tiny_dataset: Path, out: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    batches = list(
        make_loader(tiny_dataset, "train", LoaderConfig.for_evaluation(batch_size=8, num_workers=0))
    )
    mseg = MSeg(MSegConfig(base_channels=8, levels=3))
    generator = CARU2Net(GeneratorConfig(width_multiplier=0.125))
    opt_m = torch.optim.Adam(mseg.parameters(), lr=1e-2)
    opt_g = torch.optim.Adam(generator.parameters(), lr=3e-3)
    for step in range(30):
        batch = batches[step % len(batches)]
        x = to_model_range(batch["masked"])
        loss_m = F.binary_cross_entropy_with_logits(mseg(x), batch["mask"])
        opt_m.zero_grad()
        loss_m.backward()
        opt_m.step()
        if step < 8:
            loss_g = F.l1_loss(generator(x, batch["mask"]), to_model_range(batch["unmasked"]))
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
    return save_model(out / "mseg.safetensors", mseg), save_model(out / "generator.safetensors", generator)
