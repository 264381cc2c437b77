"""Decoding into batches: the reused uint8 batch buffer (flip applied in the copy), the ring of shared-memory
batches a DataLoader worker reuses once the iterating process has converted them, and the float32 conversion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import get_worker_info

from m2u.datasets.codecs import ImageFormat

BATCH_MEMBERS = ("masked", "unmasked", "mask")
BUFFER_SLOT_FIELD = (
    "buffer_slot"  # raw-batch field: the (worker, slot) of BufferRing the batch's memory belongs to
)


def image_field(sample: dict[str, Any], prefix: str) -> bytes:
    for fmt in ImageFormat:
        field = f"{prefix}.{fmt.value}"
        if field in sample:
            return sample[field]
    raise KeyError(
        f"sample {sample.get('__key__')!r} in {sample.get('__url__')} has no {prefix}.<png|jpg|webp>"
    )


@dataclass
class _Scratch:
    """Reused decode buffers of one worker (JPEG members are decoded straight into them)."""

    masked: np.ndarray | None = None
    unmasked: np.ndarray | None = None


class BufferRing:
    """Shared-memory batches a DataLoader worker fills again once the iterating process has released them.

    Why: a batch allocated fresh in shared memory for every send costs the kernel's page faults and zeroing of every
    page, on both sides; at 256x256 that took a worker from 1,229 to 801 samples per CPU-second
    (benchmarks/loader.py). ``in_use`` is a (workers, slots) uint8 tensor in shared memory, created by the iterating
    process before the workers start: a worker marks a slot 1 when it fills it, the iterating process marks it 0 once
    the batch's contents are copied out (``to_float_batch`` on the CPU). A worker that finds no free slot allocates
    a fresh batch, as without a ring, so nothing ever waits on the consumer."""

    def __init__(self, in_use: torch.Tensor):
        self.in_use = in_use
        self._slots: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    @classmethod
    def create(cls, workers: int, slots: int) -> BufferRing:
        return cls(torch.zeros((workers, slots), dtype=torch.uint8).share_memory_())

    def acquire(
        self, worker: int, shapes: dict[str, tuple[int, ...]]
    ) -> tuple[int, dict[str, torch.Tensor]] | None:
        """A free slot of ``worker`` (marked in use) with tensors of these shapes, or None when every slot is out."""
        flags = self.in_use[worker]
        free = (flags == 0).nonzero()
        if not len(free):
            return None
        slot = int(free[0])
        tensors = self._slots.get((worker, slot))
        if tensors is None or {n: tuple(t.shape) for n, t in tensors.items()} != shapes:
            tensors = {n: torch.empty(s, dtype=torch.uint8).share_memory_() for n, s in shapes.items()}
            self._slots[(worker, slot)] = tensors
        flags[slot] = 1
        return slot, tensors

    def release(self, worker: int, slot: int) -> None:
        """The iterating process is done with this batch's memory: the worker may fill it again."""
        self.in_use[worker, slot] = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"in_use": self.in_use}  # the slots' tensors belong to the process that filled them

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.in_use, self._slots = state["in_use"], {}


class BatchBuffer:
    """A raw batch filled row by row as samples are decoded: contiguous uint8 tensors, images (B, 3, H, W) 0..255,
    mask (B, 1, H, W) 0/1, written in channel-first order with the flip applied in the same copy; ``to_float_batch``
    converts in the receiving process. Inside a DataLoader worker the batch lives in shared memory (the worker queue
    would otherwise copy it there): a slot of ``ring`` when one is free (its number is in ``slot``, to be released
    by the receiving process), else allocated for this batch alone."""

    def __init__(
        self,
        capacity: int,
        size: int | None,
        members: tuple[str, ...] = BATCH_MEMBERS,
        ring: BufferRing | None = None,
    ):
        self.capacity = capacity
        self.members = members
        self.scratch = _Scratch()
        self.slot: tuple[int, int] | None = (
            None  # (worker, slot) of the batch being filled, when from the ring
        )
        self._ring = ring
        self._size: int | None = None
        self._tensors: dict[str, torch.Tensor] = {}
        self._keys: list[str] = []
        self._flipped: np.ndarray | None = None
        if size is not None:
            self._allocate(size)

    def __len__(self) -> int:
        return len(self._keys)

    def _allocate(self, size: int) -> None:
        if self._size != size:
            self._size = size
            self.scratch = _Scratch(np.empty((size, size, 3), np.uint8), np.empty((size, size, 3), np.uint8))
            self._flipped = np.empty((size, size, 3), np.uint8)
        worker = get_worker_info()
        shapes: dict[str, tuple[int, ...]] = {
            n: (self.capacity, 1 if n == "mask" else 3, size, size) for n in self.members
        }
        if worker is not None and self._ring is not None:
            taken = self._ring.acquire(worker.id, shapes)
            if taken is not None:
                slot, self._tensors = taken
                self.slot = (worker.id, slot)
                return
        self.slot = None
        for name, shape in shapes.items():
            tensor = torch.empty(shape, dtype=torch.uint8)
            self._tensors[name] = tensor.share_memory_() if worker is not None else tensor

    def put(self, key: str, images: dict[str, np.ndarray], flip: bool) -> None:
        """Copy one decoded sample (BGR images, 0/255 mask; the batch's members) into the next row."""
        size = next(iter(images.values())).shape[0]
        if not self._tensors or self._size != size:
            self._allocate(size)
        row = len(self._keys)
        for name in ("masked", "unmasked"):
            if name not in images:
                continue
            image = images[name]
            if flip:
                image = cv2.flip(image, 1, dst=self._flipped)
            planes = self._tensors[name][row].numpy()
            # BGR HWC -> RGB CHW: OpenCV's de-interleave writes the three planes in place (a strided numpy
            # transpose copy cost a fifth of a worker's time).
            cv2.split(image, [planes[2], planes[1], planes[0]])
        if "mask" in images:
            mask = images["mask"]
            source = mask[:, ::-1] if flip else mask
            np.greater(source, 127, out=self._tensors["mask"][row, 0].numpy().view(np.bool_))
        self._keys.append(key)

    def take(self) -> dict[str, Any]:
        """The filled rows as a batch (with ``BUFFER_SLOT_FIELD`` when it is a ring slot); the next sample starts a
        new one."""
        n = len(self._keys)
        batch: dict[str, Any] = {
            name: t if n == self.capacity else t[:n] for name, t in self._tensors.items()
        }
        batch["key"] = self._keys
        if self.slot is not None:
            batch[BUFFER_SLOT_FIELD] = self.slot
        self._keys, self._tensors, self.slot = [], {}, None  # the next batch is allocated by its first sample
        return batch


def to_float_batch(raw: dict[str, Any], device: torch.device | str | None = None) -> dict[str, Any]:
    """A raw uint8 batch from PairedShardDataset → the documented float32 batch (optionally on ``device``:
    moving uint8 first moves 4x fewer bytes)."""
    non_blocking = device is not None and torch.device(device).type == "cuda"

    on_cpu = device is None or torch.device(device).type == "cpu"

    def convert(tensor: torch.Tensor, scale: float) -> torch.Tensor:
        if on_cpu:
            # One numpy pass on this thread: torch's version (two passes on its OpenMP pool) left the pool's threads
            # spinning after each batch, taking the core a DataLoader worker decodes on (benchmarks/loader.py: one
            # worker's wall-clock rate 440 -> 740 samples/s at 256x256 JPEG on two cores). Same float32 values.
            out = np.empty(tuple(tensor.shape), np.float32)
            np.multiply(tensor.numpy(), np.float32(scale), out=out)
            return torch.from_numpy(out)
        tensor = tensor.to(device, non_blocking=non_blocking)
        return tensor.to(torch.float32).mul_(scale)

    out = {
        name: convert(raw[name], 1.0 if name == "mask" else 1.0 / 255.0)
        for name in BATCH_MEMBERS
        if name in raw
    }
    out["key"] = raw["key"]
    return out
