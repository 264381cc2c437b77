"""A bad value's error says where the value came from (training/cliutil.py, shared by m2u-train and m2u-eval): the
config file's path and key, --set, the command line's option, a resumed run's saved config, or the default. It
said "(on the command line: --batch-size)" for a value read from a config file."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from m2u.evaluation.cli import main as eval_main
from m2u.training.cli import train_main


def _error(command, args: list[str]) -> str:
    """The one error line of a refused command (exit 2, no traceback)."""
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    return line


def _config(tmp_path: Path, text: str, name: str = "train.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_value_from_the_config_file_names_the_file_and_its_key(tmp_path):
    config = _config(tmp_path, "batch_size: 0\n")
    line = _error(train_main, ["mseg", "-c", str(config), "--print-config"])
    assert f"batch_size: from {config}, key batch_size" in line
    assert "on the command line" not in line and "--batch-size" not in line
    assert "epochs" not in line  # only the setting that is wrong is named
    # The other one, from --set.
    line = _error(
        train_main,
        [
            "mseg",
            "-c",
            str(_config(tmp_path, "lr: 0.001\n", "ok.yaml")),
            "--set",
            "epochs=0",
            "--print-config",
        ],
    )
    assert "epochs: from --set epochs" in line and "batch_size" not in line
    # The key as the file wrote it: `lr` sets optimizer.learning_rate.
    line = _error(
        train_main, ["mseg", "-c", str(_config(tmp_path, "lr: abc\n", "lr.yaml")), "--print-config"]
    )
    assert line.endswith(
        f"lr must be a finite number, got 'abc' (lr: from {tmp_path / 'lr.yaml'}, key lr)"
    ), line
    assert "learning_rate" not in line and "--lr" not in line


def test_a_value_from_set_names_the_set(tmp_path):
    config = _config(tmp_path, "batch_size: 0\n")
    line = _error(train_main, ["mseg", "-c", str(config), "--set", "batch_size=-1", "--print-config"])
    assert "batch_size: from --set batch_size" in line and str(config) not in line
    # The key typed, not the field it sets (optimizer.learning_rate), as m2u-pipeline says it (`gan.lr`).
    line = _error(train_main, ["gan", "--set", "lr=abc", "--print-config"])
    assert line == "Error: lr must be a finite number, got 'abc' (lr: from --set lr)", line
    line = _error(train_main, ["mseg", "--set", "optimizer.betas=[1, 2, 3]", "--print-config"])
    assert "(optimizer.betas: from --set optimizer.betas)" in line


def test_a_value_from_the_command_line_names_the_option(tmp_path):
    config = _config(tmp_path, "lr: 0.1\n")
    line = _error(train_main, ["mseg", "-c", str(config), "--lr", "nan", "--print-config"])
    assert "(optimizer.learning_rate: from the command line, --lr)" in line


def test_a_value_from_a_resumed_runs_saved_config_names_that_file(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"batch_size": 0}))
    line = _error(train_main, ["mseg", "--out", str(run), "--resume", "--print-config"])
    assert f"batch_size: from the run's saved config {run / 'config.json'}" in line


def test_an_unknown_key_says_where_it_was_written_not_every_option(tmp_path):
    config = _config(tmp_path, "batch_sizee: 1\n")
    line = _error(train_main, ["mseg", "-c", str(config), "--print-config"])
    assert line.endswith(f"(in {config})") and "--batch-size" not in line
    line = _error(train_main, ["mseg", "--set", "batch_sizee=1", "--print-config"])
    assert line.endswith("(from --set batch_sizee)")


def test_an_unreadable_config_file_gets_no_suffix_from_words_in_its_path(tmp_path):
    config = _config(tmp_path, "batch_size: [\n", "data/train.yaml")  # "data" is also an option
    line = _error(train_main, ["mseg", "-c", str(config), "--print-config"])
    assert "is not valid" in line and "--data" not in line and "data:" not in line


def test_m2u_eval_says_where_its_values_came_from_too(tmp_path):
    config = _config(tmp_path, "batch_size: 0\n", "eval.yaml")
    line = _error(eval_main, ["-c", str(config), "--print-config"])
    assert f"(batch_size: from {config}, key batch_size)" in line and "--batch-size" not in line
    line = _error(eval_main, ["-c", str(config), "--set", "batch_size=-1", "--print-config"])
    assert "(batch_size: from --set batch_size)" in line


def test_a_range_the_options_check_holds_for_set_and_config_files_too(tmp_path):
    """`--max-seconds -1` was refused by its option, `--set max_seconds=-1` trained a step; `--set val_batches=0`
    validated nothing and wrote empty figures. The config checks them, whatever sets them."""
    for key, value, said in (
        ("max_seconds", "-1", "max_seconds must be >= 0, got -1"),
        ("val_batches", "0", "val_batches must be >= 1"),
        ("val_every", "-1", "val_every must be >= 0"),
    ):
        line = _error(train_main, ["mseg", "--set", f"{key}={value}", "--print-config"])
        assert said in line and f"({key}: from --set {key})" in line, line
        config = _config(tmp_path, f"{key}: {value}\n", f"{key}.yaml")
        assert said in _error(train_main, ["mseg", "-c", str(config), "--print-config"])


def test_a_config_file_takes_dotted_keys_as_set_does(tmp_path):
    """The example configs and the README say a file writes fields by their dotted names (optimizer.betas); such
    a key was refused as unknown. A value given both dotted and nested is refused, naming it."""
    import yaml

    config = _config(tmp_path, "optimizer.betas: [0.5, 0.9]\nmodel.levels: 4\nbatch_size: 2\n")
    result = CliRunner().invoke(train_main, ["mseg", "-c", str(config), "--print-config"])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.output)
    assert printed["optimizer"]["betas"] == [0.5, 0.9]
    assert printed["levels"] == 4  # printed by its option name
    assert printed["batch_size"] == 2
    twice = _config(tmp_path, "optimizer.betas: [0.5, 0.9]\noptimizer:\n  betas: [0.1, 0.2]\n", "twice.yaml")
    assert "optimizer.betas is given twice" in _error(
        train_main, ["mseg", "-c", str(twice), "--print-config"]
    )
    line = _error(
        train_main, ["mseg", "-c", str(_config(tmp_path, "model.levels: 0\n", "bad.yaml")), "--print-config"]
    )
    assert "bad.yaml, key model.levels" in line, line
