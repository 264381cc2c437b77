"""m2u.core.parallel: the one worker pool of every per-file job (m2u-mask, m2u-make-dataset, m2u-unmask)."""

from __future__ import annotations

import os
import time

import pytest

from m2u.core.parallel import WorkerDied, WorkerStartError, report, worker_pool


def _square_slowly_first(n: int) -> tuple[int, int]:
    time.sleep(0.3 if n == 0 else 0.0)  # the first task finishes last
    report(("seen", n))
    return n * n, os.getpid()


def _die_on_three(n: int) -> int:
    if n == 3:
        os._exit(9)
    time.sleep(0.05)
    return n


def _cannot_start() -> None:
    raise ValueError("no model file here")


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_ordered_results_and_messages_in_every_mode(workers):
    messages: list = []
    with worker_pool(workers) as pool:
        results = list(pool.imap(_square_slowly_first, range(6), on_message=messages.append))
    assert [r for r, _ in results] == [n * n for n in range(6)]
    pids = {pid for _, pid in results}
    assert (pids == {os.getpid()}) == (workers <= 1), "0 and 1: this process; 2: worker processes"
    assert sorted(messages) == [("seen", n) for n in range(6)]


def test_unordered_results_come_as_they_finish():
    with worker_pool(2) as pool:
        results = [r for r, _ in pool.imap(_square_slowly_first, range(6), ordered=False)]
    assert sorted(results) == [n * n for n in range(6)]
    assert results[-1] == 0, "the slow first task came last"


@pytest.mark.timeout(60)
def test_a_worker_that_dies_is_reported_not_waited_for():
    got = []
    with pytest.raises(WorkerDied) as died, worker_pool(2) as pool:
        got.extend(pool.imap(_die_on_three, range(8), ordered=False))
    assert died.value.tasks == [3] and 3 in died.value.unfinished
    assert died.value.exit_codes == [9]
    assert not set(got) & set(died.value.unfinished), "a task handed over is never reported unfinished"


def test_a_worker_that_cannot_start_stops_the_run_with_its_error():
    with pytest.raises(WorkerStartError, match="no model file here"), worker_pool(2, _cannot_start) as pool:
        pool.map(abs, range(4))
    with pytest.raises(ValueError, match="no model file here"), worker_pool(0, _cannot_start):
        pass  # in this process: the initializer's own error


def _sleep_forever(_item):
    import time as _time

    _time.sleep(1000)


def test_close_kills_a_worker_that_never_takes_the_shutdown(monkeypatch):
    """A worker stuck for good (as a child hung right after the fork) must not outlive the pool: the interpreter's
    exit handler of concurrent.futures would otherwise wait for it forever (CI hung at exit once)."""
    import m2u.core.parallel as parallel

    monkeypatch.setattr(parallel, "_CLOSE_WAIT_S", 0.5)
    pool = parallel.ProcessPool(2, None, ())
    pool._executor.submit(_sleep_forever, 0)
    deadline = time.monotonic() + 20
    while not pool._executor._processes and time.monotonic() < deadline:
        time.sleep(0.05)
    processes = list(pool._executor._processes.values())
    assert processes
    pool.close(graceful=True)
    # Reaped by close() or, racing with it, by the executor's own manager thread: give the exit a moment.
    deadline = time.monotonic() + 10
    while any(p.is_alive() for p in processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(p.is_alive() for p in processes)
