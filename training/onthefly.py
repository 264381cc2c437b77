"""Training pairs rendered on the fly from a face pack (``m2u.datasets.facepack``): a new mask on every face in
every epoch, on CPU DataLoader workers, for a machine that gets its data as a bounded upload (the GPU device kit,
``benchmarks/device_kit.py``).

Each sample is a function of (seed, split, epoch, index) alone: the mask's seed and the flip are drawn from a
``numpy.random.SeedSequence`` of those four numbers, so any worker count, any order and a resumed run render the
same pair (val is always rendered as epoch 0, unflipped: a fixed validation set). The masking engine and options
are ``m2u-make-dataset``'s (``m2u.datasets.work.make_masker``), and the stored mask is its ``pair_mask``. A face the
engine refuses for one seed (``MaskingError``: the mask would miss the nose, say) is tried again with the next
attempt number, up to ``max_attempts``; the attempts are counted per batch (``attempts`` field) and in the data
source (``OnTheFlyDataSource.refused_renders``), never dropped silently. The test split is the pack's fixed,
pre-rendered pairs read by the shard loader.

``OnTheFlyDataSource.wait_seconds`` is the time the training loop spent blocked on the next training batch: over
the training wall time it is the share of time the accelerator waited for data (an upper bound on a GPU, where
the host runs ahead of the device by at most a few queued steps).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from m2u.training.data import DigestOnce

SPLIT_IDS = {"train": 0, "val": 1}
MAX_ATTEMPTS = 8


def sample_seed(seed: int, split: str, epoch: int, index: int, attempt: int = 0) -> np.random.SeedSequence:
    """The seed sequence of one rendered sample: the one place its randomness comes from."""
    return np.random.SeedSequence([int(seed), SPLIT_IDS[split], int(epoch), int(index), int(attempt)])


def check_pack_engine(pack: Any) -> None:
    """ValueError when the pack's test pairs were drawn by another mask engine than the one this m2u trains with:
    the run would be tested on masks placed otherwise than those it learns."""
    from m2u.masking.render import RENDER_VERSION

    if pack.render_version is not None and pack.render_version != RENDER_VERSION:
        raise ValueError(
            f"face pack {pack.root}: its test pairs were drawn by mask engine version {pack.render_version}, and this "
            f"m2u draws version {RENDER_VERSION} for training; cut a new pack from a dataset built by this m2u"
        )


class RenderedPairs(Dataset):
    """Map-style dataset over one split of a face pack: item i of epoch e is the face with a freshly rendered
    mask, as the shard loader's raw uint8 sample (CHW masked/unmasked 0..255, mask 0/1)."""

    def __init__(
        self,
        pack: Any,
        split: str,
        seed: int = 0,
        epoch: int = 0,
        flip: bool = True,
        mask_options: dict[str, Any] | None = None,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        from m2u.datasets.facepack import FacePack

        self.pack = pack if isinstance(pack, FacePack) else FacePack(pack)
        check_pack_engine(self.pack)
        if split not in SPLIT_IDS:
            raise ValueError(f"on-the-fly pairs exist for {sorted(SPLIT_IDS)}, not {split!r}")
        self.split, self.seed, self.epoch, self.flip = split, seed, epoch, flip
        self.mask_options = mask_options
        self.max_attempts = max_attempts
        self._masker: Any = None  # made on first use, in each worker (closures do not pickle)

    def __len__(self) -> int:
        return self.pack.count(self.split)

    def _get_masker(self) -> Any:
        if self._masker is None:
            from m2u.datasets.config import BuildConfig
            from m2u.datasets.work import make_masker

            config = (
                BuildConfig() if self.mask_options is None else BuildConfig(mask_options=self.mask_options)
            )
            self._masker = make_masker(config)
        return self._masker

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_masker": None}  # closures do not pickle: each worker makes its own

    def render(self, index: int, epoch: int | None = None) -> dict[str, Any]:
        """The sample as HWC numpy arrays (masked, unmasked uint8 RGB; mask uint8 0/255) plus its key/attempts;
        ``epoch`` (default: the dataset's) is the epoch it is rendered for."""
        from m2u.datasets.work import pair_mask
        from m2u.masking import MaskingError

        epoch = self.epoch if epoch is None else epoch
        image, landmarks = self.pack.face(self.split, index)
        masker = self._get_masker()
        reasons = []
        for attempt in range(self.max_attempts):
            sequence = sample_seed(self.seed, self.split, epoch, index, attempt)
            mask_seed, flip_draw = sequence.generate_state(2)
            try:
                masked, mask, _ = masker(image, landmarks, int(mask_seed))
            except MaskingError as exc:
                reasons.append(getattr(exc, "reason", str(exc)))
                continue
            mask = pair_mask(masked, image, mask)
            unmasked = image
            if self.flip and self.split == "train" and flip_draw % 2:
                masked, unmasked, mask = masked[:, ::-1], unmasked[:, ::-1], mask[:, ::-1]
            return {
                "masked": np.ascontiguousarray(masked),
                "unmasked": np.ascontiguousarray(unmasked),
                "mask": np.ascontiguousarray(mask),
                "key": f"{self.pack.key(self.split, index)}-e{epoch}",
                "attempts": attempt + 1,
            }
        raise MaskingError(
            f"face {self.pack.key(self.split, index)} ({self.split} {index}) refused {self.max_attempts} masks "
            f"in a row: {'; '.join(sorted(set(reasons)))}"
        )

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        """Item ``index`` or ``(epoch, index)`` (what EpochOrder yields: one set of workers serves every epoch)."""
        epoch, index = item if isinstance(item, tuple) else (None, item)
        sample = self.render(index, epoch)
        return {
            "masked": torch.from_numpy(sample["masked"]).permute(2, 0, 1),
            "unmasked": torch.from_numpy(sample["unmasked"]).permute(2, 0, 1),
            "mask": torch.from_numpy((sample["mask"] > 127).astype(np.uint8))[None],
            "key": sample["key"],
            "attempts": sample["attempts"],
        }


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "masked": torch.stack([item["masked"] for item in items]),
        "unmasked": torch.stack([item["unmasked"] for item in items]),
        "mask": torch.stack([item["mask"] for item in items]),
        "key": [item["key"] for item in items],
        "attempts": torch.tensor([item["attempts"] for item in items]),
    }


def _worker_init(worker: int) -> None:
    import cv2

    from m2u.core.parallel import become_loader_worker

    become_loader_worker(worker)
    cv2.setNumThreads(1)  # the workers are the parallelism (safe here: the workers are spawned, not forked)


class EpochOrder(Sampler):
    """(epoch, index) items of one split in the data source's order for the epoch last set: the DataLoader
    draws from it in the main process, so persistent workers render every epoch without being restarted."""

    def __init__(self, source: OnTheFlyDataSource, split: str, count: int) -> None:
        self.source, self.split, self.count, self.epoch = source, split, count, 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, index) for index in self.source.order(self.split, self.epoch, self.count))

    def __len__(self) -> int:
        return len(range(self.source.rank, self.count, self.source.world_size))


@dataclass
class OnTheFlyDataSource:
    """The trainer's DataSource (``m2u.training.data``) over a face pack: train and val rendered on the fly,
    test from the pack's pre-rendered dataset folder. Batches are raw uint8 (the trainer converts them on its
    device). Each rank takes every world_size-th index of the epoch's permutation; incomplete training batches
    are dropped so every rank runs the same number of steps."""

    pack: str
    batch_size: int
    seed: int = 0
    num_workers: int = 2
    rank: int = 0
    world_size: int = 1
    pin_memory: bool = False
    mask_options: dict[str, Any] | None = None
    wait_seconds: float = 0.0
    train_batches: int = 0
    refused_renders: int = 0
    _test: Any = field(default=None, repr=False)
    _loaders: dict[str, Any] = field(default_factory=dict, repr=False)
    _digest: DigestOnce = field(default_factory=DigestOnce, repr=False, compare=False)

    def order(self, split: str, epoch: int, count: int) -> list[int]:
        if split == "train":
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            indices = torch.randperm(count, generator=generator)
        else:
            indices = torch.arange(count)
        return indices[self.rank :: self.world_size].tolist()

    def batches(self, split: str, epoch: int) -> Iterator[dict]:
        if split == "test":
            return self._test_batches()
        if split not in SPLIT_IDS:
            return iter(())
        if split not in self._loaders:
            self._loaders[split] = self._make_loader(split)
        loader = self._loaders[split]
        if loader is None:
            if split == "train":
                raise RuntimeError(f"face pack {self.pack} has no training faces")
            return iter(())
        loader.sampler.epoch = epoch if split == "train" else 0  # val: always the same renders
        return self._timed(iter(loader)) if split == "train" else iter(loader)

    def leading_share(self, split: str, batches: int) -> int | None:
        """The samples of the split's first `batches` batches (one process's order) this rank holds, the first of
        its own (`m2u.training.data.leading_share`); the test split's, from its shard loader."""
        from m2u.training.data import leading_share

        if split == "test":
            test = self._test_source()
            return 0 if test is None else test.leading_share("test", batches)
        if split not in SPLIT_IDS:
            return 0
        if split not in self._loaders:
            self._loaders[split] = self._make_loader(split)
        loader = self._loaders[split]
        count = 0 if loader is None else len(loader.dataset)
        return leading_share(count, batches * self.batch_size, self.rank, self.world_size)

    def dataset_digest(self) -> str | None:
        """The face pack by content (`FacePack.digest`): checkpoints record it, so a resume mid-epoch on another
        pack is refused and the same one moved resumes; None where the pack cannot be read."""
        from m2u.datasets.facepack import FacePack

        # not a readable pack: None (its batches say why)
        return self._digest.get(lambda: FacePack(self.pack).digest(), (OSError, ValueError, KeyError))

    def _make_loader(self, split: str) -> DataLoader | None:
        dataset = RenderedPairs(self.pack, split, self.seed, mask_options=self.mask_options)
        if len(dataset) == 0:
            return None
        workers = self.num_workers
        # Spawned workers, kept for the whole run: a forked worker inherits OpenCV's and OpenMP's thread pools
        # mid-state from a parent that used them, and hung in its first cv2 call (seen in the CPU rehearsal).
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochOrder(self, split, len(dataset)),
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.pin_memory,
            drop_last=split == "train",
            worker_init_fn=_worker_init if workers else None,
            prefetch_factor=4 if workers else None,
            persistent_workers=workers > 0,
            multiprocessing_context="spawn" if workers else None,
        )

    def close(self) -> None:
        """Stop the render workers (they otherwise live as long as this source)."""
        self._loaders.clear()

    def _timed(self, iterator: Iterator[dict]) -> Iterator[dict]:
        while True:
            started = time.perf_counter()
            batch = next(iterator, None)
            self.wait_seconds += time.perf_counter() - started
            if batch is None:
                return
            self.train_batches += 1
            self.refused_renders += int((batch["attempts"] - 1).sum())
            yield batch

    def _test_batches(self) -> Iterator[dict]:
        test = self._test_source()
        return iter(()) if test is None else iter(test.batches("test", 0))

    def _test_source(self) -> Any:
        """The pack's pre-rendered test split as a ShardDataSource; None where the pack has none."""
        from m2u.datasets.facepack import FacePack
        from m2u.training.data import ShardDataSource

        folder = FacePack(self.pack).test_dataset
        if not folder.is_dir():
            return None
        if self._test is None:
            self._test = ShardDataSource(
                str(folder), self.batch_size, self.seed, 0, self.rank, self.world_size
            )
        return self._test


__all__ = ["OnTheFlyDataSource", "RenderedPairs", "sample_seed"]
