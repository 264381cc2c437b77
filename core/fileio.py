"""The one atomic writer of m2u (every package writes finished files through it) and the library versions record.

A file is written under a hidden temporary name beside its target (``.<name>.XXXXXXXX.tmp``) and renamed to its
real name only once complete: a killed run never leaves a truncated file under the real name (an interrupted
file simply does not exist yet), and concurrent writers never see each other's half-written bytes. Leftovers of
killed writers match both ``*.tmp`` and ``.*.tmp`` (what the dataset build and the trainer clear at start-up).
"""

from __future__ import annotations

import os
import platform
import tempfile
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object], durable: bool = False) -> Path:
    """Call ``write(temp_path)`` for a hidden temporary file beside ``path``, then rename it to ``path``.

    The temporary name is unique to this writer (concurrent writers of one file never share it). ``durable``
    also flushes the file to disk before the rename, for commit records that must survive a power loss.

    The parent folder is created when missing. On any exception (KeyboardInterrupt included) the temporary file
    is removed, ``path`` is left as it was and the exception propagates. The file gets the mode the umask gives
    any new file (mkstemp alone would leave it 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(temp)
        if durable:
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def remove_temp_files(
    folder: str | os.PathLike[str], *, recursive: bool = False, hidden_only: bool = False
) -> list[Path]:
    """Delete the temporary files killed writers left in ``folder`` (``*.tmp``; ``.*.tmp`` with
    ``hidden_only``; in every subfolder too with ``recursive``); returns what was removed, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = (".*" if hidden_only else "*") + TEMP_SUFFIX
    removed = []
    for path in sorted(folder.rglob(pattern) if recursive else folder.glob(pattern)):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = False) -> Path:
    return atomic_write(path, lambda temp: Path(temp).write_bytes(data), durable)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, encoding: str = "utf-8", durable: bool = False
) -> Path:
    return atomic_write(path, lambda temp: Path(temp).write_text(text, encoding=encoding), durable)


def library_versions(packages: Iterable[str], platform_info: bool = False) -> dict[str, str]:
    """Installed versions of ``packages`` (distribution names); a missing package is recorded as
    "not installed" rather than dropped. ``platform_info`` adds the Python version, machine and system."""
    versions: dict[str, str] = {}
    if platform_info:
        versions.update(
            python=platform.python_version(), machine=platform.machine(), system=platform.system()
        )
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
