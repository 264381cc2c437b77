"""OpenCV and forked worker processes.

A process forked while OpenCV's thread pool is running inherits the pool's locks but not its threads: if the
child then changes OpenCV's thread count (which every m2u worker does, one process per core) it waits forever on
the parent's pool. Stopping the pool in the parent before forking (thread count 1) avoids that; workers then
inherit the single-threaded setting. Found with `m2u-mask --workers 2` after the templates were drawn in the parent.

Ctrl-C: the terminal sends SIGINT to every process of the group. Workers ignore it, so none dies half-way through
sending a result (a worker killed while it holds the pool's queue lock leaves the lock taken, and the parent's
shutdown of the pool then waits for it forever); the parent alone gets the KeyboardInterrupt and leaving
`worker_pool` terminates the workers, so the run stops within a second or two. What
the tools committed before stays (m2u-make-dataset resumes from it).
"""

from __future__ import annotations

import contextlib
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


def _start_worker(initializer: Callable[..., None] | None, *initargs: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates the pool
    if initializer is not None:
        initializer(*initargs)


@contextlib.contextmanager
def worker_pool(
    workers: int, initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()
) -> Iterator[Pool]:
    """A process pool (fork where the platform has it, so loaded models are shared) that is safe to use after
    OpenCV has run multi-threaded here; this process's OpenCV thread count is restored afterwards."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    previous = stop_opencv_threads()
    try:
        with multiprocessing.get_context(method).Pool(
            workers, _start_worker, (initializer, *initargs)
        ) as pool:
            yield pool
    finally:
        cv2.setNumThreads(previous)
