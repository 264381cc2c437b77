"""The smoke preset end to end: every stage, then a rerun that does nothing, then one changed option."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from m2u.pipelines.ablate import VARIANTS, run_ablation
from m2u.pipelines.cli import main
from m2u.pipelines.config import load_config
from m2u.pipelines.demo_faces import write_demo_faces

# The smoke preset, cut further so the whole chain costs well under a minute of CPU.
TINY = {
    "dataset": {"limit": 16},
    "mseg": {"max_steps": 2},
    "gan": {"max_steps": 2},
    "evaluation": {"max_samples": 3, "latency_repeats": 1, "metrics": {"enable_identity": False}},
}


def _as_sets(tree: dict, prefix: str = "") -> list[str]:
    """The same overrides as command-line --set options."""
    sets: list[str] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            sets += _as_sets(value, f"{prefix}{key}.")
        else:
            sets.append(f"--set={prefix}{key}={str(value).lower() if isinstance(value, bool) else value}")
    return sets


TINY_SETS = _as_sets(TINY)


@pytest.fixture(scope="module")
def face_inputs(tmp_path_factory):
    from pathlib import Path

    celeba = Path(__file__).resolve().parents[2].parent / "shared" / "faces" / "celeba"
    if celeba.is_dir():
        return str(celeba)
    return str(write_demo_faces(tmp_path_factory.mktemp("demo"), count=16)[0].parent)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, face_inputs):
    run = tmp_path_factory.mktemp("smoke") / "run"
    result = CliRunner().invoke(
        main, ["run", "--preset", "smoke", "--faces", face_inputs, "-o", str(run), *TINY_SETS]
    )
    assert result.exit_code == 0, result.output
    return run, result.output


def test_smoke_preset_runs_every_stage(smoke_run):
    run, output = smoke_run
    for stage in ("dataset", "mseg", "gan", "evaluation"):
        assert f"[{stage}] running" in output
        record = json.loads((run / "stages" / f"{stage}.json").read_text())
        assert len(record["fingerprint"]) == 64
    assert (run / "mseg" / "mseg.safetensors").is_file()
    assert (run / "gan" / "generator.safetensors").is_file()
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert {"m2u_composite", "masked_input", "telea"} <= set(metrics["rows"])
    assert (run / "evaluation" / "metrics.md").is_file()
    assert json.loads((run / "config.json").read_text())["dataset"]["limit"] == 16
    assert "torch" in json.loads((run / "versions.json").read_text())
    assert {p.name for p in (run / "plots").glob("*.png")} >= {"mseg_train.png", "gan_train.png"}
    # The report links to its own copy of the curves (relative to the report folder: they move with it and stay
    # those of the models it evaluated) and lists them in metrics.json.
    assert metrics["links"] == {
        "mseg_train": "plots/mseg_train.png",
        "gan_train": "plots/gan_train.png",
    }
    assert '<a href="plots/gan_train.png">gan_train</a>' in (run / "evaluation" / "index.html").read_text()
    assert all((run / "evaluation" / link).is_file() for link in metrics["links"].values())


def test_rerun_does_nothing_and_says_so(smoke_run, face_inputs):
    run, _ = smoke_run
    before = (run / "gan" / "generator.safetensors").stat().st_mtime_ns
    result = CliRunner().invoke(
        main, ["run", "--preset", "smoke", "--faces", face_inputs, "-o", str(run), *TINY_SETS]
    )
    assert result.exit_code == 0, result.output
    assert "nothing to do: every stage is up to date" in result.output
    assert "running" not in result.output
    assert (run / "gan" / "generator.safetensors").stat().st_mtime_ns == before


def test_changing_one_option_reruns_only_later_stages(smoke_run, face_inputs):
    run, _ = smoke_run
    mseg_record = (run / "stages" / "mseg.json").read_text()
    result = CliRunner().invoke(
        main,
        [
            "run",
            "--preset",
            "smoke",
            "--faces",
            face_inputs,
            "-o",
            str(run),
            *TINY_SETS,
            "--set=gan.max_steps=3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "[dataset] up to date" in result.output and "[mseg] up to date" in result.output
    assert "[gan] running" in result.output and "[evaluation] running" in result.output
    # the log says why each stage ran again, in the words of --set
    assert "[gan] configuration or inputs changed (gan.max_steps 2 -> 3), re-running" in result.output
    assert "[evaluation] configuration or inputs changed (the gan stage changed), re-running" in result.output
    assert (run / "stages" / "mseg.json").read_text() == mseg_record
    assert json.loads((run / "stages" / "gan.json").read_text())["config"]["max_steps"] == 3


@pytest.mark.slow
def test_ablation_shares_data_and_mseg_and_writes_the_table(smoke_run, face_inputs):
    run, _ = smoke_run
    config = load_config("smoke", extra={**TINY, "faces": [face_inputs]})
    chosen = (VARIANTS[0], VARIANTS[-1])  # no segmentation/attention, and the full model
    logged: list[str] = []
    table = run_ablation(config, run, variants=chosen, echo=logged.append)
    assert not any(line.startswith("[mseg] running") for line in logged), logged  # shared, not retrained
    assert set(table["variants"]) == {v.name for v in chosen}
    for row in table["variants"].values():
        assert row["retrained"] and row["metrics"]["psnr"] > 0
    markdown = (run / "ablation.md").read_text()
    assert VARIANTS[0].label in markdown and VARIANTS[-1].label in markdown
    assert json.loads((run / "ablation.json").read_text())["row"] == "m2u_composite"


def test_faces_without_a_face_stop_the_pipeline_at_the_dataset_stage(tmp_path):
    import numpy as np
    from PIL import Image

    faces = tmp_path / "nofaces"
    faces.mkdir()
    for k in range(3):
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(
            faces / f"{k}.png"
        )
    run = tmp_path / "run"
    result = CliRunner().invoke(
        main, ["run", "--preset", "smoke", "--faces", str(faces), "-o", str(run), *TINY_SETS]
    )
    assert result.exit_code != 0
    assert (
        "the dataset stage wrote no training pair (0 pairs in all, 3 inputs without a face" in result.output
    )
    assert not (run / "mseg").exists() and not (run / "stages" / "dataset.json").exists()


def test_a_refused_or_print_only_run_writes_nothing_and_says_so_with_2(tmp_path):
    run = tmp_path / "run"
    missing = CliRunner().invoke(main, ["run", "--preset", "smoke", str(tmp_path / "none"), "-o", str(run)])
    assert missing.exit_code == 2 and "face inputs not found" in missing.output
    printed = CliRunner().invoke(
        main, ["run", "--preset", "smoke", "--demo-faces", "-o", str(run), "--print-config"]
    )
    assert printed.exit_code == 0 and "demo-faces" in printed.output
    refused = CliRunner().invoke(
        main, ["run", "--preset", "smoke", "--demo-faces", "-o", str(run), "--set", "x=1"]
    )
    assert refused.exit_code == 2 and "unknown option 'x'" in refused.output
    assert not run.exists()  # the demo faces are written only for a run that goes ahead


def test_a_report_left_behind_by_until_is_said_to_be_out_of_date(smoke_run, face_inputs):
    """--until gan retrains the generator and leaves the evaluation of the earlier one: kept, but said to be old.
    (Last in this file: it retrains the shared run's M-Seg, which the tests above share.)"""
    run, _ = smoke_run
    report = (run / "evaluation" / "metrics.json").read_bytes()
    sets = [*TINY_SETS, "--set=gan.max_steps=3"]  # as the test above left the run
    command = ["run", "--preset", "smoke", "--faces", face_inputs, "-o", str(run), *sets]
    result = CliRunner().invoke(main, [*command, "--until", "gan", "--set=gan.max_steps=4"])
    assert result.exit_code == 0, result.output
    assert "[gan] running" in result.output and "[evaluation] running" not in result.output
    assert f"[evaluation] out of date: {run / 'evaluation'} was made from earlier stages" in result.output
    assert (run / "evaluation" / "metrics.json").read_bytes() == report
    assert "[evaluation] out of date" in (run / "pipeline.log").read_text()
    # M-Seg retrained alone: the generator and the report on disk were made from the earlier one
    curves = {p.name: p.read_bytes() for p in (run / "evaluation" / "plots").glob("*.png")}
    again = CliRunner().invoke(main, [*command, "--until", "mseg", "--set=mseg.max_steps=3"])
    assert (
        again.exit_code == 0
        and "[gan] out of date" in again.output
        and "[evaluation] out of date" in again.output
    )
    # The kept report still links the curves of the models it evaluated (RUN/plots was rewritten in place, and
    # the report's ../plots/mseg_train.png showed the new M-Seg's)
    assert {p.name: p.read_bytes() for p in (run / "evaluation" / "plots").glob("*.png")} == curves
    assert (run / "plots" / "mseg_train.png").read_bytes() != curves["mseg_train.png"]


def test_a_deleted_stage_output_is_made_again_not_trusted_to_the_record(smoke_run, face_inputs, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(smoke_run[0], run, symlinks=True)
    args = ["run", "--preset", "smoke", "--faces", face_inputs, "-o", str(run), *TINY_SETS]
    assert (
        CliRunner().invoke(main, args).exit_code == 0
    )  # up to date with these settings (other tests change them)
    (run / "gan" / "generator.safetensors").unlink()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert (
        "[gan] its output is not what its record says" in result.output
        and "safetensors is missing" in result.output
    )
    assert (run / "gan" / "generator.safetensors").is_file()
    # A model file records the folder of the dataset it trained on: the copy's generator differs from the run it
    # was copied from. Made again here, in the copy, it is the same bytes.
    (run / "gan" / "generator.safetensors").unlink()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "[gan] running" in result.output, result.output
    # Trained again on the CPU with the same seed: the same bytes, so the report still describes it and stays.
    assert "[evaluation] up to date" in result.output
    assert "nothing to do" in CliRunner().invoke(main, args).output  # and up to date again


def test_the_faces_folder_is_refused_as_the_run_folder(tmp_path):
    """Its own grids, plots and shards were read back as faces: every rerun ran every stage again."""
    faces = write_demo_faces(tmp_path / "faces", count=4)[0].parent
    before = sorted(p.name for p in faces.iterdir())
    result = CliRunner().invoke(main, ["run", "--preset", "smoke", "--faces", str(faces), "-o", str(faces)])
    assert result.exit_code == 2 and "is the faces folder" in result.output
    # A glob's folder too (m2u.core.inputs.input_folder_named): `--faces 'faces/*.jpg' -o faces` was run.
    pattern = str(faces / "*.jpg")
    result = CliRunner().invoke(main, ["run", "--preset", "smoke", "--faces", pattern, "-o", str(faces)])
    assert result.exit_code == 2, result.output
    assert f"the run folder {faces} is the folder {faces} of the faces glob {pattern};" in result.output
    assert sorted(p.name for p in faces.iterdir()) == before


def test_a_bad_setting_on_a_finished_run_is_refused_and_moves_nothing_aside(smoke_run, face_inputs, tmp_path):
    """`--set gan.init_weights={generator: missing}` moved the finished gan into stale/ before the trainer found
    the file missing (exit 1); the original settings then retrained it."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(smoke_run[0], run, symlinks=True)
    args = ["run", "--preset", "smoke", "--faces", face_inputs, "-o", str(run), *TINY_SETS]
    assert CliRunner().invoke(main, args).exit_code == 0
    stale = sorted(p.name for p in (run / "stale").iterdir()) if (run / "stale").exists() else []
    result = CliRunner().invoke(main, [*args, "--set=gan.init_weights={generator: /tmp/nope.safetensors}"])
    assert result.exit_code == 2, result.output
    assert "`gan.init_weights.generator`: model file not found: /tmp/nope.safetensors" in result.output
    assert (sorted(p.name for p in (run / "stale").iterdir()) if (run / "stale").exists() else []) == stale
    assert "nothing to do" in CliRunner().invoke(main, args).output
