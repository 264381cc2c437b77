"""m2u-train under torchrun (2 CPU processes): a refusal every rank meets is said once, by rank 0, and every rank
exits with the refusal's code; a refusal only another rank meets is still said, by that rank; a stop is said once."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TORCHRUN = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]


def _torchrun(args: list[str], cwd: Path) -> tuple[str, list[int]]:
    """torchrun's stderr and the exit code of each rank, from its failure summary (none: every rank exited 0)."""
    done = subprocess.run([*TORCHRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    return done.stderr, sorted(int(code) for code in re.findall(r"exitcode +: +(-?\d+)", done.stderr))


@pytest.mark.slow
@pytest.mark.parametrize(
    "given, line",
    [
        (["--val-batches", "0"], "Error: Invalid value for '--val-batches': 0 is not in the range x>=1."),
        (["--data", "missing"], "Error: dataset folder not found: missing (build it with m2u-make-dataset)"),
    ],
)
def test_a_refusal_every_rank_meets_is_said_once(tmp_path, given, line):
    args = ["-m", "m2u.training.cli", "mseg", "--data", "data", "--out", "run", "--num-workers", "0", *given]
    stderr, codes = _torchrun(args, tmp_path)
    assert stderr.count(line) == 1, stderr[-3000:]  # each rank printed it
    assert codes == [2, 2], stderr[-3000:]


@pytest.mark.slow
def test_a_refusal_only_another_rank_meets_is_said_by_that_rank(tmp_path):
    script = tmp_path / "refuse.py"
    script.write_text(
        textwrap.dedent(
            """
            import os

            import click

            from m2u.core import guard
            from m2u.core.cli import Refused

            guard.RANK_ZERO_WAIT_SECONDS = 1.0  # rank 0 says nothing: rank 1 waits this long for it


            @click.command()
            def main():
                if os.environ["RANK"] == "1":
                    raise Refused("rank 1 cannot read its cache")


            guard.guard_command(main)
            main()
            """
        )
    )
    stderr, codes = _torchrun([str(script)], tmp_path)
    assert stderr.count("Error: rank 1 cannot read its cache") == 1, stderr[-3000:]
    assert codes == [2], stderr[-3000:]  # rank 0 exited 0: torchrun lists the failed rank alone


@pytest.mark.slow
def test_a_ctrl_c_while_every_rank_loads_is_said_once(tmp_path):
    """A console entry (m2u-train's kind) under torchrun, the terminal's Ctrl-C reaching every rank while its libraries
    load (m2u.core.startup.console_entry): each rank printed the stop's line; rank 0 says it, both exit 130."""
    (tmp_path / "loading.py").write_text("raise KeyboardInterrupt  # Ctrl-C while this module loads\n")
    script = tmp_path / "entry.py"
    script.write_text("from m2u.core.startup import console_entry\nconsole_entry('loading', 'main')()\n")
    stderr, codes = _torchrun([str(script)], tmp_path)
    assert stderr.count("stopped by Ctrl-C before the run began: nothing was written") == 1, stderr[-3000:]
    assert codes == [130, 130], stderr[-3000:]
