"""Where the shard tasks run: the swappable task runner of the build (plan → shard tasks → commit → stats).

A distributor takes the build's ``BuildJob`` and its ``ShardTask`` list and yields one ``ShardOutput`` per task,
in any order, while reporting per-shard progress; the driver commits each output as it arrives. It never commits
anything itself, so however it runs a task (and however often) the bytes are those of ``build_shard``.

* ``MultiprocessingDistributor`` (``--distributor multiprocessing``, the default): the worker pool of every m2u
  per-file job (``m2u.core.parallel.worker_pool``) on this machine, largest shards first; with one worker, the
  tasks run in this process. With fewer than two shards per worker, each shard is built in parts of consecutive
  inputs (``build_shard(part=...)``), which the driver joins into the bytes one task would have written
  (``m2u.datasets.shards.assemble_shard``), so every worker has work to the end. A worker process that dies
  (killed, out of memory) breaks the pool (``WorkerDied``): a fresh pool is started and the uncommitted shards are
  resubmitted, those of the dead worker last; a shard whose worker died more than ``max_retries`` times stops the
  build (a rerun resumes it).
* ``RayDistributor`` (``--distributor ray``): one Ray task per shard (``num_cpus=1``), retried by Ray when its
  worker or node dies (``max_retries``), on the cluster ``--ray-address`` names (``auto``: the running cluster) or
  on a local Ray instance with ``--workers`` CPUs. Workers write the shards: OUT must be a folder every node
  mounts (the same path); the driver checks each shard it commits.

Progress is reported as (shard, samples done in it, counts per status) and the latest report of a shard wins, so a
retried task that starts again from zero never counts a sample twice.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from m2u.core.parallel import WorkerDied, WorkerStartError, report, worker_pool
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


# A unit of work of the pool: part i of n of a shard (n = 1: the whole shard).
_Item = tuple[ShardTask, int, int]


def _item_key(item: _Item) -> tuple[tuple[str, int], int]:
    return (item[0].shard_id, item[1])


def _mp_task(job: BuildJob, item: _Item) -> ShardOutput:
    task, part, parts = item
    # Progress is reported per part: the latest report of each part wins.
    key = task.shard_id if parts == 1 else (task.shard_id, part)

    def send(done: int, counts: dict[str, int]) -> None:
        report((key, done, counts))

    return build_shard(job, task, throttled(send, len(task.samples)), part=(part, parts))


def split_into_parts(tasks: Sequence[ShardTask], workers: int) -> list[_Item]:
    """Whole shards when there are at least two per worker (or one worker: this process); else each shard in parts
    of consecutive inputs, so that every worker has work to the end (joined into the same bytes: assemble_shard)."""
    if workers <= 1 or len(tasks) >= 2 * workers:
        return [(task, 0, 1) for task in tasks]
    parts = -(-2 * workers // max(len(tasks), 1))
    return [(task, part, parts) for task in tasks for part in range(parts)]


class MultiprocessingDistributor:
    """Shard tasks in m2u.core.parallel's worker pool on this machine (see the module docstring)."""

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
        pending = {_item_key(item): item for item in split_into_parts(ordered, workers)}
        assembling: dict[tuple[str, int], dict[int, ShardOutput]] = {}
        deaths: dict[tuple[tuple[str, int], int], int] = {}
        while pending:
            items = list(pending.values())
            try:
                for output in self._pool_round(job, items, progress, workers, inherited_fds):
                    del pending[((output.split, output.index), output.part)]
                    if output.parts == 1:
                        yield output
                        continue
                    parts = assembling.setdefault((output.split, output.index), {})
                    parts[output.part] = output
                    if len(parts) == output.parts:
                        yield _assemble(job, [parts[i] for i in range(output.parts)])
            except WorkerDied as died:
                killed = [_item_key(items[i]) for i in died.tasks]
                # The items whose worker died go last, so the others are built while they are retried.
                pending = {
                    **{k: t for k, t in pending.items() if k not in killed},
                    **{k: t for k, t in pending.items() if k in killed},
                }
                for key in killed:
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
        """One pool's life: until every item is done, or a worker dies (WorkerDied names its items)."""
        # The driver's lock descriptors are closed in worker processes only (this process holds the locks).
        initargs = (job.config, tuple(inherited_fds) if workers > 1 else ())
        try:
            with worker_pool(workers, init_worker, initargs) as pool:
                yield from pool.imap(
                    functools.partial(_mp_task, job),
                    items,
                    ordered=False,
                    on_message=lambda message: progress(*message),
                )
        except WorkerStartError as exc:  # a pool would replace that worker with one failing the same way
            raise BuildError(f"a worker process could not start: {exc}") from None


def _assemble(job: BuildJob, parts: list[ShardOutput]) -> ShardOutput:
    """The shard of these parts (in order): their rows, and their member bytes joined into the shard's tar."""
    from m2u.datasets.shards import assemble_shard

    first = parts[0]
    versions = sorted({p.render_version for p in parts}, key=str)
    if len(versions) > 1:
        raise BuildError(
            f"the parts of shard {first.split}-{first.index:06d} were drawn by mask engine versions "
            f"{', '.join(map(str, versions))} ({', '.join(sorted({p.worker for p in parts}))}): install the same m2u "
            "on every node"
        )
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
        render_version=first.render_version,
    )


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
            f"`distributor` ray needs Ray: pip install 'm2u[ray]' (or pip install ray) ({exc})"
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
                f"`ray_address` {self.address}: no Ray cluster there ({exc}); start one with 'ray start --head'"
                " or leave `ray_address` out for a local Ray instance"
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
            with contextlib.suppress(Exception):
                ray.kill(board)
            if started:
                # Ending the Ray connection this call made ends its job, and Ray stops every task of it. Cancelling
                # them first raced Ray's own bookkeeping of a task finishing that moment: on Ctrl-C the process
                # aborted in Ray's C++ core ("Tried to complete task that was not pending"), left Ray's agents
                # running and exited without m2u's stop line.
                ray.shutdown()
            else:
                # A Ray the caller started stays up, so the tasks are stopped one by one (that race remains here).
                for ref in refs:
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)

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
