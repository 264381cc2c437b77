"""One configuration tree for every stage of a pipeline run, loaded from YAML/TOML/JSON or a named preset.

Each stage keeps its own dataclass (owned by its package); the pipeline only nests them. A config file or preset
holds overrides: any field it does not name keeps the stage's default (the paper's, where the paper gives one).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from m2u.core.configfile import ConfigError, apply_overrides, read_config_file
from m2u.datasets.build import BuildConfig
from m2u.evaluation.evaluator import EvaluateConfig
from m2u.pipelines.stages import canonical_json
from m2u.training.config import GanTrainConfig, MSegTrainConfig

# The generator's M-Seg checkpoint is the M-Seg stage's output, filled in when the GAN stage starts; until then
# the config holds this placeholder (it is part of the fingerprint through the M-Seg stage's own fingerprint).
MSEG_FROM_PIPELINE = "<m-seg stage output>"
PRESETS = ("paper", "cpu-small", "smoke")
__all__ = [
    "ConfigError",
    "PipelineConfig",
    "apply_overrides",
    "config_as_dict",
    "load_config",
    "read_config_file",
]


def _default_gan() -> GanTrainConfig:
    return GanTrainConfig(mseg_checkpoint=MSEG_FROM_PIPELINE)


@dataclass
class PipelineConfig:
    """Every option of every stage. `faces` are the raw inputs (folders, globs, list files); a config file or
    `--set` may give one as a string (`load_config`)."""

    faces: list[str] = field(default_factory=list)
    dataset: BuildConfig = field(default_factory=BuildConfig)
    mseg: MSegTrainConfig = field(default_factory=MSegTrainConfig)
    gan: GanTrainConfig = field(default_factory=_default_gan)
    evaluation: EvaluateConfig = field(default_factory=EvaluateConfig)


# The settings the pipeline gives each stage itself, and why: a value given for one would be silently replaced, so
# it is refused.
_OWN_FOLDER = "each stage writes to its own folder of the run folder"
PIPELINE_SETS: dict[str, dict[str, str]] = {
    "dataset": {
        "overwrite": "a stage run again moves its earlier output aside to RUN/stale itself",
        "partition": "the dataset stage builds every shard itself",
        "finalize": "the dataset stage builds every shard itself",
    },
    "mseg": {
        "data": "the mseg stage trains on the dataset stage's output",
        "out": _OWN_FOLDER,
        "resume": "the pipeline resumes a stopped stage itself",
    },
    "gan": {
        "data": "the gan stage trains on the dataset stage's output",
        "out": _OWN_FOLDER,
        "resume": "the pipeline resumes a stopped stage itself",
        "mseg_checkpoint": "the gan stage uses the M-Seg the mseg stage trained",
    },
}
# m2u-eval's options that are no field of the evaluation's configuration (its files), by their config keys: the
# pipeline gives them too, so a value for one is refused as it is read (`as_stage_fields`).
PIPELINE_EVALUATION_FILES = {
    "data": "the evaluation stage evaluates the dataset stage's output",
    "out": _OWN_FOLDER,
    "mseg": "the evaluation stage evaluates the M-Seg the mseg stage trained",
    "generator": "the evaluation stage evaluates the generator the gan stage trained",
}


def _check_pipeline_sets(config: PipelineConfig, written: dict[str, str]) -> None:
    """`written`: each setting's dotted field path -> the key a config file or --set wrote (`gan.mseg`), which
    the refusal names: the field (`gan.mseg_checkpoint`) is not what the user typed."""
    defaults = PipelineConfig()
    for stage, settings in PIPELINE_SETS.items():
        for name, why in settings.items():
            value = getattr(getattr(config, stage), name)
            if value != getattr(getattr(defaults, stage), name):
                key = written.get(f"{stage}.{name}", f"{stage}.{name}")
                raise ConfigError(
                    f"`{key}` is set by the pipeline itself: {why}, so {value!r} would not be used; leave it out"
                )


def as_stage_fields(overrides: dict[str, Any], written: dict[str, str] | None = None) -> dict[str, Any]:
    """`overrides` with the mseg and gan stages' keys as m2u-train's config files and `--set` give them (its long
    option names: `lr`, `workers`, `stages`, `mseg`), and the evaluation stage's as m2u-eval's (`workers`, `limit`,
    `threshold`), as the fields they set (`optimizer.learning_rate`, `num_workers`, `generator.stages`,
    `mseg_checkpoint`, `max_samples`): a block of `m2u-train gan --print-config` is the gan stage's block here, and
    one key (`workers`) sets the worker count of every stage as of every command. The fields' own dotted names still
    work. `written`, when given, is filled with each field set (`gan.mseg_checkpoint`) -> the key that set it
    (`gan.mseg`)."""
    from m2u.evaluation.cli import EVAL_BINDING
    from m2u.evaluation.cli import main as eval_main
    from m2u.training.cli import GAN_BINDING, MSEG_BINDING, train_main

    translated = dict(overrides)
    for stage, binding, command in (
        ("mseg", MSEG_BINDING, train_main.commands["mseg"]),
        ("gan", GAN_BINDING, train_main.commands["gan"]),
        ("evaluation", EVAL_BINDING, eval_main),
    ):
        block = overrides.get(stage)
        if isinstance(block, dict):
            origins: dict[str, str] = {}
            try:
                tree, others = binding.translate(command, block, origins)
            except ValueError as error:  # `optimizer: 3` beside `lr`, which sets optimizer.learning_rate
                raise ConfigError(f"invalid value under {stage}: {error}") from None
            if written is not None:
                written.update({f"{stage}.{path}": f"{stage}.{key}" for path, key in origins.items()})
            keys = {name: key for key, name in binding.keys(command).items()}
            for name, value in others.items():  # m2u-eval's files; left unset (`data: null`), the pipeline's
                if value is not None:
                    key = keys[name]
                    raise ConfigError(
                        f"`{stage}.{key}` is set by the pipeline itself: {PIPELINE_EVALUATION_FILES[key]}, so "
                        f"{value!r} would not be used; leave it out"
                    )
            # A setting the pipeline gives the stage, left unset as m2u-train leaves it (`mseg: null`, `resume:
            # false`), is the pipeline's; a value is refused (`_check_pipeline_sets`).
            unset = {f.name: f.default for f in fields(binding.cls)}
            own = PIPELINE_SETS.get(stage, {})
            translated[stage] = {
                key: value for key, value in tree.items() if not (key in own and value == unset.get(key))
            }
    return translated


_MENTION = re.compile(r"`([a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*)`")


def in_stage_words(text: str, stage: str) -> str:
    """A message of a stage's library (its settings named by their keys in backticks, m2u.core.errors) in the
    pipeline's words: each setting of that stage as the key a config file and `--set` give it (`vgg_weights`:
    `gan.vgg_weights`); other text is kept."""
    stages = {
        "dataset": BuildConfig,
        "mseg": MSegTrainConfig,
        "gan": GanTrainConfig,
        "evaluation": EvaluateConfig,
    }
    names = {f.name for f in fields(stages[stage])}
    keys = _nested_option_keys(stage)

    def key(match: re.Match[str]) -> str:
        setting = match.group(1)
        if setting.split(".")[0] not in names:
            return match.group(0)
        return f"`{stage}.{keys.get(setting, setting)}`"

    return _MENTION.sub(key, text)


def _nested_option_keys(stage: str) -> dict[str, str]:
    """A training stage's nested settings that m2u-train has an option for, each as the key a pipeline config or
    --set gives it (as_stage_fields: `optimizer.learning_rate` is `lr`); {} for the other stages."""
    if stage not in ("mseg", "gan"):
        return {}
    from m2u.training.cli import GAN_BINDING, MSEG_BINDING, train_main

    binding = MSEG_BINDING if stage == "mseg" else GAN_BINDING
    found = {}
    for key, name in binding.keys(train_main.commands[stage]).items():
        path, negated = binding.path_of(name)
        if "." in path and not negated:
            found[path] = key
    return found


def preset_overrides(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return read_config_file(Path(str(resources.files("m2u.pipelines").joinpath("presets", f"{name}.yaml"))))


def load_config(
    preset: str | None = None, config_file: str | Path | None = None, extra: dict[str, Any] | None = None
) -> PipelineConfig:
    """Defaults, then the preset, then the config file, then `extra` (command-line) overrides."""
    config = PipelineConfig()
    written: dict[str, str] = {}  # a later layer's key wins, as its value does
    for source, overrides in (
        (f"the preset {preset}", preset_overrides(preset) if preset else None),
        (str(config_file), read_config_file(config_file) if config_file else None),
        ("--set", extra),
    ):
        if overrides:
            overrides = _faces_listed(overrides)
            # Each field set -> the key that set it: the key itself, but for the mseg and gan stages' own names
            # (`gan.lr` sets gan.optimizer.learning_rate), which as_stage_fields fills in.
            # A stage block that is not a mapping (`gan: 3`) is a key of its own, said as every other.
            layer = {
                path: path
                for path in _leaf_paths(overrides)
                if path.split(".")[0] not in ("mseg", "gan") or "." not in path
            }
            try:
                config = apply_overrides(config, as_stage_fields(overrides, layer))
            except ConfigError as error:
                raise _said_where(error, layer, source) from None
            written.update(layer)
    _check_pipeline_sets(config, written)
    return config


def _faces_listed(overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` with `faces: DIR` (one input written as a string, in a config file or `--set faces=DIR`) as the
    list of that one input, as the command line's INPUTS give it."""
    faces = overrides.get("faces")
    return {**overrides, "faces": [faces]} if isinstance(faces, str) and faces else overrides


def _leaf_paths(values: dict[str, Any], above: str = "") -> list[str]:
    """The dotted paths of the values in nested mappings (`dataset.split` for {"dataset": {"split": ...}})."""
    paths = []
    for key, value in values.items():
        path = f"{above}{key}"
        paths += _leaf_paths(value, f"{path}.") if isinstance(value, dict) and value else [path]
    return paths


def _said_where(error: ConfigError, keys: dict[str, str], source: str) -> ConfigError:
    """`error` in the words of the key the user wrote, saying where it was written (`--set gan.lr=abc`: "gan.lr must
    be a finite number, got 'abc' (gan.lr: from --set gan.lr)"; a config file's: "(gan.lr: from FILE, key gan.lr)"):
    a stage block's key (`gan.lr`) sets a field of another name (gan.optimizer.learning_rate), which the check
    names."""
    from m2u.core.configfile import ConfigSettingError, as_written, written_at

    message = error.message if isinstance(error, ConfigSettingError) else str(error)
    unknown = re.match(r"unknown option '([^']+)'", message)
    if unknown:  # where the key was written, as m2u-train says it (the keys listed as known are no setting's)
        return ConfigError(f"{message} ({written_at(source, unknown.group(1))})")
    text = re.sub(r"'[^']*'", "", message)  # the values quoted in it ('abc') name no setting
    # A field is named by its whole path or, under its block ("invalid value under gan.optimizer: learning_rate
    # ..."), by its last part beside its stage's name.
    named = sorted(
        (
            path
            for path in keys
            if re.search(rf"(?<![\w.]){re.escape(path)}\b", text)
            or all(
                re.search(rf"\b{re.escape(part)}\b", text)
                for part in (path.split(".")[0], path.split(".")[-1])
            )
        ),
        key=len,
    )
    # The setting a stage's own check refused, whether or not its message names it ("must be >= 1, got 0").
    if isinstance(error, ConfigSettingError) and error.setting in keys:
        named.append(error.setting)
    if not named:
        return error
    path = named[-1]
    key = keys[path]
    said = f"{as_written(message, path, key)} ({key}: {written_at(source, key)})"  # as m2u-train says it
    if isinstance(error, ConfigSettingError):
        return ConfigSettingError(key if error.setting == path else error.setting, said)
    return ConfigError(said)


def config_as_dict(config: PipelineConfig) -> dict[str, Any]:
    """Plain JSON-ready values (enums and tuples flattened) for the run folder and the fingerprints."""
    return json.loads(canonical_json(config))
