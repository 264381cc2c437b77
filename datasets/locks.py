"""Who may write a dataset folder at once: one whole run, or any number of partitions of one partition count.

``OUT/.m2u-build.lock`` is an flock (released by the kernel even after SIGKILL): a run without ``--partition``
holds it exclusively (it may build any shard and writes the manifests), a ``--partition I/N`` run holds it shared,
plus ``OUT/.m2u-build/partition-I-of-N.lock`` exclusively. So partitions of one N run concurrently, a partition
never runs twice at once, partitions of another N (whose shards would overlap) are refused, and so is a whole
run while any partition runs (and the other way round).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

from m2u.core.fileio import mark_written
from m2u.core.inputs import open_lock_file
from m2u.datasets.config import BuildLockedError
from m2u.datasets.layout import LOCK_NAME, STATE_DIR

_PARTITION_LOCK = re.compile(r"^partition-(\d+)-of-(\d+)\.lock$")


def _flock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
    return ""


def _mark(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def built_in_partitions(out_dir: Path) -> bool:
    """Whether a `partition` run has built into OUT (its lock file stays in the build state once it has ended)."""
    return any(_PARTITION_LOCK.match(p.name) for p in (out_dir / STATE_DIR).glob("partition-*-of-*.lock"))


def running_partitions(out_dir: Path, except_count: int | None = None) -> list[str]:
    """The partitions whose lock is held right now, as "I/N (pid P)"; with ``except_count``, other N only."""
    found = []
    for path in sorted((out_dir / STATE_DIR).glob("partition-*-of-*.lock")):
        match = _PARTITION_LOCK.match(path.name)
        if match is None or (except_count is not None and int(match.group(2)) == except_count):
            continue
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if _flock(fd, fcntl.LOCK_SH):
                    continue
                found.append(f"{match.group(1)}/{match.group(2)}{_holder(fd)}")
            finally:
                os.close(fd)
    return found


@contextlib.contextmanager
def build_lock(out_dir: Path, partition: tuple[int, int] | None = None) -> Iterator[list[int]]:
    """Hold the locks of a whole run (``partition=None``) or of one partition; yields the held descriptors."""
    path = out_dir / LOCK_NAME
    existed = path.exists()
    fd = open_lock_file(path)
    held = [fd]
    locked = False
    try:
        if partition is None:
            if not _flock(fd, fcntl.LOCK_EX):
                running = running_partitions(out_dir)
                if running:
                    raise BuildLockedError(
                        f"partition run(s) {', '.join(running)} are writing {out_dir}; wait for them to finish"
                    )
                raise BuildLockedError(
                    f"another m2u-make-dataset run is writing {out_dir}{_holder(fd)}; wait for it to finish or "
                    "use another `out_dir`"
                )
            _mark(fd)
        else:
            if not _flock(fd, fcntl.LOCK_SH):
                raise BuildLockedError(
                    f"a run without `partition`{_holder(fd)} is writing {out_dir}; wait for it to finish"
                )
            held.append(_partition_lock(out_dir, partition))
        locked = True
        yield held
    finally:
        # A run refused before it wrote anything (e.g. OUT holds other files) leaves no lock file behind.
        if locked and partition is None and not existed and not (out_dir / STATE_DIR).exists():
            path.unlink(missing_ok=True)
        for descriptor in reversed(held):
            os.close(descriptor)


def _partition_lock(out_dir: Path, partition: tuple[int, int]) -> int:
    index, count = partition
    state = out_dir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    # Checking for other partition counts and taking this partition's lock is one step for every partition run.
    # The partition locks live in the build's state folder: listed as m2u's, so --overwrite removes them with it.
    mark_written(state / "partitions.lock")
    gate = open_lock_file(state / "partitions.lock")
    try:
        fcntl.flock(gate, fcntl.LOCK_EX)
        others = running_partitions(out_dir, except_count=count)
        if others:
            raise BuildLockedError(
                f"partition run(s) {', '.join(others)} of another partition count are writing {out_dir}; "
                f"every partition run of one build must use the same N (here {count})"
            )
        mark_written(state / f"partition-{index}-of-{count}.lock")
        fd = open_lock_file(state / f"partition-{index}-of-{count}.lock")
        if not _flock(fd, fcntl.LOCK_EX):
            holder = _holder(fd)
            os.close(fd)
            raise BuildLockedError(f"partition {index}/{count} is already being built{holder} in {out_dir}")
        _mark(fd)
        return fd
    finally:
        os.close(gate)
