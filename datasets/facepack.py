"""A face pack: the most training signal per carried byte, for machines that get their data as a bounded upload.

A paired dataset stores each face two or three times (masked, unmasked, mask) with one mask per face forever. A
face pack stores each *unmasked* aligned face once, as a JPEG, with its 68 aligned landmarks; the trainer renders
a new mask on it every epoch (the training package's on-the-fly source), on CPU workers, with the same masking engine and options
as ``m2u-make-dataset``. Evaluation stays on fixed pairs: the pack carries a small pre-rendered test split as an
ordinary m2u dataset folder (``PACK/test``), identity-disjoint from the faces it trains on.

The pack is cut from a dataset folder built by ``m2u-make-dataset`` (so the identity split, detection,
alignment and the test pairs are the dataset builder's, not a second implementation of them)::

    PACK/pack.json            format, sizes, JPEG quality, counts and bytes per split, the source dataset
    PACK/train.jpg.bin        the split's JPEGs, concatenated (one read, no tar parsing in the workers)
    PACK/train.index.npz      offsets (N + 1), landmarks (N, 68, 2) float32 in stored pixels, keys, seeds
    PACK/val.jpg.bin, PACK/val.index.npz
    PACK/test/                an m2u dataset folder: the first test shards of the source, their manifests

Faces may be stored smaller than the training size (``store_size``): CelebA's aligned photos hold less detail
than a 256 px crop (the crop up-samples them about 1.7x), so a smaller JPEG carries nearly the same signal
for fewer bytes; the reader scales image and landmarks back up to ``size``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from m2u.core.fileio import atomic_write, content_digest
from m2u.datasets.layout import dataset_render_version

PACK_FORMAT = 1
PACK_NAME = "pack.json"
TRAIN_SPLITS = ("train", "val")
TEST_FOLDER = "test"


def _jpg_path(root: Path, split: str) -> Path:
    return root / f"{split}.jpg.bin"


def _index_path(root: Path, split: str) -> Path:
    return root / f"{split}.index.npz"


@dataclass(frozen=True)
class PackConfig:
    """How to cut a pack. ``max_bytes`` bounds the whole pack (faces are taken in stored order until the next one
    would not fit; val gets ``val_fraction`` of the face budget); ``test_shards``: how many of the source's test
    shards travel as the fixed evaluation split."""

    store_size: int = 256
    quality: int = 90
    max_bytes: int = 48 * 2**20
    val_fraction: float = 0.05
    test_shards: int = 2

    def __post_init__(self) -> None:
        if not 32 <= self.store_size <= 2048:
            raise ValueError(f"store_size must be within 32..2048, got {self.store_size}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be within 1..100, got {self.quality}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be within [0, 1), got {self.val_fraction}")
        if self.max_bytes < 1 or self.test_shards < 0:
            raise ValueError("max_bytes must be positive and test_shards >= 0")


def _split_samples(dataset: Path, split: str) -> Any:
    """(key, unmasked bytes, meta) of the split's samples, shard after shard, in stored order."""
    from m2u.datasets.layout import split_shards

    for shard in split_shards(dataset, split):
        pending: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for member in tar:
                key, _, field = Path(member.name).name.partition(".")
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                fields = pending.setdefault(key, {})
                fields[field] = handle.read()
                unmasked = next((f for f in fields if f.startswith("unmasked.")), None)
                if unmasked and "json" in fields:
                    pending.pop(key)
                    yield key, fields[unmasked], json.loads(fields["json"])


def _reencode(data: bytes, size: int, store_size: int, quality: int) -> tuple[bytes, float]:
    """The face as a ``store_size`` JPEG of ``quality``, and the landmark scale (stored px per source px)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # BGR is kept: JPEG round trip only
    if image is None:
        raise ValueError("undecodable unmasked image")
    if store_size != image.shape[0]:
        image = cv2.resize(image, (store_size, store_size), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return encoded.tobytes(), store_size / size


def _copy_test_split(dataset: Path, out: Path, shards: int) -> dict[str, Any]:
    """The first ``shards`` test shards of ``dataset`` (with their stats JSON) as a dataset folder of its own;
    its manifests list exactly those shards' samples, so the evaluator reads them as a whole test split."""
    from m2u.datasets.layout import STATS_NAME, read_manifest, split_shards, stats_path_of
    from m2u.datasets.manifest import write_manifests_from_rows

    chosen = split_shards(dataset, "test")[:shards]
    if not chosen:
        return {"samples": 0, "bytes": 0, "shards": 0}
    (out / "test").mkdir(parents=True, exist_ok=True)
    names = {f"test/{p.name}" for p in chosen}
    for shard in chosen:
        shutil.copy2(shard, out / "test" / shard.name)
        if stats_path_of(shard).is_file():
            shutil.copy2(stats_path_of(shard), out / "test" / stats_path_of(shard).name)
    manifest = read_manifest(dataset)
    rows = [row for row in manifest.to_dict("records") if row.get("shard") in names]
    for row in rows:  # pandas gives NaN for nulls; the schema wants None
        for name, value in row.items():
            if isinstance(value, float) and np.isnan(value):
                row[name] = None
    write_manifests_from_rows(out, rows)
    if (dataset / STATS_NAME).is_file():
        stats = json.loads((dataset / STATS_NAME).read_text())
        stats["note"] = f"a face pack's test split: the first {len(chosen)} test shards of {dataset}"
        (out / STATS_NAME).write_text(json.dumps(stats, indent=2) + "\n")
    written = sum(1 for row in rows if row["status"] == "ok")
    return {"samples": written, "bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}


def write_face_pack(
    dataset: str | Path,
    out: str | Path,
    config: PackConfig = PackConfig(),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Cut a face pack from the dataset folder ``dataset`` into ``out`` (which must not exist yet: a pack is never
    overwritten); returns pack.json's content."""
    from m2u.datasets.shardcheck import dataset_image_size

    dataset, out = Path(dataset), Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists: remove it or choose another folder for the pack")
    size = dataset_image_size(dataset)
    if size is None:
        raise ValueError(f"{dataset}: no stats.json with the image size (is it an m2u dataset folder?)")
    temp = out.with_name(out.name + ".partial")
    if temp.exists():
        shutil.rmtree(temp)  # a previous cut that died midway (never a finished pack: that is `out`)
    temp.mkdir(parents=True)
    test = _copy_test_split(dataset, temp / TEST_FOLDER, config.test_shards)
    face_budget = config.max_bytes - test["bytes"]
    budgets = {"val": int(face_budget * config.val_fraction)}
    budgets["train"] = face_budget - budgets["val"]
    splits: dict[str, Any] = {}
    for split in TRAIN_SPLITS:
        splits[split] = entry = _pack_split(dataset, temp, split, size, config, budgets[split])
        log(f"face pack {split}: {entry['faces']} faces, {entry['jpeg_bytes'] / 2**20:.1f} MiB of JPEG")
    info = {
        "format": PACK_FORMAT,
        "size": size,
        "store_size": config.store_size,
        "quality": config.quality,
        "source": str(dataset),
        # The engine that drew the test pairs; the trainer draws the training pairs with its own (the same one).
        "render_version": dataset_render_version(dataset),
        "splits": splits,
        "test": test,
        "bytes": sum(p.stat().st_size for p in temp.rglob("*") if p.is_file()),
    }
    atomic_write(temp / PACK_NAME, lambda path: Path(path).write_text(json.dumps(info, indent=2) + "\n"))
    temp.rename(out)
    return info


def _pack_split(
    dataset: Path, temp: Path, split: str, size: int, config: PackConfig, budget: int
) -> dict[str, Any]:
    """Re-encode the faces of one split of `dataset` into the pack folder `temp` (JPEG blob + index) until
    `budget` bytes are used; returns the split's entry of pack.json."""
    offsets, landmarks, keys, seeds = [0], [], [], []
    skipped, used = [], 0
    with open(_jpg_path(temp, split), "wb") as blob:
        for key, data, meta in _split_samples(dataset, split):
            points = np.asarray(meta.get("landmarks"), np.float32)
            if points.shape != (68, 2):
                skipped.append(f"{key}: no 68 landmarks in its JSON")
                continue
            encoded, scale = _reencode(data, size, config.store_size, config.quality)
            # The face's JPEG and its index entry (landmarks, offset, seed, key) count against the budget.
            used += len(encoded) + points.nbytes + 16 + len(key)
            if used > budget:
                break
            blob.write(encoded)
            offsets.append(offsets[-1] + len(encoded))
            landmarks.append(points * scale)
            keys.append(key)
            seeds.append(int(meta.get("seed", 0)))
    np.savez(
        _index_path(temp, split),
        offsets=np.asarray(offsets, np.int64),
        landmarks=np.asarray(landmarks, np.float32).reshape(-1, 68, 2),
        keys=np.asarray(keys, dtype=bytes),
        seeds=np.asarray(seeds, np.int64),
    )
    count = len(keys)
    return {
        "faces": count,
        "jpeg_bytes": offsets[-1],
        "bytes": _jpg_path(temp, split).stat().st_size + _index_path(temp, split).stat().st_size,
        "bytes_per_face": round(offsets[-1] / count, 1) if count else None,
        "skipped": skipped,
    }


class FacePack:
    """Read access to a pack: decoded faces at the training size and their landmarks, by index. Cheap to pickle
    (DataLoader workers open the JPEG blob themselves, lazily, once each)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / PACK_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.root} is not a face pack (no {PACK_NAME}; make one with `make device-kit`)"
            )
        self.info = json.loads(path.read_text())
        if self.info.get("format") != PACK_FORMAT:
            raise ValueError(f"{path}: pack format {self.info.get('format')!r}, this m2u reads {PACK_FORMAT}")
        self.size = int(self.info["size"])
        self.store_size = int(self.info["store_size"])
        self._index: dict[str, dict[str, np.ndarray]] = {}
        self._blobs: dict[str, bytes] = {}

    @property
    def render_version(self) -> int | None:
        """The mask engine that drew the pack's test pairs (a pack from before render versions: 1)."""
        from m2u.masking.render import FIRST_RENDER_VERSION

        return self.info.get("render_version", FIRST_RENDER_VERSION)

    @property
    def test_dataset(self) -> Path:
        return self.root / TEST_FOLDER

    def digest(self) -> str:
        """The pack by content, as a training run records the dataset it trained on: one SHA-256 over pack.json
        and each split's index. The index pins every face (its key, landmarks and the length of its JPEG), so
        the JPEG blobs, most of the pack's bytes, are not read; the same pack copied or fetched again gives the
        same digest, another cut another. OSError where a file cannot be read."""
        combined = hashlib.sha256()
        for path in (self.root / PACK_NAME, *(_index_path(self.root, split) for split in TRAIN_SPLITS)):
            part = content_digest(path) if path.exists() else "absent"  # a split without faces
            combined.update(f"{path.name} {part}\n".encode())
        return combined.hexdigest()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_blobs": {}}  # each worker reads the blob itself

    def index(self, split: str) -> dict[str, np.ndarray]:
        if split not in self._index:
            path = _index_path(self.root, split)
            if not path.is_file():
                raise FileNotFoundError(f"face pack {self.root} has no split {split!r}")
            with np.load(path) as data:
                self._index[split] = {name: data[name] for name in data.files}
        return self._index[split]

    def __len__(self) -> int:
        return self.count("train")

    def count(self, split: str) -> int:
        return len(self.index(split)["keys"]) if _index_path(self.root, split).is_file() else 0

    def key(self, split: str, index: int) -> str:
        return self.index(split)["keys"][index].decode()

    def face(self, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 RGB image, float64 (68, 2) landmarks), both at the training size."""
        if split not in self._blobs:
            self._blobs[split] = _jpg_path(self.root, split).read_bytes()
        offsets = self.index(split)["offsets"]
        data = self._blobs[split][offsets[index] : offsets[index + 1]]
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"face pack {self.root}: face {index} of {split} does not decode")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        landmarks = self.index(split)["landmarks"][index].astype(np.float64)
        if self.store_size != self.size:
            image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_CUBIC)
            landmarks = landmarks * (self.size / self.store_size)
        return image, landmarks


def pack_bytes(root: str | Path) -> int:
    """Bytes the pack occupies on disk (everything under its folder)."""
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


__all__ = ["FacePack", "PackConfig", "pack_bytes", "write_face_pack"]
