"""m2u.datasets: paired masked/unmasked face datasets as WebDataset shards, and the streaming loader.

Public surface (imported lazily: torch and OpenCV load only when used)::

    make_loader(source, split="train", config=LoaderConfig()) -> PairedLoader
    LoaderConfig, PairedLoader, PairedShardDataset, resolve_shards, count_samples
    write_synthetic_dataset(out_dir, n_samples, size=64, seed=0, ...)
    read_manifest(path), SPLITS, Status, MANIFEST_SCHEMA
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "make_loader": "loader",
    "LoaderConfig": "loader",
    "PairedLoader": "loader",
    "PairedShardDataset": "loader",
    "resolve_shards": "loader",
    "count_samples": "loader",
    "write_synthetic_dataset": "synthetic",
    "make_synthetic_sample": "synthetic",
    "read_manifest": "layout",
    "SPLITS": "layout",
    "Status": "layout",
    "MANIFEST_SCHEMA": "layout",
    "DEFAULT_IMAGE_SIZE": "layout",
    "DEFAULT_SPLIT_FRACTIONS": "layout",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'm2u.datasets' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"m2u.datasets.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
