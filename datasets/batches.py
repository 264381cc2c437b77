"""Decoding into batches: the reused uint8 batch buffer (flip applied in the copy) and its float32 conversion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import get_worker_info

from m2u.datasets.codecs import ImageFormat

BATCH_MEMBERS = ("masked", "unmasked", "mask")


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


class BatchBuffer:
    """A raw batch filled row by row as samples are decoded: contiguous uint8 tensors, images (B, 3, H, W) 0..255,
    mask (B, 1, H, W) 0/1, allocated once per batch (in shared memory inside a DataLoader worker: the worker queue
    would otherwise copy the batch there) and written in channel-first order with the flip applied in the same copy;
    ``to_float_batch`` converts in the receiving process."""

    def __init__(self, capacity: int, size: int | None, members: tuple[str, ...] = BATCH_MEMBERS):
        self.capacity = capacity
        self.members = members
        self.scratch = _Scratch()
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
        in_worker = get_worker_info() is not None
        for name in self.members:
            channels = 1 if name == "mask" else 3
            tensor = torch.empty((self.capacity, channels, size, size), dtype=torch.uint8)
            self._tensors[name] = tensor.share_memory_() if in_worker else tensor

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
        """The filled rows as a batch; the next sample starts a new one."""
        n = len(self._keys)
        batch: dict[str, Any] = {
            name: t if n == self.capacity else t[:n] for name, t in self._tensors.items()
        }
        batch["key"] = self._keys
        self._keys, self._tensors = [], {}  # the next batch is allocated by its first sample
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
