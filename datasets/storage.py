"""Datasets on object storage (`s3://bucket/prefix`, `gs://`, `hdfs://`, any fsspec URL).

A dataset at a URL is the same files as a local one (shards, their stats, manifests, stats.json). m2u builds and
reads it through a local copy, kept in a cache folder per URL (``$M2U_CACHE`` or ``~/.cache/m2u``, then
``datasets/<sha of the URL>``):

- `m2u-make-dataset -o URL` first fetches what the URL already holds (a build another machine started), builds
  (or resumes) locally exactly as for a local folder, then uploads every file whose size differs from the
  remote one: the bytes at the URL are those of a local build, and a rerun resumes both the build and the upload.
- `--data URL` (loader, m2u-eval, m2u-train) fetches the dataset once (files already in the cache with their
  remote size are kept) and reads the local copy, with the same checks as any local dataset.

Why a local copy instead of streaming: every dataset check (shard sizes and SHA-256 against their stats, the
manifest's counts) and the resumable build run unchanged, and the local path is not touched at all. fsspec does
the transport (s3fs for s3://, gcsfs for gs://); the build lock and the atomic commits stay local.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from m2u.core.errors import SettingError
from m2u.datasets.layout import LOCK_NAME, MANIFEST_NAME, STATE_DIR

CACHE_ENV = "M2U_CACHE"

T = TypeVar("T")


class StorageError(ValueError):
    """A dataset URL that cannot be used (no fsspec driver, unreachable, not a dataset)."""


def is_url(text: str | os.PathLike[str]) -> bool:
    """A URL with a scheme fsspec handles (`s3://...`); `file://` and plain paths are local."""
    text = os.fspath(text)
    return "://" in text and not text.startswith(FILE_SCHEME)


FILE_SCHEME = "file://"


def local_location(text: str | os.PathLike[str]) -> str:
    """`text` as a local path where it is a `file://` URL (`file:///data/ds` -> `/data/ds`, as fsspec reads it):
    read and written in place, with no copy; anything else unchanged. Every place that takes a dataset location
    calls it first (a `file://` text taken as a path made a folder named `file:`)."""
    text = os.fspath(text)
    if not text.startswith(FILE_SCHEME):
        return text
    path = text[len(FILE_SCHEME) :]
    return path[len("localhost") :] if path.startswith("localhost/") else path  # file://localhost/data/ds


def cache_folder(url: str) -> Path:
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "m2u")
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return root / "datasets" / digest


def _filesystem(url: str):
    try:
        import fsspec
    except ImportError as error:  # pragma: no cover - fsspec comes with the install
        raise StorageError(f"{url}: reading URLs needs fsspec (pip install fsspec)") from error
    try:
        fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    except (ImportError, ValueError) as error:
        raise StorageError(
            f"{url}: no fsspec driver for this URL ({error}); for s3:// pip install s3fs"
        ) from error
    return fs, root


def _remote_sizes(fs, root: str) -> dict[str, int]:
    """Relative path -> size of every file under `root` (none when it does not exist)."""
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    sizes = {}
    for path, info in found.items():
        if info.get("type", "file") != "file":
            continue
        relative = path[len(root) :].lstrip("/")
        if relative:
            sizes[relative] = int(info.get("size") or 0)
    return sizes


def _is_lock(relative: str) -> bool:
    return relative == LOCK_NAME or relative.endswith(".lock")


def fetch(url: str, local: Path | None = None, *, require_manifest: bool = True) -> Path:
    """The dataset at `url` as a local folder (the cache, or `local`): every remote file not there with the same
    size is downloaded. StorageError when the URL holds no dataset (`require_manifest`) or cannot be read."""
    fs, root = _filesystem(url)
    local = local or cache_folder(url)
    try:
        remote = _remote_sizes(fs, root)
    except Exception as error:
        raise StorageError(f"{url} cannot be read: {type(error).__name__}: {error}") from error
    if require_manifest and MANIFEST_NAME not in remote:
        raise StorageError(
            f"{url} holds no dataset (no {MANIFEST_NAME}); build one with m2u-make-dataset -o {url}"
        )
    for relative, size in sorted(remote.items()):
        target = local / relative
        if target.is_file() and target.stat().st_size == size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.part")  # DDP ranks may fetch at once
        fs.get_file(f"{root}/{relative}", str(partial))
        os.replace(partial, target)
    return local


def upload(local: Path, url: str) -> int:
    """Upload every file of the local dataset folder whose remote copy is missing or of another size (the
    manifests and stats.json last, so a reader never sees a manifest naming shards not there yet). The build's
    state folder goes too (another machine resumes from it); its locks stay local. Returns the number of files
    uploaded."""
    fs, root = _filesystem(url)
    remote = _remote_sizes(fs, root)
    files = sorted(
        p.relative_to(local).as_posix()
        for p in local.rglob("*")
        if p.is_file() and not p.name.endswith(".part")
    )
    files = [f for f in files if not _is_lock(f)]
    last = [f for f in files if "/" not in f and not f.endswith(".tar")]  # manifests, stats.json
    uploaded = 0
    for relative in [f for f in files if f not in last] + last:
        if remote.get(relative) == (local / relative).stat().st_size:
            continue
        fs.put_file(str(local / relative), f"{root}/{relative}")
        uploaded += 1
    return uploaded


def local_dataset(data: str | os.PathLike[str]) -> str:
    """`data` itself when local; for a URL, its local copy (fetched as needed)."""
    text = local_location(data)
    return str(fetch(text)) if is_url(text) else text


def check_dataset(data: str | os.PathLike[str]) -> None:
    """ValueError with one line when `data` is not a dataset m2u can read (checked before any model loads)."""
    text = local_location(data)
    if is_url(text):
        fs, root = _filesystem(text)
        try:
            present = fs.exists(f"{root}/{MANIFEST_NAME}")
        except Exception as error:
            raise StorageError(f"`data` {text} cannot be read: {type(error).__name__}: {error}") from error
        if not present:
            raise StorageError(f"`data` {text} holds no dataset (no {MANIFEST_NAME})")
        return
    path = Path(text)
    if not path.exists():
        raise SettingError("data", f"{text} does not exist")
    if not path.is_dir():
        raise SettingError(
            "data", f"{text} is not a folder (a dataset is the folder m2u-make-dataset -o wrote)"
        )
    if not (path / MANIFEST_NAME).is_file():
        if (path / STATE_DIR).is_dir():
            raise SettingError(
                "data",
                f"{text} is a dataset whose build has not finished (its {MANIFEST_NAME} is written last): run the "
                "build that made it again, or finalise it (`finalize`) after its partitions",
            )
        raise SettingError(
            "data", f"{text} is not a dataset (no {MANIFEST_NAME}; build one with m2u-make-dataset)"
        )


def build_at_url(url: str, build: Callable[[str], T]) -> T:
    """Run `build(local_folder)` for a dataset that lives at `url`: fetch what is there, build or resume
    locally, upload what changed. The result of `build` is returned."""
    local = cache_folder(url)
    fetch(url, local, require_manifest=False)
    result = build(str(local))
    upload(local, url)
    return result
