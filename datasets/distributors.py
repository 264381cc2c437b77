"""Where the shard tasks run: the swappable task runner of the build (plan → shard tasks → commit → stats).

A distributor takes the build's ``BuildJob`` and its ``ShardTask`` list and yields one ``ShardOutput`` per task,
in any order, while reporting per-shard progress; the driver commits each output as it arrives. It never commits
anything itself, so however it runs a task (and however often) the bytes are those of ``build_shard``.

* ``MultiprocessingDistributor`` (``--distributor multiprocessing``, the default): a process pool on this machine,
  largest shards first; with one worker, the tasks run in this process. With fewer than two shards per worker,
  each shard is built in parts of consecutive inputs (``build_shard(part=...)``), which the driver joins into the
  bytes one task would have written (``m2u.datasets.shards.assemble_shard``), so every worker has work to the end. A worker process that dies (killed, out
  of memory) breaks the pool: the pool is started again and the uncommitted shards are resubmitted; a shard whose
  worker died more than ``max_retries`` times stops the build (a rerun resumes it).
* ``RayDistributor`` (``--distributor ray``): one Ray task per shard (``num_cpus=1``), retried by Ray when its
  worker or node dies (``max_retries``), on the cluster ``--ray-address`` names (``auto``: the running cluster) or
  on a local Ray instance with ``--workers`` CPUs. Workers write the shards: OUT must be a folder every node
  mounts (the same path); the driver checks each shard it commits.

Progress is reported as (shard, samples done in it, counts per status) and the latest report of a shard wins, so a
retried task that starts again from zero never counts a sample twice.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from m2u.datasets.config import BuildConfig, BuildError
from m2u.datasets.layout import shard_name
from m2u.datasets.work import BuildJob, Progress, ShardOutput, ShardTask, build_shard, init_worker

# progress(shard id, samples done in that shard, counts per status)
ShardProgress = Callable[[tuple[str, int], int, dict[str, int]], None]
_REPORT_EVERY_S = 0.25
_POLL_S = 0.25


class Distributor(Protocol):
    def run(
        self,
        job: BuildJob,
        tasks: Sequence[ShardTask],
        progress: ShardProgress,
        inherited_fds: Sequence[int] = (),
    ) -> Iterator[ShardOutput]: ...


def make_distributor(config: BuildConfig) -> Distributor:
    if config.distributor == "ray":
        return RayDistributor(config.ray_address, config.workers)
    return MultiprocessingDistributor(config.workers)


def _largest_first(tasks: Sequence[ShardTask]) -> list[ShardTask]:
    return sorted(tasks, key=lambda t: (-len(t.samples), t.sort_key()))


def throttled(send: Callable[[int, dict[str, int]], None], total: int) -> Progress:
    """A progress callback that passes on at most one report per quarter second (and always the last one)."""
    last = 0.0

    def report(done: int, counts: dict[str, int]) -> None:
        nonlocal last
        now = time.monotonic()
        if done >= total or now - last >= _REPORT_EVERY_S:
            last = now
            send(done, counts)

    return report


# --- multiprocessing ------------------------------------------------------------------------------------------

_QUEUE: Any = None
_START_ERROR = "start-error"


def _mp_init(config: BuildConfig, inherited_fds: Sequence[int], queue: Any) -> None:
    global _QUEUE
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it stops the pool
    _QUEUE = queue
    try:
        init_worker(config, inherited_fds)
    except Exception as exc:
        # Told to the driver, which stops the run: a pool would replace this worker with one failing the same way.
        queue.put((_START_ERROR, f"{type(exc).__name__}: {exc}"))
        raise


# A unit of work of the pool: part i of n of a shard (n = 1: the whole shard).
_Item = tuple[ShardTask, int, int]


def _item_key(item: _Item) -> tuple[tuple[str, int], int]:
    return (item[0].shard_id, item[1])


def _mp_task(job: BuildJob, item: _Item) -> ShardOutput:
    task, part, parts = item
    pid = os.getpid()
    # Progress is reported per part: the latest report of each part wins.
    key = task.shard_id if parts == 1 else (task.shard_id, part)

    def send(done: int, counts: dict[str, int]) -> None:
        _QUEUE.put((pid, _item_key(item), key, done, counts))

    send(0, {})  # "this worker started this item": tells the driver whose worker died, if one does
    return build_shard(job, task, throttled(send, len(task.samples)), part=(part, parts))


def split_into_parts(tasks: Sequence[ShardTask], workers: int) -> list[_Item]:
    """Whole shards when there are at least two per worker; else each shard in parts of consecutive inputs, so
    that every worker has work to the end (the parts are joined into the same bytes, see assemble_shard)."""
    if len(tasks) >= 2 * workers:
        return [(task, 0, 1) for task in tasks]
    parts = -(-2 * workers // max(len(tasks), 1))
    return [(task, part, parts) for task in tasks for part in range(parts)]


class MultiprocessingDistributor:
    """Shard tasks in a process pool on this machine (see the module docstring)."""

    def __init__(self, workers: int, max_retries: int = 3):
        self.workers = workers
        self.max_retries = max_retries

    def run(
        self,
        job: BuildJob,
        tasks: Sequence[ShardTask],
        progress: ShardProgress,
        inherited_fds: Sequence[int] = (),
    ) -> Iterator[ShardOutput]:
        ordered = _largest_first(tasks)
        workers = min(self.workers, sum(len(t.samples) for t in ordered))
        if workers <= 1:
            for task in ordered:
                report = throttled(functools.partial(progress, task.shard_id), len(task.samples))
                yield build_shard(job, task, report)
            return
        pending = {_item_key(item): item for item in split_into_parts(ordered, workers)}
        assembling: dict[tuple[str, int], dict[int, ShardOutput]] = {}
        deaths: dict[tuple[tuple[str, int], int], int] = {}
        while pending:
            try:
                for output in self._pool_round(job, list(pending.values()), progress, workers, inherited_fds):
                    del pending[((output.split, output.index), output.part)]
                    if output.parts == 1:
                        yield output
                        continue
                    parts = assembling.setdefault((output.split, output.index), {})
                    parts[output.part] = output
                    if len(parts) == output.parts:
                        yield _assemble(job, [parts[i] for i in range(output.parts)])
            except _WorkerDied as died:
                # The items whose worker died go last, so the others are built while they are retried.
                pending = {
                    **{k: t for k, t in pending.items() if k not in died.items},
                    **{k: t for k, t in pending.items() if k in died.items},
                }
                for key in died.items:
                    deaths[key] = deaths.get(key, 0) + 1
                    if deaths[key] > self.max_retries:
                        raise BuildError(
                            f"the worker process building {pending[key][0].relpath} died "
                            f"{deaths[key]} times (exit code {died.exit_codes}); {len(pending)} task(s) are "
                            "not built yet; rerun the same command to resume"
                        ) from None

    def _pool_round(
        self,
        job: BuildJob,
        items: list[_Item],
        progress: ShardProgress,
        workers: int,
        inherited_fds: Sequence[int],
    ) -> Iterator[ShardOutput]:
        """One pool's life: until every item is done, or a worker dies (raises _WorkerDied naming its item)."""
        from m2u.core.parallel import stop_opencv_threads

        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        queue = context.SimpleQueue()
        stop_opencv_threads()  # forking while OpenCV's pool runs can hang the children (m2u.core.parallel)
        executor = cf.ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_mp_init,
            initargs=(job.config, tuple(inherited_fds), queue),
        )
        running: dict[int, Any] = {}  # worker pid -> the item it works on
        finished = False
        try:
            try:
                futures = {executor.submit(_mp_task, job, item) for item in items}
            except cf.process.BrokenProcessPool:  # broken while the items were submitted
                _drain(queue, running, progress)
                raise _WorkerDied.find(executor, running) from None
            while futures:
                done, futures = cf.wait(futures, timeout=_POLL_S, return_when=cf.FIRST_COMPLETED)
                _drain(queue, running, progress)
                for future in done:
                    try:
                        yield future.result()
                    except cf.process.BrokenProcessPool:
                        # A worker that could not start said why before it died: that stops the build.
                        _drain(queue, running, progress)
                        raise _WorkerDied.find(executor, running) from None
            finished = True
        finally:
            _stop(executor, finished)


def _drain(queue: Any, running: dict[int, Any], progress: ShardProgress) -> None:
    """Read the workers' messages: progress reports (which also tell whose worker runs what), and a worker's
    start-up failure, which stops the build (a pool would replace that worker with one failing the same way)."""
    while not queue.empty():
        message = queue.get()
        if message[0] == _START_ERROR:
            raise BuildError(f"a worker process could not start: {message[1]}")
        pid, item_key, progress_key, samples_done, counts = message
        running[pid] = item_key
        progress(progress_key, samples_done, counts)


def _assemble(job: BuildJob, parts: list[ShardOutput]) -> ShardOutput:
    """The shard of these parts (in order): their rows, and their member bytes joined into the shard's tar."""
    from m2u.datasets.shards import assemble_shard

    first = parts[0]
    files = [Path(p.part_file) for p in parts if p.part_file is not None]
    target = Path(job.out_dir) / first.split / shard_name(first.split, first.index)
    started = time.perf_counter()
    size, sha256 = assemble_shard(target, files) if files else (None, None)
    return ShardOutput(
        split=first.split,
        index=first.index,
        rows=[row for part in parts for row in part.rows],
        bytes=size,
        sha256=sha256,
        process_s=round(sum(p.process_s for p in parts), 3),
        write_s=round(sum(p.write_s for p in parts) + time.perf_counter() - started, 3),
        worker=",".join(sorted({p.worker for p in parts})),
    )


class _WorkerDied(Exception):
    """A worker process of the pool died; ``items`` are the ones whose worker died (all running ones when the
    culprit cannot be told from the workers the pool terminated after it)."""

    def __init__(self, items: list[Any], exit_codes: list[int | None]):
        super().__init__(items)
        self.items, self.exit_codes = items, exit_codes

    @classmethod
    def find(cls, executor: cf.ProcessPoolExecutor, running: dict[int, Any]) -> _WorkerDied:
        processes = dict(getattr(executor, "_processes", None) or {})
        for process in processes.values():
            with contextlib.suppress(Exception):
                process.join(2)
        codes = {pid: process.exitcode for pid, process in processes.items()}
        # The pool terminates (SIGTERM) its other workers once one died: the culprit exited otherwise.
        culprits = [pid for pid, code in codes.items() if code not in (None, 0, -signal.SIGTERM)]
        items = [running[pid] for pid in culprits if pid in running] or list(running.values())
        return cls(items, [codes[pid] for pid in culprits])


def _stop(executor: cf.ProcessPoolExecutor, graceful: bool) -> None:
    """Shut the pool down; unless it finished, terminate its workers instead of waiting for their tasks."""
    if graceful:
        executor.shutdown(wait=True)
        return
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(5)


# --- Ray ------------------------------------------------------------------------------------------------------


class _ProgressBoard:
    """A Ray actor holding the latest progress report of each running shard until the driver takes them."""

    def __init__(self) -> None:
        self.reports: dict[tuple[str, int], tuple[int, dict[str, int]]] = {}

    def report(self, shard_id: tuple[str, int], done: int, counts: dict[str, int]) -> None:
        split, index = shard_id  # a list after Ray serialised it: a tuple key again
        self.reports[(split, index)] = (done, counts)

    def take(self) -> list[tuple[tuple[str, int], int, dict[str, int]]]:
        reports, self.reports = self.reports, {}
        return [(sid, done, counts) for sid, (done, counts) in reports.items()]


def _ray_task(job: BuildJob, task: ShardTask, board: Any) -> ShardOutput:
    def send(done: int, counts: dict[str, int]) -> None:
        board.report.remote(task.shard_id, done, counts)

    return build_shard(job, task, throttled(send, len(task.samples)))


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise BuildError(
            f"--distributor ray needs Ray: pip install 'm2u[ray]' (or pip install ray) ({exc})"
        ) from None
    return ray


class RayDistributor:
    """One Ray task per shard (see the module docstring)."""

    def __init__(self, address: str | None, workers: int, max_retries: int = 3):
        import_ray()  # a missing Ray is said before anything is written
        self.address = address
        self.workers = workers
        self.max_retries = max_retries

    def _connect(self, ray: Any) -> bool:
        """Attach to (or start) Ray unless this process already did; True when this call started it."""
        if ray.is_initialized():
            return False
        options = {"include_dashboard": False, "logging_level": logging.WARNING}
        try:
            if self.address:
                ray.init(address=self.address, **options)
            else:
                ray.init(num_cpus=self.workers, **options)
        except ConnectionError as exc:
            raise BuildError(
                f"--ray-address {self.address}: no Ray cluster there ({exc}); start one with `ray start --head`"
                " or leave --ray-address out for a local Ray instance"
            ) from None
        return True

    def run(
        self,
        job: BuildJob,
        tasks: Sequence[ShardTask],
        progress: ShardProgress,
        inherited_fds: Sequence[int] = (),
    ) -> Iterator[ShardOutput]:
        ray = import_ray()
        started = self._connect(ray)
        board = ray.remote(num_cpus=0)(_ProgressBoard).remote()
        remote = ray.remote(num_cpus=1, max_retries=self.max_retries)(_ray_task)
        job_ref = ray.put(job)
        refs = {remote.remote(job_ref, task, board): task for task in _largest_first(tasks)}
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=_POLL_S)
                with contextlib.suppress(ray.exceptions.RayError):  # progress only: the results still count
                    for sid, done, counts in ray.get(board.take.remote()):
                        progress(tuple(sid), done, counts)
                for ref in ready:
                    task = refs.pop(ref)
                    yield self._result(ray, ref, task)
        finally:
            for ref in refs:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            with contextlib.suppress(Exception):
                ray.kill(board)
            if started:
                ray.shutdown()

    def _result(self, ray: Any, ref: Any, task: ShardTask) -> ShardOutput:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BuildError):
                raise BuildError(str(cause)) from None
            raise BuildError(f"the Ray task building {task.relpath} failed: {cause or exc}") from None
        except ray.exceptions.RayError as exc:  # the worker or its node died more often than max_retries
            raise BuildError(
                f"the Ray task building {task.relpath} was lost {self.max_retries + 1} times ({type(exc).__name__});"
                " rerun the same command to resume"
            ) from None
