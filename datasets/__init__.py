"""m2u.datasets: paired masked/unmasked face datasets as WebDataset shards, and the streaming loader.

Public surface (imported lazily: torch, OpenCV and dlib load only when used)::

    build_dataset(inputs, out_dir, config=BuildConfig()) -> BuildResult      # what m2u-make-dataset runs
    BuildConfig, BuildError, BuildLockedError
    plan_build(inputs, config) -> BuildPlan; make_distributor(config); MultiprocessingDistributor, RayDistributor
    make_loader(source, split="train", config=LoaderConfig()) -> PairedLoader  # batches of float tensors
    LoaderConfig, PairedLoader, PairedShardDataset, to_float_batch, resolve_shards, count_samples
    ShardError  # a truncated or corrupt shard (LoaderConfig.on_error="raise"); on_error="skip" counts instead
    align_face(image, landmarks68, size) -> AlignedFace(image, matrix, landmarks); paste_face(original, crop, matrix)
    discover_inputs(inputs, identity_file=None, identity_pattern=None, limit=None) -> list[InputItem]
    write_synthetic_dataset(out_dir, n_samples, size=64, seed=0, ...), make_synthetic_sample(size, seed)
    read_manifest(path), SPLITS, Status, MANIFEST_SCHEMA, SPLIT_SCHEMA, COLUMNS, DEFAULT_IMAGE_SIZE,
    DEFAULT_SPLIT_FRACTIONS; verify_shards(shards) -> {shard: problem}

Layout, keys and the manifest: m2u.datasets.layout. Epoch guarantees of the loader and how to open the shards
with HuggingFace ``datasets.load_dataset("webdataset", ...)``: m2u.datasets.loader.
"""

from __future__ import annotations

from m2u.core.lazy import lazy_exports

_EXPORTS = {
    "build_dataset": "build",
    "BuildConfig": "build",
    "BuildError": "build",
    "BuildLockedError": "build",
    "BuildResult": "build",
    "BuildPlan": "build",
    "plan_build": "build",
    "make_distributor": "distributors",
    "MultiprocessingDistributor": "distributors",
    "RayDistributor": "distributors",
    "verify_shards": "shardcheck",
    "SPLIT_SCHEMA": "layout",
    "COLUMNS": "layout",
    "align_face": "align",
    "paste_face": "align",
    "AlignedFace": "align",
    "discover_inputs": "sources",
    "to_float_batch": "batches",
    "make_loader": "loader",
    "LoaderConfig": "loader",
    "PairedLoader": "loader",
    "PairedShardDataset": "loader",
    "resolve_shards": "shardcheck",
    "count_samples": "shardcheck",
    "ShardError": "shardcheck",
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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
