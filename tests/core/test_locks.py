"""m2u.core.locks: a child forked while another thread holds one of m2u's process-wide locks can take it."""

from __future__ import annotations

import os
import threading
import warnings

import pytest

from m2u.core.locks import ForkSafeLock

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")


def _in_a_child(check) -> int:
    """Fork; in the child run `check()` (True: it could do what it must) and exit 0 / 1 (3 if it raised); the
    child's exit status. A child stuck on a lock is killed after 10 s (status -9)."""
    with warnings.catch_warnings():  # "This process is multi-threaded, use of fork() may lead to deadlocks"
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os._exit(0 if check() else 1)
        except BaseException:  # noqa: BLE001 - any failure is the child's status
            os._exit(3)
    for _ in range(1000):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        threading.Event().wait(0.01)
    os.kill(pid, 9)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _held_by_another_thread(lock):
    """A thread holding `lock` until the returned event is set; returned once it holds it."""
    held, done = threading.Event(), threading.Event()

    def hold():
        with lock:
            held.set()
            done.wait(30)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert held.wait(10)
    return thread, done


def _process_locks():
    """Every process-wide lock of m2u (one each of: the dlib detectors', the BlazeFace interpreters', the stderr
    swap's, and loaded_once's)."""
    from m2u.core.lazy import loaded_once
    from m2u.masking import blazeface
    from m2u.masking.detect import SharedDetector

    return {
        "SharedDetector": SharedDetector(object()).lock,
        "BlazeFace interpreter": blazeface._interpreter("short").lock,
        "stderr swap": blazeface._STDERR_SWAP,
        "loaded_once": loaded_once(lambda: None)._lock,
    }


@pytest.mark.parametrize("name", ["SharedDetector", "BlazeFace interpreter", "stderr swap", "loaded_once"])
def test_a_child_forked_while_another_thread_holds_the_lock_can_take_it(name):
    """Without the at-fork renewal each child waited forever on the lock (killed here after 10 s)."""
    lock = _process_locks()[name]
    thread, done = _held_by_another_thread(lock)
    try:
        status = _in_a_child(lambda: lock.acquire(timeout=5) and (lock.release() or True))
    finally:
        done.set()
        thread.join(10)
    assert status == 0, f"the child could not take the {name} lock (exit status {status})"
    assert lock.acquire(timeout=5)  # the parent's lock is the parent's: released by its thread as before
    lock.release()


def test_a_lock_the_forking_thread_holds_stays_its_own_in_the_child():
    for lock in (ForkSafeLock(), ForkSafeLock(reentrant=True)):
        with lock:

            def check(lock=lock):
                # Still held by this thread (another thread cannot take it), and released as in the parent.
                taken = []
                other = threading.Thread(target=lambda: taken.append(lock.acquire(timeout=0.2)))
                other.start()
                other.join()
                lock.release()
                return taken == [False] and lock.acquire(timeout=1)

            assert _in_a_child(check) == 0
    with pytest.raises(RuntimeError):
        ForkSafeLock().release()


def test_a_child_forked_in_another_threads_stderr_swap_keeps_its_stderr():
    """fd 2 points at /dev/null while a thread silences LiteRT: a child forked then kept /dev/null as its stderr
    (the thread that puts it back is not in the child). The child puts it back."""
    from m2u.masking import blazeface

    before = os.fstat(2)
    inside, leave = threading.Event(), threading.Event()

    def swap():
        with blazeface._native_stderr_silenced():
            inside.set()
            leave.wait(30)

    thread = threading.Thread(target=swap, daemon=True)
    thread.start()
    assert inside.wait(10)
    try:
        assert os.fstat(2).st_ino != before.st_ino  # /dev/null now, in the parent
        status = _in_a_child(
            lambda: (os.fstat(2).st_dev, os.fstat(2).st_ino) == (before.st_dev, before.st_ino)
        )
    finally:
        leave.set()
        thread.join(10)
    assert status == 0
    assert (os.fstat(2).st_dev, os.fstat(2).st_ino) == (before.st_dev, before.st_ino)
