"""m2u.core.guard: a stop (Ctrl-C, SIGTERM) ends a command in one line with the shell's code, even where a library
fails while the stop unwinds it; library errors reach the user as one line."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, signal, time
    import click
    from m2u.core.guard import Terminated, guard_command

    @click.command()
    @click.argument("how")
    def main(how):
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
    ],
)
def test_a_stop_is_one_line_even_when_a_library_fails_on_its_way_out(how, code, said):
    done = subprocess.run([sys.executable, "-c", SCRIPT, how], capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    assert (
        done.stderr.strip() == f"stopped by {said}: finished outputs were kept, nothing half-written was left"
    )


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
