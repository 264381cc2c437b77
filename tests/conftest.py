"""Shared fixtures: where the read-only shared data lives, and skips when it is absent."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("M2U_SHARED", REPO_ROOT.parent / "shared"))
CELEBA_DIR = SHARED / "faces" / "celeba"
EXTRAS_DIR = SHARED / "faces" / "extras"
MASKTHEFACE_TEMPLATES = SHARED / "mask-templates" / "maskthefacE"

# One intra-op thread: the tests' networks are tiny, and on a loaded 2-core machine OpenMP's spinning threads
# made them up to 20x slower (a 64 px generator step: 0.6 s with one thread, up to 21 s with two).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def single_thread_torch():
    """Each test starts with one intra-op thread, and a test that changes the count does not leak it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.fixture(scope="session")
def celeba_dir() -> Path:
    return _require(CELEBA_DIR)


@pytest.fixture(scope="session")
def extras_dir() -> Path:
    return _require(EXTRAS_DIR)


@pytest.fixture(scope="session")
def masktheface_templates_dir() -> Path:
    return _require(MASKTHEFACE_TEMPLATES)


@pytest.fixture(scope="session")
def celeba_first(celeba_dir: Path):
    """The first n CelebA files sorted by name (the issues' protocol subsets)."""
    files = sorted(p for p in celeba_dir.iterdir() if p.suffix.lower() == ".jpg")

    def first(n: int) -> list[Path]:
        return files[:n]

    return first


@pytest.fixture
def detect_many_groups(monkeypatch) -> list[int]:
    """The number of images of each FaceDetector.detect_many call while the test runs (in this process)."""
    from m2u.masking import FaceDetector

    sizes: list[int] = []
    detect_many = FaceDetector.detect_many

    def recording(self, images, *args, **kwargs):
        sizes.append(len(images))
        return detect_many(self, images, *args, **kwargs)

    monkeypatch.setattr(FaceDetector, "detect_many", recording)
    return sizes


def _dataset_snapshot(out: Path) -> dict[str, bytes]:
    """Every file a dataset build leaves, by relative path, except what records timings or a process id (stats.json,
    the per-shard ``*_stats.json``, the lock files)."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file()
        and p.name
        not in ("stats.json", ".m2u-written")  # the writer's record lists names in the order written
        and not p.name.endswith(("_stats.json", ".lock"))
    }


@pytest.fixture(scope="session")
def dataset_snapshot():
    """A function: dataset folder -> {relative path: bytes}, for byte-identity checks between builds."""
    return _dataset_snapshot


# The tiny two-stage model the evaluation and inference tests share: a synthetic dataset and M-Seg / generator
# files trained here for a few steps (small widths, 32 px), so every test runs in seconds on a CPU.
TINY_IMAGE_SIZE = 32
TINY_SAMPLES = 40


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    from m2u.datasets.synthetic import write_synthetic_dataset

    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(out, TINY_SAMPLES, size=TINY_IMAGE_SIZE, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoints(tiny_dataset, tmp_path_factory) -> tuple[Path, Path]:
    """(mseg.safetensors, generator.safetensors), each trained briefly on the tiny train split."""
    return _train_tiny_checkpoints(tiny_dataset, tmp_path_factory.mktemp("checkpoints"))


def _train_tiny_checkpoints(tiny_dataset: Path, out: Path) -> tuple[Path, Path]:
    import torch.nn.functional as F

    from m2u.datasets.loader import LoaderConfig, make_loader
    from m2u.training.checkpoint import save_model
    from m2u.training.imagespace import to_model_range
    from m2u.training.models import CARU2Net, GeneratorConfig, MSeg, MSegConfig

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


@pytest.fixture(scope="session")
def load_benchmark():
    """`load_benchmark(name)`: benchmarks/<name>.py as a module (the scripts are not a package)."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(
            f"m2u_bench_{name}", REPO_ROOT / "benchmarks" / f"{name}.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        # Registered as an import would be: dataclasses (with postponed annotations) look their module up there.
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module

    return load
