"""One training loop for M-Seg and the M2UNet GAN.

The loop (`Trainer`) owns what both share: the step/epoch bookkeeping, exact resume (models, optimisers,
schedulers, grad scaler, RNG and the position in the epoch), validation every N steps, the JSONL log,
TensorBoard, PNG grids, checkpoints (written to a temporary file and renamed), the NaN/inf stop, the wall-clock
budget and DDP. A task (`MSegTask`, `GanTask`) owns the networks and what one step and one evaluation do.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
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
from m2u.training.data import DataSource, ShardDataSource, check_batch
from m2u.training.device import resolve_device, resolve_precision
from m2u.training.imagespace import composite, from_model_range, to_model_range
from m2u.training.losses import (
    VGGPerceptualLoss,
    dice_loss,
    dice_score,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    pixel_accuracy,
    reconstruction_loss,
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

    def all_true(self, flag: bool) -> bool:
        """True only when the flag holds on every rank (keeps ranks in lock-step)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MIN)
        return bool(value.item() > 0.5)


def _collective_device() -> torch.device:
    if torch_dist.is_initialized() and torch_dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group torchrun describes (WORLD_SIZE > 1), or use one already initialised (tests)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        rank, world = torch_dist.get_rank(), torch_dist.get_world_size()
        return DistributedContext(rank, world, int(os.environ.get("LOCAL_RANK", rank)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedContext()
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch_dist.init_process_group(backend=backend)
    return DistributedContext(
        torch_dist.get_rank(), torch_dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    )


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
        self.crop_size: int | None = None  # the side of the training crops (model files record it)

    # set-up helpers
    def add_network(self, name: str, module: nn.Module) -> None:
        module = module.to(self.device)
        if self.config.channels_last:
            module = module.to(memory_format=torch.channels_last)
        self.networks[name] = module
        wrapped: nn.Module = module
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
        if self.config.compile:
            wrapped = torch.compile(wrapped)  # type: ignore[assignment]
        self.wrapped[name] = wrapped
        optimizer_config = self.config.optimizer
        optimizer = torch.optim.Adam(
            module.parameters(), lr=optimizer_config.learning_rate, betas=optimizer_config.betas
        )
        self.optimizers[name] = optimizer
        self.schedulers[name] = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=list(optimizer_config.milestones), gamma=optimizer_config.decay
        )

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
        finite = all(bool(torch.isfinite(value.detach()).all()) for value in losses.values())
        if not self.dist.all_true(finite):
            values = {name: float(value.detach()) for name, value in losses.items()}
            raise NonFiniteLossError(f"non-finite loss at step {step + 1} of the {self.name} run: {values}")

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
    def train_step(self, batch: dict, step: int) -> dict[str, float]:
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

    def train_step(self, batch: dict, step: int) -> dict[str, float]:
        self.observe_batch(batch)
        masked = to_model_range(self.to_device(batch["masked"]))
        target = self.to_device(batch["mask"])
        with self.autocast():
            logits = self.wrapped["mseg"](masked)
        logits = logits.float()
        bce = nn.functional.binary_cross_entropy_with_logits(logits, target)
        soft_dice = dice_loss(logits, target)
        loss = self.config.bce_weight * bce + self.config.dice_weight * soft_dice
        self.check_finite(step, {"loss": loss})
        self.optimise("mseg", loss)
        self.end_step()
        return {
            "loss": float(loss.detach()),
            "bce": float(bce.detach()),
            "dice_loss": float(soft_dice.detach()),
        }

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

    @torch.no_grad()
    def grid(self, batch: dict) -> torch.Tensor:
        predicted = self.predict(batch["masked"]).cpu()
        masked = batch["masked"]
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

    def train_step(self, batch: dict, step: int) -> dict[str, float]:
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

        # Generator step (eq. 1): 1 adversarial + 100 reconstruction + 10 perceptual (configurable).
        with self.autocast():
            generated_scores = discriminator(fake)
            perceptual = self.perceptual(fake, real) if self.perceptual is not None else None
        fake32 = fake.float()
        adversarial = lsgan_generator_loss(generated_scores.float())
        reconstruction = reconstruction_loss(fake32, real)
        perceptual = perceptual.float() if perceptual is not None else torch.zeros((), device=self.device)
        g_loss = (
            self.config.adversarial_weight * adversarial
            + self.config.reconstruction_weight * reconstruction
            + self.config.perceptual_weight * perceptual
        )
        self.check_finite(step, {"g_loss": g_loss})
        self.optimise("generator", g_loss)
        # The generator's backward also filled D's gradients: they are not D's objective, drop them.
        self.optimizers["discriminator"].zero_grad(set_to_none=True)
        self.end_step()
        return {
            "d_loss": float(d_loss.detach()),
            "g_loss": float(g_loss.detach()),
            "adversarial": float(adversarial.detach()),
            "reconstruction": float(reconstruction.detach()),
            "perceptual": float(perceptual.detach()),
            "d_real": float(real_scores.detach().mean()),
            "d_fake": float(fake_scores.detach().mean()),
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
                for name, (total, count) in self.task.eval_batch(batch).items():
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
        config = self.config
        self._prepare_run_folder()
        if (
            self.dist.rank == 0
        ):  # what a write killed midway left behind (the files it meant to replace are intact)
            for folder in (self.out, self.checkpoint_path.parent):
                for stale in remove_stale_temp_files(folder):
                    self._log({"event": "removed_stale_temp_file", "path": str(stale)})
        if config.resume and self.checkpoint_path.exists():
            self.load_checkpoint()
            self._log({"event": "resume", "step": self.step, "epoch": self.epoch})
        self._open_writer()
        started = time.monotonic()
        total_steps = config.max_steps
        progress = None
        if config.progress and self.dist.is_main:
            from tqdm import tqdm

            progress = tqdm(
                total=total_steps, initial=self.step, desc=f"m2u-train {self.task.name}", unit="step"
            )
        running: dict[str, list[float]] = {}
        stop_reason = "epochs"
        self.task.set_train(True)
        try:
            while self.epoch < config.epochs:
                if total_steps is not None and self.step >= total_steps:
                    stop_reason = "max_steps"
                    break
                iterator = iter(self.data.batches("train", self.epoch))
                for _ in range(self.batch_in_epoch):  # --resume: skip what this epoch already consumed
                    next(iterator, None)
                if self._pending_rng is not None:
                    # Restored after the epoch's loader exists: creating it may draw from the global RNG.
                    restore_rng_state(self._pending_rng)
                    self._pending_rng = None
                stopped = False
                produced = 0
                while True:
                    batch = next(iterator, None)
                    if not self.dist.all_true(batch is not None):
                        break
                    assert batch is not None
                    check_batch(batch)
                    produced += 1
                    if self._grid_batch is None and self.dist.is_main:
                        # A fixed validation batch shows progress on the same faces (else the first train batch).
                        self._grid_batch = self._first_batch("val") or batch
                    metrics = self.task.train_step(batch, self.step)
                    self.step += 1
                    self.batch_in_epoch += 1
                    for name, value in metrics.items():
                        running.setdefault(name, []).append(value)
                    if progress is not None:
                        progress.update(1)
                        progress.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if "loss" in k})
                    self._after_step(running)
                    if self.step % config.log_every == 0:
                        running = {}
                    out_of_time = (
                        config.max_seconds is not None and time.monotonic() - started >= config.max_seconds
                    )
                    if (total_steps is not None and self.step >= total_steps) or not self.dist.all_true(
                        not out_of_time
                    ):
                        stop_reason = "max_steps" if not out_of_time else "max_seconds"
                        stopped = True
                        break
                if stopped:
                    break
                if produced == 0 and self.batch_in_epoch == 0:
                    raise RuntimeError(
                        f"the training split of {config.data or 'the data source'} gave no batch "
                        f"(fewer samples per loader worker than --batch-size {config.batch_size}?)"
                    )
                self.epoch += 1
                self.batch_in_epoch = 0
        except NonFiniteLossError as error:
            last = (
                load_training_state(self.checkpoint_path)["step"] if self.checkpoint_path.exists() else None
            )
            message = (
                f"{error}. Stopped; the last good checkpoint is {self.checkpoint_path} (step {last})"
                if last is not None
                else f"{error}. Stopped; no checkpoint had been written yet"
            )
            self._log({"event": "non_finite_loss", "step": self.step, "message": message})
            raise NonFiniteLossError(message) from None
        finally:
            if progress is not None:
                progress.close()
        self.save_checkpoint()
        results: dict[str, Any] = {
            "task": self.task.name,
            "steps": self.step,
            "epoch": self.epoch,
            "stop_reason": stop_reason,
            "seconds": round(time.monotonic() - started, 3),
            "world_size": self.dist.world_size,  # processes that trained (DDP ranks)
        }
        results["val"] = self.evaluate("val", config.val_batches)
        self._log({"split": "val", "step": self.step, **results["val"]})
        if config.evaluate_test:
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

    def _after_step(self, running: dict[str, list[float]]) -> None:
        config = self.config
        if self.step % config.log_every == 0:
            averaged = {name: float(np.mean(values)) for name, values in running.items()}
            self._log(
                {
                    "split": "train",
                    "step": self.step,
                    "epoch": self.epoch,
                    "lr": self.task.learning_rate(),
                    **averaged,
                }
            )
        if config.val_every and self.step % config.val_every == 0:
            self._log({"split": "val", "step": self.step, **self.evaluate("val", config.val_batches)})
        if self.step % config.grid_every == 0:
            self._save_grid()
        if self.step % config.checkpoint_every == 0:
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
    device = resolve_device(config.device)
    dist = init_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's at wrap time).
    seed_everything(config.seed)
    task = task_class(config, device, dist)  # type: ignore[arg-type]
    if data is None:
        data = ShardDataSource(
            config.data, config.batch_size, config.seed, config.num_workers, dist.rank, dist.world_size
        )
    return Trainer(task, data, config, dist).run()


def train_mseg(config: MSegTrainConfig, data: DataSource | None = None) -> dict[str, Any]:
    """Train M-Seg; writes RUN/mseg.safetensors, RUN/checkpoints/last.pt, RUN/log.jsonl, RUN/metrics.json."""
    return _train(MSegTask, config, data)


def train_gan(config: GanTrainConfig, data: DataSource | None = None) -> dict[str, Any]:
    """Train the GAN; writes RUN/generator.safetensors and RUN/discriminator.safetensors besides the above."""
    return _train(GanTask, config, data)


__all__ = [
    "DistributedContext",
    "GanTask",
    "MSegTask",
    "NonFiniteLossError",
    "Trainer",
    "train_gan",
    "train_mseg",
]
