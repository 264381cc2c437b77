"""OpenCV and forked worker processes.

A process forked while OpenCV's thread pool is running inherits the pool's locks but not its threads: if the
child then changes OpenCV's thread count (which every m2u worker does, one process per core) it waits forever on
the parent's pool. Stopping the pool in the parent before forking (thread count 1) avoids that; workers then
inherit the single-threaded setting. Found with `m2u-mask --workers 2` after the templates were drawn in the parent.

Ctrl-C: the terminal sends SIGINT to every process of the group. Workers ignore it, so none dies half-way through
sending a result (a worker killed while it holds the pool's queue lock leaves the lock taken, and the parent's
shutdown of the pool then waits for it forever); the parent alone gets the KeyboardInterrupt and leaving
`worker_pool` terminates the workers, so the run stops within a second or two. What the tools committed before
stays (m2u-make-dataset resumes from it).

A worker whose initializer raises does not exit (the pool would start another, which fails the same way, forever):
it keeps the error, and its tasks raise WorkerStartError with it, which stops the caller's map/imap.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import signal
from collections.abc import Callable, Iterator
from multiprocessing.pool import Pool
from typing import Any

import cv2


def stop_opencv_threads() -> int:
    """Make OpenCV single-threaded in this process (its pool threads are joined); returns the previous count."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    return previous


class WorkerStartError(RuntimeError):
    """A worker process could not start (its initializer raised): the message is the worker's error."""


# Set in a worker whose initializer raised: its tasks then raise WorkerStartError instead of running.
_START_FAILURE: str | None = None


def _start_worker(initializer: Callable[..., None] | None, *initargs: Any) -> None:
    global _START_FAILURE
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates the pool
    if initializer is None:
        return
    try:
        initializer(*initargs)
    except Exception as exc:  # noqa: BLE001 - any failure, reported by the first task
        # Kept, not raised: a worker that exits is replaced by a new one, which fails the same way, forever, while
        # the caller waits for results. Its first task reports the failure to the caller instead.
        _START_FAILURE = f"{type(exc).__name__}: {exc}"


def _guarded_call(function: Callable[..., Any], *args: Any) -> Any:
    if _START_FAILURE is not None:
        raise WorkerStartError(f"the worker processes could not start: {_START_FAILURE}")
    return function(*args)


class _GuardedPool:
    """The pool's map/imap/imap_unordered, with every task refusing to run in a worker that could not start."""

    def __init__(self, pool: Pool):
        self._pool = pool

    def map(self, function: Callable[..., Any], iterable: Any, chunksize: int | None = None) -> list[Any]:
        return self._pool.map(functools.partial(_guarded_call, function), iterable, chunksize)

    def imap(self, function: Callable[..., Any], iterable: Any, chunksize: int = 1) -> Iterator[Any]:
        return self._pool.imap(functools.partial(_guarded_call, function), iterable, chunksize)

    def imap_unordered(
        self, function: Callable[..., Any], iterable: Any, chunksize: int = 1
    ) -> Iterator[Any]:
        return self._pool.imap_unordered(functools.partial(_guarded_call, function), iterable, chunksize)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


@contextlib.contextmanager
def worker_pool(
    workers: int, initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()
) -> Iterator[Any]:
    """A process pool (fork where the platform has it, so loaded models are shared) that is safe to use after
    OpenCV has run multi-threaded here; this process's OpenCV thread count is restored afterwards.

    Its map, imap and imap_unordered raise WorkerStartError when a worker's initializer raised (multiprocessing's
    pool alone would keep replacing the failed worker while the caller waits for results)."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    previous = stop_opencv_threads()
    try:
        with multiprocessing.get_context(method).Pool(
            workers, _start_worker, (initializer, *initargs)
        ) as pool:
            yield _GuardedPool(pool)
    finally:
        cv2.setNumThreads(previous)
