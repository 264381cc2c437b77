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


# What a command's one line says of a Ctrl-C that came before its run began (while its libraries loaded or Click
# read its options: nothing of it was written) and after its run ended (as Click ended the command).
STOPPED_BEFORE_THE_RUN = "stopped by Ctrl-C before the run began: nothing was written"
STOPPED_AFTER_THE_RUN = "stopped by Ctrl-C as the command ended: finished outputs were kept"

# Whether a command's own work (its callback, m2u.core.guard) has begun in this process: a Ctrl-C outside it
# from then on came after it.
_RUN_BEGAN: list[bool] = []


def run_begins() -> None:
    """Said by m2u.core.guard as a command's own work begins (its callback): a Ctrl-C that the entry meets from
    then on is one after its run, not before it."""
    _RUN_BEGAN[:] = [True]


class CtrlCOutsideTheRun(BaseException):
    """A Ctrl-C while a console command is not running its own work (Click reading its options, or ending it):
    raised instead of KeyboardInterrupt, which Click's standalone mode turns into click.Abort ("Aborted!" and exit
    1), so that it reaches the entry, which ends the command as every stop (`leave_stopped`, exit 130). Inside the
    work, m2u.core.guard's own handler raises KeyboardInterrupt, for the work to unwind as it always does."""


def console_entry(module: str, command: str, one_blas: bool = False) -> Callable[[], None]:
    """A console-script entry: `one_blas_thread` first where `one_blas`, then `module.command` (a Click command)
    imported and run. The command's libraries load here, inside the entry: a Ctrl-C while they load is one line,
    not the traceback of an import (the console script itself imports only this light module). So is one while
    Click reads the options, before m2u.core.guard takes over, or after the run as Click ends the command: exit
    130 with the stop's one line, as every stop, never Click's "Aborted!" and exit 1."""

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
            leave_stopped(INTERRUPTED_EXIT_CODE, STOPPED_BEFORE_THE_RUN)
        # From here to the command's end, a Ctrl-C outside its work (m2u.core.guard sets its own handler for that)
        # is not a KeyboardInterrupt: Click's standalone mode would make it "Aborted!" and exit 1.
        with _ctrl_c_recorded(CtrlCOutsideTheRun) as arrived:
            try:
                run()
            except BaseException as error:
                # SystemExit included: a command ending after a Ctrl-C something swallowed was still stopped
                if not (arrived or _ctrl_c_behind(error)):
                    raise
            else:
                if not arrived:
                    return
        leave_stopped(INTERRUPTED_EXIT_CODE, STOPPED_AFTER_THE_RUN if _RUN_BEGAN else STOPPED_BEFORE_THE_RUN)

    main.__doc__ = f"{module}.{command}{' with one BLAS thread' if one_blas else ''} (m2u.core.startup)."
    return main


def another_rank() -> bool:
    """A process started as a rank other than 0 of several (torchrun, or any launcher setting RANK and WORLD_SIZE):
    what every rank would say alike about the run (its stop, a notice about its options) is left to rank 0."""
    several_ranks = os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1")
    return several_ranks and os.environ.get("RANK", "0") not in ("", "0")


def leave_stopped(code: int, line: str | None) -> NoReturn:
    """End a stopped command at once with `code`, after saying `line` (its one line; None where another process
    says it). For every stop, before its run (here) or during it (m2u.core.guard). A DDP rank other than 0 says
    no line (`another_rank`): the terminal signals every rank, and rank 0's line speaks for the run; the rank's
    exit status still says it stopped.

    A further Ctrl-C is ignored from here: raised while the line is written, it made a traceback of it. The
    process ends by os._exit, not by SystemExit and the interpreter's exit: CPython (3.11) takes a
    KeyboardInterrupt that leaves code run by exec() or eval() of a string as uncaught, even where code around
    them catches it (dataclasses make their methods so as they are imported), and a `python -m` run then ends
    killed by SIGINT (-2), not with `code`, SIGINT ignored or not. The stopped work has unwound by now; the
    streams are flushed here."""
    with contextlib.suppress(ValueError):  # not the main thread, which alone sets handlers
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A closed or broken stream fails the line or its flush: the exit code still says it.
    if line is not None and not another_rank():
        with contextlib.suppress(OSError, ValueError):
            print(line, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


@contextlib.contextmanager
def _ctrl_c_recorded(
    raising: type[BaseException] = KeyboardInterrupt,
) -> Iterator[list[BaseException]]:
    """While active, a Ctrl-C raises (KeyboardInterrupt, as always, or `raising`) and is also kept in the list
    given: a C extension interrupted while it initialises may put an error of its own in the KeyboardInterrupt's
    place, without it (CPython's import of _ssl: "TypeError: expected a message argument", a traceback and exit 1),
    or swallow it. A SIGINT the process ignores, or that a program handles its own way, is left as it is; so is one
    handled by a handler set meanwhile (m2u.core.guard's, while the command's work runs): the one before it is put
    back as it ends."""
    arrived: list[BaseException] = []

    def record(signum: int, frame: Any) -> None:
        arrived.append(raising())
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
        if isinstance(current, KeyboardInterrupt | CtrlCOutsideTheRun):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def entry_with_one_blas_thread(module: str, command: str) -> Callable[[], None]:
    """`console_entry` with one BLAS thread: for the commands whose numpy work is small arrays."""
    return console_entry(module, command, one_blas=True)
