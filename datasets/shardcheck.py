"""Shard resolution and verification: sources -> shard lists, and each shard checked against the dataset's record."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from m2u.core.guard import UserError
from m2u.datasets.layout import (
    MANIFEST_NAME,
    STATS_NAME,
    Status,
    is_url,
    read_json,
    read_manifest,
    split_shards,
    stats_path_of,
    validate_split,
)
from m2u.datasets.shards import file_digest
from m2u.datasets.tarread import TAR_BLOCK, TAR_END, is_stream_url


class ShardError(UserError, RuntimeError):
    """A truncated or corrupt shard or sample; the message names the shard (and the sample)."""


def is_dataset_url(text: str) -> bool:
    """A URL naming a dataset folder (s3://bucket/prefix), not shards (a .tar URL or brace pattern of them)."""
    return is_url(text) and not text.startswith("pipe:") and ".tar" not in text and "{" not in text


def resolve_shards(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], split: str | None = None
) -> list[str]:
    """Turn a dataset folder, glob, brace pattern, URL or list of those into a list of shard paths/URLs."""
    if not isinstance(source, str | os.PathLike):  # a list or tuple of sources
        # A shard named twice (a glob and its folder, or a typo'd list) is read once: its samples once an epoch.
        shards = list(dict.fromkeys(s for item in source for s in resolve_shards(item, None)))
    else:
        text = os.fspath(source)
        path = Path(text)
        if not is_stream_url(text) and path.is_dir():
            if split is None and (path / MANIFEST_NAME).is_file():
                raise ValueError(f"{text} is a dataset: name the split to read (train, val or test)")
            if split is not None and (path / validate_split(split)).is_dir():
                shards = [str(p) for p in split_shards(path, split)]
            elif split is not None and (path / MANIFEST_NAME).is_file():
                raise FileNotFoundError(f"split {split!r} of the dataset {text} has no samples")
            else:
                shards = sorted(str(p) for p in path.glob("*.tar"))
        elif not is_stream_url(text) and any(ch in text for ch in "*?["):
            shards = sorted(glob.glob(text))
        else:
            from webdataset.shardlists import expand_urls

            shards = expand_urls(text)
    if not shards:
        where = f" for split {split!r}" if split else ""
        raise FileNotFoundError(f"no shards found{where} in {source!r}")
    return shards


# The other way past a damaged shard, said only as the Python setting it is: m2u's commands read every dataset
# with on_error="raise" (a model trained or scored on part of a split must not pass for the whole), so their
# users are told to rebuild, and told that the skip is a library setting, not an option they missed.
FROM_PYTHON_SKIP = "; from Python, LoaderConfig(on_error='skip') leaves out what is damaged"


def check_shard_complete(path: str) -> None:
    """Raise ShardError unless the local tar ``path`` ends with its end-of-archive blocks."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            handle.seek(max(0, size - len(TAR_END)))
            tail = handle.read()
    except OSError as exc:
        raise ShardError(f"shard {path} cannot be read: {exc.strerror or exc}") from exc
    if size % TAR_BLOCK or tail != TAR_END:
        raise ShardError(
            f"shard {path} is truncated ({size} bytes, no end-of-archive marker); rebuild it (rerun "
            f"m2u-make-dataset with the same arguments){FROM_PYTHON_SKIP}"
        )


def shard_sample_counts(dataset_dir: str | os.PathLike[str], split: str) -> dict[str, int]:
    """Samples per shard of ``split`` according to the dataset's manifest (shard path → count), sorted by path."""
    manifest = read_manifest(dataset_dir)
    written = manifest[(manifest["split"] == split) & (manifest["status"] == Status.OK.value)]
    counts = {str(Path(dataset_dir) / shard): int(n) for shard, n in written.groupby("shard").size().items()}
    return dict(sorted(counts.items()))


def verify_shards(shards: Sequence[str], digest: bool = True) -> dict[str, str]:
    """What is wrong with each listed shard of a dataset folder (shard → problem): missing, without the stats
    JSON its build committed beside it (deleted), or not the size (and, with ``digest``, the SHA-256) that stats
    JSON and the build's commit marker record (an edited stats JSON disagrees with the marker). The size checks
    cost a stat per shard, so every loader of a dataset folder runs them; ``digest`` re-reads every shard."""
    problems = {}
    for url in [shards] if isinstance(shards, str) else shards:  # one shard, not its characters
        path = Path(url)
        if not path.is_file():
            problems[url] = f"shard {url} is listed in the manifest but missing"
            continue
        stats = read_json(stats_path_of(path))
        if not isinstance(stats, dict) or stats.get("sha256") is None:
            problems[url] = (
                f"shard {url} has no readable stats record ({stats_path_of(path).name}, written when the shard "
                "was committed): it was deleted or damaged"
            )
            continue
        committed = _committed_record(path)
        if committed is not None and committed != (stats.get("bytes"), stats["sha256"]):
            problems[url] = (
                f"the stats record of shard {url} differs from the build's commit record: it was edited"
            )
            continue
        size = path.stat().st_size
        if size != stats.get("bytes"):
            problems[url] = f"shard {url} has {size} bytes, {stats.get('bytes')} were committed"
        elif digest and file_digest(path)[1] != stats["sha256"]:
            problems[url] = f"shard {url} does not hold what was committed (SHA-256 differs)"
    return problems


def first_shard_problem(folder: str | os.PathLike[str]) -> str | None:
    """The first shard the manifest of the dataset `folder` lists that is missing or disagrees with its stats or
    commit record (`verify_shards` by size, no hashing), said with the shard's name; None when every one agrees. A
    manifest that cannot be read raises (OSError, ValueError)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    written = manifest[manifest["status"] == Status.OK.value]
    shards = sorted({str(folder / shard) for shard in written["shard"].dropna().unique()})
    return next(iter(verify_shards(shards, digest=False).values()), None)


def _committed_record(shard: Path) -> tuple[int, str] | None:
    """(bytes, SHA-256) the build's commit marker (OUT/.m2u-build/<split>-NNNNNN.parquet) records for `shard`;
    None when there is no marker (a dataset copied without its build state)."""
    import pyarrow.parquet as pq

    from m2u.datasets.layout import SHARD_SUFFIX, STATE_DIR

    marker = shard.parent.parent / STATE_DIR / shard.name.replace(SHARD_SUFFIX, ".parquet")
    try:
        metadata = pq.read_schema(marker).metadata or {}
        return int(metadata[b"m2u.shard_bytes"]), metadata[b"m2u.shard_sha256"].decode()
    except (OSError, KeyError, ValueError):
        return None


def check_dataset_record(folder: Path) -> None:
    """A dataset folder m2u built is read only through its manifest, the record of what it holds: one without
    manifest.parquet (deleted, or a --partition build not finalised yet) is refused rather than read as whatever
    shards are left. A folder of shards m2u did not build (no build state, no stats.json) is read as it is."""
    from m2u.datasets.layout import STATE_DIR, STATS_NAME
    from m2u.datasets.locks import built_in_partitions

    if (folder / MANIFEST_NAME).is_file():
        return
    if (folder / STATE_DIR).is_dir() or (folder / STATS_NAME).is_file():
        unfinished = (folder / STATE_DIR).is_dir() and not (folder / STATS_NAME).is_file()
        if not unfinished:
            why = "it was deleted: rebuild it (rerun m2u-make-dataset with the same arguments)"
        elif built_in_partitions(folder):
            # Only a run without --partition writes the manifests: --finalize, or a plain run building the rest.
            why = (
                "its build in partitions is not finalised: once every partition is done, run m2u-make-dataset "
                "with the same arguments and --finalize (without --partition) to write it"
            )
        else:
            # A run stopped (Ctrl-C, a crash) before its manifests: a rerun resumes it from its committed shards.
            why = (
                "its build did not finish (it was stopped before writing its manifests): rerun m2u-make-dataset "
                "with the same arguments to finish it"
            )
        raise ShardError(f"the dataset {folder} has no {MANIFEST_NAME}, the record of what it holds; {why}")


def dataset_image_size(dataset_dir: str | os.PathLike[str]) -> int | None:
    """The side of the dataset's samples, from its stats.json (None when it does not say)."""
    stats = read_json(Path(dataset_dir) / STATS_NAME) or {}
    size = stats.get("arguments", {}).get("size")
    return int(size) if isinstance(size, int) else None


def count_samples(source: str | os.PathLike[str], split: str) -> int:
    """Number of written samples of ``split`` in a dataset folder, from its manifest."""
    manifest = read_manifest(source)
    validate_split(split)
    return int(((manifest["split"] == split) & (manifest["status"] == Status.OK.value)).sum())
