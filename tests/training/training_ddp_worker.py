"""The DDP test's worker, in a plainly importable module: torch.multiprocessing's spawned children import the
target function by module name, which pytest's importlib mode does not give test files."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as torch_dist

from m2u.training.config import GanTrainConfig
from m2u.training.data import TensorDataSource
from m2u.training.distributed import DistributedContext
from m2u.training.gan_task import GanTask
from m2u.training.loop import Trainer
from m2u.training.models import DiscriminatorConfig, GeneratorConfig
from m2u.training.rng import seed_everything


def tiny_gan_config(out: Path, **overrides) -> GanTrainConfig:
    values = {
        "out": str(out),
        "batch_size": 2,
        "generator": GeneratorConfig(width_multiplier=0.125),
        "discriminator": DiscriminatorConfig(channels=(3, 8, 16, 16, 16, 1)),
        "mask_source": "gt",
        "vgg_weights": "random",
        "perceptual_layers": ("relu1_1", "relu2_1"),
        "checkpoint_every": 100,
        "evaluate_test": False,
        "val_batches": 1,
        "progress": False,
        "val_every": 0,
        "log_every": 1,
        "num_workers": 0,
    }
    values.update(overrides)
    return GanTrainConfig(**values)


def tensors(count: int, size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    unmasked = torch.rand(count, 3, size, size, generator=generator)
    mask = torch.zeros(count, 1, size, size)
    mask[:, :, size // 2 :, size // 4 : 3 * size // 4] = 1
    masked = unmasked * (1 - mask) + 0.2 * mask
    return {"masked": masked, "unmasked": unmasked, "mask": mask}


def ddp_worker(rank: int, world_size: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        # Each rank sees different samples: identical weights afterwards come from gradient averaging.
        data = TensorDataSource(
            {"train": tensors(8), "val": tensors(2)}, batch_size=2, rank=rank, world_size=world_size
        )
        config = tiny_gan_config(Path(out) / "run", max_steps=2)
        seed_everything(config.seed + rank)  # different initial weights per rank: DDP must broadcast rank 0's
        context = DistributedContext(rank, world_size)
        task = GanTask(config, torch.device("cpu"), context)
        Trainer(task, data, config, context).run()
        # Buffers too (BatchNorm's running statistics): the final evaluation scores every rank's share with rank
        # 0's, the ones the checkpoint holds.
        parameters = {
            f"{name}.{key}": value.detach().clone()
            for name, module in task.networks.items()
            for key, value in (*module.named_parameters(), *module.named_buffers())
        }
        # The paper's LR milestones (iterations of one process) in steps of this world size: same samples seen.
        parameters["schedule.milestones"] = torch.tensor(sorted(task.schedulers["generator"].milestones))
        torch.save(parameters, os.path.join(out, f"rank{rank}.pt"))
    finally:
        torch_dist.destroy_process_group()
