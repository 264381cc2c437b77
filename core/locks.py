"""Locks that a forked child process can take.

A process forked while another of its threads holds a `threading.Lock` gets the lock held, and no thread of the
child will ever release it: the child's first call that takes it waits forever. m2u's process-wide locks (one
dlib detector or BlazeFace interpreter run at a time, the swap of file descriptor 2, a model loaded once) are held
by the threads of a service or a DataLoader's main process while it forks workers, so each is a `ForkSafeLock`:
after a fork (`os.register_at_fork`) every one held by a thread other than the forking one is made anew in the
child, unlocked. One the forking thread holds stays held in the child by that same thread, which releases it as it
would have in the parent. What the lock guarded is the caller's to make whole in the child (the stderr swap does,
m2u.masking.blazeface); a model or interpreter interrupted mid-call is run afresh by the child's next call.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

__all__ = ["ForkSafeLock"]


class ForkSafeLock:
    """`threading.Lock` (or `threading.RLock` with `reentrant`) that a child forked while another thread held it
    finds unlocked (see the module docstring). Used as a lock is: `with lock:`, `acquire`, `release`."""

    __slots__ = ("__weakref__", "_depth", "_lock", "_owner", "_reentrant")

    def __init__(self, reentrant: bool = False):
        self._reentrant = reentrant
        self._lock: Any = threading.RLock() if reentrant else threading.Lock()
        self._owner: int | None = None  # the holding thread's ident, set and cleared under the lock
        self._depth = 0
        _LOCKS.add(self)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = bool(self._lock.acquire(blocking, timeout))
        if got:
            self._owner = threading.get_ident()
            self._depth += 1
        return got

    def release(self) -> None:
        if self._owner != threading.get_ident():
            # As threading's own locks say it (a plain Lock may be released by another thread; none of m2u's is).
            raise RuntimeError("cannot release a ForkSafeLock this thread does not hold")
        self._depth -= 1
        if not self._depth:
            self._owner = None
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def held_by_this_thread(self) -> bool:
        return self._owner == threading.get_ident()

    def _after_fork_in_child(self) -> None:
        if self._owner is not None and self._owner == threading.get_ident():
            return  # the forking thread held it: it goes on in the child and releases it there
        self._lock = threading.RLock() if self._reentrant else threading.Lock()
        self._owner, self._depth = None, 0


_LOCKS: weakref.WeakSet[ForkSafeLock] = weakref.WeakSet()


def _renew_after_fork() -> None:
    for lock in list(_LOCKS):
        lock._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX; Windows does not fork
    os.register_at_fork(after_in_child=_renew_after_fork)
