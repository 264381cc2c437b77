"""Datasets on object storage (`s3://bucket/prefix`, `gs://`, `hdfs://`, any fsspec URL).

A dataset at a URL is the same files as a local one (shards, their stats, manifests, stats.json). m2u builds and
reads it through a local copy, kept in a cache folder per URL (``$M2U_CACHE`` or ``~/.cache/m2u``, then
``datasets/<sha of the URL>``):

- `m2u-make-dataset -o URL` first checks that the URL can be written (a small probe object, written and removed),
  takes the URL's build lease (``.m2u-build-lease.json``: one build at a time per URL, on any machine; see
  _UrlLease), fetches what the URL already holds (a build another machine started), builds (or resumes) locally exactly as
  for a local folder, then uploads: the bytes at the URL are those of the local build, every file compared by
  its SHA-256, and the files an earlier m2u upload put there that this build no longer has are removed (never a
  file m2u did not write). A build that stops (Ctrl-C, SIGTERM, a failure) uploads what it committed, without
  ``manifest.parquet``: a rerun, here or on another machine, resumes from it, and no reader takes it as finished.
- `--data URL` (loader, m2u-eval, m2u-train) fetches the dataset (a cached file is kept only when it holds the
  bytes the URL's upload record lists) and reads the local copy, with the same checks as any local dataset.

The upload record, ``.m2u-uploaded.json`` at the URL (never in a local folder): the size and SHA-256 of every file
an upload put there, and the names of the other files m2u wrote there. An upload first removes the URL's
``manifest.parquet`` and lists the files it is about to replace as of unknown content; the complete record goes
up once everything else has, and ``manifest.parquet`` after it: the URL holds a finished dataset exactly when it
holds a manifest the record lists. What this machine knows of a local copy (the SHA-256 of its files by size,
mtime and inode, and what the URL held when it last fetched or uploaded each file) is kept in the cache beside the
copies (``datasets/<sha>.sync.json``), so a file is hashed once, not on every start.

Why a local copy instead of streaming: every dataset check (shard sizes and SHA-256 against their stats, the
manifest's counts) and the resumable build run unchanged, and the local path is not touched at all. fsspec does
the transport (s3fs for s3://, gcsfs for gs://); the build lock and the atomic commits stay local.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from m2u.core.errors import SettingError
from m2u.core.fileio import RECORD_NAME, is_temp_name, recorded_names, replace_problem, write_cache_file
from m2u.core.guard import stop_of
from m2u.core.imageio import DigestCache

# is_url and local_location live with the layout (the shard checks read them too); kept importable from here.
from m2u.datasets.config import BuildError
from m2u.datasets.layout import (
    LOCK_NAME,
    MANIFEST_NAME,
    STATE_DIR,
    is_build_file,
    is_url,
    local_location,
)

CACHE_ENV = "M2U_CACHE"
# At the URL: the upload record (see the module docstring), and the probe object a build writes and removes first.
UPLOAD_RECORD_NAME = ".m2u-uploaded.json"
PROBE_PREFIX = ".m2u-probe-"
# fsspec filesystems whose files live in the Python process itself: gone when it exits.
IN_PROCESS_PROTOCOLS = frozenset({"memory"})
# How often a long upload re-uploads its record (so that a stopped upload does not send its files again).
RECORD_FLUSH_S = 30.0
# At the URL while a build runs: who builds there (see _UrlLease). Never travels, never in the upload record.
LEASE_NAME = ".m2u-build-lease.json"
# The lease is renewed this often: ten renewals fit in the staleness limit, so a few failed ones (a network blip,
# throttling) never make a live build look dead.
LEASE_RENEW_S = 60.0
# A lease not renewed for this long is a dead build's (killed, its machine gone) and is taken over. Long enough to
# absorb some clock skew between machines (staleness compares this machine's clock with the holder's), short
# enough that a URL is free again soon after a crash.
LEASE_STALE_S = 600.0
# Between writing the lease and reading it back: longer than one write takes, so that a build that found no lease
# at the same moment as this one has written its own by then, and of the two only the last writer reads its token.
LEASE_SETTLE_S = 2.0

T = TypeVar("T")


def _this_machine() -> str | None:
    """Which running system this process is in, as a build lease records it: the kernel's boot id and the process
    namespace, so that a pid named by a lease of the same value is a pid here (a container sharing the host's
    kernel has a namespace of its own). None where the system does not say (no /proc)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return f"{boot} {namespace}" if boot and namespace else None


def _process_gone(pid: int) -> bool:
    """True only when no process `pid` exists here (one that exists, also another user's, is not gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class StorageError(ValueError):
    """A dataset URL that cannot be used (no fsspec driver, unreachable, not a dataset)."""


class UploadError(StorageError):
    """A build finished locally and its upload failed: the build is kept in the local cache for a rerun."""


def cache_folder(url: str, *, reading: bool = False) -> Path:
    """This machine's local copy of the dataset at `url`: a build's (built, resumed and uploaded from), or, with
    `reading`, the readers' (m2u-train, m2u-eval, the loader). Two folders: a reader's fetch never changes the
    files a build on this machine is writing or has kept for a rerun's upload."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "m2u")
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return root / "datasets" / (f"{digest}-read" if reading else digest)


@contextlib.contextmanager
def _cache_lock(local: Path, url: str, *, wait: bool) -> Iterator[None]:
    """Hold the lock of a cache folder (a file beside it: locks never travel). A build takes it before fetching,
    so a second build into the same cache is refused before it changes anything; readers wait for each other (DDP
    ranks fetching at once) instead of downloading into one folder together."""
    import filelock

    local.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.UnixFileLock(str(local.with_name(f"{local.name}.lock")), timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise StorageError(
            f"another m2u-make-dataset run on this machine is building {url} (in its cache {local}); wait for it "
            "to finish"
        ) from None
    try:
        yield
    finally:
        lock.release()


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


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def _is_in_process(fs) -> bool:
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    return bool(protocols & IN_PROCESS_PROTOCOLS)


def _remote_sizes(fs, root: str, versions: dict[str, str] | None = None) -> dict[str, int]:
    """Relative path -> size of every file under `root` (none when it does not exist); `versions` gets each
    file's version as the file system tells it (an ETag, a modification time): it changes when the file is
    written again, also with the same size."""
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
            if versions is not None:
                versions[relative] = _version(info)
    return sizes


def _version(info: dict[str, Any]) -> str:
    for key in ("ETag", "etag", "md5Hash", "generation", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return f"{key}={info[key]}"
    return ""


def _is_lock(relative: str) -> bool:
    return relative == LOCK_NAME or relative.endswith(".lock")


def _travels(relative: str) -> bool:
    """Whether a file goes between a local copy and the URL: not a lock (locks stay local), the upload record
    (read on its own), the build lease (the URL's own), a probe, a partial download or a killed writer's
    temporary file."""
    name = relative.rsplit("/", 1)[-1]
    return not (
        _is_lock(relative)
        or relative in (UPLOAD_RECORD_NAME, LEASE_NAME)
        or name.startswith(PROBE_PREFIX)
        or name.endswith(".part")
        or is_temp_name(name)
    )


def _read_upload_record(fs, root: str) -> dict[str, dict[str, Any]]:
    """The files of the URL's upload record (relative path -> {"bytes", "sha256"}, either None when unknown)."""
    try:
        data = json.loads(fs.cat_file(f"{root}/{UPLOAD_RECORD_NAME}"))
    except FileNotFoundError:
        return {}
    except ValueError:  # unreadable: every file there counts as of unknown content
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return {str(k): v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}


def _recorded_sha(record: dict[str, dict[str, Any]] | None, relative: str, size: int | None) -> str | None:
    """The SHA-256 the upload record lists for a remote file of `size` bytes; None when unknown."""
    entry = (record or {}).get(relative) or {}
    sha = entry.get("sha256")
    return sha if isinstance(sha, str) and size is not None and entry.get("bytes") == size else None


class _SyncState:
    """What this machine knows of a local copy of a URL's dataset: the SHA-256 of its files (by file status: a
    file is hashed once) and, per file, the SHA-256 the URL held when this machine last fetched or
    uploaded it. Kept in the cache folder beside the copies, never in the dataset folder (which is uploaded)."""

    def __init__(self, url: str, local: Path):
        self.local = local
        folder = os.fspath(local.resolve())
        named = f"{url.rstrip('/')}\0{folder}".encode("utf-8", "surrogateescape")
        key = hashlib.sha256(named).hexdigest()[:16]
        self.path = cache_folder(url).parent / f"{key}.sync.json"
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        data = data if isinstance(data, dict) and data.get("folder") == folder else {}
        self.folder = folder
        # relative path -> (SHA-256, file status) of the local file (m2u.core.imageio.DigestCache); -> the SHA-256
        # the URL held when this machine last synced it.
        kept = data.get("digests") or {}
        self.digests = DigestCache(
            {
                k: (v[0], v[1]) for k, v in kept.items() if isinstance(v, list) and len(v) == 2
            }  # earlier: hashed anew
        )
        self.synced: dict[str, str] = dict(data.get("synced") or {})
        # relative path -> the URL's version of the file (`_version`) when this machine last found it holding
        # the synced bytes; and the files the URL was found to hold other bytes of than its record says (written
        # there by hand: same size or not): the next upload sends them again.
        self.seen: dict[str, str] = dict(data.get("seen") or {})
        self.altered: set[str] = set(data.get("altered") or ())

    def digest(self, relative: str) -> str | None:
        """The SHA-256 of the local file (None when there is none)."""
        try:
            return self.digests.sha256(self.local / relative, relative)
        except (FileNotFoundError, NotADirectoryError):
            self.digests.forget(relative)
            return None

    def sent(self, relative: str) -> None:
        """`relative` was just uploaded: its new version at the URL is read once the upload is done."""
        self.seen.pop(relative, None)
        self.altered.discard(relative)

    def save(self) -> None:
        digests = {k: list(v) for k, v in self.digests.entries.items()}
        text = json.dumps(
            {
                "folder": self.folder,
                "digests": digests,
                "synced": self.synced,
                "seen": self.seen,
                "altered": sorted(self.altered),
            }
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_cache_file(self.path, lambda temp: Path(temp).write_text(text))  # a cache: never fails the run


def check_output_url(url: str, *, in_process_ok: bool = True) -> None:
    """StorageError with one line unless a build can write to `url`: a small probe object is written there and
    removed (a missing bucket, missing credentials or no write permission are found before the build, not after
    it). `in_process_ok=False` also refuses a filesystem that lives in this process only (memory://)."""
    fs, root = _filesystem(url)
    if not in_process_ok and _is_in_process(fs):
        raise StorageError(
            f"`out_dir` {url} is in this process's memory only: the dataset would be gone when the command exits; "
            "give a bucket URL (s3://bucket/prefix) or a folder"
        )
    probe = f"{root}/{PROBE_PREFIX}{secrets.token_hex(4)}"
    try:
        _send(fs, probe, data=b"")
        fs.rm_file(probe)
    except Exception as error:
        raise StorageError(
            f"`out_dir` {url} cannot be written ({_one_line(error)}); check that the bucket exists and that these "
            "credentials may write and delete there"
        ) from error


def fetch(
    url: str, local: Path | None = None, *, require_manifest: bool = True, keep_local_changes: bool = False
) -> Path:
    """The dataset at `url` as a local folder (the cache, or `local`): every remote file is downloaded unless the
    local copy holds the bytes the URL's upload record lists (the same size, for a URL m2u uploaded to before it
    kept that record); files this machine fetched or uploaded that the URL no longer holds are removed.
    `keep_local_changes` (a build resuming): a local file changed since this machine last synced it while the
    URL's copy did not change is kept (a build not uploaded yet). StorageError when the URL holds no finished
    dataset (`require_manifest`) or cannot be read."""
    return _fetch(url, local, require_manifest=require_manifest, keep_local_changes=keep_local_changes)[0]


def _fetch(
    url: str, local: Path | None, *, require_manifest: bool, keep_local_changes: bool
) -> tuple[Path, bool]:
    """fetch; also whether the URL has an upload record (its files were compared by content)."""
    fs, root = _filesystem(url)
    local = Path(local or cache_folder(url))
    versions: dict[str, str] = {}
    try:
        listing = _remote_sizes(fs, root, versions)
        record = _read_upload_record(fs, root) if UPLOAD_RECORD_NAME in listing else None
    except Exception as error:
        raise StorageError(f"{url} cannot be read: {_one_line(error)}") from error
    remote = {relative: size for relative, size in listing.items() if _travels(relative)}
    if require_manifest and MANIFEST_NAME not in remote:
        if any(relative.startswith(f"{STATE_DIR}/") for relative in remote):
            raise StorageError(
                f"{url} holds no dataset yet: a build there has not finished (no {MANIFEST_NAME}); rerun that "
                f"build (m2u-make-dataset -o {url}, here or on another machine) to finish it"
            )
        raise StorageError(
            f"{url} holds no dataset (no {MANIFEST_NAME}); build one with m2u-make-dataset -o {url}"
        )
    if (
        require_manifest
        and record is not None
        and _recorded_sha(record, MANIFEST_NAME, remote[MANIFEST_NAME]) is None
    ):
        raise StorageError(
            f"{url} holds a dataset whose upload has not finished ({UPLOAD_RECORD_NAME} there does not list its "
            f"{MANIFEST_NAME}): wait for the upload, or rerun the build that writes it"
        )
    state = _SyncState(url, local)
    try:
        for relative, size in sorted(remote.items()):
            expected = _recorded_sha(record, relative, size)
            target = local / relative
            if (
                keep_local_changes
                and expected is not None
                and not target.exists()
                and state.synced.get(relative) == expected
            ):
                continue  # synced here, since removed here (an `overwrite` build not uploaded yet): newer work
            if target.is_file():
                if expected is not None:
                    have = state.digest(relative)
                    rewritten = state.seen.get(relative, versions[relative]) != versions[relative]
                    if have == expected and rewritten and keep_local_changes:
                        state.altered.add(relative)  # the URL's copy was written again since: sent again
                        continue
                    if have == expected and not rewritten:
                        state.synced[relative] = expected
                        state.seen[relative] = versions[relative]
                        continue
                    if keep_local_changes and state.synced.get(relative) == expected:
                        continue  # the URL holds what it held when synced: the local file is newer work
                elif (keep_local_changes and record is not None) or target.stat().st_size == size:
                    continue  # content unknown: a file an upload was replacing (the local one is newer), or sizes
            _download(fs, root, url, relative, target)
            if expected is None:
                # Not in the upload record (a person's file beside the dataset, a dataset uploaded by hand): what
                # was fetched is tracked all the same, so it goes from the copy once it goes from the URL.
                digest = state.digest(relative)
                if digest is not None:
                    state.synced[relative] = digest
                continue
            if state.digest(relative) != expected and keep_local_changes:
                # A build: the URL holds other bytes than its record says (changed by hand). Not taken: the build
                # makes the file again (a shard without its file is rebuilt), and its upload sends it.
                (local / relative).unlink(missing_ok=True)
                state.digests.forget(relative)
                state.synced.pop(relative, None)
                state.altered.add(relative)
                continue
            if state.digest(relative) != expected:
                raise StorageError(
                    f"{url}/{relative} does not hold what {UPLOAD_RECORD_NAME} there lists (SHA-256 differs): it "
                    "was changed after m2u uploaded it, or is being uploaded now; rerun the build that writes it"
                )
            state.synced[relative] = expected
            state.seen[relative] = versions[relative]
        _remove_dropped(local, remote, state)
    finally:
        state.save()
    return local, record is not None


def _download(fs, root: str, url: str, relative: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")  # DDP ranks may fetch at once
    try:
        fs.get_file(f"{root}/{relative}", str(partial))
    except Exception as error:
        partial.unlink(missing_ok=True)
        raise StorageError(f"{url}/{relative} cannot be fetched: {_one_line(error)}") from error
    os.replace(partial, target)


def _remove_dropped(local: Path, remote: dict[str, int], state: _SyncState) -> None:
    """Remove the local files the URL held when this machine last synced them and holds no more (a rebuild there
    dropped them), unchanged since; a folder's ``.m2u-written`` goes only with the last file beside it."""
    dropped = [relative for relative in state.synced if relative not in remote]
    records = []
    for relative in sorted(dropped):
        sha = state.synced.pop(relative)
        if state.digest(relative) != sha:
            continue  # changed here since: not the URL's copy any more
        if relative.rsplit("/", 1)[-1] == RECORD_NAME:
            records.append(relative)
            continue
        (local / relative).unlink(missing_ok=True)
        state.digests.forget(relative)
        _remove_empty_folders(local, (local / relative).parent)
    for relative in records:
        folder = (local / relative).parent
        if not any(p.name != RECORD_NAME for p in folder.iterdir()):
            (local / relative).unlink(missing_ok=True)
            state.digests.forget(relative)
            if folder != local and not any(folder.iterdir()):
                folder.rmdir()


def _remove_empty_folders(local: Path, folder: Path) -> None:
    """`folder` and the folders above it inside `local`, as long as each is empty (a dropped file's folder is the
    URL's too: an empty one left in a build's copy reads as other files in its way)."""
    while folder != local and folder.is_relative_to(local):
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone): what is above it stays too
            return
        folder = folder.parent


def _remote_written(
    fs, root: str, remote: dict[str, int], record: dict[str, dict[str, Any]] | None
) -> set[str]:
    """The files at the URL that m2u wrote: those its upload record lists and those the `.m2u-written` records
    uploaded with the folders name (a URL uploaded to before the upload record existed)."""
    ours = set(record or ())
    for relative in remote:
        folder, _, name = relative.rpartition("/")
        if name != RECORD_NAME:
            continue
        ours.add(relative)
        prefix = f"{folder}/" if folder else ""
        ours.update(prefix + name for name in recorded_names(fs.cat_file(f"{root}/{relative}")))
    return ours


def upload(
    local: Path, url: str, *, finished: bool = True, before_change: Callable[[], None] | None = None
) -> int:
    """Make the URL hold the local dataset folder's build files (the shards and their stats, the manifests,
    stats.json, the build state, m2u's `.m2u-written` records): every file whose remote copy is missing or not the
    same bytes (by the SHA-256 of the URL's upload record) is uploaded, shards first, then the other files, then
    the record, ``manifest.parquet`` last (while anything changes the URL holds no manifest, so a reader never
    takes a half-uploaded dataset as finished); the files an earlier m2u upload or build put there that the
    folder no longer has are removed (only the build's files m2u wrote there: never another file). The build's
    state folder goes too (another machine resumes from it); its locks stay local. `finished=False` (a build
    that stopped): ``manifest.parquet`` is not uploaded. `before_change` is called before each change at the URL
    (a build's lease check: it raises to stop the upload there). Returns the number of files uploaded."""
    local = Path(local)
    fs, root = _filesystem(url)
    versions: dict[str, str] = {}
    listing = _remote_sizes(fs, root, versions)
    record = _read_upload_record(fs, root) if UPLOAD_RECORD_NAME in listing else None
    remote = {relative: size for relative, size in listing.items() if _travels(relative)}
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    files = [
        f for f in files if _travels(f) and _is_build_output(local, f) and (finished or f != MANIFEST_NAME)
    ]
    state = _SyncState(url, local)
    try:
        known: dict[str, dict[str, Any]] = {
            f: {"bytes": (local / f).stat().st_size, "sha256": state.digest(f)} for f in files
        }
        changed = [
            f
            for f in files
            if remote.get(f) != known[f]["bytes"]
            or _recorded_sha(record, f, remote.get(f)) != known[f]["sha256"]
            or f in state.altered
            or state.seen.get(f, versions.get(f))
            != versions.get(f)  # written again there since this machine saw it
        ]
        # A stopped build's upload leaves the URL's manifest alone unless something else changes (then it goes
        # first): a build refused at once (other arguments) must not turn a finished dataset there into none.
        candidates = [r for r in remote if r not in known and (finished or r != MANIFEST_NAME)]
        ours = _remote_written(fs, root, remote, record) if candidates else set(record or ())
        stale = _stale(candidates, ours, remote, set(files))
        for f in files:
            if f not in changed:
                state.synced[f] = known[f]["sha256"]
                state.seen[f] = versions[f]
        if not changed and not stale:
            return 0  # the URL's record already lists every file as it is here
        return _upload_changes(
            fs,
            root,
            local,
            remote,
            known,
            changed,
            stale,
            ours,
            finished,
            state,
            before_change or (lambda: None),
        )
    finally:
        state.save()


_UNKNOWN: dict[str, Any] = {"bytes": None, "sha256": None}


def _is_build_output(local: Path, relative: str) -> bool:
    """A file a dataset build writes (m2u.datasets.layout.is_build_file) that m2u did write (its folder's record
    lists it), or a folder's `.m2u-written` record: what an upload sends. Anything else in the local copy (a
    person's file fetched from beside the dataset, even one named like a shard) is not the build's to put back,
    nor to list in the upload record as m2u's."""
    if relative.rsplit("/", 1)[-1] == RECORD_NAME:
        return True
    return is_build_file(PurePosixPath(relative)) and not replace_problem(local / relative, by_name=True)


def _stale(candidates: list[str], ours: set[str], remote: dict[str, int], local: set[str]) -> list[str]:
    """The remote files to remove: a build's files m2u wrote there that the local folder does not have; a
    folder's `.m2u-written` only when nothing else stays in that folder, after the files."""
    files = [r for r in candidates if r in ours and is_build_file(PurePosixPath(r))]
    gone = set(files)
    for relative in candidates:
        folder, _, name = relative.rpartition("/")
        if name != RECORD_NAME or relative not in ours:
            continue
        prefix = f"{folder}/" if folder else ""
        stays = [
            r
            for r in [*remote, *local]
            if r.startswith(prefix) and "/" not in r[len(prefix) :] and r not in gone and r != relative
        ]
        if not stays:
            files.append(relative)
    return files


def _put_record(fs, root: str, entries: dict[str, dict[str, Any]]) -> None:
    text = json.dumps({"generator": "m2u.datasets.storage", "files": entries}, indent=1, sort_keys=True)
    _send(fs, f"{root}/{UPLOAD_RECORD_NAME}", data=text.encode())


# fsspec protocols of file systems with real folders, which refuse a file whose folder is missing. Object stores
# have none, and must never be asked to make one: s3fs's makedirs creates a missing bucket.
FOLDER_PROTOCOLS = frozenset({"file", "local", "sftp", "ssh", "ftp", "smb", "hdfs", "arrow_hdfs"})


def _has_folders(fs) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return any(protocol in FOLDER_PROTOCOLS for protocol in protocols)


def _send(
    fs, target: str, *, data: bytes | None = None, source: Path | None = None, exclusive: bool = False
) -> None:
    """Write one file at the URL (`data`, or the local file `source`). On a file system with folders (local://,
    sftp://, hdfs://) a write refused for a missing folder makes the folder and is tried once more (object stores
    pay no extra request, and a missing bucket stays missing: its error is the caller's). `exclusive` (`data`
    only): FileExistsError when a file is there, where the file system can create exclusively (a local disk,
    S3's conditional write); elsewhere a plain write."""

    def write() -> None:
        if exclusive:
            try:
                with fs.open(target, "xb") as handle:
                    handle.write(data)
                return
            except (FileExistsError, FileNotFoundError, PermissionError):
                raise
            # No exclusive create here: drivers refuse mode "xb" each their own way (ValueError,
            # NotImplementedError, TypeError...). A plain write follows; the lease's read-back settles races.
            except Exception:  # noqa: BLE001
                pass
        if source is None:
            fs.pipe_file(target, data)
        else:
            fs.put_file(str(source), target)

    try:
        write()
    except FileNotFoundError:
        if not _has_folders(fs) or (source is not None and not source.is_file()):
            raise  # a missing bucket, or the local file is what is missing
        fs.makedirs(posixpath.dirname(target), exist_ok=True)
        write()


def _upload_changes(
    fs,
    root: str,
    local: Path,
    remote: dict[str, int],
    known: dict[str, dict[str, Any]],
    changed: list[str],
    stale: list[str],
    ours: set[str],
    finished: bool,
    state: _SyncState,
    before_change: Callable[[], None],
) -> int:
    """upload's work once something differs (see upload for the order)."""
    entries = {r: _UNKNOWN for r in ours if r in remote}  # m2u's files there, content not vouched for yet
    entries.update({f: known[f] for f in known if f not in changed})
    entries.update({f: _UNKNOWN for f in changed})
    entries.pop(MANIFEST_NAME, None)
    before_change()
    if MANIFEST_NAME in remote:
        fs.rm_file(f"{root}/{MANIFEST_NAME}")  # from now on the URL holds no finished dataset
        state.synced.pop(MANIFEST_NAME, None)
    _put_record(fs, root, entries)
    manifest = finished and MANIFEST_NAME in known
    first = [f for f in changed if "/" in f or f.endswith(".tar")]  # shards, their stats, the build state
    # Then the split manifests, stats.json and the records; manifest.parquet after the upload record.
    last = [f for f in changed if f not in first and f != MANIFEST_NAME]
    uploaded, flushed = 0, time.monotonic()
    for relative in first:
        before_change()
        _send(fs, f"{root}/{relative}", source=local / relative)
        entries[relative] = known[relative]
        state.synced[relative] = known[relative]["sha256"]
        state.sent(relative)
        uploaded += 1
        if time.monotonic() - flushed > RECORD_FLUSH_S:
            _put_record(fs, root, entries)
            flushed = time.monotonic()
    for relative in stale:
        before_change()
        fs.rm_file(f"{root}/{relative}")
        entries.pop(relative, None)
        state.synced.pop(relative, None)
    for relative in last:
        before_change()
        _send(fs, f"{root}/{relative}", source=local / relative)
        entries[relative] = known[relative]
        state.synced[relative] = known[relative]["sha256"]
        state.sent(relative)
        uploaded += 1
    if manifest:
        entries[MANIFEST_NAME] = known[MANIFEST_NAME]
    before_change()
    _put_record(fs, root, entries)
    if manifest:
        _send(fs, f"{root}/{MANIFEST_NAME}", source=local / MANIFEST_NAME)
        state.synced[MANIFEST_NAME] = known[MANIFEST_NAME]["sha256"]
        state.sent(MANIFEST_NAME)
        uploaded += 1
    # The versions the URL gives the files just sent: a later change there (by hand, same size) is told by them.
    versions: dict[str, str] = {}
    _remote_sizes(fs, root, versions)
    for relative in [*first, *last, *([MANIFEST_NAME] if manifest else [])]:
        if relative in versions:
            state.seen[relative] = versions[relative]
    return uploaded


def local_dataset(data: str | os.PathLike[str]) -> str:
    """`data` itself when local; for a URL, its local copy (fetched as needed). A copy fetched from a URL without
    an upload record (compared by size only) whose shards disagree with their records is refused as stale."""
    text = local_location(data)
    if not is_url(text):
        return text
    local = cache_folder(text, reading=True)
    with _cache_lock(local, text, wait=True):
        local, by_content = _fetch(text, local, require_manifest=True, keep_local_changes=False)
    if not by_content:
        problem = _copy_problem(local)
        if problem:
            raise StorageError(
                f"the local copy of {text} in {local} is stale ({problem}): it holds files fetched before the "
                f"dataset there was rebuilt; delete that folder and run again to fetch it anew"
            )
    return str(local)


def _copy_problem(local: Path) -> str | None:
    """The first shard of the local copy that disagrees with its stats or commit record (sizes, no hashing)."""
    from m2u.datasets.shardcheck import first_shard_problem

    try:
        return first_shard_problem(local)
    except Exception:  # noqa: BLE001 - the loader's own checks say what is wrong with a manifest
        return None


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
        from m2u.datasets.shardcheck import ShardError, check_dataset_record

        try:
            check_dataset_record(path)  # an unfinished or damaged build: the readers' words, how to finish it
        except ShardError as exc:
            raise SettingError("data", str(exc)) from None
        raise SettingError(
            "data", f"{text} is not a dataset (no {MANIFEST_NAME}; build one with m2u-make-dataset)"
        )


def build_at_url(url: str, build: Callable[[str], T], *, in_process_ok: bool = True) -> T:
    """Run `build(local_folder)` for a dataset that lives at `url`: check that the URL can be written, take its
    build lease (StorageError while another build holds it), fetch what is there, build or resume locally, upload,
    give the lease back. A build that stops uploads what it committed (not the manifest) before the stop
    propagates. UploadError when the final upload fails (the build stays in the local cache).
    `in_process_ok=False` refuses memory:// (see check_output_url). The result of `build` is returned."""
    check_output_url(url, in_process_ok=in_process_ok)
    local = cache_folder(url)
    with _cache_lock(local, url, wait=False), _url_lease(url) as lease:
        return _build_locked(url, local, build, lease)


def _build_locked(url: str, local: Path, build: Callable[[str], T], lease: _UrlLease) -> T:
    fetch(url, local, require_manifest=False, keep_local_changes=True)
    try:
        result = build(str(local))
    except BaseException as error:
        if (
            stop_of(error) is not None
        ):  # a stop (Ctrl-C, SIGTERM: a preempted machine), not a refusal or failure
            _upload_stopped(local, url, lease)
        elif isinstance(
            error, BuildError
        ):  # its paths are the cache's: say them at the URL, where the user acts
            raise error.with_path_said_as(str(local), url.rstrip("/")) from None
        raise
    try:
        lease.confirm()
        upload(local, url, before_change=lease.check_held)
    except Exception as error:
        raise UploadError(
            f"uploading the dataset to {url} failed ({_one_line(error)}); the build is kept in the local cache "
            f"{local}: run the same build again to upload it"
        ) from error
    return result


@dataclass(frozen=True)
class _LeaseHolder:
    """What a build lease at a URL says (None for a field it does not hold: an unreadable lease)."""

    token: str | None
    host: str | None = None
    pid: int | None = None
    started: float | None = None
    renewed: float | None = None
    machine: str | None = None  # _this_machine() of the build that wrote it (None: not said, an older m2u)

    @classmethod
    def parse(cls, data: bytes) -> _LeaseHolder:
        try:
            fields = json.loads(data)
            return cls(
                token=str(fields["token"]),
                host=str(fields["host"]),
                pid=int(fields["pid"]),
                started=datetime.fromisoformat(fields["started"]).timestamp(),
                renewed=datetime.fromisoformat(fields["renewed"]).timestamp(),
                machine=str(fields["machine"]) if fields.get("machine") else None,
            )
        except (ValueError, TypeError, KeyError, AttributeError):  # written halfway, or not by m2u
            return cls(token=None)

    def stale(self) -> bool:
        return self.renewed is None or time.time() - self.renewed > LEASE_STALE_S

    def dead_here(self) -> bool:
        """The lease of a build on this machine whose process is gone (killed with SIGKILL, by the OOM killer): no
        renewal can come, so waiting for it to go stale would only keep the URL refused."""
        machine = _this_machine()
        return (
            self.pid is not None
            and machine is not None
            and self.machine == machine
            and self.host == socket.gethostname()
            and _process_gone(self.pid)
        )

    def described(self) -> str:
        if self.token is None:
            return "an unreadable lease"
        return f"host {self.host}, pid {self.pid}, started {_utc(self.started)}"


def _utc(seconds: float | None) -> str:
    if seconds is None:
        return "at an unknown time"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


class _UrlLease:
    """The build lease at a URL (``LEASE_NAME``): one build at a time per URL, across machines. The cache lock
    only sees builds on this machine; two machines uploading to one URL at once each removed the other's files.

    Object stores have no lock, and not all have an atomic create: a build checks that no live lease of another
    build is there, writes its own (an exclusive create where the file system has one), waits LEASE_SETTLE_S and
    reads the lease back: of builds that wrote at once, only the last writer reads its own token and proceeds. A
    daemon thread renews it every LEASE_RENEW_S; one not renewed for LEASE_STALE_S is a dead build's and is taken
    over, and so, at once, is one a build on this machine wrote whose process is gone (`_LeaseHolder.dead_here`). The
    upload checks that the lease is still this build's before it changes anything at the URL, and, between files, that
    the renewals have not found it taken over or failed for LEASE_STALE_S (`check_held`): a long upload stops there
    rather than remove the files of a build that took the URL over. Renewals failing for half that long are said once on
    stderr."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self.fs, root = _filesystem(url)
        self.path = f"{root}/{LEASE_NAME}"
        self.token = secrets.token_hex(16)
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.machine = _this_machine()
        self.started = time.time()
        # Held while renewing: once `release` has it, no renewal can write the lease again after it is removed.
        self._writing = threading.Lock()
        self._released = threading.Event()
        self._renewer: threading.Thread | None = None
        # Set by the renewals: why the lease is no longer this build's ("" while it is).
        self.lost = ""

    def _read(self) -> _LeaseHolder | None:
        """The lease at the URL; None when there is none."""
        try:
            return _LeaseHolder.parse(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None

    def _write(self, *, exclusive: bool) -> bool:
        """Write this build's lease; False when `exclusive` and a lease appeared meanwhile."""
        text = json.dumps(
            {
                "generator": "m2u.datasets.storage",
                "token": self.token,
                "host": self.host,
                "pid": self.pid,
                "machine": self.machine,
                "started": _iso(self.started),
                "renewed": _iso(time.time()),
            },
            indent=1,
        )
        try:
            _send(self.fs, self.path, data=text.encode(), exclusive=exclusive)
        except FileExistsError:
            return False
        return True

    def _refusal(self, holder: _LeaseHolder | None) -> StorageError:
        if holder is None or holder.token is None:  # another build is writing it right now
            return StorageError(
                f"another m2u-make-dataset run is taking the build lease of {self.url} at this moment; run again "
                f"once it has finished (its lease is {self.url}/{LEASE_NAME})"
            )
        stale_at = _utc((holder.renewed or 0) + LEASE_STALE_S)
        return StorageError(
            f"another m2u-make-dataset run is building {self.url} ({holder.described()}); wait for it to finish, "
            f"or, if that run is dead, run again after {stale_at}, when its lease ({LEASE_NAME}, renewed every "
            f"{LEASE_RENEW_S:g} s while it runs) is stale and is taken over"
        )

    def take(self) -> None:
        """Take the lease, or StorageError with one line naming the build that holds it."""
        holder = self._read()
        if holder is not None and holder.token is None:
            time.sleep(LEASE_SETTLE_S)  # perhaps written halfway by a build taking it now: read once more
            holder = self._read()
        dead_here = holder is not None and holder.dead_here()
        if holder is not None and not holder.stale() and not dead_here:
            raise self._refusal(holder)
        try:
            if not self._write(exclusive=holder is None):
                time.sleep(LEASE_SETTLE_S)  # the build that created it first has written it by then
                raise self._refusal(self._read())
            time.sleep(LEASE_SETTLE_S)
            read_back = self._read()
            if read_back is None or read_back.token != self.token:
                raise self._refusal(read_back)
        except BaseException as error:
            if not isinstance(error, StorageError):  # stopped halfway (Ctrl-C): leave no lease of ours behind
                with contextlib.suppress(Exception):  # the error that stopped it is the one to say
                    self._remove_if_ours()
            raise
        if holder is not None:
            last = f"renewed {_utc(holder.renewed)}" if holder.token is not None else "unreadable"
            why = (
                "ran on this machine and its process is gone"
                if dead_here
                else f"had not renewed it for over {LEASE_STALE_S / 60:g} minutes and is taken as dead"
            )
            print(
                f"took over the build lease of {self.url}: the build that held it ({holder.described()}; {last}) "
                f"{why}",
                file=sys.stderr,
            )
        self._renewer = threading.Thread(
            target=self._renew_until_released, name="m2u-lease-renewal", daemon=True
        )
        self._renewer.start()

    def _renew_until_released(self) -> None:
        failing_since: float | None = (
            None  # when the renewals began to fail (monotonic), None while they work
        )
        said = False
        while not self._released.wait(LEASE_RENEW_S):
            with self._writing:
                if self._released.is_set():
                    return
                try:
                    holder = self._read()
                    if holder is None or holder.token != self.token:
                        # Taken over (or removed): never written over; the upload stops at its next file.
                        self.lost = self._lost(holder)
                        return
                    self._write(exclusive=False)
                    failing_since, said = None, False
                except Exception as error:  # noqa: BLE001 - tried again at the next renewal
                    now = time.monotonic()
                    failing_since = now if failing_since is None else failing_since
                    if now - failing_since >= LEASE_STALE_S:
                        # Another build may have found it stale and taken the URL: this one no longer holds it.
                        self.lost = (
                            f"could not be renewed for over {LEASE_STALE_S / 60:g} minutes ({_one_line(error)}), "
                            "so another build may have taken the URL over"
                        )
                        return
                    if not said and now - failing_since >= LEASE_STALE_S / 2:
                        said = True
                        print(
                            f"the build lease {self.url}/{LEASE_NAME} could not be renewed for "
                            f"{(now - failing_since) / 60:.0f} minutes ({_one_line(error)}); retrying every "
                            f"{LEASE_RENEW_S:g} s: after {LEASE_STALE_S / 60:g} minutes another build may take the "
                            "URL over and this one will not upload",
                            file=sys.stderr,
                        )

    def _lost(self, holder: _LeaseHolder | None) -> str:
        """How the lease stopped being this build's, given what is at the URL now."""
        if holder is None:
            return "is gone (removed by hand, or by a build that took it over and has finished)"
        return (
            f"was taken over by another build ({holder.described()}): this build could not renew it for over "
            f"{LEASE_STALE_S / 60:g} minutes"
        )

    def check_held(self) -> None:
        """StorageError when the renewals found the lease no longer this build's (no read at the URL: called
        between the files of an upload)."""
        if self.lost:
            raise StorageError(
                f"this build's lease {self.url}/{LEASE_NAME} {self.lost}; the upload stopped there"
            )

    def confirm(self) -> None:
        """StorageError unless the URL's lease is still this build's (checked before anything there changes)."""
        holder = self._read()
        if holder is not None and holder.token == self.token and not self.lost:
            return
        what = self._lost(holder) if holder is None or holder.token != self.token else self.lost
        raise StorageError(f"this build's lease {self.url}/{LEASE_NAME} {what}; nothing was uploaded")

    def _remove_if_ours(self) -> None:
        holder = self._read()
        if holder is not None and holder.token == self.token:
            self.fs.rm_file(self.path)

    def release(self) -> None:
        """Stop renewing and remove the lease (if still this build's). A failure is said, never raised: the build
        itself is done, and the lease becomes stale."""
        self._released.set()
        with self._writing:
            try:
                self._remove_if_ours()
            except Exception as error:  # noqa: BLE001 - said; the run's own outcome stands
                print(
                    f"the build lease {self.url}/{LEASE_NAME} could not be removed ({_one_line(error)}); the next "
                    f"build there takes it over after {_utc(time.time() + LEASE_STALE_S)}",
                    file=sys.stderr,
                )


@contextlib.contextmanager
def _url_lease(url: str) -> Iterator[_UrlLease]:
    """Hold the build lease of `url` (see _UrlLease) while the block runs, however it ends."""
    lease = _UrlLease(url)
    lease.take()
    try:
        yield lease
    finally:
        lease.release()


def _upload_stopped(local: Path, url: str, lease: _UrlLease) -> None:
    """After a build stopped (Ctrl-C, SIGTERM): upload what it committed (never the manifest), so that a preempted
    machine's work reaches the URL; a failure here is said, never raised over the stop itself. A build refused
    (another run holds the cache, other arguments) or failed leaves the URL as it was."""
    if not local.is_dir():
        return
    try:
        lease.confirm()
        count = upload(local, url, finished=False, before_change=lease.check_held)
    except Exception as failure:  # noqa: BLE001 - said, never raised over the stop itself
        print(
            f"the stopped build's committed shards could not be uploaded to {url} ({_one_line(failure)}); they "
            f"are kept in the local cache {local} and a rerun uploads them",
            file=sys.stderr,
        )
        return
    if count:
        print(
            f"uploaded {count} file(s) the stopped build committed to {url}: a rerun resumes from them (here or on "
            "another machine)",
            file=sys.stderr,
        )
