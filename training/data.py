"""Where the trainers get batches from.

A data source gives, for a split and an epoch, an iterable of batch dicts (`masked`, `unmasked` float32
(B, 3, H, W) in [0, 1], `mask` float32 (B, 1, H, W) in {0, 1}, `key` list of str). The order must be a
function of (split, epoch, rank) only: `--resume` re-creates the epoch and skips the batches already consumed.
A source may instead yield the loader's raw uint8 batch (images 0..255, mask 0/1: `ShardDataSource(uint8=True)`,
the CUDA path); the trainer converts it on its device with `m2u.datasets.loader.to_float_batch`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

BATCH_FIELDS = ("masked", "unmasked", "mask")


class DataSource(Protocol):
    def batches(self, split: str, epoch: int) -> Iterable[dict]: ...


# A source may also say the size of its batches, `batch_size` (an int; one other than the run's `batch_size` is
# refused: the run's records would say the config's), how many training steps an epoch gives,
# `steps_per_epoch(split) -> int | None` (the progress bar's total and ETA), the side of its samples,
# `crop_size() -> int | None` (a resumed run on crops of another size is refused before it starts), and how it shares
# its samples among DDP ranks, `rank_split() -> str` (checkpoints record it; a source without it takes every
# world_size-th sample, m2u.training.run_state.EVERY_NTH), and which of a split's first batches its rank holds,
# `leading_share(split, batches) -> int | None` (`val_batches`: see there), and which dataset it reads by content,
# `dataset_digest() -> str | None` (checkpoints record it: a resume mid-epoch on another dataset is refused; without
# it the dataset is told by its path, and a resume mid-epoch says it could not check it); the trainer works without
# them.


class DigestOnce:
    """A source's `dataset_digest()` read once (ShardDataSource: its manifest's SHA-256; OnTheFlyDataSource: its
    face pack's): the trainer asks at the start, on resume and at every checkpoint, and reading it again would hash
    the files again. `get(read, unreadable)`: `read()`'s value the first time, then the same; None, kept too, when
    `read` raised one of `unreadable` (a dataset without a readable manifest or pack)."""

    def __init__(self) -> None:
        self._value: tuple[str | None] | None = None

    def get(self, read: Callable[[], str], unreadable: tuple[type[Exception], ...]) -> str | None:
        if self._value is None:
            try:
                self._value = (read(),)
            except unreadable:
                self._value = (None,)
        return self._value[0]


def source_batch_size(source: Any) -> int | None:
    """The batch size `source` gives, where it says (`batch_size`: every source here); None where it does not."""
    size = getattr(source, "batch_size", None)
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def leading_share(split_size: int, samples: int, rank: int, world_size: int) -> int:
    """For a source whose rank takes every world_size-th sample of an unshuffled split of `split_size`: how many
    of the split's first `samples` samples (one process's order) this rank holds, the first ones of its own."""
    return len(range(rank, min(samples, split_size), world_size))


def batch_head(batch: dict, rows: int) -> dict:
    """The first `rows` samples of `batch`: every field with one entry per sample (tensors, the key list) cut."""
    size = batch["masked"].shape[0]
    return {
        name: value[:rows] if isinstance(value, torch.Tensor | list | tuple) and len(value) == size else value
        for name, value in batch.items()
    }


def check_batch(batch: dict) -> None:
    """Clear errors for a batch that breaks the loader contract."""
    for name in BATCH_FIELDS:
        if name not in batch:
            raise ValueError(f"batch lacks {name!r}; got fields {sorted(batch)}")
    masked, unmasked, mask = batch["masked"], batch["unmasked"], batch["mask"]
    if masked.dim() != 4 or masked.shape[1] != 3 or masked.shape != unmasked.shape:
        raise ValueError(
            f"masked/unmasked must be (B, 3, H, W) alike, got {tuple(masked.shape)}, {tuple(unmasked.shape)}"
        )
    if mask.shape != (masked.shape[0], 1, *masked.shape[-2:]):
        raise ValueError(f"mask must be (B, 1, H, W), got {tuple(mask.shape)}")


@dataclass
class TensorDataSource:
    """Samples held in memory (tests, tiny runs): split -> {"masked", "unmasked", "mask"} tensors with N rows.

    Training batches are reshuffled per epoch from (seed, epoch); each rank takes every world_size-th sample
    and incomplete training batches are dropped, so every rank runs the same number of steps.
    """

    splits: dict[str, dict[str, torch.Tensor]]
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    def batches(self, split: str, epoch: int) -> Iterator[dict]:
        if split not in self.splits:
            return iter(())
        tensors = self.splits[split]
        count = tensors["masked"].shape[0]
        if split == "train":
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(count, generator=generator)
        else:
            order = torch.arange(count)
        order = order[self.rank :: self.world_size]
        drop_last = split == "train"
        return self._iterate(tensors, order, split, drop_last)

    def leading_share(self, split: str, batches: int) -> int:
        """The samples of the split's first `batches` batches (one process's order) this rank holds: the first of
        its own, as the ranks take every world_size-th sample of that order."""
        count = self.splits[split]["masked"].shape[0] if split in self.splits else 0
        return leading_share(count, batches * self.batch_size, self.rank, self.world_size)

    def steps_per_epoch(self, split: str) -> int:
        """Full batches of the rank with the fewest samples (the trainer keeps ranks in step)."""
        count = self.splits[split]["masked"].shape[0] if split in self.splits else 0
        return count // self.world_size // self.batch_size

    def crop_size(self) -> int | None:
        """The side of the training samples (None without a training split)."""
        train = self.splits.get("train")
        return int(train["masked"].shape[-1]) if train is not None else None

    def _iterate(self, tensors: dict, order: torch.Tensor, split: str, drop_last: bool) -> Iterator[dict]:
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            if drop_last and len(index) < self.batch_size:
                return
            batch = {name: tensors[name][index] for name in BATCH_FIELDS}
            batch["key"] = [f"{split}-{int(i):06d}" for i in index]
            yield batch


class ShardDataSource:
    """The dataset folder's shards through `m2u.datasets.make_loader`.

    Training epochs are shuffled and flipped from (seed, epoch), the same on every run; val/test are read in
    stored order without augmentation. Each rank reads its own part of the shards; the trainer keeps ranks in
    step when their batch counts differ. A split without shards yields nothing (train: an error).
    """

    def __init__(
        self,
        root: str,
        batch_size: int,
        seed: int = 0,
        num_workers: int = 2,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
        uint8: bool = False,
    ) -> None:
        """`pin_memory` (for a GPU): pinned batches and workers kept between epochs; `uint8`: the loader's raw
        uint8 batches, for the trainer to convert on its device (4x fewer bytes to copy)."""
        from m2u.datasets.layout import MANIFEST_NAME
        from m2u.datasets.storage import local_dataset

        self.root = Path(local_dataset(root))  # a dataset URL (s3://...): its local copy
        if not self.root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {self.root} (build it with m2u-make-dataset)")
        if not (self.root / MANIFEST_NAME).is_file() and not (self.root / "train").is_dir():
            raise FileNotFoundError(
                f"{self.root} does not look like an m2u dataset (no {MANIFEST_NAME}, no train/)"
            )
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.rank, self.world_size = rank, world_size
        self.pin_memory, self.uint8 = pin_memory, uint8
        self._loaders: dict[str, Any] = {}  # split -> loader, kept when its workers persist
        self._digest = DigestOnce()

    def batches(self, split: str, epoch: int) -> Iterable[dict]:
        loader = self._loaders.get(split) or self._make_loader(split)
        if loader is None:
            return iter(())
        if self.pin_memory:
            self._loaders[split] = loader  # persistent workers: one loader per split for the whole run
        loader.set_epoch(epoch)
        return iter(loader)

    def steps_per_epoch(self, split: str) -> int | None:
        """From the manifest's sample count: full batches per rank (each rank drops its last partial training
        batch; the loader's ranks hold shares differing by at most one sample); None without a readable manifest."""
        from m2u.datasets.loader import count_samples

        try:
            return count_samples(self.root, split) // (self.world_size * self.batch_size)
        except (OSError, ValueError, KeyError):
            return None

    def leading_share(self, split: str, batches: int) -> int | None:
        """The samples of the split's first `batches` batches (one process's order: the stored one, as val and
        test are read) this rank holds, the first of its own run (m2u.datasets.loader.leading_share); None without
        a readable manifest (shards without their counts are not split into even runs)."""
        from m2u.datasets.loader import count_samples, leading_share

        try:
            total = count_samples(self.root, split)
        except (OSError, ValueError, KeyError):
            return None
        return leading_share(batches * self.batch_size, total, self.rank, self.world_size)

    def rank_split(self) -> str:
        """How the loader shares the dataset among DDP ranks (m2u.datasets.loader.RANK_SPLIT)."""
        from m2u.datasets.loader import RANK_SPLIT

        return RANK_SPLIT

    def dataset_digest(self) -> str | None:
        """The SHA-256 of the dataset's manifest.parquet (every sample's key, split and source digest): the
        dataset by content, wherever it lies (moved, or the local copy of a URL); None without a readable one."""
        from m2u.core.fileio import content_digest
        from m2u.datasets.layout import MANIFEST_NAME

        return self._digest.get(lambda: content_digest(self.root / MANIFEST_NAME), (OSError,))

    def crop_size(self) -> int | None:
        """The side of the dataset's samples, from its stats.json (None when it does not say)."""
        from m2u.datasets.loader import dataset_image_size

        try:
            return dataset_image_size(self.root)
        except (OSError, ValueError, AttributeError):  # a stats.json of another shape: not known
            return None

    def _make_loader(self, split: str) -> Any:
        from m2u.datasets.loader import LoaderConfig, make_loader

        common: dict[str, Any] = {
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "pin_memory": self.pin_memory,
            "persistent_workers": self.pin_memory,
            "as_uint8": self.uint8,
        }
        # Training drops each worker's last partial batch: a batch of one breaks BatchNorm at small sizes.
        if split == "train":
            config = LoaderConfig(drop_last=True, **common)
        else:
            config = LoaderConfig.for_evaluation(**common)
        try:
            return make_loader(self.root, split, config)
        except FileNotFoundError:
            if split == "train":
                raise
            return None


class AugmentedSource:
    """A data source whose training batches go through `m2u.datasets.augment.augment_pair` (val/test untouched).

    Each batch's draws come from (seed, epoch, batch number, rank): the same on every run, so `--resume` (which
    re-creates the epoch and skips the consumed batches) sees exactly the batches an uninterrupted run would.
    Batches of floats in [0, 1] and the loader's raw uint8 batches both work; they come back in the same form.
    """

    def __init__(self, source: DataSource, config: Any, seed: int = 0, rank: int = 0) -> None:
        self.source, self.config, self.seed, self.rank = source, config, seed, rank

    def batches(self, split: str, epoch: int) -> Iterable[dict]:
        batches = self.source.batches(split, epoch)
        if split != "train":
            return batches
        return (self._augment(batch, epoch, index) for index, batch in enumerate(batches))

    @property
    def batch_size(self) -> int | None:
        """The wrapped source's (None where it does not say)."""
        return source_batch_size(self.source)

    def crop_size(self) -> int | None:
        """The wrapped source's (augmentation keeps the size)."""
        crop_size = getattr(self.source, "crop_size", None)
        return crop_size() if callable(crop_size) else None

    # Augmentation changes each pair, never how many batches there are nor which rank reads which samples: the
    # wrapped source's figures hold (without them an augmented run had no progress total, checkpoints no epoch length,
    # and a dataset folder's run recorded the every-nth split its loader does not use).
    def steps_per_epoch(self, split: str) -> int | None:
        """The wrapped source's (None where it does not say)."""
        steps_per_epoch = getattr(self.source, "steps_per_epoch", None)
        return steps_per_epoch(split) if callable(steps_per_epoch) else None

    def leading_share(self, split: str, batches: int) -> int | None:
        """The wrapped source's (None where it does not say)."""
        leading_share = getattr(self.source, "leading_share", None)
        return leading_share(split, batches) if callable(leading_share) else None

    def dataset_digest(self) -> str | None:
        """The wrapped source's (None where it does not say)."""
        dataset_digest = getattr(self.source, "dataset_digest", None)
        return dataset_digest() if callable(dataset_digest) else None

    def rank_split(self) -> str:
        """The wrapped source's (m2u.training.run_state.rank_split)."""
        from m2u.training.run_state import rank_split

        return rank_split(self.source)

    def _augment(self, batch: dict, epoch: int, index: int) -> dict:
        import numpy as np

        from m2u.datasets.augment import augment_pair

        rng = np.random.default_rng([self.seed, epoch, index, self.rank, 23])
        as_uint8 = batch["masked"].dtype == torch.uint8

        def to_numpy(images: torch.Tensor) -> np.ndarray:
            if not as_uint8:
                images = (images * 255).round().clamp(0, 255).to(torch.uint8)
            return images.permute(0, 2, 3, 1).contiguous().numpy()

        def to_tensor(images: list) -> torch.Tensor:
            out = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
            return out if as_uint8 else out.float().div_(255)

        masked, unmasked = to_numpy(batch["masked"]), to_numpy(batch["unmasked"])
        masks = batch["mask"][:, 0].numpy().astype(np.uint8)
        triples = [
            augment_pair(m, u, k, rng, self.config) for m, u, k in zip(masked, unmasked, masks, strict=True)
        ]
        mask = torch.from_numpy(np.stack([t[2] for t in triples]))[:, None].to(batch["mask"].dtype)
        return {
            **batch,
            "masked": to_tensor([t[0] for t in triples]),
            "unmasked": to_tensor([t[1] for t in triples]),
            "mask": mask,
        }
