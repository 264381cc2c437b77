"""One BLAS thread for m2u-mask, m2u-make-dataset and m2u-unmask: set before numpy loads, never over the user's choice."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_PROBE = """
import json, os, sys
{before}
from m2u.core.startup import one_blas_thread
took = one_blas_thread()
print(json.dumps({{"took": took, "value": os.environ.get("OPENBLAS_NUM_THREADS")}}))
"""


def _probe(before: str = "", env_value: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if env_value is not None:
        env["OPENBLAS_NUM_THREADS"] = env_value
    code = _PROBE.format(before=before)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_sets_one_thread_before_numpy_loads():
    assert _probe() == {"took": True, "value": "1"}


def test_keeps_the_users_own_setting():
    assert _probe(env_value="4") == {"took": True, "value": "4"}


def test_changes_nothing_once_numpy_is_loaded():
    assert _probe(before="import numpy") == {"took": False, "value": None}


@pytest.mark.parametrize(
    ("launcher", "entry"),
    [
        ("m2u.masking.launch", "main"),
        ("m2u.datasets.launch", "main"),
        ("m2u.inference.launch", "unmask_main"),
    ],
)
def test_console_entries_set_it_before_their_cli_loads_numpy(launcher, entry):
    # The entry runs the Click command (here its --help, which exits); numpy must not have loaded before the
    # setting, which one_blas_thread only makes while numpy is absent.
    code = (
        "import os, sys\n"
        f"from {launcher} import {entry} as main\n"
        "assert 'numpy' not in sys.modules\n"
        "sys.argv = ['cmd', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(os.environ.get('OPENBLAS_NUM_THREADS'), 'numpy' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "1 True"


def test_ctrl_c_while_a_command_loads_is_one_line(tmp_path):
    """A command whose libraries are still loading when Ctrl-C arrives says so in one line, exit 130."""
    (tmp_path / "slow_command.py").write_text("raise KeyboardInterrupt  # Ctrl-C while this module loads\n")
    code = "from m2u.core.startup import console_entry\nconsole_entry('slow_command', 'main')()\n"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (
        130,
        "stopped by Ctrl-C before the run began: nothing was written\n",
    )


@pytest.mark.parametrize("how", ["plain", "extension", "other"])
def test_ctrl_c_while_the_libraries_load_is_one_line(tmp_path, how):
    """dlib's extension interrupted while it initialises raises "ImportError: initialization failed" from the
    KeyboardInterrupt: a Ctrl-C at that moment ended in the traceback of an import and exit 1."""
    (tmp_path / "slow_module.py").write_text(
        {
            "plain": "raise KeyboardInterrupt\n",
            "extension": "try:\n    raise KeyboardInterrupt\nexcept KeyboardInterrupt as e:\n"
            "    raise ImportError('initialization failed') from e\n",
            "other": "raise ImportError('no such library')\n",
        }[how]
    )
    code = "from m2u.core.startup import console_entry; console_entry('slow_module', 'main')()"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    if how == "other":  # not a stop: Python's own report
        assert done.returncode == 1 and "no such library" in done.stderr
    else:
        assert (done.returncode, done.stderr) == (
            130,
            "stopped by Ctrl-C before the run began: nothing was written\n",
        )


@pytest.mark.parametrize("run_as", ["module", "script"])
def test_ctrl_c_inside_code_run_by_exec_while_a_command_loads_exits_130(tmp_path, run_as):
    """A Ctrl-C landing in code run by exec() of a string (dataclasses make their methods so, as they are
    imported) made CPython take it as uncaught though the entry caught it: `python -m` ended killed by SIGINT
    (-2) after the stop's line (m2u.core.startup.leave_stopped); 1 run in 7 of the slow interrupt test."""
    (tmp_path / "slow_command.py").write_text(
        "import os, signal\n"
        # the signal is handled inside the exec'd code, at its loop's first turn
        "exec('os.kill(os.getpid(), signal.SIGINT)\\nfor _ in range(10**7):\\n    pass\\n')\n"
    )
    (tmp_path / "entry.py").write_text(
        "from m2u.core.startup import console_entry\nconsole_entry('slow_command', 'main')()\n"
    )
    command = [sys.executable, "-m", "entry"] if run_as == "module" else [sys.executable, "entry.py"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (
        130,
        "stopped by Ctrl-C before the run began: nothing was written\n",
    )


def test_ctrl_c_again_while_the_stop_is_said_keeps_the_one_line(tmp_path):
    """The user presses Ctrl-C again as the stop's line is written: it raised out of the line, a traceback."""
    (tmp_path / "slow_command.py").write_text(
        "import os, signal, sys\n"
        "class Terminal:\n"
        "    def __init__(self, stream):\n"
        "        self.stream = stream\n"
        "    def write(self, text):\n"
        "        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again\n"
        "        return self.stream.write(text)\n"
        "    def __getattr__(self, name):\n"
        "        return getattr(self.stream, name)\n"
        "sys.stderr = Terminal(sys.stderr)\n"
        "raise KeyboardInterrupt\n"
    )
    code = "from m2u.core.startup import console_entry\nconsole_entry('slow_command', 'main')()\n"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (
        130,
        "stopped by Ctrl-C before the run began: nothing was written\n",
    )


@pytest.mark.parametrize("then", ["another error", "swallowed"])
def test_ctrl_c_an_extension_loses_while_it_loads_is_still_the_stop(tmp_path, then):
    """CPython's import of _ssl, interrupted, put "TypeError: expected a message argument" in the place of the
    KeyboardInterrupt: a traceback and exit 1. A library that swallows it ran the command on."""
    (tmp_path / "slow_command.py").write_text(
        "import os, signal, time\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "except KeyboardInterrupt:\n"
        "    pass\n"
        + (
            "raise TypeError('expected a message argument')\n"
            if then == "another error"
            else "def main():\n    print('ran')\n"
        )
    )
    code = "from m2u.core.startup import console_entry\nconsole_entry('slow_command', 'main')()\n"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (
        130,
        "",
        "stopped by Ctrl-C before the run began: nothing was written\n",
    )


_CLICK_COMMAND = """
import os, signal, click
from m2u.core.guard import guard_command

def ctrl_c(ctx=None, param=None, value=True):
    if value:
        os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, here and now
    return value

@click.group()
def group():
    pass

@group.command()
@click.option("--slow", is_flag=True, callback=ctrl_c, help="Ctrl-C while Click reads this option.")
@click.option("--end", is_flag=True, help="Ctrl-C once the run is done, as Click ends the command.")
def work(slow, end):
    print("ran", flush=True)
    if end:
        click.get_current_context().call_on_close(ctrl_c)

main = click.command()(work.callback)
main.params = work.params
guard_command(group)
guard_command(main)
"""


@pytest.mark.parametrize(
    ("command", "args", "said", "printed"),
    [
        ("main", ["--slow"], "stopped by Ctrl-C before the run began: nothing was written\n", ""),
        ("group", ["work", "--slow"], "stopped by Ctrl-C before the run began: nothing was written\n", ""),
        ("main", ["--end"], "stopped by Ctrl-C as the command ended: finished outputs were kept\n", "ran\n"),
    ],
)
def test_ctrl_c_while_click_reads_the_options_or_ends_is_the_stops_one_line(
    tmp_path, command, args, said, printed
):
    """After the libraries loaded and before m2u.core.guard took over (Click reading the options, a group's
    subcommand's too), or after the run as Click ended the command, a Ctrl-C was Click's: "Aborted!" and exit 1."""
    (tmp_path / "click_command.py").write_text(_CLICK_COMMAND)
    code = (
        "import sys\nfrom m2u.core.startup import console_entry\n"
        f"sys.argv = ['cmd', *{args!r}]\nconsole_entry('click_command', {command!r})()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (130, printed, said)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--slow"], "stopped by Ctrl-C before the run began: nothing was written\n"),
        (["--end"], "stopped by Ctrl-C as the command ended: finished outputs were kept\n"),
    ],
)
def test_a_stop_outside_the_run_is_said_by_rank_zero_alone(tmp_path, args, said):
    """Under torchrun the terminal's Ctrl-C reaches every rank: each printed the entry's stop line, once per rank.
    Rank 0 says it for the run; another rank exits 130 without it; a single process (WORLD_SIZE 1) says it."""
    (tmp_path / "click_command.py").write_text(_CLICK_COMMAND)
    code = (
        "import sys\nfrom m2u.core.startup import console_entry\n"
        f"sys.argv = ['cmd', *{args!r}]\nconsole_entry('click_command', 'main')()\n"
    )
    for rank, world, line in (("1", "2", ""), ("0", "2", said), ("1", "1", said)):
        env = {**os.environ, "PYTHONPATH": str(tmp_path), "RANK": rank, "WORLD_SIZE": world}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert (done.returncode, done.stderr) == (130, line), (rank, world)


_EVERY_ENTRY = """
import importlib, json, os, signal, sys, tempfile
import click.core

for cli in ("masking", "datasets", "training", "evaluation", "inference", "pipelines"):
    importlib.import_module(f"m2u.{cli}.cli")  # loaded once here, for the forked runs below
read = click.core.Command.parse_args

def parse_args(self, ctx, args):
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as Click reads the options
    return read(self, ctx, args)

click.core.Command.parse_args = parse_args
results = {}
for name, target in json.loads(sys.argv[1]).items():
    module, attr = target.split(":")
    entry = getattr(importlib.import_module(module), attr)
    with tempfile.TemporaryFile() as said:
        pid = os.fork()
        if pid == 0:
            os.dup2(said.fileno(), 2)
            sys.argv = [name, "--help"]
            entry()
            os._exit(99)  # the entry returned: not a stop
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        said.seek(0)
        results[name] = [code, said.read().decode()]
print(json.dumps(results))
"""


def test_every_console_command_stops_in_one_line_while_click_reads_its_options():
    """Every console script of setup.cfg, Ctrl-C as Click reads its options: exit 130 and the stop's one line."""
    import configparser
    from pathlib import Path

    setup = configparser.ConfigParser()
    setup.read(Path(__file__).parents[2] / "setup.cfg")
    scripts = dict(
        line.replace(" ", "").split("=")
        for line in setup["options.entry_points"]["console_scripts"].strip().splitlines()
    )
    assert len(scripts) == 7, scripts
    done = subprocess.run(
        [sys.executable, "-c", _EVERY_ENTRY, json.dumps(scripts)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    said = [130, "stopped by Ctrl-C before the run began: nothing was written\n"]
    assert json.loads(done.stdout.splitlines()[-1]) == {name: said for name in scripts}
