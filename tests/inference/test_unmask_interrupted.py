"""m2u-unmask runs cut short (kill -9, a write killed midway) and output folders refused before any work: what a
later look at OUT, or the next run into it, finds. The models are stood in for (a row per photo, no network)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from m2u.core.inputs import KILLED_WRITE_AGE_S
from m2u.inference.cli import unmask_main

# One run of unmask_files with _unmask_row stood in for: each photo "restored" (a file written through
# m2u.core.fileio) and reported; the process kills itself (SIGKILL: no handler runs) when it reaches KILL_AT.
RUN = textwrap.dedent(
    """
    import os, signal, sys
    from m2u.core.fileio import atomic_write_bytes
    from m2u.inference import photos
    from m2u.inference.unmask import UnmaskConfig

    photos_in, out, kill_at, interval = sys.argv[1:]

    def row(item, *, out, config, unmasker):
        path, name = item
        if path.name == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write_bytes(out / name, b"restored")
        result = photos.FileResult(input=str(path), status="ok", output=str(out / name), faces=1)
        return result, [{"input": str(path), "face": 0, "restored": False, "problem": "stood in"}]

    photos._unmask_row = row
    photos.REPORT_INTERVAL_S = float(interval)
    config = UnmaskConfig(progress=False, device="cpu")
    photos.unmask_files([photos_in], None, None, out, config, unmasker=object())
    """
)


def _photos(folder: Path, *names: str) -> Path:
    folder.mkdir()
    for name in names:
        cv2.imwrite(str(folder / name), np.zeros((8, 8, 3), np.uint8))
    return folder


def _run(photos_in: Path, out: Path, kill_at: str = "", interval: float = 60.0) -> int:
    args = [sys.executable, "-c", RUN, str(photos_in), str(out), kill_at, str(interval)]
    return subprocess.run(args, capture_output=True, timeout=120).returncode


def _reported(out: Path) -> list[str]:
    with open(out / "report.csv", newline="") as handle:
        return [Path(r["input"]).name for r in csv.DictReader(handle)]


@pytest.mark.parametrize("interval", [0.0, 3600.0])
def test_a_killed_run_never_leaves_an_earlier_runs_report_beside_its_photos(tmp_path, interval):
    out = tmp_path / "out"
    assert _run(_photos(tmp_path / "old", "old.png"), out) == 0
    assert _reported(out) == ["old.png"]
    killed = _run(_photos(tmp_path / "new", "p0.png", "p1.png", "p2.png"), out, "p2.png", interval)
    assert killed == -9
    assert (out / "p1.png").exists() and not (out / "p2.png").exists()
    if interval:  # killed before its first report: the earlier run's are gone, nothing describes other photos
        assert not any((out / name).exists() for name in ("report.csv", "faces.jsonl", "index.html"))
    else:  # reports rewritten as it goes: they say the photos it finished
        assert _reported(out) == ["p0.png", "p1.png"]
        assert (out / "faces.jsonl").read_text().count("\n") == 2
        page = (out / "index.html").read_text()
        assert "p1.png" in page and "Not finished: in progress: 2 of 3 photos." in page
    # The next run into OUT is not refused, and its finished reports are what a run always wrote.
    assert _run(tmp_path / "new", out) == 0
    assert _reported(out) == ["p0.png", "p1.png", "p2.png"]
    assert "Not finished" not in (out / "index.html").read_text()


def test_the_next_run_clears_what_writes_killed_midway_left(tmp_path):
    out = tmp_path / "out"
    assert _run(_photos(tmp_path / "in", "a.png"), out) == 0
    (out / "sub").mkdir()
    killed = [out / ".report.csv.1a2b3c4d.tmp", out / "sub" / ".a.png.0f0f0f0f.tmp"]
    kept = [out / "notes.tmp", out / ".draft.tmp", out / "a.png.tmp"]  # a person's names: not m2u's pattern
    (out / "other").mkdir()
    (out / "other" / ".m2u-mask.lock").write_bytes(b"")  # another output folder: its own run clears it
    kept.append(out / "other" / ".x.png.1a2b3c4d.tmp")
    young = out / ".a.png.2b2b2b2b.tmp"  # a write that may still be going on (another run's): left for later
    long_ago = time.time() - KILLED_WRITE_AGE_S - 60
    for path in killed + kept + [young]:
        path.write_bytes(b"half")
        if path != young:
            os.utime(path, (long_ago, long_ago))
    assert _run(tmp_path / "in", out) == 0
    assert [p for p in killed if p.exists()] == [] and [p for p in kept if not p.exists()] == []
    assert young.exists()


def test_an_output_folder_below_a_file_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cv2.imwrite("q.png", np.zeros((8, 8, 3), np.uint8))
    Path("afile").write_text("a file, not a folder")
    Path("model.safetensors").write_bytes(b"not loaded: refused before")
    models = ["--mseg", "model.safetensors", "--generator", "model.safetensors"]
    result = CliRunner().invoke(unmask_main, ["q.png", "-o", "afile/sub", *models])
    assert result.exit_code == 2, result.output
    assert result.output == (
        "Error: --out afile/sub cannot be made: afile is not a folder; choose another output folder\n"
    )
    assert sorted(os.listdir()) == ["afile", "model.safetensors", "q.png"]


@pytest.mark.skipif(
    not os.path.isdir("/proc/sys") or os.access("/proc/sys", os.W_OK), reason="needs /proc/sys unwritable"
)
def test_an_output_folder_that_cannot_be_made_is_refused_by_its_setting():
    from m2u.core.inputs import Discovery, OutputFolderError, check_output_folder

    said = "`out_dir` /proc/sys/x cannot be made: /proc/sys is not writable; choose another output folder"
    with pytest.raises(OutputFolderError) as refused:
        check_output_folder("/proc/sys/x", Discovery())
    assert str(refused.value) == said


def test_mask_and_make_dataset_refuse_an_output_folder_below_a_file_alike(tmp_path, monkeypatch):
    from m2u.datasets.cli import main as dataset_main
    from m2u.masking.cli import main as mask_main

    monkeypatch.chdir(tmp_path)
    cv2.imwrite("q.png", np.zeros((8, 8, 3), np.uint8))
    Path("afile").write_text("a file, not a folder")
    for command in (mask_main, dataset_main):
        result = CliRunner().invoke(command, ["q.png", "-o", "afile/sub"])
        assert result.exit_code == 2, result.output
        assert result.output.endswith(
            "Error: --out afile/sub cannot be made: afile is not a folder; choose another output folder\n"
        )
    assert sorted(os.listdir()) == ["afile", "q.png"]


def test_another_tools_report_in_the_folder_is_not_removed_before_the_run_replaces_it(tmp_path):
    from m2u.core.fileio import atomic_write_text

    out = tmp_path / "out"
    out.mkdir()
    atomic_write_text(out / "report.csv", "input,status,mask_type\nx.jpg,ok,surgical\n")  # m2u-mask's, say
    assert _run(_photos(tmp_path / "in", "p0.png", "p1.png"), out, "p1.png", 3600.0) == -9
    assert (out / "report.csv").read_text().startswith("input,status,mask_type")


@pytest.mark.parametrize("stop", ["ctrl-c", "error"])
def test_a_rerun_stopped_midway_keeps_the_earlier_rows_of_the_photos_it_did_not_reach(
    tmp_path, monkeypatch, stop
):
    """Ctrl-C (or an error that stops the run) during a rerun: its reports said only the photos it finished, and
    the earlier run's rows and face lines of the others (whose outputs are still the earlier run's) were gone."""
    import json

    from m2u.core.fileio import atomic_write_bytes
    from m2u.inference import photos
    from m2u.inference.unmask import UnmaskConfig

    def run(faces: int, stop_at: str = "") -> None:
        def row(item, *, out, config, unmasker):
            path, name = item
            if path.name == stop_at:
                raise KeyboardInterrupt if stop == "ctrl-c" else OSError(28, "No space left on device")
            atomic_write_bytes(out / name, b"restored %d" % faces)
            result = photos.FileResult(input=str(path), status="ok", output=str(out / name), faces=faces)
            return result, [
                {"input": str(path), "face": k, "restored": False, "problem": "stood in", "run": faces}
                for k in range(faces)
            ]

        monkeypatch.setattr(photos, "_unmask_row", row)
        config = UnmaskConfig(progress=False, device="cpu")
        photos.unmask_files([str(photos_in)], None, None, out, config, unmasker=object())

    photos_in, out = _photos(tmp_path / "in", "p0.png", "p1.png", "p2.png"), tmp_path / "out"
    run(faces=1)
    for name in ("p0.png", "p1.png", "p2.png"):  # written well before the rerun, whatever the clock's grain
        os.utime(out / name, (time.time() - 60, time.time() - 60))
    with pytest.raises(KeyboardInterrupt if stop == "ctrl-c" else OSError):
        run(faces=2, stop_at="p2.png")
    with open(out / "report.csv", newline="") as handle:
        rows = {Path(r["input"]).name: r["faces"] for r in csv.DictReader(handle)}
    assert rows == {"p0.png": "2", "p1.png": "2", "p2.png": "1"}  # p2's output is still the earlier run's
    assert (out / "p2.png").read_bytes() == b"restored 1"
    lines = [json.loads(text) for text in (out / "faces.jsonl").read_text().splitlines()]
    assert [(Path(line["input"]).name, line["run"]) for line in lines] == [
        ("p0.png", 2),
        ("p0.png", 2),
        ("p1.png", 2),
        ("p1.png", 2),
        ("p2.png", 1),
    ]
    page = (out / "index.html").read_text()
    assert "stopped after 2 of 3" in page and "keep the earlier run's rows and outputs" in page
    run(faces=3)  # the next run's finished report is its own alone
    with open(out / "report.csv", newline="") as handle:
        assert [r["faces"] for r in csv.DictReader(handle)] == ["3", "3", "3"]
    assert "earlier run" not in (out / "index.html").read_text()
