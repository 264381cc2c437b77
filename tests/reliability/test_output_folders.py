"""m2u-mask and m2u-unmask never overwrite an input: an output folder that is an input folder, or outputs that would
take an input's name, are refused before anything is written; a rerun never reads its own outputs back; two runs
cannot write one output folder at once."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from m2u.core.fileio import atomic_write_text
from m2u.core.inputs import output_lock
from m2u.datasets.cli import main as dataset_main
from m2u.evaluation.cli import real_masks_main
from m2u.inference.cli import unmask_main
from m2u.masking.cli import main as mask_main


def _photos(folder: Path, names=("a.png", "b.png", "sub/c.png")) -> dict[Path, str]:
    """Faceless pictures; returns each file's SHA-256, to prove later that none changed."""
    for index, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 40, 3), 30 * index, np.uint8)).save(folder / name)
    return _hashes(folder)


def _hashes(folder: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _unmask(tiny_models, out: Path, *inputs: Path):
    mseg, generator = tiny_models
    args = ["--mseg", str(mseg), "--generator", str(generator), "-o", str(out), "--quiet", "--device", "cpu"]
    return CliRunner().invoke(unmask_main, [*args, "--", *map(str, inputs)])


def _mask(out: Path, *inputs: Path, extra=()):
    return CliRunner().invoke(mask_main, [*map(str, inputs), "-o", str(out), "--quiet", *extra])


@pytest.mark.parametrize("tool", ["m2u-mask", "m2u-unmask"])
def test_the_input_folder_is_refused_as_output(tmp_path, tiny_models, tool):
    folder = tmp_path / "photos"
    before = _photos(folder)
    for out in (folder, tmp_path / "." / "photos"):  # the same folder spelled another way too
        result = _mask(out, folder) if tool == "m2u-mask" else _unmask(tiny_models, out, folder)
        assert result.exit_code != 0
        assert "-o" in result.output and "input folder" in result.output, result.output
    assert _hashes(folder) == before, "nothing written, nothing changed"


def _run_tool(tool: str, tiny_models, out: Path, *inputs: Path):
    if tool == "m2u-mask":
        return _mask(out, *inputs)
    if tool == "m2u-unmask":
        return _unmask(tiny_models, out, *inputs)
    if tool == "m2u-make-dataset":
        args = [*map(str, inputs), "-o", str(out), "--mask-engine", "synthetic", "--quiet"]
        return CliRunner().invoke(dataset_main, args)
    mseg, generator = tiny_models  # m2u-eval real-masks: refused before its models load
    args = [*map(str, inputs), "-o", str(out), "--mseg", str(mseg), "--generator", str(generator), "-q"]
    return CliRunner().invoke(real_masks_main, args)


GLOB_TOOLS = ["m2u-mask", "m2u-unmask", "m2u-make-dataset", "m2u-eval real-masks"]


@pytest.mark.parametrize("tool", GLOB_TOOLS)
def test_the_folder_of_an_input_glob_is_refused_as_output(tmp_path, tiny_models, tool, monkeypatch):
    """`m2u-unmask 'photos/*.png' -o photos` wrote the results among the photos (and a rerun of the glob read them
    back as photos): the glob's fixed folder is checked as an input folder is, for every command taking globs."""
    folder = tmp_path / "photos"
    before = _photos(folder)
    monkeypatch.chdir(tmp_path)
    for pattern, out, base in (
        (folder / "*.png", folder, folder),
        (
            folder / "**" / "*.png",
            tmp_path / "." / "photos",
            folder,
        ),  # recursive, the folder written otherwise
        # The glob's folder is the working folder: the outputs, named by their path below it, would land in photos/.
        (Path("*") / "*.png", Path("."), Path(".")),
    ):
        result = _run_tool(tool, tiny_models, out, pattern)
        assert result.exit_code == 2, result.output
        assert f"is the folder {base} of the input glob {pattern}" in result.output, result.output
    assert _hashes(folder) == before, "nothing written, nothing changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


@pytest.mark.parametrize("tool", GLOB_TOOLS)
def test_an_output_folder_inside_an_input_globs_folder_is_accepted(tmp_path, tiny_models, tool):
    """As inside an input folder: `-o photos/out` with `photos/**/*.png` is no input glob's folder, and a rerun
    never reads the first run's outputs as inputs."""
    folder = tmp_path / "photos"
    _photos(folder)
    out = folder / "out"
    for _ in range(2):
        result = _run_tool(tool, tiny_models, out, folder / "**" / "*.png")
        assert "input glob" not in result.output, result.output
    if tool in ("m2u-mask", "m2u-unmask"):
        assert result.exit_code == 0, result.output
        column = "path" if tool == "m2u-mask" else "input"
        with (out / "report.csv").open(newline="") as handle:
            assert sorted(row[column] for row in csv.DictReader(handle)) == sorted(
                str(p) for p in folder.rglob("*.png") if out not in p.parents
            )


def test_m2u_unmask_refuses_an_output_that_would_replace_an_input(tmp_path, tiny_models):
    folder = tmp_path / "photos"
    before = _photos(folder)
    # Files given one by one: their restorations would be photos/a.png and photos/b.png, the inputs themselves.
    result = _unmask(tiny_models, folder, folder / "a.png", folder / "b.png")
    assert result.exit_code != 0 and "would replace an input" in result.output, result.output
    assert _hashes(folder) == before


def test_m2u_mask_refuses_an_output_that_would_replace_an_input(tmp_path):
    folder, out = tmp_path / "photos", tmp_path / "out"
    _photos(folder)
    out.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(out / "a_surgical.jpg")  # a user's own file
    before = _hashes(out)
    result = _mask(out, folder / "a.png", out / "a_surgical.jpg")
    assert result.exit_code != 0 and "would replace an input" in result.output, result.output
    assert _hashes(out) == before


@pytest.mark.parametrize("tool", ["m2u-mask", "m2u-unmask"])
def test_a_rerun_never_reads_its_own_outputs(tmp_path, tiny_models, tool):
    folder = tmp_path / "photos"
    _photos(folder)
    out = folder / "results"  # inside the input folder
    column = "path" if tool == "m2u-mask" else "input"
    reports = []
    for _ in range(2):
        result = _mask(out, folder) if tool == "m2u-mask" else _unmask(tiny_models, out, folder)
        assert result.exit_code == 0, result.output
        with (out / "report.csv").open(newline="") as handle:
            reports.append(sorted(row[column] for row in csv.DictReader(handle)))
    assert reports[0] == reports[1] == sorted(str(p) for p in folder.rglob("*.png") if out not in p.parents)


@pytest.mark.parametrize("tool", ["m2u-mask", "m2u-unmask"])
def test_a_second_run_on_the_same_output_folder_is_refused(tmp_path, tiny_models, tool):
    folder, out = tmp_path / "photos", tmp_path / "out"
    _photos(folder)
    out.mkdir()
    name = tool
    with output_lock(out, name):  # as a run in progress holds it
        result = _mask(out, folder) if tool == "m2u-mask" else _unmask(tiny_models, out, folder)
    assert result.exit_code != 0 and f"another {tool} run is writing" in result.output, result.output
    assert not (out / "report.csv").exists()
    # Once the first run is over, the folder is free again.
    result = _mask(out, folder) if tool == "m2u-mask" else _unmask(tiny_models, out, folder)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("tool", "other"), [("m2u-mask", "m2u-unmask"), ("m2u-unmask", "m2u-mask")])
def test_a_run_of_another_command_writing_the_output_folder_is_waited_for(tmp_path, tiny_models, tool, other):
    """m2u-mask into a folder m2u-unmask was still writing (its report.csv not written yet) ran beside it, and the
    unmask run's report.csv then replaced the finished mask run's: only reports already there were seen. A run of
    another command holding the folder, whose reports this run would replace, is now refused in one line."""
    folder, out = tmp_path / "photos", tmp_path / "out"
    _photos(folder)
    out.mkdir()
    with output_lock(out, other, reports=("report.csv",)):  # as that run in progress holds it
        result = _mask(out, folder) if tool == "m2u-mask" else _unmask(tiny_models, out, folder)
    assert result.exit_code == 2, result.output
    assert f"another {other} run is writing {out} (its report.csv, which this {tool} run" in result.output
    assert not (out / "report.csv").exists()
    # Once that run is over (its report.csv not there: stopped before it), the folder is this run's to write.
    result = _mask(out, folder) if tool == "m2u-mask" else _unmask(tiny_models, out, folder)
    assert result.exit_code == 0 and (out / "report.csv").exists(), result.output


def test_an_output_folder_above_the_input_folder_still_sees_the_inputs(tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    _photos(folder)
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # `m2u-mask photos -o .`, twice: the outputs land beside photos/, never inside it
        result = _mask(Path("."), Path("photos"))
        assert result.exit_code == 0 and "3 inputs" in result.output, result.output


def _command_writing(tool: str, out: Path, photos: Path, tiny_models, tiny_dataset):
    """`tool` run with the output folder `out` (every command that takes -o), as far as its output folder checks."""
    from m2u.evaluation.cli import main as eval_main
    from m2u.inference.cli import export_main
    from m2u.pipelines.cli import main as pipeline_main
    from m2u.training.cli import train_main

    mseg, generator = tiny_models
    models = ["--mseg", str(mseg), "--generator", str(generator)]
    if tool == "m2u-eval":
        return CliRunner().invoke(eval_main, ["--data", str(tiny_dataset), *models, "-o", str(out), "-q"])
    if tool == "m2u-train":
        args = [
            "mseg",
            "--data",
            str(tiny_dataset),
            "-o",
            str(out),
            "-q",
            "--max-steps",
            "1",
            "--workers",
            "0",
        ]
        return CliRunner().invoke(train_main, args)
    if tool == "m2u-export":
        return CliRunner().invoke(export_main, ["onnx", *models, "-o", str(out)])
    if tool == "m2u-pipeline":
        args = ["run", str(photos), "-o", str(out), "--until", "dataset", "-q"]
        return CliRunner().invoke(pipeline_main, [*args, "--set", "dataset.mask_engine=synthetic"])
    return _run_tool(tool, tiny_models, out, photos)


@pytest.mark.parametrize("tool", [*GLOB_TOOLS, "m2u-eval", "m2u-train", "m2u-export", "m2u-pipeline"])
def test_no_command_writes_inside_a_pipeline_run_folder(tmp_path, tiny_models, tiny_dataset, tool):
    """`m2u-eval ... -o RUN/evaluation` replaced the pipeline's finished report: only the run folder itself was
    refused. A folder inside an m2u-pipeline run folder, at any depth and however written (a link), is refused to
    every command that takes -o, the pipeline itself included, in one line and before anything is written."""
    photos = tmp_path / "photos"
    _photos(photos)
    run = tmp_path / "run"
    (run / "evaluation").mkdir(parents=True)
    (run / ".m2u-pipeline.lock").write_text("")
    atomic_write_text(run / "evaluation" / "metrics.json", "{}")  # the pipeline's finished report, m2u's own
    (tmp_path / "link").symlink_to(run / "evaluation", target_is_directory=True)
    before = _hashes(run)
    for out, folder in (
        (run / "evaluation", run),
        (run / "evaluation" / "deeper" / "new", run),
        (tmp_path / "link" / "new", run),
    ):
        result = _command_writing(tool, out, photos, tiny_models, tiny_dataset)
        assert result.exit_code == 2, result.output
        said = result.output.strip().splitlines()[-1]
        assert said.startswith("Error: ") and f"is inside the m2u-pipeline run folder {folder}," in said, said
        assert "choose an output folder outside it (-o)" in said, said
    assert _hashes(run) == before, "nothing written, nothing changed"
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == [
        ".m2u-pipeline.lock",
        "evaluation",
        "evaluation/.m2u-written",
        "evaluation/metrics.json",
    ]
