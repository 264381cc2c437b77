"""What a console command settles before numpy loads (numpy reads its BLAS settings once, when it loads).

This module imports nothing heavy: a command's entry (`entry_with_one_blas_thread`) acts first and only then
imports its Click layer, which loads numpy.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

# A command stopped by Ctrl-C exits with the shell's code for it (m2u.core.guard says so once the run has begun).
INTERRUPTED_EXIT_CODE = 128 + signal.SIGINT

# numpy's bundled OpenBLAS reads these when it loads; a value the user set is kept.
_BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS",)


def one_blas_thread() -> bool:
    """One OpenBLAS thread in this process and the worker processes it starts. For commands whose numpy work is
    small arrays (m2u-mask and m2u-make-dataset run one process per core; m2u-unmask's heavy work is torch's, with
    its own threads): OpenBLAS's pool of one thread per core only costs them CPU time (README, "one-BLAS-thread
    start"). Returns False, changing nothing, when numpy is already loaded (too late to take effect)."""
    if "numpy" in sys.modules:
        return False
    for name in _BLAS_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
    return True


def console_entry(module: str, command: str, one_blas: bool = False) -> Callable[[], None]:
    """A console-script entry: `one_blas_thread` first where `one_blas`, then `module.command` (a Click command)
    imported and run. The command's libraries load here, inside the entry: a Ctrl-C while they load is one line,
    not the traceback of an import (the console script itself imports only this light module)."""

    def main() -> None:
        if one_blas:
            one_blas_thread()
        with _ctrl_c_recorded() as arrived:
            try:
                run = getattr(importlib.import_module(module), command)
            except BaseException as error:
                if not (arrived or _ctrl_c_behind(error)):
                    raise
                run = None
        if run is None or arrived:
            # Ctrl-C while the libraries load, even one they swallowed: no traceback of an import
            leave_stopped(
                INTERRUPTED_EXIT_CODE, "stopped by Ctrl-C before the run began: nothing was written"
            )
        run()

    main.__doc__ = f"{module}.{command}{' with one BLAS thread' if one_blas else ''} (m2u.core.startup)."
    return main


def leave_stopped(code: int, line: str | None) -> NoReturn:
    """End a stopped command at once with `code`, after saying `line` (its one line; None where another process
    says it: a DDP rank other than 0). For every stop, before its run (here) or during it (m2u.core.guard).

    A further Ctrl-C is ignored from here: raised while the line is written, it made a traceback of it. The
    process ends by os._exit, not by SystemExit and the interpreter's exit: CPython (3.11) takes a
    KeyboardInterrupt that leaves code run by exec() or eval() of a string as uncaught, even where code around
    them catches it (dataclasses make their methods so as they are imported), and a `python -m` run then ends
    killed by SIGINT (-2), not with `code`, SIGINT ignored or not. The stopped work has unwound by now; the
    streams are flushed here."""
    with contextlib.suppress(ValueError):  # not the main thread, which alone sets handlers
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A closed or broken stream fails the line or its flush: the exit code still says it.
    if line is not None:
        with contextlib.suppress(OSError, ValueError):
            print(line, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


@contextlib.contextmanager
def _ctrl_c_recorded() -> Iterator[list[KeyboardInterrupt]]:
    """While active, a Ctrl-C raises as always and is also kept in the list given: a C extension interrupted while
    it initialises may put an error of its own in the KeyboardInterrupt's place, without it (CPython's import of
    _ssl: "TypeError: expected a message argument", a traceback and exit 1), or swallow it. A SIGINT the process
    ignores, or that a program handles its own way, is left as it is."""
    arrived: list[KeyboardInterrupt] = []

    def record(signum: int, frame: Any) -> None:
        arrived.append(KeyboardInterrupt())
        raise arrived[-1]

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield arrived
        return
    try:
        signal.signal(signal.SIGINT, record)
    except ValueError:  # not the main thread, which alone sets handlers and gets the signal's exception
        yield arrived
        return
    try:
        yield arrived
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _ctrl_c_behind(error: BaseException) -> bool:
    """Whether `error` is a Ctrl-C or was raised by one: a C extension interrupted while it initialises says so as
    its own error (dlib: "ImportError: initialization failed", raised from the KeyboardInterrupt)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def entry_with_one_blas_thread(module: str, command: str) -> Callable[[], None]:
    """`console_entry` with one BLAS thread: for the commands whose numpy work is small arrays."""
    return console_entry(module, command, one_blas=True)
