"""One configuration tree for every stage of a pipeline run, loaded from YAML/TOML/JSON or a named preset.

Each stage keeps its own dataclass (owned by its package); the pipeline only nests them. A config file or preset
holds overrides: any field it does not name keeps the stage's default (the paper's, where the paper gives one).
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from m2u.datasets.build import BuildConfig
from m2u.masking.imageio import ImageReadError, read_input_bytes
from m2u.pipelines.stages import canonical_json
from m2u.training.config import GanTrainConfig, MSegTrainConfig
from m2u.training.evaluate import EvaluateConfig

# The generator's M-Seg checkpoint is the M-Seg stage's output, filled in when the GAN stage starts; until then
# the config holds this placeholder (it is part of the fingerprint through the M-Seg stage's own fingerprint).
MSEG_FROM_PIPELINE = "<m-seg stage output>"
PRESETS = ("paper", "cpu-small", "smoke")
CONFIG_MAX_BYTES = 1_000_000  # a configuration is a few kB; anything this large is not one


def _default_gan() -> GanTrainConfig:
    return GanTrainConfig(mseg_checkpoint=MSEG_FROM_PIPELINE)


@dataclass
class PipelineConfig:
    """Every option of every stage. `faces` are the raw inputs (folders, globs, list files)."""

    faces: list[str] = field(default_factory=list)
    dataset: BuildConfig = field(default_factory=BuildConfig)
    mseg: MSegTrainConfig = field(default_factory=MSegTrainConfig)
    gan: GanTrainConfig = field(default_factory=_default_gan)
    evaluation: EvaluateConfig = field(default_factory=EvaluateConfig)


class ConfigError(ValueError):
    """A configuration file or override that does not fit the configuration tree."""


def apply_overrides(config: Any, overrides: dict[str, Any], where: str = "") -> Any:
    """Return a copy of the dataclass `config` with `overrides` applied (recursively), unknown keys refused.

    dataclasses.replace re-runs each dataclass's own validation, so a bad value fails with that class's message.
    """
    names = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        path = f"{where}{key}"
        if key not in names:
            raise ConfigError(f"unknown option {path!r}; known here: {sorted(names)}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            value = apply_overrides(current, value, where=f"{path}.")
        changes[key] = value
    try:
        return dataclasses.replace(config, **changes)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"invalid value under {where or 'the top level'}: {error}") from error


def load_yaml(text: str, where: str) -> Any:
    """`yaml.safe_load`, with aliases refused (ConfigError naming `where` and the line): an alias repeats a value
    without writing it out, so a few hundred bytes can expand into gigabytes ("billion laughs")."""
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise ConfigError(
                    f"{where}, line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not accepted "
                    "in m2u configurations; write the value out"
                )
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{where} is not valid YAML: {error}") from error


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = read_input_bytes(path, max_bytes=CONFIG_MAX_BYTES).decode("utf-8")  # never blocks on a FIFO
    except ImageReadError as error:
        raise ConfigError(f"cannot read config file {path}: {error.reason}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"config file {path} is not UTF-8 text: {error}") from error
    try:
        if path.suffix in (".yaml", ".yml"):
            data = load_yaml(text, str(path)) or {}
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"{path}: config files are .yaml, .yml, .toml or .json")
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path} is not valid: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of stage names to options")
    return data


def preset_overrides(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    text = resources.files("m2u.pipelines").joinpath("presets", f"{name}.yaml").read_text()
    return load_yaml(text, f"preset {name}") or {}


def load_config(
    preset: str | None = None, config_file: str | Path | None = None, extra: dict[str, Any] | None = None
) -> PipelineConfig:
    """Defaults, then the preset, then the config file, then `extra` (command-line) overrides."""
    config = PipelineConfig()
    for overrides in (
        preset_overrides(preset) if preset else None,
        read_config_file(config_file) if config_file else None,
        extra,
    ):
        if overrides:
            config = apply_overrides(config, overrides)
    return config


def config_as_dict(config: PipelineConfig) -> dict[str, Any]:
    """Plain JSON-ready values (enums and tuples flattened) for the run folder and the fingerprints."""
    return json.loads(canonical_json(config))
