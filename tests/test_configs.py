"""Configs mirror the flags: a config file's keys are the long option names (nested groups dotted, as --set),
--print-config prints a config that reproduces the run, the shipped example configs load, and --resume records
the merged configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from m2u.evaluation.cli import main as eval_main
from m2u.pipelines.cli import main as pipeline_main
from m2u.training.cli import train_main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

# Each shipped example: the command that takes it.
EXAMPLES = {
    "mseg.yaml": (train_main, ["mseg"]),
    "gan.yaml": (train_main, ["gan"]),
    "eval.yaml": (eval_main, []),
    "pipeline.yaml": (pipeline_main, ["run", "-o", "runs/mine"]),
}


def _printed(command, args: list[str]) -> str:
    result = CliRunner().invoke(command, [*args, "--print-config"])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_a_shipped_config_loads_and_print_config_reproduces_it(name, tmp_path):
    command, args = EXAMPLES[name]
    example = yaml.safe_load((CONFIGS / name).read_text())
    first = _printed(command, [*args, "-c", str(CONFIGS / name)])
    printed = yaml.safe_load(first)
    # Every value the example sets is in the resolved config, under the same key (stage groups for the pipeline).
    for key, value in example.items():
        if isinstance(value, dict):
            for sub, sub_value in value.items():
                assert printed[key][sub] == sub_value, (name, key, sub)
        else:
            assert printed[key] == value, (name, key)
    # The printed config is a config: read back, it prints the same (a fixed point: nothing lost or renamed).
    again = tmp_path / f"printed-{name}"
    again.write_text(first)
    assert _printed(command, [*args, "-c", str(again)]) == first


def test_a_config_written_with_the_flags_names_works(tmp_path):
    # The issue's example: a YAML written with the options' names (`mseg`, `lr`), not the dataclass fields.
    config = tmp_path / "gan.yaml"
    config.write_text(
        "data: d\nout: r\nmseg: m.safetensors\nlr: 0.0002\nstages: 3\nlr-decay: 0.5\nworkers: 0\n"
    )
    printed = yaml.safe_load(
        _printed(train_main, ["gan", "-c", str(config), "--set", "optimizer.betas=[0.5, 0.9]"])
    )
    assert printed["mseg"] == "m.safetensors" and printed["lr"] == 0.0002 and printed["stages"] == 3
    assert (
        printed["lr_decay"] == 0.5 and printed["workers"] == 0 and printed["optimizer"]["betas"] == [0.5, 0.9]
    )
    # --set takes the same keys, and a field path still works for an option's field.
    printed = yaml.safe_load(
        _printed(train_main, ["gan", "-c", str(config), "--set", "lr=0.003", "--set", "optimizer.decay=0.25"])
    )
    assert printed["lr"] == 0.003 and printed["lr_decay"] == 0.25
    # Precedence: file < command line < --set.
    printed = yaml.safe_load(
        _printed(train_main, ["gan", "-c", str(config), "--lr", "0.01", "--set", "stages=5"])
    )
    assert printed["lr"] == 0.01 and printed["stages"] == 5
    bad = CliRunner().invoke(train_main, ["gan", "-c", str(config), "--set", "learning_rat=1"])
    assert bad.exit_code == 2 and "learning_rat" in bad.output


def test_eval_help_examples_work_and_eval_config_holds_its_files(tmp_path):
    help_text = " ".join(CliRunner().invoke(eval_main, ["--help"]).output.split())
    assert "--set batch_size=4" in help_text
    printed = yaml.safe_load(
        _printed(eval_main, ["--set", "batch_size=4", "--set", "fid=false", "--data", "x"])
    )
    assert printed["batch_size"] == 4 and printed["fid"] is False and printed["data"] == "x"
    # --data, -o, --mseg and --generator are config keys too, and the printed file reproduces them.
    config = tmp_path / "eval.yaml"
    config.write_text("data: ds\nout: rep\nmseg: a.safetensors\ngenerator: b.safetensors\n")
    printed = yaml.safe_load(_printed(eval_main, ["-c", str(config), "-o", "other"]))
    assert (printed["data"], printed["out"], printed["mseg"], printed["generator"]) == (
        "ds",
        "other",
        "a.safetensors",
        "b.safetensors",
    )


def test_the_positional_config_file_of_the_previous_release_still_works(tmp_path):
    config = tmp_path / "mseg.yaml"
    config.write_text("batch_size: 3\n")
    assert yaml.safe_load(_printed(train_main, ["mseg", str(config)]))["batch_size"] == 3
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("dataset: {size: 64}\n")
    printed = yaml.safe_load(_printed(pipeline_main, ["run", str(pipeline), "-o", str(tmp_path / "r")]))
    assert printed["dataset"]["size"] == 64 and printed["faces"] == []
    printed = yaml.safe_load(_printed(pipeline_main, ["run", "a/", "b.jpg", "--faces", "c/", "-o", "r"]))
    assert printed["faces"] == ["a/", "b.jpg", "c/"]


def test_resume_records_the_merged_configuration(tmp_path, monkeypatch):
    from m2u.datasets import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, 8, size=32, seed=0, split=(0.5, 0.25, 0.25))
    out = tmp_path / "run"
    common = ["--workers", "0", "-q", "--no-test", "--val-every", "0", "--device", "cpu"]
    first = ["mseg", "--data", str(data), "-o", str(out), "--batch-size", "2", "--max-steps", "1"]
    first += ["--base-channels", "2", "--levels", "2", "--lr", "0.002", *common]
    monkeypatch.setattr("sys.argv", ["m2u-train", *first])  # the recipe is the command line
    result = CliRunner().invoke(train_main, first)
    assert result.exit_code == 0, result.output
    started = json.loads((out / "config.json").read_text())
    again = ["mseg", "-o", str(out), "--resume", "--max-steps", "2", *common]
    monkeypatch.setattr("sys.argv", ["m2u-train", *again])
    result = CliRunner().invoke(train_main, again)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    # The whole configuration: the run's own values (lr, batch size, architecture) with the new max_steps.
    assert (
        saved["max_steps"] == 2 and saved["optimizer"]["learning_rate"] == 0.002 and saved["batch_size"] == 2
    )
    assert saved["model"] == started["model"] and saved["data"] == str(data)
    # The recipe keeps the command that started the run, and says how it was resumed.
    assert saved["recipe"].startswith(started["recipe"]) and "--resume" in saved["recipe"]
    assert "--lr 0.002" in started["recipe"]
