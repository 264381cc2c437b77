"""Distributed training set-up: the process group torchrun describes, this rank's device, and the few
collectives the loop needs (host-side flags through a CPU group, so a flag never waits for the GPU)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist


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

    def all_true(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag, True only when it holds on every rank (keeps ranks in lock-step); one collective for all."""
        if not self.enabled:
            return flags
        values = torch.tensor([1.0 if flag else 0.0 for flag in flags])
        values = self.all_reduce_host(values, torch_dist.ReduceOp.MIN)
        return tuple(bool(value > 0.5) for value in values.tolist())

    def share_buffers(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers of `module` (BatchNorm's running statistics): DDP copies them from rank 0
        only at each wrapped forward, after which each rank updates them from its own batch, so an evaluation on
        the unwrapped module scored rank 1's share with statistics the checkpoint (rank 0's) does not hold."""
        if not self.enabled:
            return
        for buffer in module.buffers():
            torch_dist.broadcast(buffer.data, src=0)

    def all_reduce_host(self, values: torch.Tensor, op: Any) -> torch.Tensor:
        """All-reduce a small CPU tensor without touching the GPU (the control group; default group on gloo)."""
        if not self.enabled:
            return values
        values = values.clone()
        if self.control_group is None and collective_device().type == "cuda":
            on_device = values.to(collective_device())
            torch_dist.all_reduce(on_device, op=op)
            return on_device.cpu()
        torch_dist.all_reduce(values, op=op, group=self.control_group)
        return values


def collective_device() -> torch.device:
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


def is_main_process() -> bool:
    """Rank 0 of the process group (or of the one torchrun describes, before it starts); True without DDP.
    What people read once per run (the final results) is printed by this process alone."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0
