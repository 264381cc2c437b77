"""Deterministic, crash-safe WebDataset shard writing.

Why not ``webdataset.ShardWriter``: it opens the final file name directly (a crash leaves a truncated tar under
the real name) and stamps the current time into every member. Here every member gets a fixed mtime, owner and
mode, so the same samples always give byte-identical tars, and a shard is written under a temporary name and
renamed only once it is complete.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from m2u.datasets.layout import validate_key
from m2u.masking.fileio import TEMP_SUFFIX, remove_temp_files

# Fixed tar header fields: the bytes of a shard depend only on its samples.
MEMBER_MTIME = 0
MEMBER_MODE = 0o444


def temp_path(final_path: str | os.PathLike[str]) -> Path:
    final_path = Path(final_path)
    return final_path.with_name(final_path.name + TEMP_SUFFIX)


def remove_stray_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete ``*.tmp`` files left in ``folder`` (recursively) by an interrupted run; return what was removed."""
    return remove_temp_files(folder, recursive=True)


class ShardWriter:
    """Write one shard: ``with ShardWriter(path) as w: w.write(key, {"json": b"..."})``.

    The tar is written to ``<path>.tmp``, flushed to disk and renamed to ``path`` on a clean exit; on an
    exception the temporary file is removed and ``path`` is left untouched.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._tmp = temp_path(self.path)
        self._file: io.BufferedWriter | None = None
        self._tar: tarfile.TarFile | None = None
        self._keys: set[str] = set()

    def __enter__(self) -> ShardWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.GNU_FORMAT)
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
        for field, data in fields.items():
            if field != field.lower() or "/" in field or not field:
                raise ValueError(f"invalid field name {field!r} for sample {key!r}: lower case, no slashes")
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
        assert self._tar is not None and self._file is not None
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._tar = self._file = None
        os.replace(self._tmp, self.path)

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
                self._tar = self._file = None
        finally:
            self._tmp.unlink(missing_ok=True)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
