"""What a training task is: the protocol the loop (`m2u.training.loop`) knows, and the base that both tasks
share (networks with their optimisers and LR schedules, mixed precision, DDP wrapping, state, model export).

A task owns its networks and what one step, one evaluation batch and one picture grid do; the loop owns
everything else. The paper's two tasks live in `mseg_task` (M-Seg) and `gan_task` (the M2UNet GAN).
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from m2u.training.checkpoint import (
    CheckpointError,
    ModelInfo,
    ModelUsageWarning,
    current_model_info,
    save_model,
    unwrap_model,
)
from m2u.training.config import RunConfig
from m2u.training.device import usable_precision
from m2u.training.distributed import DistributedContext, ddp_device_ids, milestone_steps
from m2u.training.guards import FiniteGuard, NonFiniteLossError


class Task(Protocol):
    """All the loop calls on a task."""

    name: str
    device: torch.device
    finite_guard: FiniteGuard
    grid_columns: tuple[str, ...]  # what the grid's columns show, left to right
    precision: str  # what the run trains in: fp32, bf16 or fp16 (`precision` auto resolved at start-up)
    trained_precision: str | None  # what model files record: the precision of the run's steps (loop's)
    initial_weights: dict[str, dict[str, str]]  # where each fine-tuned network started (TrainingTask's)
    datasets: list[dict[str, Any]]  # every dataset the run trained on (TrainingTask's)
    networks: dict[str, nn.Module]  # the trained networks, unwrapped, by name

    def train_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """One optimisation step; the loss terms as detached 0-d tensors on the device (no host sync)."""
        ...

    def eval_batch(self, batch: dict) -> dict[str, tuple[float, int]]:
        """Sums and counts per metric, so ranks and batches can be added up."""
        ...

    def eval_metric_names(self) -> tuple[str, ...]:
        """Every name eval_batch can return (DDP reductions need the same list on every rank)."""
        ...

    def grid(self, batch: dict) -> torch.Tensor:
        """(3, rows*H, columns*W) in [0, 1]."""
        ...

    def set_train(self, mode: bool) -> None: ...

    def check_finite_state(self, step: int) -> None:
        """Raise NonFiniteLossError where a loss or a weight has become NaN or infinite."""
        ...

    def learning_rate(self) -> float: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def rebase_schedule(self, step: int) -> None:
        """Put the LR schedules at optimiser step `step` of this world size (a resume on another one)."""

    def resume_problem(self, state: dict[str, Any]) -> str:
        """Why this task cannot resume from the checkpoint `state` ("" when it can)."""
        ...

    def model_paths(self, out_dir: Path) -> list[Path]: ...

    def export_models(self, out_dir: Path, step: int | None = None) -> list[Path]: ...


class TrainingTask:
    """The shared half of a Task: networks, optimisers, AMP and state; subclasses add their networks
    (`add_network`) and write `train_step`, `eval_batch`, `eval_metric_names` and `grid`."""

    name = "task"

    def __init__(self, config: RunConfig, device: torch.device, dist: DistributedContext) -> None:
        self.config = config
        self.device = device
        self.dist = dist
        self.precision = usable_precision(config.precision, device)  # "auto": the hardware decides
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        # What the model files record: the precision of the run's steps, over every process (the loop sets it).
        self.trained_precision: str | None = None
        self.networks: dict[str, nn.Module] = {}
        self.wrapped: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.finite_guard = FiniteGuard(self.name)
        self._compiled_frozen: dict[str, nn.Module] = {}
        self.crop_size: int | None = None  # the side of the training crops (model files record it)
        # The crop size a resumed run's checkpoint records: its networks learned that size, so batches of
        # another are refused (observe_batch) rather than the models relabelled with it.
        self.resumed_crop_size: int | None = None
        # Where each fine-tuned network started (`load_initial_weights`: the file and its SHA-256, read when it was
        # loaded; a resumed run reads it back from its checkpoint): each model file's provenance names its start.
        self.initial_weights: dict[str, dict[str, str]] = {}
        # The crop size each starting file records (`load_initial_weights`), said once against the training crops'
        # (observe_batch): network name -> (file, size).
        self.initial_crop_sizes: dict[str, tuple[str, int]] = {}
        # Every dataset the run trained on, in order (the loop's `trained_datasets`: a run resumed on another at an
        # epoch's start trained on both): each model file's provenance names them all, not only `data`, the last.
        self.datasets: list[dict[str, Any]] = []

    # set-up helpers
    def add_network(self, name: str, module: nn.Module) -> None:
        module = module.to(self.device)
        if self.config.channels_last:
            # Module.to takes memory_format at run time; torch's type stubs do not list it.
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
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
    def frozen(self, name: str) -> Iterator[nn.Module]:
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

    def check_finite_state(self, step: int) -> None:
        """Raise NonFiniteLossError where a loss was non-finite since the last check (`finite_guard`) or a
        network's weights are: an update can overflow the weights while every loss stays finite (--lr 1e12: losses
        of 1e23, then NaN weights), and a model saved then is one no m2u tool loads. One host sync per network;
        every DDP rank holds the same weights, so each raises alike."""
        self.finite_guard.check(self.dist)
        for name, network in self.networks.items():
            tensors = [
                t.detach() for t in (*network.parameters(), *network.buffers()) if t.is_floating_point()
            ]
            if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
                raise NonFiniteLossError(
                    f"the {name} network's weights became NaN or infinite by step {step} of the {self.name} run "
                    "(its losses were finite: the learning rate is likely too high)"
                )

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

    def resume_problem(self, state: dict[str, Any]) -> str:
        """Why this task cannot resume from the checkpoint `state` ("" when it can): nothing here; a task reading
        files its checkpoint does not hold says so (GanTask: the frozen M-Seg)."""
        return ""

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
        self.resumed_crop_size = self.crop_size
        self._follow_configured_schedule()

    def rebase_schedule(self, step: int) -> None:
        """Put the LR schedules at optimiser step `step` of this world size (the rate decayed by every milestone
        at or before it): a run resumed on another number of ranks counted its earlier steps in other units, and
        the milestones of this world size fall at the same number of samples seen only in this one's."""
        for name, scheduler in self.schedulers.items():
            if not isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR):
                continue
            passed = sum(count for milestone, count in scheduler.milestones.items() if milestone <= step)
            scheduler.last_epoch = step
            for group, base in zip(self.optimizers[name].param_groups, scheduler.base_lrs, strict=True):
                group["lr"] = base * scheduler.gamma**passed
            scheduler._last_lr = [group["lr"] for group in self.optimizers[name].param_groups]

    def _follow_configured_schedule(self) -> None:
        """A run resumed with another learning rate, decay, milestones or betas (`--resume --lr ...`, which
        config.json then records): the checkpoint's optimisers and schedulers hold the run's earlier ones, so the
        configured ones take over from the step the run is at (the rate decayed by every milestone passed). Left
        alone when nothing changed: a resumed run stays bit-exact with a straight one."""
        wanted = self.config.optimizer
        milestones = Counter(milestone_steps(wanted.milestones, self.dist.world_size))
        for name, scheduler in self.schedulers.items():
            optimizer = self.optimizers[name]
            if (
                isinstance(scheduler, torch.optim.lr_scheduler.MultiStepLR)
                and all(base == wanted.learning_rate for base in scheduler.base_lrs)
                and scheduler.milestones == milestones
                and scheduler.gamma == wanted.decay
                and all(tuple(group["betas"]) == tuple(wanted.betas) for group in optimizer.param_groups)
            ):
                continue
            scheduler.base_lrs = [wanted.learning_rate for _ in optimizer.param_groups]
            scheduler.milestones, scheduler.gamma = milestones, wanted.decay  # type: ignore[attr-defined]
            passed = sum(count for step, count in milestones.items() if step <= scheduler.last_epoch)
            for group in optimizer.param_groups:
                group["initial_lr"] = wanted.learning_rate
                group["lr"] = wanted.learning_rate * wanted.decay**passed
                group["betas"] = tuple(wanted.betas)

    def observe_batch(self, batch: dict) -> None:
        """Remember the training crop size (called by train_step on every batch: a cheap shape read); a resumed
        run refuses crops of another size than its checkpoint's (`resume_crop_size_error`). The loop checks the
        data source's size before the run starts where the source tells it; this holds for any source."""
        size = int(batch["masked"].shape[-1])
        if self.resumed_crop_size is not None and size != self.resumed_crop_size:
            raise resume_crop_size_error(self.resumed_crop_size, size, self.config)
        first = self.crop_size is None
        self.crop_size = size
        if not first:
            return
        for name, (path, trained) in self.initial_crop_sizes.items():
            if trained != size:
                # Said, not refused: fine-tuning at another size is a choice, but the model files then record
                # only this one, and a starting file of the wrong size given by mistake would go unnoticed.
                warnings.warn(
                    f"`init_weights.{name}` {path} was trained on {trained} px crops, this run's are {size} px: "
                    f"fine-tuning starts from weights learned at another size (this run's model files record "
                    f"{size} px)",
                    ModelUsageWarning,
                    stacklevel=2,
                )

    def model_info(self, name: str, step: int) -> ModelInfo:
        """What `<name>.safetensors` records about how to use it and where it came from."""
        provenance: dict[str, Any] = {
            "data": self.config.data,
            "steps": step,
            "task": self.name,
            "recipe": self.config.recipe,
            "precision": self.trained_precision or self.precision,
        }
        if name in self.initial_weights:
            # A path names whatever is there when read; the digest names the file this network started from.
            provenance["init_from"] = dict(self.initial_weights[name])
        if self.datasets:
            provenance["datasets"] = [dict(record) for record in self.datasets]
        return current_model_info(self.crop_size, provenance=provenance)

    def model_paths(self, out_dir: Path) -> list[Path]:
        """Where `export_models` writes each network: `<name>.safetensors`."""
        return [out_dir / f"{name}.safetensors" for name in self.networks]

    def export_models(self, out_dir: Path, step: int | None = None) -> list[Path]:
        """Write each network as `<name>.safetensors` (weights, config and ModelInfo) for evaluation and
        inference."""
        return [
            save_model(path, module, self.model_info(name, step or 0))
            for path, (name, module) in zip(self.model_paths(out_dir), self.networks.items(), strict=True)
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


def resume_crop_size_error(trained: int, given: int, config: RunConfig) -> CheckpointError:
    """The one sentence refusing to resume a run on crops of another size than its models learned: they would be
    recorded (and then used by m2u-unmask, m2u-eval, m2u-export) as trained at the new size."""
    data = config.data or "the data source"
    return CheckpointError(
        f"resume: the run in {config.out} was trained on {trained} px crops, but {data} gives {given} px crops; "
        f"a resumed run keeps the crop size its models learned: resume with a dataset of {trained} px crops "
        f"(`data`), or start a new run from its model files (`init_weights`) to train at {given} px"
    )


def grid_rows(columns: list[torch.Tensor], rows: int = 4) -> torch.Tensor:
    """Stack [B, C, H, W] columns (C = 1 or 3, [0, 1]) side by side, the first `rows` samples top to bottom."""
    tiles = [column[:rows].detach().float().cpu().expand(-1, 3, -1, -1) for column in columns]
    return torch.cat([torch.cat(list(row), dim=2) for row in zip(*tiles)], dim=1)
