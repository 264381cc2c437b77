"""The recipe a run records (config.json, each model file's provenance): the `recipe` a config file or --set gives,
else the command line, shell-quoted so that it runs again; a resumed run keeps the recipe that started it."""

from __future__ import annotations

import json
import shlex

import pytest
from click.testing import CliRunner

from m2u.training.checkpoint import read_model_info
from m2u.training.cli import train_main

COMMON = ["--workers", "0", "-q", "--no-test", "--val-every", "0", "--device", "cpu"]


@pytest.fixture
def captured(monkeypatch):
    """The config m2u-train mseg would train with (nothing is trained)."""
    configs = []
    monkeypatch.setattr("m2u.training.trainer.train_mseg", lambda config: configs.append(config) or {})
    return configs


def _invoke(monkeypatch, args: list[str]) -> None:
    monkeypatch.setattr("sys.argv", ["m2u-train", *args])  # what the recipe is read from
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == 0, result.output


def test_without_a_recipe_the_command_line_is_recorded_quoted(tmp_path, monkeypatch, captured):
    args = ["mseg", "--data", str(tmp_path / "my data"), "-o", str(tmp_path / "a run"), *COMMON]
    _invoke(monkeypatch, args)
    recipe = captured[0].recipe
    assert shlex.split(recipe) == ["m2u-train", *args]  # runs again as it ran: one argument stays one
    assert f"'{tmp_path / 'my data'}'" in recipe


def test_a_recipe_from_set_or_a_config_file_is_what_is_recorded(tmp_path, monkeypatch, captured):
    args = ["mseg", "--data", str(tmp_path / "d"), "-o", str(tmp_path / "r"), *COMMON]
    _invoke(monkeypatch, [*args, "--set", "recipe=release recipe v3"])
    config_file = tmp_path / "mseg.yaml"
    config_file.write_text("recipe: from the file\n")
    _invoke(monkeypatch, [*args, "-c", str(config_file)])
    assert [config.recipe for config in captured] == ["release recipe v3", "from the file"]


def test_a_given_recipe_reaches_config_json_and_the_model_file_and_resuming_keeps_it(tmp_path, monkeypatch):
    from m2u.datasets import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, 8, size=32, seed=0, split=(0.5, 0.25, 0.25))
    out = tmp_path / "run"
    first = ["mseg", "--data", str(data), "-o", str(out), "--batch-size", "2", "--max-steps", "1"]
    first += ["--base-channels", "2", "--levels", "2", *COMMON, "--set", "recipe=release recipe v3"]
    _invoke(monkeypatch, first)
    assert json.loads((out / "config.json").read_text())["recipe"] == "release recipe v3"
    assert read_model_info(out / "mseg.safetensors").provenance["recipe"] == "release recipe v3"

    # --resume without a recipe: the one that started the run, and how it went on (quoted).
    captured = []
    monkeypatch.setattr("m2u.training.trainer.train_mseg", lambda config: captured.append(config) or {})
    again = ["mseg", "-o", str(out), "--resume", "--max-steps", "2", *COMMON]
    _invoke(monkeypatch, again)
    assert captured[-1].recipe == f"release recipe v3 (resumed: {shlex.join(['m2u-train', *again])})"
    # --resume giving the same recipe (a requeued job with its config): recorded as it is.
    _invoke(monkeypatch, [*again, "--set", "recipe=release recipe v3"])
    assert captured[-1].recipe == "release recipe v3"
    # --print-config of a resumed run shows the run's recipe.
    result = CliRunner().invoke(train_main, [*again, "--print-config"])
    assert result.exit_code == 0 and "recipe: release recipe v3\n" in result.output, result.output
