"""Every Click option that fills a dataclass field defaults to that field's default (one fact, one place).

Not a grep: each command's click parameters are read from the command objects, their defaults processed as
Click would (types and callbacks), and compared with the dataclass defaults they stand for."""

from __future__ import annotations

import dataclasses
import enum
import typing

import click
import pytest

from m2u.datasets.build import BuildConfig
from m2u.datasets.cli import main as make_dataset_main
from m2u.evaluation.cli import EVAL_BINDING
from m2u.evaluation.cli import main as eval_main
from m2u.inference.cli import export_main, unmask_main
from m2u.inference.export import ExportConfig
from m2u.inference.unmask import UnmaskConfig
from m2u.masking.cli import main as mask_main
from m2u.masking.detect import DetectorConfig
from m2u.masking.render import MaskConfig
from m2u.training.cli import GAN_BINDING, MSEG_BINDING, train_main
from m2u.training.cliutil import ConfigBinding

_NOT_OPTIONS = {"config_file", "legacy_config_file", "sets", "print_config", "quiet", "help"}


def field_default(cls: type, path: str):
    """The default of the (possibly nested) field `path` of dataclass `cls`, read from the class definitions."""
    *parents, leaf = path.split(".")
    for part in parents:
        cls = typing.get_type_hints(cls)[part]
    for f in dataclasses.fields(cls):
        if f.name == leaf:
            if f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                raise LookupError(f"{cls.__name__}.{leaf} has no default")
            return value.value if isinstance(value, enum.Enum) else value
    raise LookupError(f"{cls.__name__} has no field {leaf!r}")


def processed_default(command: click.Command, param: click.Parameter):
    ctx = click.Context(command)
    value = param.process_value(ctx, param.get_default(ctx))
    return None if type(value).__name__ == "Sentinel" else value  # click >= 8.2: no default is UNSET


def _params(command: click.Command) -> list[click.Parameter]:
    from m2u.core.cli import is_alias

    return [
        p
        for p in command.params
        if p.name not in _NOT_OPTIONS and isinstance(p, click.Option) and not is_alias(p)
    ]


# Commands that build their config through a ConfigBinding: EVERY option is a config field or declared other.
BOUND = {
    "m2u-train mseg": (train_main.commands["mseg"], MSEG_BINDING),
    "m2u-train gan": (train_main.commands["gan"], GAN_BINDING),
    "m2u-eval": (eval_main, EVAL_BINDING),
}


@pytest.mark.parametrize("name", sorted(BOUND))
def test_every_option_of_a_config_command_is_a_field_with_the_fields_default(name):
    command, binding = BOUND[name]
    checked = 0
    for param in _params(command):
        if param.name in binding.other:
            continue
        path, negated = binding.path_of(param.name)
        expected = field_default(binding.cls, path)  # LookupError: an option that is no config field
        default = processed_default(command, param)
        if negated:
            assert default is False and expected is True, (name, param.name)
        else:
            assert default == expected, (name, param.name, default, expected)
        checked += 1
    assert checked >= 15


# Commands that build their dataclasses by hand: options named like a field (or mapped to one) must agree.
BY_NAME = {
    "m2u-mask": (mask_main, [(MaskConfig, {}), (DetectorConfig, {"detector": "model"})]),
    "m2u-make-dataset": (make_dataset_main, [(BuildConfig, {})]),
    "m2u-unmask": (unmask_main, [(UnmaskConfig, {})]),
    "m2u-export onnx": (export_main.commands["onnx"], [(ExportConfig, {"size": "image_size"})]),
}


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_options_named_like_a_dataclass_field_default_to_it(name):
    command, classes = BY_NAME[name]
    checked = 0
    for param in _params(command):
        for cls, renamed in classes:
            field_name = renamed.get(param.name, param.name)
            if field_name not in {f.name for f in dataclasses.fields(cls)}:
                continue
            default, expected = processed_default(command, param), field_default(cls, field_name)
            assert default == expected, (name, param.name, default, expected)
            checked += 1
    assert checked >= 3


def test_the_checker_catches_a_literal_that_disagrees():
    @click.command()
    @click.option("--batch-size", default=4)
    def tool(batch_size):  # pragma: no cover - never run
        pass

    from m2u.training.config import MSegTrainConfig

    binding = ConfigBinding(MSegTrainConfig)
    (param,) = _params(tool)
    assert processed_default(tool, param) != field_default(binding.cls, binding.path_of(param.name)[0])


def test_workers_zero_means_in_process_everywhere():
    for command in (mask_main, make_dataset_main, train_main.commands["gan"], eval_main):
        (param,) = [p for p in command.params if "--workers" in p.opts]
        assert "0" in param.help and "in this process" in param.help, command.name
        assert processed_default(command, param) >= 0 and param.type.min == 0
    for command in (mask_main, make_dataset_main, train_main.commands["gan"], eval_main, unmask_main):
        (out,) = [p for p in command.params if "--out" in getattr(p, "opts", ())]
        assert "-o" in out.opts, command.name
