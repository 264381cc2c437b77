"""Config files and --set overrides (m2u.core.configfile): the one syntax of m2u-train, m2u-eval, m2u-pipeline."""

from __future__ import annotations

import dataclasses

import pytest

from m2u.core.configfile import (
    ConfigError,
    apply_overrides,
    config_from_dict,
    merge_overrides,
    parse_overrides,
    read_config_file,
)
from m2u.training.config import GanTrainConfig, MSegTrainConfig


def test_set_values_are_yaml_scalars_in_a_dotted_tree():
    tree = parse_overrides(["gan.max_steps=10", "gan.generator.stages=3", "seed=1", "name=a=b", "flag=false"])
    assert tree == {
        "gan": {"max_steps": 10, "generator": {"stages": 3}},
        "seed": 1,
        "name": "a=b",
        "flag": False,
    }
    for bad in ("max_steps", "=3", "gan..x=1"):
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            parse_overrides([bad])
    with pytest.raises(ConfigError, match="gan is already set"):
        parse_overrides(["gan=1", "gan.max_steps=2"])


@pytest.mark.parametrize(
    "name, text",
    [
        ("c.yaml", "max_steps: 4\nmodel:\n  levels: 3\n"),
        ("c.toml", "max_steps = 4\n[model]\nlevels = 3\n"),
        ("c.json", '{"max_steps": 4, "model": {"levels": 3}}'),
    ],
)
def test_the_three_file_formats_give_the_same_config(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    config = config_from_dict(MSegTrainConfig, read_config_file(path))
    assert config.max_steps == 4 and config.model.levels == 3 and config.model.base_channels == 16


@pytest.mark.parametrize(
    "name, text, where",
    [
        ("top.yaml", "max_steps: 4\nmax_steps: 8\n", r"top\.yaml, line 2: 'max_steps' is given twice"),
        ("deep.yaml", "model:\n  levels: 3\n  levels: 4\n", r"deep\.yaml, line 3: 'levels' is given twice"),
        ("top.json", '{"max_steps": 4, "max_steps": 8}', r"top\.json: 'max_steps' is given twice"),
        ("deep.json", '{"model": {"levels": 3, "levels": 4}}', r"deep\.json: 'levels' is given twice"),
        ("top.toml", "max_steps = 4\nmax_steps = 8\n", r"top\.toml is not valid"),
    ],
)
def test_a_key_given_twice_in_a_file_is_refused_not_overwritten(tmp_path, name, text, where):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=where):
        read_config_file(path)


def test_bad_files_and_keys_are_named(tmp_path):
    aliased = tmp_path / "a.yaml"
    aliased.write_text("base: &b {levels: 3}\nmodel: *b\n")
    with pytest.raises(ConfigError, match=r"a\.yaml.*aliases"):
        read_config_file(aliased)
    listed = tmp_path / "l.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_config_file(listed)
    other = tmp_path / "c.ini"
    other.write_text("x")
    with pytest.raises(ConfigError, match=r"\.yaml, \.yml, \.toml, \.json"):
        read_config_file(other)
    with pytest.raises(ConfigError, match=r"'model\.widht'"):
        config_from_dict(MSegTrainConfig, {"model": {"widht": 3}})
    with pytest.raises(ConfigError, match="precision"):
        config_from_dict(MSegTrainConfig, {"precision": "fp8"})
    with pytest.raises(ConfigError, match=r"'generator\.stagez'"):
        apply_overrides(GanTrainConfig(mask_source="gt"), {"generator": {"stagez": 3}})


def test_layers_merge_key_by_key():
    merged = merge_overrides({"a": 1, "m": {"x": 1, "y": 2}}, None, {"m": {"y": 3}}, {"b": 2})
    assert merged == {"a": 1, "m": {"x": 1, "y": 3}, "b": 2}


def test_a_refusal_is_said_in_the_key_written_and_where_it_was_written():
    """m2u-train and m2u-pipeline say a value's source in one wording, and a refusal naming the field a key sets
    (optimizer.learning_rate for `lr`) speaks of the key typed; a quoted value is never rewritten."""
    from m2u.core.configfile import as_written, written_at

    assert written_at("--set", "gan.lr") == "from --set gan.lr"
    assert written_at("run.yaml", "gan.lr") == "from run.yaml, key gan.lr"
    field = "gan.optimizer.learning_rate"
    assert as_written(f"{field} must be a finite number, got '{field}'", field, "gan.lr") == (
        f"gan.lr must be a finite number, got '{field}'"
    )
    assert as_written("invalid value under gan.optimizer: learning_rate must be > 0", field, "gan.lr") == (
        "gan.lr must be > 0"
    )
    assert as_written(
        "invalid value under mseg.model: MSegConfig.levels must be >= 2", "mseg.model.levels", "mseg.levels"
    ) == ("mseg.levels must be >= 2")
    assert (
        as_written("xgan.optimizer.learning_rate_max is 1", field, "gan.lr")
        == "xgan.optimizer.learning_rate_max is 1"
    )


@pytest.mark.parametrize(
    ("values", "said"),
    [
        ({"model": 3}, "model must be a mapping of options (key: value), got 3"),
        ({"init_weights": ["a.pt"]}, "init_weights must be a mapping (key: value), got ['a.pt']"),
    ],
)
def test_a_value_of_the_wrong_kind_is_said_in_a_config_files_words(values, said):
    """`model: 3` was refused as "model must be MSegConfig, got 3": a Python class name the config file never
    shows. A group of options is "a mapping of options", a dict field "a mapping", as for apply_overrides."""
    with pytest.raises(ConfigError) as refused:
        config_from_dict(MSegTrainConfig, values)
    assert str(refused.value) == said
    with pytest.raises(ConfigError) as refused:
        apply_overrides(MSegTrainConfig(), values)
    assert str(refused.value) == said


@dataclasses.dataclass
class _Inner:
    split: str = "test"

    def __post_init__(self):
        if self.split not in ("train", "test"):
            raise ValueError(f"`split` must be train or test, got {self.split!r}")


@dataclasses.dataclass
class _Outer:  # a top-level setting its class refuses with a plain ValueError, as m2u-eval's EvalConfig does
    split: str = "test"
    inner: _Inner = dataclasses.field(default_factory=_Inner)

    def __post_init__(self):
        _Inner(self.split)


def test_a_top_level_value_the_class_refuses_is_said_without_a_top_level():
    """`m2u-eval --set split=foo` said "invalid value under the top level: --split must be one of train, val,
    test, got 'foo'": the words "under the top level" name no place a user writes. A nested one keeps its group."""
    with pytest.raises(ConfigError) as refused:
        config_from_dict(_Outer, {"split": "foo"})
    assert str(refused.value) == "`split` must be train or test, got 'foo'"
    with pytest.raises(ConfigError) as refused:
        apply_overrides(_Outer(), {"inner": {"split": "foo"}})
    assert str(refused.value) == "invalid value under inner: `split` must be train or test, got 'foo'"
