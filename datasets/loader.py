"""The streaming loader: paired shards → batches of float tensors, exact per epoch across workers and ranks.

``make_loader(source, split="train", config=LoaderConfig())`` accepts a dataset folder written by
``m2u-make-dataset`` (or the synthetic writer), a glob, a brace pattern such as
``"data/train-{000000..000009}.tar"``, a URL webdataset can open (``http://``, ``pipe:``...), or a list of those.
Each batch is a dict::

    masked    float32 (B, 3, H, W) in [0, 1]
    unmasked  float32 (B, 3, H, W) in [0, 1]
    mask      float32 (B, 1, H, W) in {0, 1}
    key       list[str]

(``LoaderConfig(members=("masked", "mask"))``: only those members, the others not decoded.)

Every epoch yields every sample of the split exactly once across all DataLoader workers and DDP ranks, and the
batches do not depend on the number of workers:

* the shard list is shuffled with (seed, epoch) — the same permutation on every rank — then either each rank
  reads its own run of shards (``split_by="shard"``, the default when the manifest gives each shard's sample count
  or there are at least as many shards as ranks), or each rank reads all shards and keeps every N-th sample
  (``split_by="sample"``: costs N reads of the tar bytes). Where the manifest gives the counts (a dataset folder),
  the shard split is even: the epoch's shards, end to end, are cut into N runs of samples whose sizes differ by at
  most one, and a rank reads only the shards its run touches (a shard cut between two ranks is read by both, each
  keeping its part); without the counts (shard URLs or a glob) each rank takes every N-th shard;
* a shuffle buffer seeded with (seed, epoch, rank) reorders the rank's samples (raw bytes, before decoding);
* batch b of that order is decoded by worker b mod num_workers, and DataLoader takes the workers' batches in
  turn: 0, 1 or 8 workers give the same batches in the same order, so trained weights do not depend on the
  worker count (each worker reads its rank's tar bytes and decodes only its own batches; with
  ``worker_split="shard"`` each worker reads only its own shards instead, split with the ranks by ``split_by``:
  less reading for streamed sources, an order that depends on the worker count);
* a horizontal flip is drawn per (seed, epoch, key) and applied to the three members together.

Ranks get numbers of samples that differ by at most one, except under a shard split without the manifest's
counts (shard URLs or a glob), where they can differ by a shard: m2u's trainer keeps its ranks in step either way
(one host-side collective per step), but the longer ranks' extra samples go unseen that epoch.
``LoaderConfig.for_evaluation()`` gives the exact, unshuffled, unflipped order.

Damaged shards never shorten an epoch silently: a local shard without its end-of-archive blocks (cut short, even
exactly between two members), an unreadable tar, a sample with a missing or undecodable member or of another size
than the dataset's (its manifest's; for shards without one, the first sample's in the shards' given order, the same
for every worker and rank), or (for a dataset folder, whose manifest lists its shards and how many samples each
holds) a missing shard or a shard with another sample count raise ``ShardError`` naming the shard and sample. With
``LoaderConfig(verify=True)`` (set by ``for_evaluation()``) every listed shard is also checked against the size and
SHA-256 recorded when it was built, before the first batch. ``LoaderConfig(on_error="skip")`` instead leaves out the rest of that
shard (or that one sample), warns, and lists it in ``PairedLoader.skipped`` for the epoch (across workers).

The loader re-iterates with a new epoch number each time it is iterated (``for batch in loader``), so shuffles
differ between epochs; call ``loader.set_epoch(e)`` to choose the epoch explicitly (e.g. when resuming).

Opening the shards with HuggingFace ``datasets`` (no m2u code needed)::

    import datasets
    ds = datasets.load_dataset("webdataset", data_files={"train": "OUT/train/*.tar"}, split="train")
    example = ds[0]
    example["__key__"], example["masked.jpg"], example["unmasked.jpg"]   # PIL images (default --image-format jpg)
    example["mask.png"]                                                 # PIL image, single channel, 0/255
    example["json"]["landmarks"]                                        # the parsed metadata

Members are grouped by key as webdataset does; with ``--image-format png`` (or ``webp``) the image columns are
``masked.png`` and ``unmasked.png``. ``data_files`` takes one entry per split (``"validation": "OUT/val/*.tar"``);
``streaming=True`` reads the tars lazily. Plain webdataset works too:
``webdataset.WebDataset(sorted(glob.glob("OUT/train/*.tar")), shardshuffle=False).decode("rgb")``.

Workers send uint8 batches (a quarter of float32's bytes through shared memory); the float conversion happens in
the process that iterates the loader, on ``LoaderConfig.device`` when set (or later, by the consumer, with
``as_uint8=True``: the trainer's CUDA path). When the conversion happens here on the CPU, each worker refills a few
shared-memory batches (``BufferRing``) once this process has converted them, rather than a fresh allocation per
batch, whose page faults cost a third of a worker's time; a batch the consumer keeps is its float copy, never the
refilled memory. ``persistent_workers=True`` keeps the workers between epochs.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from m2u.core.checks import check_types
from m2u.core.parallel import become_loader_worker, stop_opencv_threads
from m2u.datasets.batches import (
    BATCH_MEMBERS,
    BUFFER_SLOT_FIELD,
    BatchBuffer,
    BufferRing,
    image_field,
    to_float_batch,
)
from m2u.datasets.codecs import decode_image, decode_mask
from m2u.datasets.layout import MANIFEST_NAME, MASK_FIELD, MASKED_FIELD, SPLITS, UNMASKED_FIELD

# Re-exported: the loader's public names (m2u.datasets.loader.ShardError, ...) stay where users import them.
from m2u.datasets.shardcheck import (
    FROM_PYTHON_SKIP,
    ShardError,
    check_dataset_record,
    check_shard_complete,
    count_samples,
    dataset_image_size,
    is_dataset_url,
    resolve_shards,
    shard_sample_counts,
    verify_shards,
)
from m2u.datasets.splits import unit_hash
from m2u.datasets.storage import local_dataset, local_location
from m2u.datasets.tarread import is_stream_url, iter_raw_samples

SPLIT_BY_CHOICES = ("auto", "shard", "sample")
# How the ranks share a dataset folder's samples (`PairedShardDataset._even_runs`), as training checkpoints record it:
# a DDP run resumed mid-epoch from a checkpoint of another split continues that epoch on other samples.
RANK_SPLIT = "even-runs"
WORKER_SPLIT_CHOICES = ("batch", "shard")
ON_ERROR_CHOICES = ("raise", "skip")
SKIPPED_FIELD = "skipped"  # raw-batch field: what a worker left out since its previous batch


@dataclass(frozen=True)
class LoaderConfig:
    batch_size: int = 8  # paper, section 4.1
    num_workers: int = 2
    shuffle_buffer: int = 1000  # samples held per worker; 0 keeps the stored order
    shuffle_shards: bool = True
    hflip_prob: float = 0.5  # the same flip for masked, unmasked and mask
    seed: int = 0
    drop_last: bool = False  # the last partial batch (of each rank; of each worker with worker_split="shard")
    split_by: str = "auto"  # "shard", "sample" or "auto": how ranks share the data (see the module docstring)
    # How a rank's DataLoader workers share its samples: "batch", each reads the rank's shards and decodes every
    # num_workers-th batch of the one seeded order, so any worker count gives the same batches in the same order
    # (trained weights do not depend on it); "shard", each reads only its own shards (split_by then splits among
    # every worker of every rank): less reading for streamed sources, an order that depends on the worker count.
    worker_split: str = "batch"
    pin_memory: bool = False
    prefetch_factor: int = 2
    # Keep the workers alive between epochs (they read the epoch number from shared memory).
    persistent_workers: bool = False
    # Yield the raw uint8 batches (images 0..255, mask 0/1; see ``to_float_batch``) for conversion elsewhere,
    # e.g. on the GPU after a pinned copy.
    as_uint8: bool = False
    # Where batches are converted to float32 (e.g. "cuda"): uint8 is moved first, 4x fewer bytes.
    device: str | None = None
    # None: taken from torch.distributed when initialised, else from RANK / WORLD_SIZE, else 0 / 1.
    rank: int | None = None
    world_size: int | None = None
    # A truncated or corrupt shard or sample: "raise" stops with a ShardError naming it; "skip" leaves out the
    # rest of that shard (or that sample), warns, and counts it in ``PairedLoader.skipped`` for the epoch.
    on_error: str = "raise"
    # For a dataset folder: before the first batch, check that every shard its manifest lists is there with the
    # size and SHA-256 recorded when it was committed (reads every shard once more). for_evaluation() turns it on.
    verify: bool = False
    # The batch members decoded and returned: M-Seg training needs only ("masked", "mask"), and a member not asked
    # for is never decoded (its bytes are still read: they sit in the same tar).
    members: tuple[str, ...] = ("masked", "unmasked", "mask")

    def __post_init__(self) -> None:
        check_types(self)  # NaN, 2.5 workers, "no" for a flag: refused here, not inside a DataLoader worker
        if self.device is not None:
            # Refused here, not at the first batch with torch's own message (an assertion for "cuda" on a CPU-only
            # build, a list of every device type torch knows for "gpu").
            try:
                kind = torch.device(self.device).type
            except RuntimeError:
                raise ValueError(f"device {self.device!r} is not a device: use cpu, cuda or cuda:N") from None
            if kind not in ("cpu", "cuda"):
                raise ValueError(f"device {self.device!r}: the loader converts batches on cpu or cuda only")
            if kind == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"device {self.device!r} asked for, but CUDA is not available here")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.prefetch_factor < 1:
            raise ValueError(f"prefetch_factor must be >= 1, got {self.prefetch_factor}")
        if (self.rank is None) != (self.world_size is None):
            # One without the other read as rank 0 (or one process): every DDP rank read rank 0's share.
            raise ValueError("rank and world_size are given together (or neither: from torch.distributed)")
        if self.world_size is not None and not 0 <= self.rank < self.world_size:  # type: ignore[operator]
            raise ValueError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"members are named once each, got {self.members!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")
        if not 0.0 <= self.hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {self.hflip_prob}")
        if self.split_by not in SPLIT_BY_CHOICES:
            raise ValueError(f"split_by must be one of {SPLIT_BY_CHOICES}, got {self.split_by!r}")
        if self.worker_split not in WORKER_SPLIT_CHOICES:
            raise ValueError(f"worker_split must be one of {WORKER_SPLIT_CHOICES}, got {self.worker_split!r}")
        if not self.members or any(m not in BATCH_MEMBERS for m in self.members):
            raise ValueError(f"members must be a non-empty subset of {BATCH_MEMBERS}, got {self.members!r}")
        if self.on_error not in ON_ERROR_CHOICES:
            raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {self.on_error!r}")

    @classmethod
    def for_evaluation(cls, **overrides: Any) -> LoaderConfig:
        """Exact, reproducible epochs: stored order, no shuffling, no augmentation, every shard verified against
        the manifest (a split whose shards do not hold what it says is refused, or with on_error="skip" left out
        and counted)."""
        base = cls(shuffle_buffer=0, shuffle_shards=False, hflip_prob=0.0, verify=True)
        return replace(base, **overrides)


def _dist_info(config: LoaderConfig) -> tuple[int, int]:
    if config.rank is not None and config.world_size is not None:  # given together (LoaderConfig checks)
        rank, world = config.rank, config.world_size
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, world_size={world})")
    return rank, world


@dataclass(frozen=True)
class _Layout:
    """One worker's place: the reader whose samples it takes (a rank; a worker of a rank with worker_split="shard")
    of `readers`, how the readers split the data (`mode`), and which of the reader's batches are this worker's
    (`batch_worker` of `batch_workers`)."""

    reader: int
    readers: int
    mode: str
    batch_worker: int
    batch_workers: int


class PairedShardDataset(IterableDataset):
    """An IterableDataset of raw uint8 batches over paired shards (see ``BatchBuffer``; ``to_float_batch`` gives the
    documented float batch, as PairedLoader does); see the module docstring for the epoch guarantees."""

    def __init__(
        self,
        shards: Sequence[str],
        config: LoaderConfig = LoaderConfig(),
        expected_counts: dict[str, int] | None = None,
        *,
        image_size: int | None = None,
        excluded: Sequence[str] = (),
    ):
        """``expected_counts`` (shard → samples, e.g. from ``shard_sample_counts``): a shard that yields any other
        number of samples is an error, so a damaged shard never silently shortens an epoch."""
        super().__init__()
        if not shards:
            raise ValueError("PairedShardDataset needs at least one shard")
        self.shards = list(shards)
        self.config = config
        self.expected_counts = dict(expected_counts or {})
        # Shared memory: persistent DataLoader workers see the epoch the main process sets.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        # Every sample must be image_size x image_size (None: decided once from the shards, `decide_image_size`).
        self.image_size = image_size
        # Shards left out before reading (verification under on_error="skip"): reported in every epoch's skipped.
        self.excluded = list(excluded)
        self._size: int | None = image_size
        self._rank_world: tuple[int, int] | None = None
        self._skipped: list[str] = []  # what this iterator left out since its last batch
        self._iter_epoch = 0
        # Set by PairedLoader before its workers start, when it copies every batch out as it converts it.
        self.buffer_ring: BufferRing | None = None

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    def decide_image_size(self) -> int | None:
        """The side every sample must have: ``image_size`` (a dataset folder's manifest), else that of the first
        sample that decodes, in the shards' given order (not an epoch's). Every worker of every rank decides it
        alike (PairedLoader once, before its workers start): each worker took the size of the first sample it
        decoded itself, so with samples of mixed sizes under on_error="skip" the samples an epoch kept depended on
        the worker count and the rank. None: no sample decodes (every one is then skipped or raised, as damaged)."""
        if self._size is None:
            self._size = self._first_sample_size()
        return self._size

    def _first_sample_size(self) -> int | None:
        for url in self.shards:
            # Damage is reported by the epoch that reads it (report=False); under on_error="raise" it is raised now,
            # as the epoch would.
            for sample in self._read_shard(url, report=False):
                try:
                    images = self._decoded_members(sample, None)
                except Exception as exc:  # as _decode_into: a missing member, undecodable bytes
                    if self.config.on_error == "raise":
                        raise ShardError(self._unreadable(sample, exc)) from exc
                    continue
                return int(next(iter(images.values())).shape[0])
        return None

    def bind_distributed(self) -> None:
        """Read rank and world size now, in the main process: DataLoader workers do not see torch.distributed's
        state, so a dataset used with workers under DDP must be bound before iterating (PairedLoader does it)."""
        self._rank_world = _dist_info(self.config)

    def _layout(self) -> _Layout:
        """Who reads what. Hand-written rather than webdataset's split_by_node / split_by_worker: those split only
        the shard list (fewer shards than workers leaves some idle and ranks uneven;
        tests/datasets/test_loader_split.py) and read the rank from the process group, which DataLoader workers do
        not have."""
        rank, world = self._rank_world or _dist_info(self.config)
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.config.worker_split == "batch":
            reader, readers, batch_worker, batch_workers = rank, world, worker, workers
        else:
            reader, readers, batch_worker, batch_workers = rank * workers + worker, world * workers, 0, 1
        mode = self.config.split_by
        if mode == "auto":
            mode = "shard" if len(self.shards) >= readers or self._counts_known() else "sample"
        return _Layout(reader, readers, mode, batch_worker, batch_workers)

    def _counts_known(self) -> bool:
        return all(url in self.expected_counts for url in self.shards)

    def _even_runs(self, shards: list[str], layout: _Layout) -> list[tuple[str, int, int, bool]]:
        """The reader's part of the epoch under the even shard split: (shard, first, stop, reports) per shard it
        reads, keeping the shard's samples first..stop-1. The epoch's samples, shards end to end in the epoch's
        order, are cut into `readers` runs differing by at most one; the reader whose run holds a shard's first
        sample `reports` it: it reads the whole shard, so a damaged or short shard is found by exactly one reader
        (an empty shard too), where the others stop once past their run."""
        total = sum(self.expected_counts[url] for url in shards)
        readers, reader = layout.readers, layout.reader
        low, high = even_run(total, reader, readers)
        runs, offset = [], 0
        for url in shards:
            count = self.expected_counts[url]
            owner = min(readers - 1, ((offset + 1) * readers - 1) // total) if total else 0
            first, stop = max(low, offset) - offset, min(high, offset + count) - offset
            if owner == reader or first < stop:
                runs.append((url, first, max(first, stop), owner == reader))
            offset += count
        return runs

    def _epoch_shards(self) -> list[str]:
        shards = list(self.shards)
        if self.config.shuffle_shards:
            # Same seed on every rank and worker: they all agree on the permutation before splitting it.
            random.Random(f"{self.config.seed}/{self.epoch}/shards").shuffle(shards)
        return shards

    def _fail(self, message: str, error: BaseException | None = None, report: bool = True) -> None:
        """Raise ShardError(message), or under on_error="skip" warn and count it."""
        if self.config.on_error == "raise":
            raise ShardError(message) from error
        if report:
            warnings.warn(f"skipped: {message}", RuntimeWarning, stacklevel=2)
            self._skipped.append(message)

    def _read_shard(self, url: str, report: bool) -> Iterator[dict[str, Any]]:
        """The raw samples of one shard, checked: complete archive, readable members, the expected count."""
        count = 0
        try:
            if not is_stream_url(url):
                check_shard_complete(url)
            for sample in iter_raw_samples([url]):
                count += 1
                yield sample
        except ShardError as exc:
            self._fail(str(exc), exc, report)
            return
        except Exception as exc:  # noqa: BLE001 - tarfile, gzip and I/O errors all mean a damaged shard
            self._fail(f"shard {url} is corrupt or truncated after {count} samples: {exc}", exc, report)
            return
        expected = self.expected_counts.get(url)
        if expected is not None and count != expected:
            self._fail(f"shard {url} holds {count} samples, the manifest lists {expected}", None, report)

    def _my_raw_samples(self, layout: _Layout) -> Iterator[dict[str, Any]]:
        """The raw samples of this worker's reader (its rank, or itself with worker_split="shard")."""
        shards = self._epoch_shards()
        # A damaged shard is reported once: by the first worker of the one reader that reads it.
        first = layout.batch_worker == 0
        if layout.mode == "shard" and self._counts_known():
            for url, start, stop, reports in self._even_runs(shards, layout):
                for position, sample in enumerate(self._read_shard(url, report=first and reports)):
                    if start <= position < stop:
                        yield sample
                    elif position >= stop and not reports:
                        break
        elif layout.mode == "shard":
            for url in shards[layout.reader :: layout.readers]:
                yield from self._read_shard(url, report=first)
        else:
            index = 0
            for url in shards:
                for sample in self._read_shard(url, report=first and layout.reader == 0):
                    if index % layout.readers == layout.reader:
                        yield sample
                    index += 1

    def _shuffled(self, samples: Iterator[dict[str, Any]], reader: int) -> Iterator[dict[str, Any]]:
        size = self.config.shuffle_buffer
        if size <= 1:
            yield from samples
            return
        # Seeded by the reader: every worker of a rank draws the same order and keeps its own batches of it.
        rng = random.Random(f"{self.config.seed}/{self.epoch}/{reader}/buffer")
        buffer: list[dict[str, Any]] = []
        for sample in samples:
            if len(buffer) < size:
                buffer.append(sample)
                continue
            index = rng.randrange(size)
            yield buffer[index]
            buffer[index] = sample
        rng.shuffle(buffer)
        yield from buffer

    def _decode_into(self, sample: dict[str, Any], batch: BatchBuffer) -> bool:
        """Decode ``sample`` into the batch's next row; False (the row left free) when it is damaged and skipped,
        a ShardError naming it under on_error="raise"."""
        try:
            self._decode(sample, batch)
            return True
        except Exception as exc:  # noqa: BLE001 - a missing member, undecodable bytes, mismatched sizes
            self._fail(self._unreadable(sample, exc), exc)
            return False

    @staticmethod
    def _unreadable(sample: dict[str, Any], error: BaseException) -> str:
        return f"sample {sample.get('__key__')!r} in shard {sample.get('__url__')} is unreadable: {error}"

    def _decoded_members(self, sample: dict[str, Any], scratch: Any) -> dict[str, Any]:
        """The members asked for, decoded (into ``scratch``'s buffers when given) and of one size among them."""
        key, wanted = sample["__key__"], self.config.members
        # Decoded into reused buffers (no fresh image per member), in OpenCV's BGR order: the copy into the batch's
        # channel planes reverses the channels anyway. Every member asked for is decoded and checked; the sizes
        # of the others are not known without decoding them, so they are not checked.
        images = {}
        for name, field, buffer in (
            ("masked", MASKED_FIELD, scratch.masked if scratch else None),
            ("unmasked", UNMASKED_FIELD, scratch.unmasked if scratch else None),
        ):
            if name in wanted:
                images[name] = decode_image(image_field(sample, field), rgb=False, buffer=buffer)
        if "mask" in wanted:
            if MASK_FIELD not in sample:
                raise KeyError(f"sample {key!r} in {sample.get('__url__')} has no {MASK_FIELD}")
            images["mask"] = decode_mask(sample[MASK_FIELD])
        shapes = {name: image.shape[:2] for name, image in images.items()}
        channels = {image.shape[2] for image in images.values() if image.ndim == 3}
        if len(set(shapes.values())) > 1 or len(channels) > 1:
            raise ValueError(
                f"sample {key!r}: members differ in size "
                + " ".join(str(images[n].shape) for n in BATCH_MEMBERS if n in images)
            )
        return images

    def _decode(self, sample: dict[str, Any], batch: BatchBuffer) -> None:
        key = sample["__key__"]
        images = self._decoded_members(sample, batch.scratch)
        height, width = next(iter(images.values())).shape[:2]
        if (height, width) != (self._size, self._size):
            raise ValueError(
                f"sample {key!r} is {width}x{height}, the dataset's samples are {self._size}x{self._size}"
            )
        p = self.config.hflip_prob
        flip = p > 0 and unit_hash("hflip", self.config.seed, self._iter_epoch, key) < p
        batch.put(key, images, flip)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if get_worker_info() is not None:
            cv2.setNumThreads(1)  # one decode thread per worker: workers are the parallelism
        self._skipped = []
        self._iter_epoch = self.epoch  # read from shared memory once per epoch, not per sample
        size = self.config.batch_size
        layout = self._layout()
        # Decided already where PairedLoader iterates; a DataLoader of this dataset's own decides it in each worker
        # the same way.
        batch = BatchBuffer(size, self.decide_image_size(), self.config.members, self.buffer_ring)
        # Batch b is the reader's samples b*size .. (b+1)*size - 1 of its one order, decoded by worker b mod W:
        # DataLoader takes the workers' batches in turn, so the batches come in that order for any W. A sample
        # skipped as damaged leaves its batch one shorter (for any W alike).
        index = -1
        for index, sample in enumerate(self._shuffled(self._my_raw_samples(layout), layout.reader)):
            mine = (index // size) % layout.batch_workers == layout.batch_worker
            if mine:
                self._decode_into(sample, batch)
            if mine and index % size == size - 1:
                yield self._turn(batch)
        last_mine = (index // size) % layout.batch_workers == layout.batch_worker
        if index >= 0 and index % size != size - 1 and last_mine and not self.config.drop_last:
            yield self._turn(batch)
        if self._skipped:  # no batch left to carry them: a batch-less record (PairedLoader drops it)
            yield self._with_skips({"key": []})

    def _turn(self, batch: BatchBuffer) -> dict[str, Any]:
        """This worker's batch for its turn; every sample of it skipped as damaged, a batch-less record in its
        place (PairedLoader drops it): DataLoader takes the workers' results in turn, so a worker that let a turn
        pass would put every later batch out of order."""
        return self._with_skips(batch.take() if len(batch) else {"key": []})

    def _with_skips(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Attach what was skipped since the last batch, so the iterating process can count it across workers."""
        batch[SKIPPED_FIELD] = self._skipped
        self._skipped = []
        return batch


class PairedLoader:
    """Iterable over batches (see the module docstring); each ``iter()`` starts the next epoch."""

    def __init__(self, dataset: PairedShardDataset, config: LoaderConfig):
        self.dataset = dataset
        self.config = config
        self.epoch = 0
        # Under on_error="skip": what the current (last) epoch left out, one message per shard or sample.
        self.skipped: list[str] = []
        self._loader: DataLoader | None = None  # kept between epochs with persistent_workers

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.dataset.set_epoch(self.epoch)
        self.dataset.bind_distributed()
        self.dataset.decide_image_size()  # here, once, not in each worker (the same answer, one read)
        self.epoch += 1
        workers = self.config.num_workers
        persistent = self.config.persistent_workers and workers > 0
        if self._loader is None or not persistent:
            if workers > 0:
                # The workers are forked below and set OpenCV's thread count: safe only with no pool running here.
                stop_opencv_threads()
            # Workers refill their shared-memory batches once they are converted here (BufferRing): only when this
            # process copies every batch out on the CPU (not with as_uint8, whose batches the consumer keeps, nor with
            # an accelerator copy that may still be reading the batch when to_float_batch returns).
            converts_here = (
                not self.config.as_uint8 and torch.device(self.config.device or "cpu").type == "cpu"
            )
            self.dataset.buffer_ring = (
                BufferRing.create(workers, self.config.prefetch_factor + 2)
                if workers > 0 and converts_here
                else None
            )
            self._loader = DataLoader(
                self.dataset,
                batch_size=None,  # the dataset batches inside each worker
                num_workers=workers,
                pin_memory=self.config.pin_memory,
                prefetch_factor=self.config.prefetch_factor if workers > 0 else None,
                persistent_workers=persistent,
                worker_init_fn=become_loader_worker if workers > 0 else None,
            )
        self.skipped = list(self.dataset.excluded)
        return self._batches(self._loader)

    def _batches(self, loader: DataLoader) -> Iterator[dict[str, Any]]:
        device = self.config.device
        for raw in _worker_errors_in_their_own_words(loader):
            self.skipped.extend(raw.pop(SKIPPED_FIELD, []))
            if not raw["key"]:  # a batch-less record of skips (never a ring slot)
                continue
            slot, ring = raw.pop(BUFFER_SLOT_FIELD, None), self.dataset.buffer_ring
            batch = raw if self.config.as_uint8 else to_float_batch(raw, device)
            if slot is not None and ring is not None:  # copied out above: its worker may fill it again
                ring.release(*slot)
            yield batch


def even_run(total: int, reader: int, readers: int) -> tuple[int, int]:
    """The samples [first, stop) of an epoch's `total` (its shards end to end, in the epoch's order) that reader
    `reader` of `readers` reads under the even shard split (RANK_SPLIT): runs that differ by at most one sample."""
    return reader * total // readers, (reader + 1) * total // readers


def leading_share(samples: int, total: int, rank: int, world_size: int) -> int:
    """How many of the first `samples` samples of a dataset folder's split (`total` samples), in the order one
    process reads it unshuffled (``LoaderConfig.for_evaluation()``), rank `rank` of `world_size` reads: the even
    split gives each rank one run of that order, so they are the first samples of its own order, and ranks that
    each stop after their share read exactly those samples together (the trainer's `val_batches`)."""
    first, stop = even_run(total, rank, world_size)
    return max(0, min(samples, stop) - first)


def _worker_errors_in_their_own_words(loader: DataLoader) -> Iterator[dict[str, Any]]:
    """The loader's batches; a ShardError raised in a worker is raised here with its own message: torch re-raises
    it with "Caught ShardError in DataLoader worker process 0. Original Traceback (...)" and the worker's whole
    traceback in the message, which every command would print as the error's one line."""
    try:
        yield from loader
    except ShardError as error:
        text = str(error)
        if "Original Traceback" not in text:
            raise
        own = text.rstrip().rsplit("ShardError: ", 1)[-1]
        raise ShardError(own) from None


def make_loader(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    split: str | None = "train",
    config: LoaderConfig = LoaderConfig(),
) -> PairedLoader:
    """A loader over the ``split`` shards of a dataset folder (``split`` is ignored for globs, URLs and lists).

    For a dataset folder, the shards are the ones its manifest lists: one that is missing is an error (or, with
    ``on_error="skip"``, left out and counted), never a silently shorter epoch; with ``config.verify`` every shard
    is checked against its committed size and SHA-256 first."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)} or None")
    if isinstance(source, str | os.PathLike):
        source = local_location(source)
    else:
        source = [local_location(item) for item in source]
    if isinstance(source, str) and is_dataset_url(source):
        source = local_dataset(source)  # a dataset folder at a URL (s3://bucket/prefix): its local copy
    folder = Path(os.fspath(source)) if isinstance(source, str | os.PathLike) else None
    if folder is not None and not is_stream_url(str(folder)) and folder.is_dir():
        check_dataset_record(folder)
    if (
        split is None
        or folder is None
        or is_stream_url(str(folder))
        or not (folder / MANIFEST_NAME).is_file()
    ):
        return PairedLoader(PairedShardDataset(resolve_shards(source, split), config), config)
    expected = shard_sample_counts(folder, split)
    if not expected:
        raise FileNotFoundError(f"split {split!r} of the dataset {folder} has no samples")
    shards, excluded = list(expected), []
    # The record is always checked (a stat per shard); the SHA-256 of every shard only with config.verify.
    problems = verify_shards(shards, digest=config.verify)
    excluded = list(problems.values())
    if excluded and config.on_error == "raise":
        raise ShardError(
            f"split {split!r} of {folder} does not hold what its manifest says: {'; '.join(excluded)}; rebuild "
            f"it (rerun m2u-make-dataset with the same arguments){FROM_PYTHON_SKIP}"
        )
    for message in excluded:
        warnings.warn(f"skipped: {message}", RuntimeWarning, stacklevel=2)
    shards = [url for url in shards if url not in problems]
    if not shards:
        raise ShardError(f"split {split!r} of {folder}: no shard is intact ({'; '.join(excluded)})")
    dataset = PairedShardDataset(
        shards, config, expected, image_size=dataset_image_size(folder), excluded=excluded
    )
    return PairedLoader(dataset, config)


__all__ = [
    "LoaderConfig",
    "PairedLoader",
    "PairedShardDataset",
    "ShardError",
    "check_dataset_record",
    "check_shard_complete",
    "dataset_image_size",
    "even_run",
    "is_dataset_url",
    "leading_share",
    "count_samples",
    "make_loader",
    "resolve_shards",
    "shard_sample_counts",
    "verify_shards",
    "to_float_batch",
]
