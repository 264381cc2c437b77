"""Device-side bookkeeping of the loop: non-finite losses and running loss means, without a host sync per step."""

from __future__ import annotations

import torch
import torch.distributed as torch_dist

from m2u.training.distributed import DistributedContext


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite: the run stops, the last good checkpoint stays as it is."""


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
