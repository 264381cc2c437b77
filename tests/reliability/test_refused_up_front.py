"""A person's own file at one of a command's output names, and a setting no run can use, are refused in one line
before any work: not after hours of training, not after the evaluation has scored every sample, not after the
first of two ONNX files was written."""

from __future__ import annotations

from click.testing import CliRunner

from m2u.evaluation.cli import main as eval_main
from m2u.inference.cli import export_main
from m2u.pipelines.config import PipelineConfig
from m2u.pipelines.run import run_pipeline
from m2u.training.cli import train_main

REFUSED = 2  # exit code of a refusal (m2u.core.cli.Refused)
_PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8cfc0000003"
    "01010018dd8db00000000049454e44ae426082"
)


def _mine(folder, name):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("a person's own file")
    return folder / name


def test_m2u_train_refuses_a_persons_file_before_training(tiny_dataset, tmp_path):
    for name in ("metrics.json", "mseg.safetensors", "grids/step-0000002.png"):
        run = tmp_path / name.replace("/", "_")
        mine = _mine(run / name.rpartition("/")[0], name.rpartition("/")[2])
        args = [
            "mseg",
            "--data",
            str(tiny_dataset),
            "--out",
            str(run),
            "--max-steps",
            "2",
            "--batch-size",
            "2",
        ]
        result = CliRunner().invoke(
            train_main, [*args, "--workers", "0", "--base-channels", "2", "--levels", "2"]
        )
        assert result.exit_code == REFUSED and "was not written by m2u" in result.output, result.output
        assert sorted(p.name for p in run.iterdir()) == [name.partition("/")[0]]  # not a line of log
        assert mine.read_text() == "a person's own file"


def test_m2u_train_refuses_a_folder_m2u_export_wrote_before_training(
    tiny_dataset, tiny_checkpoints, tmp_path
):
    """A new run into an export folder (export.json and its ONNX files) was trained there, its checkpoints, log
    and model files among the export's."""
    mseg, _ = tiny_checkpoints
    out = tmp_path / "onnx"
    exported = CliRunner().invoke(export_main, ["onnx", "--mseg", str(mseg), "--size", "32", "-o", str(out)])
    assert exported.exit_code == 0, exported.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    train = ["mseg", "--data", str(tiny_dataset), "--out", str(out), "--max-steps", "1", "--batch-size", "2"]
    result = CliRunner().invoke(
        train_main, [*train, "--workers", "0", "--base-channels", "2", "--levels", "2"]
    )
    assert result.exit_code == REFUSED, result.output
    assert result.output == (
        f"Error: the run folder {out} is an m2u-export folder (export.json, mseg.onnx): the run's files would mix "
        "with the export's; choose another run folder\n"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # A person's own export.json is no export: the run trains beside it.
    mine = _mine(tmp_path / "mine", "export.json")
    result = CliRunner().invoke(
        train_main,
        [*train[:4], str(mine.parent), *train[5:], "--workers", "0", "--base-channels", "2", "--levels", "2"],
    )
    assert result.exit_code == 0, result.output
    assert mine.read_text() == "a person's own file"


def test_m2u_eval_refuses_a_persons_file_before_scoring(tiny_dataset, tiny_checkpoints, tmp_path):
    mseg, generator = tiny_checkpoints
    report = tmp_path / "report"
    _mine(report, "metrics.md")
    args = [
        "--data",
        str(tiny_dataset),
        "--mseg",
        str(mseg),
        "--generator",
        str(generator),
        "-o",
        str(report),
    ]
    result = CliRunner().invoke(eval_main, [*args, "--device", "cpu", "-q"])
    assert result.exit_code == REFUSED and "metrics.md exists and was not written by m2u" in result.output
    assert sorted(p.name for p in report.iterdir()) == ["metrics.md"]  # no metrics.json, no grid.png


def test_m2u_export_checks_its_settings_and_outputs_before_writing(tiny_checkpoints, tmp_path):
    mseg, generator = tiny_checkpoints
    out = tmp_path / "onnx"
    models = ["--mseg", str(mseg), "--generator", str(generator), "-o", str(out)]
    command = export_main.commands["onnx"]
    for option, said in (
        (["--opset", "99"], "--opset: must be from 11 to"),
        (["--atol", "nan"], "--atol: must be a finite number"),
    ):
        result = CliRunner().invoke(command, [*models, *option])
        assert result.exit_code == REFUSED and said in result.output, result.output
        assert not out.exists()
    _mine(out, "generator.onnx")
    result = CliRunner().invoke(command, models)
    assert result.exit_code == REFUSED and "generator.onnx exists and was not written by m2u" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["generator.onnx"]  # mseg.onnx was not written first


def test_m2u_export_does_not_send_a_discriminator_to_the_other_flag(tmp_path):
    import torch

    from m2u.training.checkpoint import save_model
    from m2u.training.models.discriminator import PatchDiscriminator

    torch.manual_seed(0)
    disc = save_model(tmp_path / "discriminator.safetensors", PatchDiscriminator())
    result = CliRunner().invoke(
        export_main.commands["onnx"], ["--generator", str(disc), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == REFUSED and (
        "holds a PatchDiscriminator, not a CARU2-Net generator; m2u-export exports only M-Seg and generator model "
        "files (a run's mseg.safetensors and generator.safetensors)"
    ) in " ".join(result.output.split())
    assert "give it as --mseg" not in result.output


def test_m2u_pipeline_refuses_a_persons_log_before_writing_anything(tmp_path):
    run = tmp_path / "run"
    _mine(run, "pipeline.log")
    faces = tmp_path / "faces"
    faces.mkdir()
    (faces / "a.png").write_bytes(_PNG)
    try:
        run_pipeline(PipelineConfig(faces=[str(faces)]), run, echo=lambda _: None, until="dataset")
    except Exception as error:  # noqa: BLE001 - the refusal's type is the guard's business; its words are ours
        assert "pipeline.log exists and was not written by m2u" in str(error)
    else:
        raise AssertionError("the run was not refused")
    assert sorted(p.name for p in run.iterdir()) == ["pipeline.log"]


def test_m2u_eval_refuses_the_dataset_folder_as_its_report_and_a_negative_inpaint_radius(
    tiny_dataset, tiny_checkpoints, tmp_path
):
    mseg, generator = tiny_checkpoints
    models = ["--data", str(tiny_dataset), "--mseg", str(mseg), "--generator", str(generator), "-q"]
    before = sorted(p.name for p in tiny_dataset.iterdir())
    result = CliRunner().invoke(eval_main, [*models, "-o", str(tiny_dataset)])
    assert result.exit_code == REFUSED and "is the dataset folder" in result.output, result.output
    assert sorted(p.name for p in tiny_dataset.iterdir()) == before
    result = CliRunner().invoke(eval_main, [*models, "-o", str(tmp_path / "r"), "--inpaint-radius", "-3"])
    assert result.exit_code == REFUSED and "must be > 0 pixels" in result.output, result.output
