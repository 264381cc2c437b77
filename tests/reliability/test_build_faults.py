"""m2u-make-dataset under faults: SIGKILL at random moments then a rerun gives the bytes of an uninterrupted run;
a full disk gives a clear error and never a shard that looks complete but is not."""

from __future__ import annotations

import errno
import io
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from m2u.datasets import shards as shards_module
from m2u.datasets.build import STATE_DIR, BuildConfig, BuildError, build_dataset
from m2u.datasets.cli import main as make_dataset_main
from m2u.datasets.layout import SPLITS, split_shards

from .conftest import photo_list

BUILD_ARGS = ["--mask-engine", "synthetic", "--size", "64", "--shard-size", "2", "--quiet"]
CONFIG = BuildConfig(
    mask_engine="synthetic", size=64, shard_size=2, workers=1, progress=False
)  # = BUILD_ARGS


def _inputs(tmp_path: Path, count: int) -> Path:
    return photo_list(tmp_path, count, noise_side=40)


def _command(listing: Path, out: Path, workers: int) -> list[str]:
    cli = [sys.executable, "-m", "m2u.datasets.cli", str(listing), "-o", str(out), *BUILD_ARGS]
    return [*cli, "--workers", str(workers)]


def _assert_no_complete_looking_partial_shard(out: Path) -> None:
    """Every shard under its final name reads to its end-of-archive marker."""
    for split in SPLITS:
        for shard in split_shards(out, split):
            data = shard.read_bytes()
            assert len(data) % 512 == 0 and data.endswith(b"\0" * 1024), f"{shard} is cut short"
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                assert all(member.size > 0 for member in tar.getmembers())


def _kill_and_resume(tmp_path: Path, dataset_snapshot, inputs: int, kills: int, seed: int) -> None:
    listing = _inputs(tmp_path, inputs)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    started = time.monotonic()
    build_dataset([listing], reference, CONFIG)  # in-process: the same bytes as the CLI, without its start-up
    # A killed run also spends a few seconds importing and loading the detector: kill points span all of it.
    window_s = time.monotonic() - started + 3.0

    rng = random.Random(seed)
    interrupted = 0
    for attempt in range(kills):
        workers = 1 + attempt % 2  # with a worker pool too: the whole process group is killed
        process = subprocess.Popen(
            _command(listing, killed, workers), start_new_session=True, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.2, window_s))
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            interrupted += 1
        process.wait(timeout=60)
        _assert_no_complete_looking_partial_shard(killed)

    assert interrupted >= 1, "every run finished before its kill: nothing was tested"
    build_dataset([listing], killed, CONFIG)
    assert not list(killed.rglob("*.tmp")), "stray temporary files after the resumed run"
    assert dataset_snapshot(killed) == dataset_snapshot(reference)


def test_two_sigkills_then_a_rerun_equal_an_uninterrupted_run(tmp_path, dataset_snapshot):
    _kill_and_resume(tmp_path, dataset_snapshot, inputs=6, kills=2, seed=1)


@pytest.mark.slow
def test_ten_sigkills_then_a_rerun_equal_an_uninterrupted_run(tmp_path, dataset_snapshot):
    _kill_and_resume(tmp_path, dataset_snapshot, inputs=24, kills=10, seed=2)


class _FullDisk(io.RawIOBase):
    """A writable file that fails with ENOSPC once `budget` bytes have been written."""

    def __init__(self, path: Path, budget: int):
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._left = budget

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self._left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= len(data)
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()

    def flush(self) -> None:
        self._file.flush()

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        super().close()  # flushes through self.flush() while the real file is still open
        self._file.close()


@pytest.mark.parametrize("budget", [0, 700, 5000])
def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_shard(
    tmp_path, monkeypatch, budget, dataset_snapshot
):
    listing = _inputs(tmp_path, 6)
    reference, out = tmp_path / "reference", tmp_path / "out"
    config = CONFIG
    build_dataset([listing], reference, config)
    has_shards = any(split_shards(reference, s) for s in SPLITS)

    # Shards are written through m2u.core.fileio.open_new (O_EXCL, never through a link).
    monkeypatch.setattr(shards_module, "open_new", lambda path: _FullDisk(Path(path), budget))
    result = CliRunner().invoke(
        make_dataset_main, [str(listing), "-o", str(out), *BUILD_ARGS, "--workers", "1"]
    )
    if has_shards:
        assert result.exit_code == 1, result.output
        assert "No space left on device" in result.output and "rerun" in result.output
        assert "Traceback" not in result.output
        assert not list(out.rglob("*.tmp")), "the failed shard's temporary file is removed"
        assert not (out / "manifest.parquet").exists()
        _assert_no_complete_looking_partial_shard(out)
        committed = {p.stem for p in (out / STATE_DIR).glob("*.parquet")}
        finished = {p.stem for s in SPLITS for p in split_shards(out, s)}
        assert finished <= committed, "a shard under its final name without its commit marker"
        with pytest.raises(BuildError, match="No space left"):
            build_dataset([listing], out, config)
    monkeypatch.undo()
    build_dataset([listing], out, config)  # space again: the rerun resumes
    assert dataset_snapshot(out) == dataset_snapshot(reference)


def test_an_unforeseen_failure_on_one_input_is_an_error_row_not_a_crash(tmp_path, monkeypatch):
    import m2u.core.imageio as imageio

    listing = _inputs(tmp_path, 4)
    poisoned = listing.read_text().splitlines()[1]
    real_read = imageio.read_input_bytes

    def read_input_bytes(path, *args, **kwargs):
        if str(path) == poisoned:
            raise MemoryError("simulated")  # not an OSError: nothing on the way expects it
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(imageio, "read_input_bytes", read_input_bytes)
    out = tmp_path / "out"
    result = build_dataset([listing], out, CONFIG)
    rows = {row["source"]: row for row in read_manifest_rows(out)}
    assert len(rows) == 4 and sum(result.stats["counts"]["by_status"].values()) == 4
    assert (
        rows[poisoned]["status"] == "error"
        and "unexpected MemoryError: simulated" in rows[poisoned]["reason"]
    )


def read_manifest_rows(out: Path) -> list[dict]:
    from m2u.datasets.layout import read_manifest

    return read_manifest(out).to_dict("records")


def test_a_full_disk_while_writing_the_manifest_is_a_clear_error_and_resumes(
    tmp_path, monkeypatch, dataset_snapshot
):
    import m2u.datasets.manifest as manifest_module

    listing = _inputs(tmp_path, 4)
    reference, out = tmp_path / "reference", tmp_path / "out"
    build_dataset([listing], reference, CONFIG)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "manifest.parquet.tmp")

    monkeypatch.setattr(manifest_module, "write_manifest", full_disk)
    result = CliRunner().invoke(
        make_dataset_main, [str(listing), "-o", str(out), *BUILD_ARGS, "--workers", "1"]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "No space left on device" in result.output and "rerun" in result.output
    assert not (out / "manifest.parquet").exists()
    monkeypatch.undo()
    assert build_dataset([listing], out, CONFIG).stats["resumed"]
    assert dataset_snapshot(out) == dataset_snapshot(reference)
