"""HuggingFace `datasets` on a few hundred samples of several mask types: the README's snippet as written.

HF infers a dataset's schema from its first rows; a per-sample JSON field that is null there and a string later
(or an int there and a float later) made `load_dataset` fail beyond a few dozen photos. The shards here mix the
real masking engine (every mask type, with and without colour, pattern and mesh fallback) and the synthetic
engine, all through the one per-sample JSON builder (`sample_metadata`), null-heavy samples first.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from m2u.datasets.plan import InputItem, group_by_shard, plan_samples
from m2u.datasets.shards import ShardWriter
from m2u.datasets.synthetic import draw_face, make_synthetic_sample, write_synthetic_dataset
from m2u.datasets.writer import MASK_META_SCHEMA, mask_metadata, sample_members, sample_metadata
from m2u.masking.geometry import MaskingError
from m2u.masking.render import MaskConfig, apply_mask
from m2u.masking.templates import MASK_TYPES

hf_datasets = pytest.importorskip("datasets")

SIZE = 80


def _mask_config(index: int) -> MaskConfig:
    # The first samples (what HF infers the schema from) have no colour and no pattern: the values that were null.
    return MaskConfig(
        mask_type=MASK_TYPES[index % len(MASK_TYPES)],
        color=None if index < 40 or index % 3 == 0 else "random",
        pattern=None if index < 40 or index % 2 == 0 else "random",
    )


def _turned(face):
    """The drawn face with its left jaw squashed towards the nose, as on a turned head."""
    landmarks = face.landmarks.copy()
    landmarks[0:8, 0] += 0.2 * (landmarks[30, 0] - landmarks[0:8, 0])
    landmarks[3:6, 1] -= 4
    return type(face)(image=face.image, landmarks=landmarks)


def _write_mixed_dataset(out: Path, n_samples: int) -> Counter:
    """Shards in the layout m2u-make-dataset writes, every 5th sample from the synthetic engine, the others
    from the real masking engine on drawn faces. Returns the count of samples per mask type."""
    items = [
        InputItem(f"face-{i:05d}", f"drawn://face-{i:05d}", f"id-{i // 4:04d}") for i in range(n_samples)
    ]
    plan = plan_samples(items, seed=3, fractions=(0.8, 0.1, 0.1), shard_size=64)
    types: Counter = Counter()
    for (split, index), samples in group_by_shard(plan).items():
        with ShardWriter(out / split / f"{split}-{index:06d}.tar") as writer:
            for position, planned in enumerate(samples):
                number = index * 64 + position
                sample = make_synthetic_sample(SIZE, planned.seed)
                unmasked, landmarks = sample.unmasked, sample.landmarks
                masked, mask, meta = sample.masked, sample.mask, sample.mask_meta
                if number % 5 != 4:
                    face = draw_face(SIZE, np.random.default_rng(planned.seed))
                    if number >= 40 and number % 3 == 1:
                        face = _turned(face)  # its mesh needs a fallback: `fallback` is a name, not ""
                    try:
                        result = apply_mask(face.image, face.landmarks, _mask_config(number), planned.seed)
                    except MaskingError:
                        pass  # a refused drawn face keeps its synthetic mask
                    else:
                        unmasked, landmarks = face.image, face.landmarks
                        masked, mask, meta = result.image, result.mask, result.meta
                        mask = np.where((mask > 0) | (masked != face.image).any(-1), 255, 0).astype(np.uint8)
                types[meta["type"]] += 1
                writer.write(
                    planned.key,
                    sample_members(
                        masked=masked,
                        unmasked=unmasked,
                        mask=mask,
                        meta=sample_metadata(planned, SIZE, landmarks, np.eye(2, 3), meta),
                        image_format="png",
                        quality=95,
                    ),
                )
    return types


def _types(value: Any, path: str = "") -> dict[str, str]:
    """JSON type of every leaf (lists by their element types), keyed by path."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_types(item, f"{path}.{key}"))
        return out
    if isinstance(value, list):
        inner = {t for item in value for t in _types(item, path + "[]").items()}
        return dict(inner) if inner else {path: "list<empty>"}
    return {path: type(value).__name__}


@pytest.fixture(scope="module")
def mixed_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Counter]:
    out = tmp_path_factory.mktemp("hf") / "OUT"
    return out, _write_mixed_dataset(out, 400)


def test_the_readme_snippet_as_written_loads_hundreds_of_samples_of_every_mask_type(
    mixed_dataset, tmp_path, monkeypatch
):
    out, types = mixed_dataset
    assert {"surgical", "n95", "kn95", "cloth", "gas"} <= set(types) and sum(types.values()) == 400
    # HF caches under ~/.cache by default: point it at tmp_path (the call itself stays as the README writes it).
    monkeypatch.setattr(hf_datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(out.parent)
    datasets = hf_datasets

    ds = datasets.load_dataset("webdataset", data_files={"train": "OUT/train/*.tar"}, split="train")

    assert len(ds) >= 300
    assert set(ds["json"][0]["mask"]) == set(MASK_META_SCHEMA)
    loaded_types = Counter(meta["mask"]["type"] for meta in ds["json"])
    assert len(loaded_types) >= 6
    colours = {meta["mask"]["color"] for meta in ds["json"]}
    assert "" in colours and any(c.startswith("#") for c in colours)
    fallbacks = Counter(meta["mask"]["fallback"] for meta in ds["json"])
    assert fallbacks[""] and len(fallbacks) >= 2  # some meshes needed a fallback, most did not
    example = ds[0]
    masked, unmasked, mask = (np.asarray(example[k]) for k in ("masked.png", "unmasked.png", "mask.png"))
    assert masked.shape == unmasked.shape == (SIZE, SIZE, 3) and mask.shape == (SIZE, SIZE)
    assert np.array_equal(masked[mask == 0], unmasked[mask == 0])


def test_all_three_splits_load_under_the_names_hf_expects(mixed_dataset, tmp_path, monkeypatch):
    out, _ = mixed_dataset
    monkeypatch.setattr(hf_datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(out.parent)
    ds = hf_datasets.load_dataset(
        "webdataset",
        data_files={"train": "OUT/train/*.tar", "validation": "OUT/val/*.tar", "test": "OUT/test/*.tar"},
    )
    assert set(ds) == {"train", "validation", "test"}
    assert sum(len(ds[s]) for s in ds) == 400
    assert all(len(ds[s]) > 0 for s in ds)


def test_every_sample_json_has_the_same_fields_with_the_same_types(mixed_dataset):
    out, _ = mixed_dataset
    import tarfile

    seen: dict[tuple, int] = {}
    for shard in sorted(out.glob("*/*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    signature = tuple(sorted(_types(meta).items()))
                    seen[signature] = seen.get(signature, 0) + 1
    assert len(seen) == 1, f"{len(seen)} different JSON schemas: {list(seen.values())}"
    (signature,) = seen
    assert not [path for path, kind in signature if kind in ("NoneType", "list<empty>")]


def test_mask_metadata_fills_defaults_keeps_extra_fields_and_refuses_missing_ones():
    landmarks = np.zeros((68, 2))
    anchors = {k: [1, 2] for k in "abcdef"}
    filled = mask_metadata({"type": "x", "anchors": anchors, "mask_pixels": 3, "color": None}, landmarks, 7)
    assert filled["color"] == "" and filled["fallback"] == "" and filled["seed"] == 7
    assert filled["anchors"]["a"] == [1.0, 2.0] and isinstance(filled["anchors"]["a"][0], float)
    assert isinstance(filled["yaw"], float) and filled["template"] == "x"
    assert filled["extra"] == ""
    # A field outside the schema is kept, as JSON text in `extra`: the schema itself does not change.
    more = mask_metadata(
        {"type": "x", "anchors": anchors, "mask_pixels": 3, "flip": np.bool_(True), "box": np.arange(2)},
        landmarks,
        0,
    )
    assert json.loads(more["extra"]) == {"box": [0, 1], "flip": True} and set(more) == set(MASK_META_SCHEMA)
    with pytest.raises(ValueError, match="may not set 'extra'"):
        mask_metadata({"type": "x", "anchors": anchors, "mask_pixels": 3, "extra": "{}"}, landmarks, 0)
    with pytest.raises(ValueError, match="lacks required field.*mask_pixels"):
        mask_metadata({"type": "x", "anchors": anchors}, landmarks, 0)


def test_synthetic_writer_uses_the_same_schema(tmp_path):
    write_synthetic_dataset(tmp_path / "syn", 6, size=32, shard_size=8)
    import tarfile

    shard = sorted((tmp_path / "syn").glob("*/*.tar"))[0]
    with tarfile.open(shard) as tar:
        meta = json.loads(
            next(tar.extractfile(m) for m in tar.getmembers() if m.name.endswith(".json")).read()
        )
    assert set(meta["mask"]) == set(MASK_META_SCHEMA)


def test_the_readme_snippet_on_a_real_celeba_build_with_variants(celeba_first, tmp_path, monkeypatch):
    """A real build (detection, alignment, the masking engine with random types, colours and patterns) of 60
    CelebA photos x 5 variants, read with the README's snippet as written (about 6 s; skipped without the shared
    photos)."""
    from m2u.datasets.build import BuildConfig, build_dataset

    photos = tmp_path / "photos"
    photos.mkdir()
    for path in celeba_first(60):
        shutil.copy(path, photos / path.name)
    mask_options = {"mask_type": "random", "color": "random", "pattern": "random"}
    config = BuildConfig(
        size=128, variants=5, split=(1.0, 0.0, 0.0), mask_options=mask_options, workers=2, progress=False
    )
    build_dataset([photos], tmp_path / "OUT", config)
    monkeypatch.setattr(hf_datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)
    datasets = hf_datasets

    ds = datasets.load_dataset("webdataset", data_files={"train": "OUT/train/*.tar"}, split="train")

    assert len(ds) >= 280  # 300 planned; a few faces may be refused
    assert len({meta["mask"]["type"] for meta in ds["json"]}) >= 5
