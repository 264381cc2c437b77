"""m2u.core.guard: a stop (Ctrl-C, SIGTERM) ends a command in one line with the shell's code, even where a library
fails while the stop unwinds it; library errors reach the user as one line."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    import click
    from m2u.core.guard import Terminated, guard_command

    class DataLoaderIterator:
        def __del__(self):  # torch's iterator shuts its workers down here and finds them killed
            raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")

    @click.command()
    @click.argument("how")
    def main(how):
        if how in ("destructor", "destructor-unstopped"):
            iterator = DataLoaderIterator()
            try:
                if how == "destructor":
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(1)
                raise click.ClickException("failed")
            finally:
                del iterator  # collected while the stop (or, unstopped, the failure) unwinds
        if how == "forked-child":  # a worker forked by the command, signalled before it set its own handlers
            child = os.fork()
            if child == 0:
                os.kill(os.getpid(), signal.SIGINT)  # the group's Ctrl-C: the parent's to handle
                time.sleep(0.2)
                os.kill(os.getpid(), signal.SIGTERM)  # the group's SIGTERM: the worker ends
                time.sleep(5)
                os._exit(0)
            _, status = os.waitpid(child, 0)
            click.echo(f"child ended by signal {os.WTERMSIG(status) if os.WIFSIGNALED(status) else None}")
            return
        if how == "again":  # the user presses Ctrl-C again as the stop's line is written
            class Terminal:
                def __init__(self, stream):
                    self.stream = stream

                def write(self, text):
                    os.kill(os.getpid(), signal.SIGINT)
                    return self.stream.write(text)

                def __getattr__(self, name):
                    return getattr(self.stream, name)

            sys.stderr = Terminal(sys.stderr)
            raise KeyboardInterrupt()
        if how == "swallowed":
            try:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, its exception swallowed (as in an at-fork hook)
                time.sleep(1)
            except KeyboardInterrupt:
                pass
            raise RuntimeError("DataLoader worker (pid 1) exited unexpectedly")
        try:
            raise Terminated() if how == "sigterm" else KeyboardInterrupt()
        finally:
            if how != "plain":
                # what torch's DataLoader does when the same signal killed its workers
                raise RuntimeError("DataLoader worker (pid 1) is killed by signal: Terminated.")

    guard_command(main)
    main()
    """
)


@pytest.mark.parametrize(
    "how, code, said",
    [
        ("sigterm", 143, "SIGTERM"),
        ("ctrl-c", 130, "Ctrl-C"),
        ("plain", 130, "Ctrl-C"),
        ("swallowed", 130, "Ctrl-C"),
        ("again", 130, "Ctrl-C"),
        ("destructor", 143, "SIGTERM"),
    ],
)
def test_a_stop_is_one_line_even_when_a_library_fails_on_its_way_out(how, code, said):
    done = subprocess.run([sys.executable, "-c", SCRIPT, how], capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    assert (
        done.stderr.strip() == f"stopped by {said}: finished outputs were kept, nothing half-written was left"
    )


IGNORING = textwrap.dedent(
    """
    import os, signal, time
    import click
    from m2u.core.guard import guard_command

    @click.command()
    def main():
        os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C after start-up, to a process started ignoring it
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        click.echo("ran through")

    guard_command(main)
    main()
    """
)


def test_signals_the_process_was_started_ignoring_stay_ignored():
    """A background job of a non-interactive shell starts with SIGINT ignored: it ignored a Ctrl-C during its
    first seconds (start-up) and stopped at one later, once the command had installed its handler."""

    def ignore() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    done = subprocess.run(
        [sys.executable, "-c", IGNORING], capture_output=True, text=True, timeout=60, preexec_fn=ignore
    )
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "ran through", "")


def test_a_ddp_rank_other_than_zero_ends_a_stop_without_the_line():
    """Under torchrun every rank gets the terminal's Ctrl-C: only rank 0 says it (RANK is torchrun's)."""
    import os

    env = {**os.environ, "RANK": "1", "WORLD_SIZE": "2"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, "ctrl-c"], capture_output=True, text=True, timeout=60, env=env
    )
    assert (done.returncode, done.stderr) == (130, "")


def test_a_failing_destructor_is_still_reported_when_no_stop_arrived():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, "destructor-unstopped"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "Exception ignored" in done.stderr and "killed by signal" in done.stderr
    assert done.stderr.strip().endswith("Error: failed")


def test_a_forked_child_does_not_take_the_parents_stop_as_its_own():
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, "forked-child"], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"child ended by signal {int(signal.SIGTERM)}\n"


def test_a_multi_line_library_message_is_one_line():
    import click
    from click.testing import CliRunner

    from m2u.core.guard import guard_command

    @click.command()
    def main():
        raise click.ClickException("File contains no section headers.\nfile: 'x', line: 1\n'hello'")

    result = CliRunner().invoke(guard_command(main), [])
    assert result.exit_code == 1
    assert result.output == "Error: File contains no section headers. file: 'x', line: 1 'hello'\n"


def test_a_rank_whose_peer_ended_says_so_in_one_line_not_a_gloo_traceback(monkeypatch):
    """Rank 0 refused the run in one line; rank 1, waiting in a collective, printed 60 lines of gloo's
    "Connection closed by peer". Outside a torchrun job the same error is not taken for that."""
    import click
    from click.testing import CliRunner

    from m2u.core.guard import guard_command

    @click.command()
    def main():
        raise RuntimeError(
            "[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [::1]:1"
        )

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    result = CliRunner().invoke(guard_command(main), [])
    assert result.exit_code == 1
    assert (
        result.output
        == "Error: rank 1: another rank of this run ended, so this one stops too (its reason is above)\n"
    )
    monkeypatch.setenv("WORLD_SIZE", "1")
    alone = CliRunner().invoke(guard_command(main), [])
    assert isinstance(alone.exception, RuntimeError)


def test_only_a_stop_that_would_raise_is_deferred():
    """Outside an m2u command SIGTERM kills the process as always (a library caller's own handling is theirs):
    only a signal whose handler raises is turned into a recorded stop, and each is put back after."""
    import signal

    from m2u.core.guard import defer_stops

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert before == (signal.SIG_DFL, signal.default_int_handler)
    with defer_stops("stopping soon") as stops:
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        assert stops.requested is None
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


@pytest.fixture
def torchrun_store(monkeypatch):
    """This process as a rank of a 2-rank torchrun job, whose agent's key-value store the fixture hosts."""
    from datetime import timedelta

    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=10))
    for name, value in {
        "WORLD_SIZE": "2",
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(store.port),
        "TORCHELASTIC_RUN_ID": "test",
    }.items():
        monkeypatch.setenv(name, value)
    sigterm = signal.getsignal(signal.SIGTERM)
    yield store
    signal.signal(signal.SIGTERM, sigterm)  # a refusing rank ignores SIGTERM until it exits


def test_a_refusal_every_rank_meets_is_said_by_rank_zero_alone(torchrun_store, monkeypatch):
    """Under torchrun every rank printed the same refusal line (a bad option value, a missing dataset): rank 0 says
    it; another rank meeting the same says nothing, and every rank exits with the refusal's code."""
    import click
    from click.testing import CliRunner

    from m2u.core.cli import Refused
    from m2u.core.guard import guard_command

    @click.command()
    @click.option("--count", type=click.IntRange(1), default=1)
    @click.option("--data", default="")
    def main(count, data):
        raise Refused(f"dataset folder not found: {data}")

    guard_command(main)
    for args, line in (
        (["--data", "/nowhere"], "Error: dataset folder not found: /nowhere\n"),
        (["--count", "0"], "Error: Invalid value for '--count': 0 is not in the range x>=1.\n"),
    ):
        torchrun_store.delete_key("m2u/refusal/rank0/test/0")  # each case a job of its own
        monkeypatch.setenv("RANK", "0")
        said = CliRunner().invoke(main, args)
        assert said.exit_code == 2 and said.output.endswith(line)
        monkeypatch.setenv("RANK", "1")
        quiet = CliRunner().invoke(main, args)
        assert (quiet.exit_code, quiet.output) == (2, "")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # exits with 2, not by torchrun's SIGTERM


def test_a_refusal_rank_zero_does_not_say_is_said_by_its_rank(torchrun_store, monkeypatch):
    """A rank whose refusal differs from rank 0's, or that rank 0 does not meet (a file only that rank reads), says
    it: rank 0's line does not speak for it."""
    import click
    from click.testing import CliRunner

    from m2u.core import guard
    from m2u.core.cli import Refused

    monkeypatch.setattr(guard, "RANK_ZERO_WAIT_SECONDS", 0.2, raising=False)

    @click.command()
    @click.argument("name")
    def main(name):
        raise Refused(f"cannot read {name}")

    guard.guard_command(main)
    monkeypatch.setenv("RANK", "1")
    alone = CliRunner().invoke(main, ["rank1.cache"])  # rank 0 has said nothing: said after the wait
    assert (alone.exit_code, alone.output) == (2, "Error: cannot read rank1.cache\n")
    monkeypatch.setenv("RANK", "0")
    assert CliRunner().invoke(main, ["rank0.cache"]).output == "Error: cannot read rank0.cache\n"
    monkeypatch.setenv("RANK", "1")
    other = CliRunner().invoke(main, ["rank1.cache"])  # another line than rank 0's
    assert (other.exit_code, other.output) == (2, "Error: cannot read rank1.cache\n")
