"""m2u-eval's report folder: never the dataset folder nor a folder inside it (a split folder), refused before any
model loads, by the CLI and the Python API alike; beside it or above it is fine, and so is data at a URL."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from m2u.core.inputs import OutputFolderError
from m2u.evaluation.cli import main as eval_main
from m2u.evaluation.evaluator import evaluate

REFUSED = 2  # exit code of a refusal (m2u.core.cli.Refused)


class _PastTheChecks(Exception):
    """Raised where the models would load: the output folder was accepted."""


@pytest.fixture
def models_never_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise _PastTheChecks

    monkeypatch.setattr("m2u.evaluation.evaluator.load_two_stage", refuse)


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_a_report_inside_the_dataset_folder_is_refused_on_the_command_line(tiny_dataset):
    before = _files(tiny_dataset)
    split = next(p for p in sorted(tiny_dataset.iterdir()) if p.is_dir())
    for out in (split, split / "report"):
        result = CliRunner().invoke(eval_main, ["--data", str(tiny_dataset), "-o", str(out), "-q"])
        assert result.exit_code == REFUSED, result.output
        assert "is inside the dataset folder" in result.output and "Traceback" not in result.output
    assert _files(tiny_dataset) == before  # no report, no record of one


def test_the_api_refuses_a_report_inside_the_dataset_and_accepts_one_beside_or_above_it(
    tmp_path, models_never_load
):
    data = tmp_path / "ds"
    (data / "test").mkdir(parents=True)
    with pytest.raises(OutputFolderError, match="is inside the dataset folder"):
        evaluate(data, None, None, data / "test")
    with pytest.raises(OutputFolderError, match="is the dataset folder"):
        evaluate(data, None, None, data / "test" / "..")
    # A sibling whose name starts like the dataset's, and the folder holding the dataset: the report's files land
    # beside the dataset, never among its shards.
    for out in (tmp_path / "ds-report", tmp_path):
        with pytest.raises(_PastTheChecks):
            evaluate(data, None, None, out)
    assert _files(data) == ["test"]


def test_data_at_a_url_is_checked_against_its_local_copy(tmp_path, monkeypatch, models_never_load):
    local = tmp_path / "cache" / "ds"
    (local / "test").mkdir(parents=True)
    monkeypatch.setattr("m2u.datasets.storage.local_dataset", lambda data: str(local))
    with pytest.raises(_PastTheChecks):
        evaluate("s3://bucket/ds", None, None, tmp_path / "report")
    with pytest.raises(OutputFolderError, match="is inside the dataset folder"):
        evaluate("s3://bucket/ds", None, None, local / "test")


def test_a_pipeline_run_folder_is_refused_as_the_report_folder(tiny_dataset, tmp_path, models_never_load):
    """`m2u-eval -o RUN` (an m2u-pipeline run folder) wrote its report beside the stages, and the next
    `m2u-pipeline run -o RUN` refused its own run folder as "holding an m2u-eval run's output". The pipeline owns
    its whole folder (m2u.core.inputs.WHOLE_FOLDER_TOOLS): every other command is refused there, before any model
    loads; the pipeline itself is not."""
    from m2u.core.inputs import report_clash

    run = tmp_path / "run"
    run.mkdir()
    (run / ".m2u-pipeline.lock").write_text("")
    result = CliRunner().invoke(eval_main, ["--data", str(tiny_dataset), "-o", str(run), "-q"])
    assert result.exit_code == REFUSED, result.output
    said = result.output.strip().splitlines()[-1]
    assert said == (
        f"Error: {run} is an m2u-pipeline run folder, every file of which is that run's; this m2u-eval run would "
        "mix with it: choose another output folder (-o)"
    ), said
    assert _files(run) == [".m2u-pipeline.lock"]
    assert report_clash(run, "m2u-pipeline", ("pipeline.log",)) == ""
    assert "m2u-unmask run would mix" in report_clash(run, "m2u-unmask", ())
