"""Ctrl-C with several workers stops a run within seconds and leaves it resumable: the terminal's SIGINT goes to
the whole process group (workers too); the rerun then gives the bytes of an uninterrupted build."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from m2u.datasets.build import STATE_DIR, build_dataset

from .conftest import photo_list
from .test_build_faults import BUILD_ARGS, CONFIG

STOP_WITHIN_S = 10.0


def _inputs(tmp_path: Path, count: int) -> Path:
    return photo_list(tmp_path, count, noise_side=360)


def _group_gone(group: int, within_s: float = 3.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _ctrl_c_and_resume(tmp_path: Path, dataset_snapshot, inputs: int, tries: int, seed: int) -> None:
    listing = _inputs(tmp_path, inputs)
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    build_dataset([listing], reference, CONFIG)
    rng = random.Random(seed)
    stopped_mid_run = 0
    for _ in range(tries):
        command = [
            sys.executable,
            "-m",
            "m2u.datasets.launch",  # the console script's entry
            str(listing),
            "-o",
            str(interrupted),
            *BUILD_ARGS,
        ]
        process = subprocess.Popen(
            [*command, "--workers", "2"], start_new_session=True, stderr=subprocess.PIPE, text=True
        )
        # Wait until the build has planned (its state file exists: the workers start next), then a bit more.
        deadline = time.monotonic() + 60
        while not (interrupted / STATE_DIR / "build.json").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.5))
        if process.poll() is not None:
            process.communicate()
            continue
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        sent = time.monotonic()
        try:
            _, stderr = process.communicate(timeout=STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            pytest.fail(f"the run was still going {STOP_WITHIN_S:.0f} s after Ctrl-C")
        stopped_mid_run += 1
        assert time.monotonic() - sent < STOP_WITHIN_S
        # A stop is told apart from a run with unreadable inputs (1): the shell's code for Ctrl-C, one line.
        # (Ctrl-C while the libraries still load is said too: "... before the run began".)
        assert process.returncode == 130 and "stopped by Ctrl-C" in stderr and "Traceback" not in stderr, (
            stderr
        )
        assert _group_gone(process.pid), "a worker outlived the interrupted run"
    assert stopped_mid_run >= 1, "every run finished before its Ctrl-C: nothing was tested"
    build_dataset([listing], interrupted, CONFIG)
    assert dataset_snapshot(interrupted) == dataset_snapshot(reference)


def _sigint_disposition(_: int) -> str:
    return str(signal.getsignal(signal.SIGINT))


def test_workers_leave_ctrl_c_to_the_parent():
    """A worker killed by SIGINT while it holds the pool's queue lock (sending a result) leaves the lock taken:
    the parent then waits for it forever when it shuts the pool down. Workers ignore SIGINT; the parent
    terminates them."""
    from m2u.core.parallel import worker_pool

    with worker_pool(2) as pool:
        dispositions = set(pool.map(_sigint_disposition, range(8)))
    assert dispositions == {str(signal.SIG_IGN)}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the parent's own is untouched


def test_ctrl_c_with_two_workers_stops_and_resumes(tmp_path, dataset_snapshot):
    _ctrl_c_and_resume(tmp_path, dataset_snapshot, inputs=40, tries=2, seed=3)


@pytest.mark.slow
def test_ctrl_c_seven_times_with_two_workers(tmp_path, dataset_snapshot):
    _ctrl_c_and_resume(tmp_path, dataset_snapshot, inputs=120, tries=7, seed=4)


@pytest.mark.parametrize(
    "stop, code, said", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")]
)
def test_a_training_run_with_loader_workers_stops_in_one_line(tiny_dataset, tmp_path, stop, code, said):
    """`timeout`, a terminal and batch schedulers signal the whole process group, DataLoader workers included:
    those leave the stop to the parent, which stops after the step under way and unwinds in one line (a worker killed by the signal made torch's
    "DataLoader worker is killed by signal" a traceback and exit 1)."""
    run = tmp_path / "run"
    command = [
        str(Path(sys.executable).parent / "m2u-train"),
        "mseg",
        "--data",
        str(tiny_dataset),
        "--out",
        str(run),
    ]
    command += ["--max-steps", "100000", "--batch-size", "2", "--workers", "2", "--base-channels", "2"]
    command += ["--levels", "2", "--log-every", "1", "-q"]
    process = subprocess.Popen(command, start_new_session=True, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "log.jsonl").exists() or not (run / "log.jsonl").read_text().count("\n") > 2:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "the run never logged a step"
        time.sleep(0.2)
    os.killpg(process.pid, stop)  # the whole group, as `timeout` and a terminal do
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code and f"stopped by {said}" in stderr and "Traceback" not in stderr, stderr
    # What the stop does first, then that it is done; nothing else (one line each).
    lines = stderr.splitlines()
    assert (
        lines[0].startswith(f"{said}: stopping once the training step under way is done") and len(lines) == 2
    ), stderr
    # The step under way ends whole and is checkpointed: workers leave Ctrl-C to the parent; SIGTERM kills them
    # too, and torch's "worker killed" (raised from its SIGCHLD handler mid-step) is set aside once it arrived.
    assert "resuming the run continues from it" in lines[-1], stderr
    assert _group_gone(process.pid, within_s=10), "a loader worker outlived the stopped run"


def test_a_process_with_loader_workers_left_running_exits(tiny_dataset):
    """multiprocessing stops daemonic workers with SIGTERM at exit and then waits for them: a DataLoader worker
    that ignored SIGTERM hung the interpreter's exit (a test session hung there, its tests all passed)."""
    script = (
        "from m2u.datasets.loader import LoaderConfig, make_loader\n"
        f"loader = make_loader({str(tiny_dataset)!r}, 'train', LoaderConfig(batch_size=2, num_workers=2,"
        " persistent_workers=True))\n"
        "batches = iter(loader)\n"
        "next(batches)\n"  # the workers are busy prefetching when the interpreter exits
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
