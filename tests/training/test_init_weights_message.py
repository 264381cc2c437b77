"""Fine-tuning from a model file that does not fit the run's network (init_weights): one short sentence naming how
many tensors differ (the first one or two), the settings the file was trained with that the run sets otherwise,
and what to do; not torch's list of every parameter (it ran to 107 KB for the shipped generator)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from m2u.training.checkpoint import CheckpointError, save_model
from m2u.training.config import GanTrainConfig, MSegTrainConfig
from m2u.training.models import CARU2Net, GeneratorConfig, MSeg, MSegConfig
from m2u.training.trainer import load_initial_weights


def _task(config, **networks):
    return SimpleNamespace(config=config, networks=networks, initial_weights={})


def _one_short_sentence(message: str) -> None:
    assert "\n" not in message and len(message) < 700, message
    assert "Error(s) in loading state_dict" not in message and "size mismatch" not in message


def test_an_mseg_file_of_another_width_is_one_sentence_naming_the_setting(tmp_path):
    path = save_model(tmp_path / "mseg.safetensors", MSeg(MSegConfig(base_channels=4, levels=3)))
    config = MSegTrainConfig(model=MSegConfig(base_channels=8, levels=3))
    task = _task(config, mseg=MSeg(config.model))
    with pytest.raises(CheckpointError) as caught:
        load_initial_weights(task, {"mseg": str(path)})
    message = str(caught.value)
    _one_short_sentence(message)
    assert message.startswith(f"{path} does not fit the mseg network of this run: ")
    ours, theirs = (
        task.networks["mseg"].state_dict(),
        MSeg(MSegConfig(base_channels=4, levels=3)).state_dict(),
    )
    count = sum(1 for key in ours if ours[key].shape != theirs[key].shape)
    assert (
        f"this run: {count} tensors of another shape (e.g. encoders.0.body.0.weight: file (4, 3, 3, 3), this run "
        in (message)
    )
    assert "the file was trained with `model.base_channels` 4, this run uses 8" in message
    assert "use the file's value to fine-tune from it, or leave out `init_weights.mseg`" in message


def test_a_generator_of_another_architecture_lists_each_difference(tmp_path):
    small = GeneratorConfig(stages=3, width_multiplier=0.125)
    path = save_model(tmp_path / "generator.safetensors", CARU2Net(small))
    wanted = GeneratorConfig(stages=5, width_multiplier=0.125, attention_reduction=4)
    config = GanTrainConfig(generator=wanted, mask_source="gt")
    task = _task(config, generator=CARU2Net(config.generator))
    with pytest.raises(CheckpointError) as caught:
        load_initial_weights(task, {"generator": str(path)})
    message = str(caught.value)
    _one_short_sentence(message)
    assert " missing (e.g. " in message and "tensors of another shape" in message
    assert (
        "the file was trained with `generator.stages` 3 (this run: 5) and `generator.attention_reduction` 8 "
        "(this run: 4): use the file's values" in message
    )


def test_a_file_of_another_model_class_says_so(tmp_path):
    path = save_model(tmp_path / "generator.safetensors", CARU2Net(GeneratorConfig(width_multiplier=0.125)))
    config = MSegTrainConfig(model=MSegConfig(base_channels=4, levels=3))
    with pytest.raises(CheckpointError) as caught:
        load_initial_weights(_task(config, mseg=MSeg(config.model)), {"mseg": str(path)})
    assert str(caught.value) == (
        f"{path} does not fit the mseg network of this run: it holds a CARU2Net model, not an MSeg; name an MSeg "
        "model file in `init_weights.mseg`"
    )


def test_a_file_that_fits_is_loaded(tmp_path):
    import torch

    model = MSeg(MSegConfig(base_channels=4, levels=3))
    path = save_model(tmp_path / "mseg.safetensors", model)
    config = MSegTrainConfig(model=MSegConfig(base_channels=4, levels=3))
    task = _task(config, mseg=MSeg(config.model))
    load_initial_weights(task, {"mseg": str(path)})
    loaded = task.networks["mseg"].state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in model.state_dict().items())


def test_the_cli_names_the_option_that_sets_the_differing_setting(tmp_path):
    from m2u.datasets import write_synthetic_dataset
    from m2u.training.cli import train_main

    data = tmp_path / "data"
    write_synthetic_dataset(data, 8, size=32, seed=0, split=(0.5, 0.25, 0.25))
    path = save_model(tmp_path / "generator.safetensors", CARU2Net(GeneratorConfig(width_multiplier=0.25)))
    out = tmp_path / "run"
    args = ["gan", "--data", str(data), "-o", str(out), "--mask-source", "gt", "--perceptual-weight", "0"]
    args += ["--width-multiplier", "0.125", "--max-steps", "1", "--device", "cpu", "--workers", "0", "-q"]
    result = CliRunner().invoke(train_main, [*args, "--set", f"init_weights.generator={path}"])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and len(lines[0]) < 700, result.output
    assert "the file was trained with --width-multiplier 0.25, this run uses 0.125" in lines[0]
    assert "`generator.width_multiplier`" not in lines[0] and "leave out `init_weights.generator`" in lines[0]
