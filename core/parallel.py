"""One worker-pool pattern for every per-file job (m2u-mask, m2u-make-dataset's shard tasks, m2u-unmask).

`worker_pool(workers, initializer, initargs)` gives a pool whose `imap(function, items, ordered=..., on_message=...)`
runs `function(item)` for every item:
- workers 0 or 1: in this process, one item after the other (nothing is pickled, nothing forked);
- N >= 2: in N forked processes (a `concurrent.futures.ProcessPoolExecutor`: unlike `multiprocessing.Pool`, whose
  map waits forever for the task of a worker that was killed, it notices a dead worker, and then `WorkerDied` names
  the tasks whose worker died and the exit codes: the caller decides whether to retry them in a fresh pool).
Results come in the items' order (``ordered=True``) or as they finish. A task may call `report(message)`: the
message reaches the caller's `on_message` (from a worker process through a queue, read while results are
awaited), e.g. per-sample progress of a long task.

OpenCV and forked workers: a process forked while OpenCV's thread pool is running inherits the pool's locks but not
its threads: if the child then changes OpenCV's thread count (which every m2u worker does, one process per core)
it waits forever on the parent's pool. Stopping the pool in the parent before forking (thread count 1) avoids that;
the parent's count is restored afterwards. Found with `m2u-mask --workers 2` after the templates were drawn in the
parent.

Ctrl-C and SIGTERM: workers ignore SIGINT (a worker killed while it holds the result queue's lock would leave it
taken and the parent's shutdown waiting forever), take SIGTERM's default (die) and die with their parent (Linux
PR_SET_PDEATHSIG). The parent alone gets the KeyboardInterrupt (or m2u.core.guard's Terminated); leaving
`worker_pool` other than normally terminates the workers at once, so a run stops within a second or two. What the
tools committed before stays (m2u-make-dataset resumes from it).

A worker whose initializer raises does not exit (the pool would start another, which fails the same way): it keeps
the error, and its tasks raise WorkerStartError with it, which stops the caller's imap.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import cv2

_POLL_S = 0.25  # how often the parent reads the workers' messages while it waits for results


def stop_opencv_threads() -> int:
    """Make OpenCV single-threaded in this process (its pool threads are joined); returns the previous count."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(1)
    return previous


class WorkerStartError(RuntimeError):
    """A worker process could not start (its initializer raised): the message is the worker's error."""


class WorkerDied(RuntimeError):
    """A worker process died (killed, out of memory, os._exit) while the pool ran: `tasks` are the indexes (in the
    items given to imap) of the tasks whose worker died (every running one when the culprit cannot be told apart
    from the workers the pool terminated after it); `unfinished` every task without a result."""

    def __init__(self, tasks: list[int], unfinished: list[int], exit_codes: list[int | None]):
        super().__init__(
            f"a worker process died (exit code {', '.join(map(str, exit_codes)) or 'unknown'}) while running "
            f"{len(tasks)} task(s); {len(unfinished)} task(s) have no result"
        )
        self.tasks, self.unfinished, self.exit_codes = tasks, unfinished, exit_codes


# --- worker side ----------------------------------------------------------------------------------------------

# Set in a worker whose initializer raised: its tasks then raise WorkerStartError instead of running.
_START_FAILURE: str | None = None
# Where `report` sends a message: the pool's queue in a worker process, the caller's on_message in this process.
_SEND: Callable[[Any], None] | None = None
_QUEUE: Any = None  # a worker's queue to the parent (inherited at start: a queue cannot travel with a task)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _find_prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up once in the parent at import: a forked child must not dlopen (the loader's lock may
    have been held by another of the parent's threads at the fork, e.g. Ray's, and the child would wait forever)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _find_prctl()


def become_worker(parent_pid: int | None = None) -> None:
    """Signal settings of a worker process (every m2u pool calls this first in each worker): Ctrl-C is the
    parent's (it terminates the pool), SIGTERM kills (the parent's m2u.core.guard handler, inherited through fork,
    would unwind a worker half-way through a result), and the worker dies with its parent (Linux
    PR_SET_PDEATHSIG), so a parent killed even by SIGKILL leaves no worker holding memory. `parent_pid`: exit at
    once when the parent is already gone (it died between fork and here)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def become_loader_worker(_: int = 0) -> None:
    """Signal settings of a torch DataLoader worker (its worker_init_fn): Ctrl-C is the parent's, as in every m2u
    pool (become_worker), and the worker dies with its parent (SIGKILL at the parent's death). SIGTERM keeps
    torch's handling: multiprocessing stops daemonic workers with it at exit and then waits for them (a worker
    ignoring it hung a test session's exit). A SIGTERM sent to the whole process group (`timeout`, a batch
    scheduler) kills the workers too, and torch's "DataLoader worker is killed by signal" raised while the
    parent's stop unwinds is that stop to m2u.core.guard (one line, exit 143)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def report(message: Any) -> None:
    """Send `message` from a running task to the caller's `on_message` (dropped when there is none)."""
    if _SEND is not None:
        _SEND(message)


def _start_worker(
    parent_pid: int, queue: Any, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]
) -> None:
    global _START_FAILURE, _SEND, _QUEUE
    become_worker(parent_pid)
    _QUEUE = queue
    _SEND = lambda message: queue.put(("message", message))  # noqa: E731 - set once per worker
    if initializer is None:
        return
    try:
        initializer(*initargs)
    except Exception as exc:  # noqa: BLE001 - any failure, reported by the first task
        # Kept, not raised: a worker that exits is replaced by a new one, which fails the same way, while the caller
        # waits for results. Its first task reports the failure to the caller instead.
        _START_FAILURE = f"{type(exc).__name__}: {exc}"


def _run_task(function: Callable[[Any], Any], index: int, item: Any) -> Any:
    _QUEUE.put(("started", os.getpid(), index))  # tells the parent whose worker died, if one does
    if _START_FAILURE is not None:
        raise WorkerStartError(f"the worker processes could not start: {_START_FAILURE}")
    return function(item)


# --- parent side ----------------------------------------------------------------------------------------------


def _leading(finished: dict[int, Any], first: int) -> list[int]:
    """The indexes first, first + 1, ... that have finished (ordered results are handed over in that order)."""
    indexes: list[int] = []
    while first + len(indexes) in finished:
        indexes.append(first + len(indexes))
    return indexes


class InProcessPool:
    """workers 0 or 1: every task in this process, in order (`initializer` ran here once)."""

    workers = 0

    def imap(
        self,
        function: Callable[[Any], Any],
        items: Iterable[Any],
        *,
        ordered: bool = True,
        on_message: Callable[[Any], None] | None = None,
    ) -> Iterator[Any]:
        global _SEND
        previous, _SEND = _SEND, on_message
        try:
            for item in items:
                yield function(item)
        finally:
            _SEND = previous

    def map(self, function: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        return list(self.imap(function, items))


# How long a finished pool's workers get to take the shutdown and exit before they are killed.
_CLOSE_WAIT_S = 30.0


class ProcessPool:
    """N forked worker processes (see the module docstring); one imap at a time."""

    def __init__(self, workers: int, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]):
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        self.workers = workers
        self._queue = context.SimpleQueue()
        self._executor = cf.ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(os.getpid(), self._queue, initializer, initargs),
        )
        self._running: dict[int, int] = {}  # worker pid -> index of the task it runs

    def imap(
        self,
        function: Callable[[Any], Any],
        items: Iterable[Any],
        *,
        ordered: bool = True,
        on_message: Callable[[Any], None] | None = None,
    ) -> Iterator[Any]:
        self._running.clear()
        futures: dict[cf.Future, int] = {}
        try:
            for index, item in enumerate(items):
                futures[self._executor.submit(_run_task, function, index, item)] = index
        except cf.process.BrokenProcessPool:  # broken while the tasks were submitted
            self._drain(on_message)
            raise self._died(sorted(futures.values())) from None
        waiting = set(futures)
        finished: dict[int, Any] = {}
        unfinished = set(futures.values())  # not handed to the caller yet
        try:
            yield from self._results(futures, waiting, finished, unfinished, ordered, on_message)
        except BaseException:
            # Stopped (Ctrl-C, SIGTERM, a caller's error): the messages already sent still reach the caller (a
            # file a worker finished is reported as finished).
            self._drain(on_message)
            raise

    def _results(
        self,
        futures: dict[cf.Future, int],
        waiting: set[cf.Future],
        finished: dict[int, Any],
        unfinished: set[int],
        ordered: bool,
        on_message: Callable[[Any], None] | None,
    ) -> Iterator[Any]:
        while waiting:
            done, waiting = cf.wait(waiting, timeout=_POLL_S, return_when=cf.FIRST_COMPLETED)
            self._drain(on_message)  # before the results: a task's last message comes before its result
            broken = False
            for future in sorted(done, key=futures.__getitem__):
                try:
                    finished[futures[future]] = future.result()
                except cf.process.BrokenProcessPool:
                    broken = True
            for index in sorted(finished) if not ordered else _leading(finished, min(unfinished)):
                unfinished.discard(index)
                yield finished.pop(index)
            if broken:
                self._drain(on_message)
                raise self._died(sorted(unfinished)) from None

    def map(self, function: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        return list(self.imap(function, items))

    def _drain(self, on_message: Callable[[Any], None] | None) -> None:
        while not self._queue.empty():
            message = self._queue.get()
            if message[0] == "started":
                self._running[message[1]] = message[2]
            elif on_message is not None:
                on_message(message[1])

    def _died(self, unfinished: list[int]) -> WorkerDied:
        processes = dict(getattr(self._executor, "_processes", None) or {})
        for process in processes.values():
            with contextlib.suppress(Exception):
                process.join(2)
        codes = {pid: process.exitcode for pid, process in processes.items()}
        # The pool terminates (SIGTERM) its other workers once one died: the culprit exited otherwise.
        culprits = [pid for pid, code in codes.items() if code not in (None, 0, -signal.SIGTERM)]
        left = set(unfinished)
        tasks = [self._running[pid] for pid in culprits if self._running.get(pid) in left]
        if not tasks:
            tasks = sorted({index for index in self._running.values() if index in left})
        return WorkerDied(tasks, sorted(left), [codes[pid] for pid in culprits])

    def close(self, graceful: bool) -> None:
        """Shut the pool down; unless it finished, terminate its workers instead of waiting for their tasks. No
        worker outlives this: one that never took the shutdown (a child that hung right after the fork, on a lock
        another of the parent's threads held, e.g. Ray's) is killed, or the interpreter's exit handler of
        concurrent.futures would wait for it forever."""
        processes = list((getattr(self._executor, "_processes", None) or {}).values())
        self._executor.shutdown(wait=False, cancel_futures=not graceful)
        if not graceful:
            # SIGKILL runs no code in the worker. SIGTERM runs its Python handler, which until become_worker has reset
            # it is the parent's (Ray's calls sys.exit): once in the suite, right after such a close, a forked copy
            # of pytest printed a session summary of its own (an INTERNALERROR ending in Ray's handler).
            for process in processes:
                with contextlib.suppress(Exception):
                    process.kill()
        deadline = time.monotonic() + (_CLOSE_WAIT_S if graceful else 5.0)
        for process in processes:
            with contextlib.suppress(Exception):
                process.join(max(0.0, deadline - time.monotonic()))
        for process in processes:
            with contextlib.suppress(Exception):
                if process.is_alive():
                    process.kill()
                    process.join(5)


@contextlib.contextmanager
def worker_pool(
    workers: int, initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()
) -> Iterator[InProcessPool | ProcessPool]:
    """The pool of `workers` (0 or 1: this process; see the module docstring). `initializer(*initargs)` sets up
    every process that runs tasks: each worker process, or this one (OpenCV's thread count is restored after).
    Leaving the block by an exception (Ctrl-C, SIGTERM, WorkerDied, a task's error) terminates the workers."""
    previous = stop_opencv_threads() if workers > 1 else cv2.getNumThreads()
    try:
        if workers <= 1:
            if initializer is not None:
                initializer(*initargs)
            yield InProcessPool()
            return
        pool = ProcessPool(workers, initializer, initargs)
        graceful = False
        try:
            yield pool
            graceful = True
        finally:
            pool.close(graceful)
    finally:
        cv2.setNumThreads(previous)


__all__ = [
    "InProcessPool",
    "ProcessPool",
    "WorkerDied",
    "WorkerStartError",
    "become_loader_worker",
    "become_worker",
    "report",
    "stop_opencv_threads",
    "worker_pool",
]
