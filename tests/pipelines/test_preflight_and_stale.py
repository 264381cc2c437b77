"""A stage's finished output is never lost to a refused or failed rerun: every stage's settings and output names are
checked before the first stage starts, and a finished output moved to RUN/stale/ is taken back when a run's settings
are again those it was made with. (From a review, 2026-12-07.)"""

from __future__ import annotations

import hashlib

import pytest
from click.testing import CliRunner

from m2u.pipelines.cli import main
from m2u.pipelines.config import load_config
from m2u.pipelines.demo_faces import write_demo_faces
from m2u.pipelines.stages import STALE_DIR, run_stage


def _checks(stage_dir):
    return {
        "output_problem": lambda record, folder: (
            "" if (folder / "out.bin").is_file() else "out.bin is missing"
        ),
        "output_digest": lambda: hashlib.sha256((stage_dir / "out.bin").read_bytes()).hexdigest(),
    }


def test_a_finished_output_moved_aside_by_a_failed_rerun_is_taken_back_not_made_again(tmp_path):
    """`--set gan.init_weights=...missing` moved the finished gan to stale/ and failed; the original settings then
    retrained it from scratch."""
    stage_dir, records = tmp_path / "run" / "gan", tmp_path / "run" / "stages"
    calls: list[int] = []

    def action(value: bytes):
        def make() -> dict:
            calls.append(1)
            stage_dir.mkdir(parents=True, exist_ok=True)
            (stage_dir / "out.bin").write_bytes(value)
            return {"made": value.decode()}

        return make

    def fails() -> dict:
        stage_dir.mkdir(parents=True, exist_ok=True)
        (stage_dir / ".lock").write_text("")  # what a stage writes before it fails at its start
        raise RuntimeError("model file not found")

    logs: list[str] = []
    first = run_stage(
        "gan", stage_dir, records, {"a": 1}, [], action(b"one"), log=logs.append, **_checks(stage_dir)
    )
    with pytest.raises(RuntimeError):
        run_stage("gan", stage_dir, records, {"a": 2}, [], fails, log=logs.append, **_checks(stage_dir))
    back = run_stage(
        "gan", stage_dir, records, {"a": 1}, [], action(b"two"), log=logs.append, **_checks(stage_dir)
    )
    assert len(calls) == 1 and back.taken_back and back.skipped and back.chain == first.chain
    assert (stage_dir / "out.bin").read_bytes() == b"one" and back.result == {"made": "one"}
    assert any("taken back from" in line for line in logs), logs
    # what the failed run left is kept, not deleted; the stale folder the output came back from is gone
    kept = [p for p in (tmp_path / "run" / STALE_DIR).iterdir()]
    assert len(kept) == 1 and (kept[0] / "gan" / ".lock").exists()
    # A setting tried and put back: each configuration's finished output comes back
    run_stage(
        "gan", stage_dir, records, {"a": 3}, [], action(b"three"), log=logs.append, **_checks(stage_dir)
    )
    again = run_stage(
        "gan", stage_dir, records, {"a": 1}, [], action(b"four"), log=logs.append, **_checks(stage_dir)
    )
    assert again.taken_back and (stage_dir / "out.bin").read_bytes() == b"one" and len(calls) == 2
    # A kept output changed since is not taken back: the stage runs
    third = run_stage(
        "gan", stage_dir, records, {"a": 3}, [], action(b"five"), log=logs.append, **_checks(stage_dir)
    )
    assert third.taken_back
    (stage_dir / "out.bin").unlink()
    fresh = run_stage(
        "gan", stage_dir, records, {"a": 1}, [], action(b"six"), log=logs.append, **_checks(stage_dir)
    )
    assert fresh.taken_back  # the a=1 output is still intact in stale/
    for folder in (tmp_path / "run" / STALE_DIR).iterdir():
        if (folder / "gan" / "out.bin").exists():
            (folder / "gan" / "out.bin").write_bytes(b"edited")
    assert not run_stage(
        "gan", stage_dir, records, {"a": 3}, [], action(b"seven"), log=logs.append, **_checks(stage_dir)
    ).skipped


@pytest.mark.parametrize(
    "stage, tree, said",
    [
        (
            "dataset",
            {"dataset": {"mask_options": {"colour": "red"}}},
            "`dataset.mask_options`: unknown mask option",
        ),
        (
            "dataset",
            {"dataset": {"mask_options": {"mask_type": "random", "pack": "/missing"}}},
            "`dataset.mask_options`: no masks.cfg at /missing",
        ),
        (
            "gan",
            {"gan": {"init_weights": {"generator": "/tmp/nope.safetensors"}}},
            "`gan.init_weights.generator`",
        ),
        ("mseg", {"mseg": {"init_weights": {"model": "/tmp/nope.safetensors"}}}, "`mseg.init_weights.model`"),
        (
            "evaluation",
            {"evaluation": {"metrics": {"lpips": {"trunk_weights": "/tmp/nope.pth"}}}},
            "`evaluation.metrics.lpips.trunk_weights`: weights file not found",
        ),
    ],
)
def test_what_a_stage_would_refuse_at_its_start_is_refused_before_any_stage(stage, tree, said):
    from m2u.pipelines.run import PipelineRefused, check_stage_settings

    config = load_config("smoke", None, tree)
    with pytest.raises(
        PipelineRefused, match=rf"the {stage} stage cannot run \(checked before any stage started\)"
    ):
        try:
            check_stage_settings(config, "evaluation")
        except PipelineRefused as error:
            assert said in str(error)
            raise
    if stage != "dataset":
        check_stage_settings(config, "dataset")  # a stage after --until is not checked


@pytest.fixture
def faces(tmp_path):
    # enough faces that the default split plans a test sample (the plan is checked before the folder is)
    return str(write_demo_faces(tmp_path / "faces", count=12)[0].parent)


def test_a_bad_mask_option_is_refused_before_the_run_folder_is_written(tmp_path, faces):
    run = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        ["run", "--preset", "smoke", faces, "-o", str(run), "--set", "dataset.mask_options={colour: red}"],
    )
    assert result.exit_code == 2, result.output
    assert "`dataset.mask_options`: unknown mask option(s) ['colour']" in result.output
    assert not run.exists()


@pytest.mark.parametrize("split, evaluated", [("[0.9,0.1,0]", "test"), ("[0.9,0,0.1]", "val")])
def test_an_empty_split_of_the_demo_faces_is_refused_before_any_stage(tmp_path, split, evaluated):
    """The README's own example, `dataset.split [0.9,0.1,0]` with the test split evaluated, was refused before any
    stage for faces given as INPUTS but, with --demo-faces, only after the dataset, M-Seg and the GAN had run (exit 2,
    "split 'test' of RUN/dataset has no samples to evaluate"): the demo faces' plan was taken to fill every split.
    (From a review, 2026-12-07.)"""
    run = tmp_path / "run"
    settings = ["--set", f"dataset.split={split}", "--set", f"evaluation.split={evaluated}"]
    result = CliRunner().invoke(main, ["run", "--preset", "smoke", "--demo-faces", "-o", str(run), *settings])
    assert result.exit_code == 2, result.output
    assert "the evaluation stage cannot run (checked before any stage started)" in result.output
    assert f"the {evaluated} split has no samples" in result.output
    assert not run.exists()


@pytest.mark.parametrize(
    "where", ["evaluation/index.html", "plots/mseg_train.png", "mseg/mseg.safetensors", "gan/metrics.json",
              "evaluation/plots/gan_train.png", "dataset/notes.txt"],
)  # fmt: skip
def test_a_persons_file_in_a_stage_folder_is_refused_before_any_stage_naming_o(tmp_path, faces, where):
    """Found only when its stage was reached (index.html after three stages had trained), and a file in
    RUN/dataset/ said "choose an empty or new `out_dir`" with exit 1."""
    run = tmp_path / "run"
    (run / where).parent.mkdir(parents=True)
    (run / where).write_text("mine")
    result = CliRunner().invoke(main, ["run", "--preset", "smoke", faces, "-o", str(run)])
    assert result.exit_code == 2, result.output
    assert "choose another run folder (-o)" in result.output and "out_dir" not in result.output
    assert not (run / "stages").exists() and (run / where).read_text() == "mine"


@pytest.mark.parametrize("name", [STALE_DIR, "stages", "plots"])
def test_a_persons_file_at_a_run_folders_own_folder_is_refused_before_any_stage(tmp_path, faces, name):
    """A file at RUN/stale failed the first stage that had to move its earlier output aside, "Not a directory" with
    exit 1, after the stages before it had run; one at RUN/plots failed after M-Seg had trained, and one at
    RUN/stages was "stages/face-hashes.tsv: Not a directory", exit 1: none said what to do."""
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_text("mine")
    result = CliRunner().invoke(main, ["run", "--preset", "smoke", faces, "-o", str(run)])
    assert result.exit_code == 2, result.output
    said = result.output.strip().splitlines()[-1]
    assert said.startswith(f"Error: {run / name} is in the way of the run's folder of"), said
    assert said.endswith("move it away or choose another run folder (-o)"), said
    assert (run / name).read_text() == "mine" and sorted(p.name for p in run.iterdir()) == [name]


@pytest.mark.parametrize("mark", [".m2u-build", "manifest.parquet"])
def test_a_dataset_folder_or_one_inside_it_is_refused_as_the_run_folder(tmp_path, faces, mark):
    data = tmp_path / "data"
    data.mkdir()
    (data / mark).mkdir() if mark.startswith(".") else (data / mark).write_bytes(b"PAR1")
    for run in (data, data / "train"):
        result = CliRunner().invoke(main, ["run", "--preset", "smoke", faces, "-o", str(run)])
        assert result.exit_code == 2, result.output
        assert "the run would mix with the dataset: choose another run folder (-o)" in result.output
    assert sorted(p.name for p in data.iterdir()) == [mark]


def test_a_report_folder_is_refused_as_the_run_folder(tmp_path, faces):
    from m2u.core.inputs import output_lock

    report = tmp_path / "report"
    report.mkdir()
    with output_lock(report, "m2u-eval", reports=("metrics.json",)):
        pass
    result = CliRunner().invoke(main, ["run", "--preset", "smoke", faces, "-o", str(report)])
    assert result.exit_code == 2, result.output
    assert "holds an m2u-eval run's output" in result.output
    assert sorted(p.name for p in report.iterdir()) == [".m2u-eval.lock"]
