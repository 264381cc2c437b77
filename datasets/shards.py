"""Deterministic, crash-safe WebDataset shard writing.

Why not ``webdataset.ShardWriter``: it opens the final file name directly (a crash leaves a truncated tar under
the real name) and stamps the current time into every member. Here every member gets a fixed mtime, owner and
mode, so the same samples always give byte-identical tars, and a shard is written under a temporary name and
renamed only once it is complete. The temporary name is unique to the writer (``<name>.<pid>-<token>.tmp``), so two
attempts at one shard (a retried task whose first attempt is not dead yet) never write into the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import secrets
import tarfile
from collections.abc import Collection, Mapping
from pathlib import Path
from types import TracebackType

from m2u.core.fileio import TEMP_SUFFIX, commit, is_temp_name, open_new
from m2u.datasets.layout import SHARD_SUFFIX, validate_key

# Fixed tar header fields: the bytes of a shard depend only on its samples.
MEMBER_MTIME = 0
MEMBER_MODE = 0o444


def temp_path(final_path: str | os.PathLike[str]) -> Path:
    """A temporary name for ``final_path`` that no other writer uses."""
    final_path = Path(final_path)
    return final_path.with_name(f"{final_path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")


def remove_stray_temp_files(
    folder: str | os.PathLike[str], names: Collection[str] | None = None
) -> list[Path]:
    """Delete ``*.tmp`` files left in ``folder`` (recursively) by an interrupted run; return what was removed.
    With ``names``, only the temporary files of those final file names (the shards one partition owns)."""
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for path in sorted(folder.rglob(f"*{TEMP_SUFFIX}")):
            if not (is_temp_name(path.name) or path.name.endswith(_OLDER_SHARD_TEMP)):
                continue  # a person's own *.tmp file
            if names is not None and _final_name(path.name) not in names:
                continue
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed


_WRITER_TAG = re.compile(r"\.\d+-[0-9a-f]{8}$")
_OLDER_SHARD_TEMP = (
    SHARD_SUFFIX + TEMP_SUFFIX
)  # "train-000001.tar.tmp", as m2u named them before the writer tag


def _final_name(temp_name: str) -> str:
    """``train-000001.tar.123-ab12cd34.tmp`` (or an older ``train-000001.tar.tmp``) -> ``train-000001.tar``."""
    return _WRITER_TAG.sub("", temp_name.removesuffix(TEMP_SUFFIX))


_HASH_CHUNK = 1 << 20


def file_digest(path: Path) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex) of a file."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


class _HashingFile(io.RawIOBase):
    """A write-only file that counts and hashes what passes through it (the shard's size and SHA-256)."""

    def __init__(self, raw: io.BufferedWriter):
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        written = self.raw.write(data)
        view = memoryview(data)[: written if written is not None else len(data)]
        self.digest.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size


class ShardWriter:
    """Write one shard: ``with ShardWriter(path) as w: w.write(key, {"json": b"..."})``.

    The tar is written to ``<path>.tmp``, flushed to disk and renamed to ``path`` on a clean exit; on an
    exception the temporary file is removed and ``path`` is left untouched.
    """

    def __init__(self, path: str | os.PathLike[str], part: bool = False):
        """``part=True``: write only the members of some consecutive samples of the shard at ``path`` (no
        end-of-archive), into ``self.part_path`` (a temporary name of ``path``), which stays there on close:
        ``assemble_shard`` joins the parts of a shard into the same bytes one writer would have written."""
        self.path = Path(path)
        self._tmp = temp_path(self.path)
        self.part = part
        self.part_path = self._tmp if part else None
        self._file: io.BufferedWriter | None = None
        self._hashing: _HashingFile | None = None
        self._tar: tarfile.TarFile | None = None
        self._keys: set[str] = set()
        self._discard = False
        # After close(): the finished file's size in bytes and SHA-256 (hex), as recorded at commit time.
        self.size: int | None = None
        self.sha256: str | None = None

    def __enter__(self) -> ShardWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open_new(self._tmp)  # closed in close()/abort()
        self._hashing = _HashingFile(self._file)
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.GNU_FORMAT)
        return self

    @property
    def count(self) -> int:
        return len(self._keys)

    def write(self, key: str, fields: Mapping[str, bytes]) -> None:
        """Add one sample: ``fields`` maps a field name such as ``masked.png`` to the member's bytes."""
        if self._tar is None:
            raise RuntimeError("ShardWriter.write called outside its 'with' block")
        validate_key(key)
        if key in self._keys:
            raise ValueError(f"duplicate key {key!r} in shard {self.path}")
        if not fields:
            raise ValueError(f"sample {key!r} has no fields")
        # Everything is checked before the first member is added: a refused sample leaves nothing in the tar.
        for field, data in fields.items():
            if field != field.lower() or "/" in field or not field:
                raise ValueError(f"invalid field name {field!r} for sample {key!r}: lower case, no slashes")
            if not isinstance(data, bytes | bytearray | memoryview):
                raise ValueError(f"field {field!r} of sample {key!r} is {type(data).__name__}, not bytes")
        for field, data in fields.items():
            info = tarfile.TarInfo(f"{key}.{field}")
            info.size = len(data)
            info.mtime = MEMBER_MTIME
            info.mode = MEMBER_MODE
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self._keys.add(key)

    def close(self) -> None:
        """Finish the tar, flush it to disk and rename it to its final name."""
        assert self._tar is not None and self._file is not None and self._hashing is not None
        if not self.part:
            self._tar.close()  # the end-of-archive blocks (tarfile's, as _end_of_archive writes them)
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.size, self.sha256 = self._hashing.size, self._hashing.digest.hexdigest()
        self._tar = self._file = self._hashing = None
        if not self.part:
            commit(self._tmp, self.path, self.sha256, by_name=True)

    def abort(self) -> None:
        """Drop the temporary file. Closing may fail again (a full disk fails the closing blocks too): the file
        is removed regardless, and the original error is the one the caller sees."""
        try:
            if self._tar is not None:
                with contextlib.suppress(OSError):
                    self._tar.close()
                assert self._file is not None
                with contextlib.suppress(OSError):
                    self._file.close()
                self._tar = self._file = self._hashing = None
        finally:
            self._tmp.unlink(missing_ok=True)

    def discard(self) -> None:
        """Leave the block without a shard: the temporary file is removed and nothing gets the final name."""
        self._discard = True

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None and not self._discard:
            self.close()
        else:
            self.abort()


def _end_of_archive(size: int) -> bytes:
    """What ``tarfile.TarFile.close`` appends to ``size`` bytes of members: two zero blocks, then zeros up to a
    whole record."""
    end = 2 * tarfile.BLOCKSIZE
    return b"\0" * (end + (-(size + end)) % tarfile.RECORDSIZE)


def assemble_shard(path: str | os.PathLike[str], parts: list[Path]) -> tuple[int, str]:
    """Join part files (``ShardWriter(part=True)``, in sample order) into the shard at ``path``: temporary name,
    fsync, rename, as ShardWriter does; the parts are removed. Returns the shard's (size, SHA-256)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open_new(tmp) as raw:
            out = _HashingFile(raw)
            for part in parts:
                with open(part, "rb") as handle:
                    while chunk := handle.read(_HASH_CHUNK):
                        out.write(chunk)
            out.write(_end_of_archive(out.size))
            raw.flush()
            os.fsync(raw.fileno())
        commit(tmp, path, out.digest.hexdigest(), by_name=True)
    finally:
        tmp.unlink(missing_ok=True)
    for part in parts:
        part.unlink(missing_ok=True)
    return out.size, out.digest.hexdigest()
