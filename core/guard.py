"""What every m2u command does around its work, so each guarantee holds for all seven CLIs at once.

- SIGTERM (``kill``, a batch scheduler, ``timeout``) ends a run the way Ctrl-C does: `Terminated` is raised in
  the main thread, every ``with`` block unwinds (worker pools terminate their workers, temporary files are
  removed, locks released) and the command says so in one line and exits with 143 (Ctrl-C: 130). Worker processes set themselves to die with their
  parent (m2u.core.parallel.become_worker), so even a SIGKILL of the parent leaves no worker behind.
- Failures of the machine or the file system (a full disk, a read-only or unwritable folder) and refused
  outputs (m2u.core.fileio.OutputRefusedError: a link or a file m2u did not write at an output's name) end in
  one line naming the file, not a traceback. Outputs are written whole or not at all (m2u.core.fileio), so the
  line can say that nothing half-written was left.
- Under torchrun (m2u-train's DDP), a refusal every rank meets (a bad option, a missing dataset, a run folder
  holding a run) is said once, by rank 0, and every rank still exits with its code; a rank whose refusal is not
  rank 0's (a file only it reads) says its own (`_said_by_rank_zero`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, NoReturn

import click

from m2u.core.cli import Refused, cli_message
from m2u.core.errors import SettingError, UserError  # UserError: long imported from here too
from m2u.core.fileio import OutputRefusedError, folder_storing_no_files
from m2u.core.startup import (  # not Click's "Aborted!" and 1
    INTERRUPTED_EXIT_CODE,
    leave_stopped,
    run_begins,
)

TERMINATED_EXIT_CODE = 128 + signal.SIGTERM


def one_line(error: BaseException) -> str:
    """The message of `error` as one line (`as_one_line`), its settings named as the command's flags
    (m2u.core.errors)."""
    return as_one_line(cli_message(error))


def as_one_line(text: str) -> str:
    """An error's message as one line; an error re-raised from a DataLoader or pool worker carries the worker's
    whole traceback in its message, whose last line is the original error."""
    text = text.strip()
    if "Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split())


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: unwinds like Ctrl-C (every handler of KeyboardInterrupt treats it as a stop)."""


# The stops signalled to this process, kept even where Python swallowed the exception its handler raised: a
# Ctrl-C landing in an at-fork hook (a DataLoader starting its workers) is printed as "Exception ignored" and
# lost, and the run then fails on "DataLoader worker exited unexpectedly" (its worker died of the same Ctrl-C).
_SIGNALLED: list[KeyboardInterrupt] = []


# The process that installed the handlers below. A forked child (a DataLoader or pool worker) inherits them and
# may be signalled before it sets its own (m2u.core.parallel.become_worker): seen in CI, a worker starting for a
# new epoch took the group's Ctrl-C as its parent's stop and printed a traceback.
_HANDLERS_OWNER: list[int] = []


def _in_a_forked_child(signum: int, owner: int | None = None) -> bool:
    """In a forked child of `owner` (default: the guarded command's process), do what a worker does with the
    signal: leave Ctrl-C to the parent, die of SIGTERM."""
    owner = owner if owner is not None else (_HANDLERS_OWNER[-1] if _HANDLERS_OWNER else None)
    if owner is None or os.getpid() == owner:
        return False
    if signum != signal.SIGINT:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    return True


def _raise_terminated(signum: int, frame: Any) -> None:
    if _in_a_forked_child(signum):
        return
    stop = Terminated()
    _SIGNALLED.append(stop)
    raise stop


def _raise_interrupted(signum: int, frame: Any) -> None:
    if _in_a_forked_child(signum):
        return
    stop = KeyboardInterrupt()
    _SIGNALLED.append(stop)
    raise stop


_HINTS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the folder is on a read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def stops_the_run(error: BaseException) -> bool:
    """Whether `error` is a failure every later file would meet too (a full disk, a read-only file system), so a
    per-file loop must stop instead of recording it on each row."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def describe_os_error(error: OSError) -> str:
    """One line for a file-system failure: the file, what went wrong, and that no output was left half-written."""
    where = f"{error.filename}: " if error.filename else ""
    what = _HINTS.get(error.errno or 0) or error.strerror or str(error)
    if error.errno == errno.ENOENT and isinstance(error.filename, str | bytes | os.PathLike):
        # A bare "No such file or directory" for a folder that m2u was making read as if m2u had lost a file.
        folder = folder_storing_no_files(os.fsdecode(error.filename))
        if folder:
            what = f"cannot be made there: {folder} is on a file system that stores no files (the kernel's, as /proc is)"
    return (
        f"{where}{what} ({type(error).__name__}); outputs are written whole or not at all, so nothing "
        "half-written was left; rerun once this is fixed"
    )


def stop_of(error: BaseException) -> KeyboardInterrupt | None:
    """The stop that ended a run with `error`: the one `error` is or unwound from (`stop_behind`), else one
    signalled to this process whose exception a library swallowed or turned into another error."""
    return stop_behind(error) or (_SIGNALLED[-1] if _SIGNALLED else None)


def stop_behind(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM (Terminated) that `error` is, or that was being handled when `error` was raised: a
    library failing while the stop unwinds it is still that stop (torch's DataLoader raised "worker is killed by
    signal: Terminated" as a SIGTERM sent to the whole process group unwound a backward pass)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return seen
        seen = seen.__context__
    return None


def stop_name(stop: KeyboardInterrupt) -> str:
    return "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"


class DeferredStops:
    """The stop `defer_stops` recorded (`requested`), for a loop to act on at a point of its choosing."""

    def __init__(self, quiet: bool = False) -> None:
        self.requested: KeyboardInterrupt | None = None
        self.quiet = quiet

    def _record(self, stop: KeyboardInterrupt, notice: str) -> None:
        if self.requested is not None:
            raise stop  # a second one: the user insists, stop at once
        self.requested = stop
        _SIGNALLED.append(stop)
        if self.quiet:
            return
        # os.write, not print: the handler may run in the middle of another write to stderr (a progress bar). On a
        # terminal a progress bar's line has no end yet: the notice starts a line of its own.
        line = f"{stop_name(stop)}: {notice} ({stop_name(stop)} again stops at once)\n"
        with contextlib.suppress(OSError):
            os.write(2, (("\n" if os.isatty(2) else "") + line).encode())


@contextlib.contextmanager
def defer_stops(notice: str, *, quiet: bool = False) -> Iterator[DeferredStops]:
    """While active, Ctrl-C and SIGTERM are recorded instead of raised, `notice` saying what happens next
    ("stopping after this step"), for a loop to stop where its state is whole (a training loop between two steps,
    so its checkpoint holds every network after the same step, not one interrupted inside an optimizer step). A
    second one raises at once. In another thread than the main one (no signal handlers there) nothing is deferred.
    `quiet`: the stop is recorded without the notice (a DDP rank other than 0: the terminal signals every rank,
    and rank 0's notice speaks for the run).

    Once SIGTERM is recorded, the SIGCHLD handler is set aside: a SIGTERM sent to the process group (`timeout`, a
    batch scheduler) kills the worker processes too, and torch's DataLoader raises "worker killed" from its SIGCHLD
    handler wherever the main thread is, inside the step the stop waits for."""
    stops = DeferredStops(quiet)
    if threading.current_thread() is not threading.main_thread():
        yield stops
        return
    owner = os.getpid()

    def recorded(signum: int, frame: Any) -> None:
        if _in_a_forked_child(signum, owner):
            return
        if signum == signal.SIGTERM:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # first: the workers are dying of the same signal
        stops._record(Terminated() if signum == signal.SIGTERM else KeyboardInterrupt(), notice)

    # Only a signal that would raise is deferred: one a program handles its own way (or ignores, or lets kill the
    # process: SIGTERM outside an m2u command) is left to that.
    previous = {
        signum: signal.signal(signum, recorded)
        for signum in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(signum) in (signal.default_int_handler, _raise_interrupted, _raise_terminated)
    }
    try:
        yield stops
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stopped(stop: KeyboardInterrupt) -> NoReturn:
    done = f"{stop}; " if str(stop) else ""  # what the stopped work did about it (a checkpoint written)
    line = f"stopped by {stop_name(stop)}: {done}finished outputs were kept, nothing half-written was left"
    # The run has unwound (temporary files removed, locks released, workers told to stop): leave now, without the
    # interpreter's exit handlers. concurrent.futures' handler may write to the wake-up pipe of a pool the stop
    # already tore down and print a traceback (seen in CI: EBADF in _python_exit).
    leave_stopped(TERMINATED_EXIT_CODE if isinstance(stop, Terminated) else INTERRUPTED_EXIT_CODE, line)


def _quiet_while_stopping(
    previous: Callable[[Any], Any],
) -> Callable[[Any], Any]:
    """An unraisable-exception hook that says nothing of failures in destructors once a stop has arrived: they are
    that stop's doing and the stop's one line says all (seen in CI: a DataLoader iterator collected while SIGTERM
    unwound a run printed "Exception ignored in __del__" and its workers' "killed by signal" traceback). Before a
    stop, such failures are reported as Python always does."""

    def hook(unraisable: Any) -> None:
        if _SIGNALLED or isinstance(unraisable.exc_value, KeyboardInterrupt):
            return
        previous(unraisable)

    return hook


def _one_line_errors(callback: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return callback(*args, **kwargs)
    except click.ClickException as error:
        # One line, whatever a library's message held (setattr: Click types `message` as final, and a new
        # exception would lose the usage error's context).
        setattr(error, "message", " ".join(error.message.split()))  # noqa: B010
        raise
    except (OutputRefusedError, SettingError) as error:
        raise Refused(one_line(error)) from None  # a refusal: exit 2, as every refused run (m2u.core.cli)
    except UserError as error:
        raise click.ClickException(one_line(error)) from None
    except OSError as error:
        raise click.ClickException(describe_os_error(error)) from None
    except RuntimeError as error:
        if _lost_another_rank(error):
            # Its own message (a refusal, a damaged sample) is above, from that rank: this one's traceback of a
            # closed connection would bury it.
            rank = os.environ.get("RANK", "?")
            raise click.ClickException(
                f"rank {rank}: another rank of this run ended, so this one stops too (its reason is above)"
            ) from None
        raise


# What gloo and NCCL say when a peer process is gone (it exited or was killed) during a collective.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted")


def _lost_another_rank(error: RuntimeError) -> bool:
    """A collective failed because another rank of a torchrun job ended (WORLD_SIZE > 1)."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "0", "1"):
        return False
    return type(error).__name__ == "DistBackendError" or any(text in str(error) for text in _PEER_GONE)


def _unless_ignored(signum: int, handler: Callable[..., Any]) -> Any:
    """Install `handler` for `signum` and return the handler it replaces, unless the signal is ignored: a process
    started with SIGINT ignored (a background job of a non-interactive shell, nohup's SIGHUP alike) is meant to
    run through it, and installing the handler made it stop at a Ctrl-C sent after start-up only."""
    current = signal.getsignal(signum)
    if current is signal.SIG_IGN:
        return current
    return signal.signal(signum, handler)


def _guarded(callback: Callable[..., Any], work: bool = True) -> Callable[..., Any]:
    """`callback` with the guarantees above; `work`: it is a command's own work (not a group's, after which Click
    reads a subcommand's options), whose beginning m2u.core.startup is told of (a Ctrl-C its entry meets from then
    on came after the run)."""

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        main_thread = threading.current_thread() is threading.main_thread()
        _SIGNALLED.clear()
        if main_thread:
            _HANDLERS_OWNER[:] = [os.getpid()]
            previous = _unless_ignored(signal.SIGTERM, _raise_terminated)
            previous_int = _unless_ignored(signal.SIGINT, _raise_interrupted)
            previous_hook = sys.unraisablehook
            sys.unraisablehook = _quiet_while_stopping(previous_hook)
        if work:
            run_begins()  # once its handlers are set: a Ctrl-C from here on is said by `_stopped`
        try:
            return _one_line_errors(callback, *args, **kwargs)
        except BaseException as error:
            # Ctrl-C or SIGTERM, whatever else it set off on its way out, or one whose exception was swallowed
            stop = stop_of(error)
            if stop is None:
                raise
            _stopped(stop)
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)
                signal.signal(signal.SIGINT, previous_int)
                sys.unraisablehook = previous_hook

    return run


# How long a rank other than 0 waits for rank 0's refusal before saying its own: ranks started together meet
# the same refusal within moments; one that only this rank meets is said this much later.
RANK_ZERO_WAIT_SECONDS = 10.0
_REFUSAL_KEY = "m2u/refusal/rank0"


def _torchrun_worker() -> bool:
    """A rank of a torchrun job of several (torchrun's agent holds a key-value store for its workers)."""
    world = os.environ.get("WORLD_SIZE", "1")
    return world not in ("", "0", "1") and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"


def _said_by_rank_zero(line: str) -> bool:
    """Whether rank 0 of this torchrun job says `line` itself, so this rank need not: rank 0 records the refusal it
    says in the job's key-value store (torchrun's agent holds one for its workers, TORCHELASTIC_USE_AGENT_STORE)
    and another rank compares its own with it, waiting RANK_ZERO_WAIT_SECONDS at most. False wherever that cannot
    be told (no torchrun store, rank 0 says nothing, or another line): a line said twice beats one not said."""
    if not _torchrun_worker():
        return False
    rank = os.environ.get("RANK", "0")
    try:
        from torch.distributed import TCPStore

        wait = timedelta(seconds=RANK_ZERO_WAIT_SECONDS)
        store = TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=wait
        )
        # The agent's store lives as long as the job; a restarted job (--max-restarts) has a new key.
        job, attempt = (
            os.environ.get("TORCHELASTIC_RUN_ID", ""),
            os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"),
        )
        key = f"{_REFUSAL_KEY}/{job}/{attempt}"
        if rank in ("", "0"):
            store.set(key, line)
            return False
        # Polled: the store's own wait logs a socket warning when it times out, a line more to read.
        deadline = time.monotonic() + RANK_ZERO_WAIT_SECONDS
        while not store.check([key]):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return bool(store.get(key).decode() == line)
    except Exception:  # noqa: BLE001 - no store, a timeout, no torch: this rank says its line
        return False


def _once_across_ranks(error: click.ClickException) -> None:
    """Make Click's printing of `error` (its `show`) leave the line to rank 0 where rank 0 says the same."""
    if getattr(error, "_m2u_once", False):
        return
    show = error.show
    line = f"{type(error).__name__} {error.exit_code} {error.format_message()}"

    def show_once(file: Any = None) -> None:
        if _torchrun_worker():
            # This rank's exit status is the refusal's from here on: torchrun terminates the other ranks once one
            # has exited, and a rank still on its way out then ended by SIGTERM, not with the refusal's code
            # (2 of 6 two-rank runs refusing a missing dataset or a run folder holding a run).
            with contextlib.suppress(ValueError):  # not the main thread: no handler to change
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if not _said_by_rank_zero(line):
            show(file)

    setattr(error, "show", show_once)  # noqa: B010 - this one exception's, not the class's
    setattr(error, "_m2u_once", True)  # noqa: B010


def _refusals_once(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except click.ClickException as error:
            _once_across_ranks(error)
            raise

    return run


def guard_command(command: click.Command) -> click.Command:
    """Wrap the callback of `command` and of every subcommand of a group with the guarantees above; returns it."""
    if command.callback is not None and not getattr(command.callback, "_m2u_guarded", False):
        command.callback = _guarded(command.callback, work=not isinstance(command, click.Group))
        command.callback._m2u_guarded = True  # type: ignore[attr-defined]
    if not getattr(command, "_m2u_refusals_once", False):
        # Where Click reads the options (a bad value is refused there, before any callback) and runs the command:
        # what either raises, Click prints in its main. Wrapped on this object, which main calls them on.
        setattr(command, "make_context", _refusals_once(command.make_context))  # noqa: B010
        setattr(command, "invoke", _refusals_once(command.invoke))  # noqa: B010
        setattr(command, "_m2u_refusals_once", True)  # noqa: B010
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            guard_command(sub)
    return command
