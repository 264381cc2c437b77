"""One training loop for M-Seg and the M2UNet GAN.

The loop (`Trainer`) owns what both share: the step/epoch bookkeeping, exact resume (models, optimisers,
schedulers, grad scaler, RNG and the position in the epoch), validation every N steps, the JSONL log,
TensorBoard, PNG grids, checkpoints (written to a temporary file and renamed), the NaN/inf stop, the wall-clock
budget and DDP. A task (`MSegTask`, `GanTask`) owns the networks and what one step and one evaluation do.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from m2u.training.checkpoint import (
    CheckpointError,
    ModelInfo,
    atomic_write,
    current_model_info,
    load_model,
    load_training_state,
    remove_stale_temp_files,
    save_model,
    save_training_state,
    unwrap_model,
)
from m2u.training.config import (
    GanTrainConfig,
    MSegTrainConfig,
    RunConfig,
    architecture_conflicts,
    read_run_config,
)
from m2u.training.data import AugmentedSource, DataSource, ShardDataSource, check_batch
from m2u.training.device import resolve_device, resolve_precision
from m2u.training.imagespace import composite, from_model_range, to_model_range
from m2u.training.losses import (
    VGGPerceptualLoss,
    dice_score,
    generator_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    pixel_accuracy,
    reconstruction_loss,
    segmentation_loss,
)
from m2u.training.models import CARU2Net, MSeg, PatchDiscriminator
from m2u.training.ssim import psnr, ssim

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
LOG_NAME = "log.jsonl"
METRICS_NAME = "metrics.json"
STATE_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite: the run stops, the last good checkpoint stays as it is."""


# --------------------------------------------------------------------------------------------- distribution
@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # Host-side flags (batch left? time left? losses finite?) go through this CPU (gloo) group: under NCCL a flag
    # on the GPU would make every step wait for the device. None: the default group (already gloo on CPU).
    control_group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            values = values.clone()
            torch_dist.all_reduce(values, op=torch_dist.ReduceOp.SUM)
        return values

    def all_true(self, *flags: bool) -> bool | tuple[bool, ...]:
        """Each flag, True only when it holds on every rank (keeps ranks in lock-step); one collective for all."""
        if not self.enabled:
            return flags[0] if len(flags) == 1 else flags
        values = torch.tensor([1.0 if flag else 0.0 for flag in flags])
        values = self.all_reduce_host(values, torch_dist.ReduceOp.MIN)
        agreed = tuple(bool(value > 0.5) for value in values.tolist())
        return agreed[0] if len(agreed) == 1 else agreed

    def all_reduce_host(self, values: torch.Tensor, op: Any) -> torch.Tensor:
        """All-reduce a small CPU tensor without touching the GPU (the control group; default group on gloo)."""
        if not self.enabled:
            return values
        values = values.clone()
        if self.control_group is None and _collective_device().type == "cuda":
            on_device = values.to(_collective_device())
            torch_dist.all_reduce(on_device, op=op)
            return on_device.cpu()
        torch_dist.all_reduce(values, op=op, group=self.control_group)
        return values


def _collective_device() -> torch.device:
    if torch_dist.is_initialized() and torch_dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1), or use one already initialised (tests)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        rank, world = torch_dist.get_rank(), torch_dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    else:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return DistributedContext()
        torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        rank, world = torch_dist.get_rank(), torch_dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    # Every rank creates the group, in the same order: a collective call.
    control = torch_dist.new_group(backend="gloo") if torch_dist.get_backend() == "nccl" else None
    return DistributedContext(rank, world, local_rank, control)


def bind_device(device: torch.device) -> None:
    """Make `device` this process's current CUDA device (before NCCL starts): only an indexed CUDA device."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def ddp_device_ids(device: torch.device) -> list[int] | None:
    """DistributedDataParallel's device_ids: the one GPU of this rank, or None on CPU."""
    if device.type != "cuda":
        return None
    if device.index is None:
        raise ValueError("DDP on CUDA needs an indexed device (resolve_device gives cuda:LOCAL_RANK)")
    return [device.index]


def milestone_steps(milestones: Sequence[int], world_size: int) -> list[int]:
    """LR milestones given in iterations of one process (the paper's 50k/75k/90k at batch 8), as optimiser steps
    of a run on `world_size` ranks: a DDP step sees world_size x the batch, so each milestone falls at the same
    number of samples seen (step >= milestone / world_size)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    return [max(1, math.ceil(milestone / world_size)) for milestone in milestones]


# --------------------------------------------------------------------------------------------- RNG state
def capture_rng_state() -> dict[str, Any]:
    """Every RNG the run touches, as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------- device-side bookkeeping
class FiniteGuard:
    """NaN/inf detection without a host sync per step.

    `watch` records, on the device, the first step at which each loss was non-finite; `check` brings that to the
    host once (the trainer calls it at every log line, before every checkpoint, evaluation and grid, and at the
    end), agrees across DDP ranks, and raises NonFiniteLossError naming the step and the losses."""

    def __init__(self, run_name: str) -> None:
        self.run_name = run_name
        self.first_bad: dict[str, torch.Tensor] = {}  # loss name -> int64 0-d tensor, -1 while finite

    def watch(self, step: int, losses: dict[str, torch.Tensor]) -> None:
        for name, value in losses.items():
            bad = ~torch.isfinite(value.detach()).all()
            first = self.first_bad.get(name)
            if first is None:
                first = torch.full((), -1, dtype=torch.int64, device=value.device)
            self.first_bad[name] = torch.where(bad & (first < 0), step + 1, first)

    def check(self, dist: DistributedContext) -> None:
        names = sorted(self.first_bad)
        if not names and not dist.enabled:
            return
        never = torch.iinfo(torch.int64).max
        local = (
            [int(value) for value in torch.stack([self.first_bad[n] for n in names]).cpu()] if names else []
        )
        steps = torch.tensor([never if value < 0 else value for value in local] or [never], dtype=torch.int64)
        steps = dist.all_reduce_host(steps, torch_dist.ReduceOp.MIN) if dist.enabled else steps
        first = int(steps.min())
        if first == never:
            return
        bad = [name for name, value in zip(names, steps.tolist()) if value == first]
        raise NonFiniteLossError(
            f"non-finite loss at step {first} of the {self.run_name} run: {', '.join(bad) or 'another rank'}"
        )


class RunningMeans:
    """Loss terms summed on their device between two log lines: one host transfer per log interval."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for name, value in values.items():
            value = torch.as_tensor(value).detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += 1

    def means(self) -> dict[str, float]:
        """The means since the last reset (one device -> host copy), then reset."""
        if not self.count:
            return {}
        names = list(self.sums)
        totals = torch.stack([self.sums[name] for name in names]).cpu().tolist()
        means = {name: total / self.count for name, total in zip(names, totals)}
        self.sums, self.count = {}, 0
        return means


# --------------------------------------------------------------------------------------------- tasks
class TrainingTask:
    """Networks, optimisers and the per-step logic; subclasses fill `networks`, `optimizers`, `schedulers`."""

    name = "task"

    def __init__(self, config: RunConfig, device: torch.device, dist: DistributedContext) -> None:
        self.config = config
        self.device = device
        self.dist = dist
        self.precision = resolve_precision(config.precision, device)  # "auto": the hardware decides
        if self.precision == "fp16" and device.type != "cuda":
            raise ValueError("fp16 autocast needs CUDA; on CPU use --precision bf16 or fp32")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.networks: dict[str, nn.Module] = {}
        self.wrapped: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.finite_guard = FiniteGuard(self.name)
        self._compiled_frozen: dict[str, nn.Module] = {}
        self.crop_size: int | None = None  # the side of the training crops (model files record it)

    # set-up helpers
    def add_network(self, name: str, module: nn.Module) -> None:
        module = module.to(self.device)
        if self.config.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.networks[name] = module
        wrapped: nn.Module = module
        if self.dist.enabled:
            wrapped = nn.parallel.DistributedDataParallel(module, device_ids=ddp_device_ids(self.device))
        if self.config.compile:
            wrapped = torch.compile(wrapped)  # type: ignore[assignment]
        self.wrapped[name] = wrapped
        optimizer_config = self.config.optimizer
        optimizer = torch.optim.Adam(
            module.parameters(), lr=optimizer_config.learning_rate, betas=optimizer_config.betas
        )
        self.optimizers[name] = optimizer
        milestones = milestone_steps(optimizer_config.milestones, self.dist.world_size)
        self.schedulers[name] = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=milestones, gamma=optimizer_config.decay
        )

    @contextlib.contextmanager
    def frozen(self, name: str):
        """The network `name` without gradients for its weights (requires_grad False), as a plain module (not the
        DDP wrapper: a wrapped forward would wait for gradients that never come), compiled when asked for."""
        module = self.networks[name]
        flags = [parameter.requires_grad for parameter in module.parameters()]
        module.requires_grad_(False)
        try:
            yield self._frozen_forward(name)
        finally:
            for parameter, flag in zip(module.parameters(), flags):
                parameter.requires_grad_(flag)

    def _frozen_forward(self, name: str) -> nn.Module:
        if not self.config.compile:
            return self.networks[name]
        if name not in self._compiled_frozen:
            self._compiled_frozen[name] = torch.compile(self.networks[name])  # type: ignore[assignment]
        return self._compiled_frozen[name]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device, non_blocking=True)
        if self.config.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def check_finite(self, step: int, losses: dict[str, torch.Tensor]) -> None:
        """Record non-finite losses on the device (no host sync); `finite_guard.check` raises, once per log."""
        self.finite_guard.watch(step, losses)

    def optimise(self, name: str, loss: torch.Tensor) -> None:
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)

    def end_step(self) -> None:
        self.scaler.update()
        for scheduler in self.schedulers.values():
            scheduler.step()

    def set_train(self, mode: bool) -> None:
        for module in self.networks.values():
            module.train(mode)

    def learning_rate(self) -> float:
        return next(iter(self.optimizers.values())).param_groups[0]["lr"]

    # state
    def state_dict(self) -> dict[str, Any]:
        return {
            "networks": {name: unwrap_model(m).state_dict() for name, m in self.networks.items()},
            "optimizers": {name: o.state_dict() for name, o in self.optimizers.items()},
            "schedulers": {name: s.state_dict() for name, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "crop_size": self.crop_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, module in self.networks.items():
            unwrap_model(module).load_state_dict(state["networks"][name])
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.crop_size = state.get("crop_size", self.crop_size)

    def observe_batch(self, batch: dict) -> None:
        """Remember the training crop size (called by train_step on every batch: a cheap shape read)."""
        self.crop_size = int(batch["masked"].shape[-1])

    def model_info(self, name: str, step: int) -> ModelInfo:
        """What `<name>.safetensors` records about how to use it and where it came from."""
        provenance = {
            "data": self.config.data,
            "steps": step,
            "task": self.name,
            "recipe": self.config.recipe,
            "precision": self.precision,
        }
        return current_model_info(self.crop_size, provenance=provenance)

    def export_models(self, out_dir: Path, step: int | None = None) -> list[Path]:
        """Write each network as `<name>.safetensors` (weights, config and ModelInfo) for evaluation and
        inference."""
        return [
            save_model(out_dir / f"{name}.safetensors", module, self.model_info(name, step or 0))
            for name, module in self.networks.items()
        ]

    # per task
    def train_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """One optimisation step; returns the loss terms as detached 0-d tensors on the device (no host sync)."""
        raise NotImplementedError

    def eval_batch(self, batch: dict) -> dict[str, tuple[float, int]]:
        """Sums and counts per metric, so ranks and batches can be added up."""
        raise NotImplementedError

    def eval_metric_names(self) -> tuple[str, ...]:
        """Every name eval_batch can return (DDP reductions need the same list on every rank)."""
        raise NotImplementedError

    def grid(self, batch: dict) -> torch.Tensor:
        """(3, rows*H, 4*W) in [0, 1]."""
        raise NotImplementedError

    # What the grid's columns show, left to right (written above them in the saved PNG).
    grid_columns: tuple[str, ...] = ()


def _grid_rows(columns: list[torch.Tensor], rows: int = 4) -> torch.Tensor:
    """Stack [B, C, H, W] columns (C = 1 or 3, [0, 1]) side by side, the first `rows` samples top to bottom."""
    tiles = [column[:rows].detach().float().cpu().expand(-1, 3, -1, -1) for column in columns]
    return torch.cat([torch.cat(list(row), dim=2) for row in zip(*tiles)], dim=1)


class MSegTask(TrainingTask):
    """M-Seg: masked face -> mask logits; BCE + soft Dice; Dice and pixel accuracy for evaluation."""

    name = "mseg"

    def __init__(self, config: MSegTrainConfig, device: torch.device, dist: DistributedContext) -> None:
        super().__init__(config, device, dist)
        self.config: MSegTrainConfig = config
        self.add_network("mseg", MSeg(config.model))

    def model_info(self, name: str, step: int) -> ModelInfo:
        info = super().model_info(name, step)
        info.mask_threshold = self.config.threshold
        return info

    def train_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        self.observe_batch(batch)
        masked = to_model_range(self.to_device(batch["masked"]))
        target = self.to_device(batch["mask"])
        with self.autocast():
            logits = self.wrapped["mseg"](masked)
        terms = segmentation_loss(logits.float(), target, self.config)
        self.check_finite(step, {"loss": terms["loss"]})
        self.optimise("mseg", terms["loss"])
        self.end_step()
        return {name: value.detach() for name, value in terms.items()}

    @torch.no_grad()
    def predict(self, masked01: torch.Tensor) -> torch.Tensor:
        model = unwrap_model(self.networks["mseg"])
        with self.autocast():
            logits = model(to_model_range(self.to_device(masked01)))
        return (torch.sigmoid(logits.float()) >= self.config.threshold).float()

    def eval_metric_names(self) -> tuple[str, ...]:
        return ("dice", "pixel_accuracy")

    @torch.no_grad()
    def eval_batch(self, batch: dict) -> dict[str, tuple[float, int]]:
        predicted = self.predict(batch["masked"])
        target = self.to_device(batch["mask"])
        count = predicted.shape[0]
        return {
            "dice": (float(dice_score(predicted, target).sum()), count),
            "pixel_accuracy": (float(pixel_accuracy(predicted, target).sum()), count),
        }

    grid_columns = ("masked", "predicted mask", "masked x (1 - pred)", "true mask")

    @torch.no_grad()
    def grid(self, batch: dict) -> torch.Tensor:
        predicted = self.predict(batch["masked"]).cpu()
        masked = batch["masked"].cpu()
        return _grid_rows([masked, predicted, masked * (1 - predicted), batch["mask"]])


class GanTask(TrainingTask):
    """The M2UNet GAN: CARU2-Net generator and patch discriminator, LSGAN + reconstruction + perceptual."""

    name = "gan"

    def __init__(self, config: GanTrainConfig, device: torch.device, dist: DistributedContext) -> None:
        super().__init__(config, device, dist)
        self.config: GanTrainConfig = config
        # The perceptual backbone first: a missing VGG stops the run before anything is built or written.
        self.perceptual: VGGPerceptualLoss | None = None
        if config.perceptual_weight > 0:
            self.perceptual = VGGPerceptualLoss(config.vgg_weights, config.perceptual_layers).to(device)
        self.mseg: MSeg | None = None
        if config.mask_source == "mseg":
            assert config.mseg_checkpoint is not None  # checked by the config
            model = load_model(config.mseg_checkpoint, map_location=device)
            if not isinstance(model, MSeg):
                raise CheckpointError(
                    f"{config.mseg_checkpoint} holds a {type(model).__name__}, not an M-Seg model"
                )
            self.mseg = model.eval().requires_grad_(False)
        self.add_network("generator", CARU2Net(config.generator))
        self.add_network("discriminator", PatchDiscriminator(config.discriminator))

    @torch.no_grad()
    def mask_for(self, masked: torch.Tensor, gt_mask: torch.Tensor) -> torch.Tensor:
        """The mask fed to the generator and used for compositing: the frozen M-Seg's, or the dataset's."""
        if self.mseg is None:
            return gt_mask
        return self.mseg.predict_mask(masked, self.config.mask_threshold)

    def model_info(self, name: str, step: int) -> ModelInfo:
        info = super().model_info(name, step)
        info.provenance["mask_source"] = self.config.mask_source
        if self.mseg is not None:
            info.provenance["mseg"] = self.config.mseg_checkpoint
            info.provenance["mask_threshold"] = self.mseg.threshold
        return info

    def train_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        self.observe_batch(batch)
        masked = to_model_range(self.to_device(batch["masked"]))
        real = to_model_range(self.to_device(batch["unmasked"]))
        mask = self.mask_for(masked, self.to_device(batch["mask"]))
        generator, discriminator = self.wrapped["generator"], self.wrapped["discriminator"]

        # Discriminator step (eq. 5): real and fake in one forward (no normalisation layers in D, so this
        # equals two forwards, with one spectral-norm power iteration and one DDP synchronisation).
        with self.autocast():
            fake = generator(masked, mask)
            scores = discriminator(torch.cat([real, fake.detach()], dim=0))
        real_scores, fake_scores = scores.float().chunk(2, dim=0)
        d_loss = lsgan_discriminator_loss(real_scores, fake_scores)
        self.check_finite(step, {"d_loss": d_loss})
        self.optimise("discriminator", d_loss)

        # Generator step (eq. 1): the weighted sum with the paper's weights (GanLossConfig, configurable). D is
        # frozen and called unwrapped: its gradients are neither computed nor all-reduced (DDP would wait for them).
        with self.autocast(), self.frozen("discriminator") as frozen_discriminator:
            generated_scores = frozen_discriminator(fake)
            perceptual = self.perceptual(fake, real) if self.perceptual is not None else None
        fake32 = fake.float()
        adversarial = lsgan_generator_loss(generated_scores.float())
        reconstruction = reconstruction_loss(fake32, real, self.config.ssim_share)
        perceptual = perceptual.float() if perceptual is not None else torch.zeros((), device=self.device)
        terms = {"adversarial": adversarial, "reconstruction": reconstruction, "perceptual": perceptual}
        g_loss = generator_loss(terms, self.config)
        self.check_finite(step, {"g_loss": g_loss})
        with self.frozen("discriminator"):  # the backward runs through D: still no gradient for its weights
            self.optimise("generator", g_loss)
        self.end_step()
        return {
            "d_loss": d_loss.detach(),
            "g_loss": g_loss.detach(),
            "adversarial": adversarial.detach(),
            "reconstruction": reconstruction.detach(),
            "perceptual": perceptual.detach(),
            "d_real": real_scores.detach().mean(),
            "d_fake": fake_scores.detach().mean(),
        }

    @torch.no_grad()
    def generate(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(output01, composite01, mask, masked01) for a batch, generator in its current mode."""
        masked01 = self.to_device(batch["masked"])
        masked = to_model_range(masked01)
        mask = self.mask_for(masked, self.to_device(batch["mask"]))
        with self.autocast():
            output = unwrap_model(self.networks["generator"])(masked, mask)
        output01 = from_model_range(output.float())
        return output01, composite(output01, masked01, mask), mask, masked01

    def eval_metric_names(self) -> tuple[str, ...]:
        names = ("psnr", "ssim", "psnr_raw_output", "psnr_masked_input")
        return (*names, "mseg_dice") if self.mseg is not None else names

    @torch.no_grad()
    def eval_batch(self, batch: dict) -> dict[str, tuple[float, int]]:
        output01, composite01, mask, masked01 = self.generate(batch)
        target = self.to_device(batch["unmasked"])
        count = target.shape[0]
        metrics = {
            "psnr": (float(psnr(composite01, target, reduction="none").sum()), count),
            "ssim": (float(ssim(composite01, target, reduction="none").sum()), count),
            "psnr_raw_output": (float(psnr(output01, target, reduction="none").sum()), count),
            "psnr_masked_input": (float(psnr(masked01, target, reduction="none").sum()), count),
        }
        if self.mseg is not None:
            gt_mask = self.to_device(batch["mask"])
            metrics["mseg_dice"] = (float(dice_score(mask, gt_mask).sum()), count)
        return metrics

    grid_columns = ("masked", "mask", "output", "ground truth")

    @torch.no_grad()
    def grid(self, batch: dict) -> torch.Tensor:
        output01, _, mask, masked01 = self.generate(batch)
        return _grid_rows([masked01, mask, output01, batch["unmasked"]])


# --------------------------------------------------------------------------------------------- the loop
def _finite_or_none(value: float) -> float | None:
    return value if np.isfinite(value) else None


class Trainer:
    """Runs a task over a data source; see the module docstring."""

    def __init__(
        self, task: TrainingTask, data: DataSource, config: RunConfig, dist: DistributedContext
    ) -> None:
        self.task, self.data, self.config, self.dist = task, data, config, dist
        self.out = Path(config.out)
        self.checkpoint_path = self.out / CHECKPOINT_DIR / LAST_CHECKPOINT
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self._pending_rng: dict[str, Any] | None = None
        self._writer = None
        self._grid_batch: dict | None = None
        self._running = RunningMeans()

    # logging
    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.out / LOG_NAME, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        if self._writer is not None:
            split = record.get("split", "train")
            for name, value in record.items():
                if isinstance(value, float | int) and name not in ("step", "epoch", "time"):
                    self._writer.add_scalar(f"{self.task.name}/{split}/{name}", value, record.get("step", 0))

    def _open_writer(self) -> None:
        if not self.dist.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency, but the JSONL log does not need it
            return
        self._writer = SummaryWriter(log_dir=str(self.out / "tensorboard"))

    def _save_grid(self) -> None:
        if not self.dist.is_main or self._grid_batch is None:
            return
        from PIL import Image

        self.task.set_train(False)
        image = self.task.grid(self._grid_batch)
        self.task.set_train(True)
        array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        if self.task.grid_columns:
            from m2u.core.drawing import column_header

            array = np.vstack([column_header(array.shape[1], self.task.grid_columns), array])
        path = self.out / "grids" / f"step-{self.step:07d}.png"
        atomic_write(path, lambda temp: Image.fromarray(array).save(temp, format="PNG"))
        if self._writer is not None:
            self._writer.add_image(f"{self.task.name}/grid", image, self.step)

    # checkpoints
    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        state = {
            "format": STATE_FORMAT,
            "task": self.task.name,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "rng": capture_rng_state(),
            "config": self.config.to_json(),
            **self.task.state_dict(),
        }
        save_training_state(self.checkpoint_path, state)
        self.task.export_models(self.out, self.step)

    def load_checkpoint(self) -> None:
        state = load_training_state(self.checkpoint_path)
        if state.get("task") != self.task.name:
            raise CheckpointError(
                f"{self.checkpoint_path} is a {state.get('task')!r} run, not {self.task.name!r}"
            )
        self.task.load_state_dict(state)
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self._pending_rng = state["rng"]

    # evaluation
    @torch.no_grad()
    def evaluate(self, split: str, max_batches: int | None) -> dict[str, float]:
        self.task.set_train(False)
        sums: dict[str, list[float]] = {}
        try:
            for index, batch in enumerate(self.data.batches(split, 0)):
                if max_batches is not None and index >= max_batches:
                    break
                check_batch(batch)
                for name, (total, count) in self.task.eval_batch(self._on_device(batch)).items():
                    entry = sums.setdefault(name, [0.0, 0.0])
                    entry[0] += total
                    entry[1] += count
        finally:
            self.task.set_train(True)
        # Every rank reduces the same names in the same order; a rank without batches sends zeros.
        names = sorted(set(sums) | set(self.task.eval_metric_names()))
        values = torch.tensor([sums.get(name, [0.0, 0.0]) for name in names], dtype=torch.float64)
        values = self.dist.all_reduce_sum(values.to(_collective_device())).cpu()
        return {name: total / count for name, (total, count) in zip(names, values.tolist()) if count > 0}

    # the loop
    def _prepare_run_folder(self) -> None:
        if self.checkpoint_path.exists() and not self.config.resume:
            raise FileExistsError(
                f"{self.out} already holds a run ({self.checkpoint_path}); pass --resume to continue it "
                "or choose another --out"
            )
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write(
                self.out / "config.json", lambda temp: Path(temp).write_text(self.config.to_json() + "\n")
            )

    def run(self) -> dict[str, Any]:
        self._prepare_run_folder()
        self._clean_and_resume()
        self._open_writer()
        started = time.monotonic()
        progress = self._open_progress()
        self.task.set_train(True)
        try:
            stop_reason = self._train_epochs(started, progress)
            self.task.finite_guard.check(self.dist)  # the steps since the last log line
        except NonFiniteLossError as error:
            raise self._non_finite_stop(error) from None
        finally:
            if progress is not None:
                progress.close()
        self.save_checkpoint()
        return self._finish(stop_reason, started)

    def _clean_and_resume(self) -> None:
        if self.dist.rank == 0:
            # What a write killed midway left behind (the files it meant to replace are intact).
            for folder in (self.out, self.checkpoint_path.parent):
                for stale in remove_stale_temp_files(folder):
                    self._log({"event": "removed_stale_temp_file", "path": str(stale)})
        if self.config.resume and self.checkpoint_path.exists():
            self.load_checkpoint()
            self._log({"event": "resume", "step": self.step, "epoch": self.epoch})

    def _open_progress(self) -> Any:
        if not (self.config.progress and self.dist.is_main):
            return None
        from tqdm import tqdm

        if self.config.compile:
            # torch.compile is lazy: the first steps compile the networks, silently, for up to minutes.
            print(
                f"m2u-train {self.task.name}: --compile: compiling the networks during the first steps "
                "(the progress bar waits for it)",
                file=sys.stderr,
                flush=True,
            )

        return tqdm(
            total=self.config.max_steps, initial=self.step, desc=f"m2u-train {self.task.name}", unit="step"
        )

    def _train_epochs(self, started: float, progress: Any) -> str:
        """Epochs until one of the limits; returns the stop reason (epochs, max_steps or max_seconds)."""
        config = self.config
        while self.epoch < config.epochs:
            if config.max_steps is not None and self.step >= config.max_steps:
                return "max_steps"
            stop_reason = self._train_epoch(started, progress)
            if stop_reason is not None:
                return stop_reason
            self.epoch += 1
            self.batch_in_epoch = 0
        return "epochs"

    def _epoch_batches(self) -> Any:
        iterator = iter(self.data.batches("train", self.epoch))
        for _ in range(self.batch_in_epoch):  # --resume: skip what this epoch already consumed
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
            batch = next(iterator, None)
            # One host-side collective per step: ranks stop together (at an epoch's end or out of time).
            have_batch, in_time = self.dist.all_true(batch is not None, not out_of_time)
            if not in_time:
                return "max_seconds"
            if not have_batch:
                break
            check_batch(batch)
            produced += 1
            self._train_one(batch, progress)
            if config.max_steps is not None and self.step >= config.max_steps:
                return "max_steps"
            out_of_time = config.max_seconds is not None and time.monotonic() - started >= config.max_seconds
        if produced == 0 and self.batch_in_epoch == 0:
            raise RuntimeError(
                f"the training split of {config.data or 'the data source'} gave no batch "
                f"(fewer samples per loader worker than --batch-size {config.batch_size}?)"
            )
        return None

    def _train_one(self, batch: dict, progress: Any) -> None:
        if self._grid_batch is None and self.dist.is_main:
            # A fixed validation batch shows progress on the same faces (else the first train batch).
            self._grid_batch = self._on_device(self._first_batch("val") or batch)
        metrics = self.task.train_step(self._on_device(batch), self.step)
        self.step += 1
        self.batch_in_epoch += 1
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
        last = load_training_state(self.checkpoint_path)["step"] if self.checkpoint_path.exists() else None
        message = (
            f"{error}. Stopped; the last good checkpoint is {self.checkpoint_path} (step {last})"
            if last is not None
            else f"{error}. Stopped; no checkpoint had been written yet"
        )
        self._log({"event": "non_finite_loss", "step": self.step, "message": message})
        return NonFiniteLossError(message)

    def _finish(self, stop_reason: str, started: float) -> dict[str, Any]:
        """Final validation (and test), grid and metrics.json after the last checkpoint."""
        results: dict[str, Any] = {
            "task": self.task.name,
            "steps": self.step,
            "epoch": self.epoch,
            "stop_reason": stop_reason,
            "seconds": round(time.monotonic() - started, 3),
            "world_size": self.dist.world_size,  # processes that trained (DDP ranks)
        }
        results["val"] = self.evaluate("val", self.config.val_batches)
        self._log({"split": "val", "step": self.step, **results["val"]})
        if self.config.evaluate_test:
            results["test"] = self.evaluate("test", None)
            self._log({"split": "test", "step": self.step, **results["test"]})
        self._save_grid()
        if self.dist.is_main:
            text = json.dumps(results, indent=2, sort_keys=True, default=_finite_or_none)
            atomic_write(self.out / METRICS_NAME, lambda temp: Path(temp).write_text(text + "\n"))
        if self._writer is not None:
            self._writer.close()
        return results

    def _first_batch(self, split: str) -> dict | None:
        return next(iter(self.data.batches(split, 0)), None)

    def _after_step(self, progress: Any = None) -> None:
        config = self.config
        due_log = self.step % config.log_every == 0
        due_val = bool(config.val_every) and self.step % config.val_every == 0
        due_grid = self.step % config.grid_every == 0
        due_checkpoint = self.step % config.checkpoint_every == 0
        if due_log or due_val or due_grid or due_checkpoint:
            # One host sync for the steps since the last one; nothing is logged or saved after a NaN.
            self.task.finite_guard.check(self.dist)
        if due_log:
            averaged = self._running.means()
            record = {
                "split": "train",
                "step": self.step,
                "epoch": self.epoch,
                "lr": self.task.learning_rate(),
            }
            self._log({**record, **averaged})
            if progress is not None:
                progress.set_postfix({k: f"{v:.4g}" for k, v in averaged.items() if "loss" in k})
        if due_val:
            self._log({"split": "val", "step": self.step, **self.evaluate("val", config.val_batches)})
        if due_grid:
            self._save_grid()
        if due_checkpoint:
            self.save_checkpoint()


# --------------------------------------------------------------------------------------------- entry points
def check_resume(config: RunConfig) -> None:
    """--resume keeps the run's architecture: a config that changes it is one CheckpointError sentence, raised
    before anything is built or written (the run folder stays as it is)."""
    if not config.resume or not (Path(config.out) / CHECKPOINT_DIR / LAST_CHECKPOINT).exists():
        return
    saved = read_run_config(type(config), config.out)
    if saved is None:
        return
    conflicts = architecture_conflicts(saved, config)
    if conflicts:
        raise CheckpointError(
            f"--resume: the run in {config.out} was trained with another architecture ({'; '.join(conflicts)}); "
            "drop the architecture options (--resume reads them from the run) or choose another --out"
        )


def check_model_sizes(config: RunConfig) -> None:
    """Refuse, before allocating, networks whose training state (weights, gradients, Adam's two moments)
    would not fit in this machine's memory."""
    from m2u.training.checkpoint import build_model, parameter_bytes

    networks = {"MSegTrainConfig": [("MSeg", "model")], "GanTrainConfig": [("CARU2Net", "generator"),
                ("PatchDiscriminator", "discriminator")]}.get(type(config).__name__, [])  # fmt: skip
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    for class_name, field_name in networks:
        model = build_model(class_name, getattr(config, field_name), f"the {field_name} config")
        needed = 4 * parameter_bytes(model)
        if needed > available:
            parameters = sum(p.numel() for p in model.parameters())
            raise ValueError(
                f"the {field_name} config ({getattr(config, field_name)}) gives {parameters / 1e6:.0f} M "
                f"parameters, {needed / 2**30:.1f} GiB to train before any activation: more than this "
                f"machine's {available / 2**30:.1f} GiB of memory"
            )


def _train(task_class: type[TrainingTask], config: RunConfig, data: DataSource | None) -> dict[str, Any]:
    if not config.out:
        raise ValueError("a run folder (--out) is required")
    check_resume(config)
    check_model_sizes(config)
    device = resolve_device(config.device)  # under torchrun: cuda:LOCAL_RANK
    bind_device(device)  # before NCCL starts, so its communicator uses this rank's GPU
    dist = init_distributed(device)
    # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's at wrap time).
    seed_everything(config.seed)
    task = task_class(config, device, dist)  # type: ignore[arg-type]
    load_initial_weights(task, config.init_weights)
    if data is None:
        on_gpu = device.type == "cuda"  # pinned uint8 batches, converted on the GPU (_on_device)
        data = ShardDataSource(
            config.data, config.batch_size, config.seed, config.num_workers, dist.rank, dist.world_size,
            pin_memory=on_gpu, uint8=on_gpu,
        )  # fmt: skip
    if config.augment.enabled:
        data = AugmentedSource(data, config.augment, config.seed, dist.rank)
    return Trainer(task, data, config, dist).run()


def load_initial_weights(task: TrainingTask, files: dict[str, str]) -> None:
    """Fine-tuning: each named network starts from a model file's weights (save_model / a shipped package)."""
    for name, path in files.items():
        if name not in task.networks:
            raise ValueError(f"init_weights names {name!r}; this run trains {', '.join(task.networks)}")
        try:
            task.networks[name].load_state_dict(load_model(path, map_location="cpu").state_dict())
        except RuntimeError as exc:
            raise CheckpointError(f"{path} does not fit the {name} network of this run: {exc}") from None


def train_mseg(config: MSegTrainConfig, data: DataSource | None = None) -> dict[str, Any]:
    """Train M-Seg; writes RUN/mseg.safetensors, RUN/checkpoints/last.pt, RUN/log.jsonl, RUN/metrics.json."""
    return _train(MSegTask, config, data)


def train_gan(config: GanTrainConfig, data: DataSource | None = None) -> dict[str, Any]:
    """Train the GAN; writes RUN/generator.safetensors and RUN/discriminator.safetensors besides the above."""
    return _train(GanTask, config, data)


__all__ = [
    "DistributedContext",
    "FiniteGuard",
    "RunningMeans",
    "bind_device",
    "ddp_device_ids",
    "milestone_steps",
    "GanTask",
    "MSegTask",
    "NonFiniteLossError",
    "Trainer",
    "train_gan",
    "train_mseg",
]
