"""Training entry points: `train_mseg` and `train_gan` set up the device, the process group, the seeds, the
task and its data, then hand them to the loop (`m2u.training.loop.Trainer`).

Where each concern lives (the BasicSR / LaMa split): the loop in `loop`; the tasks (the paper's objectives) in
`mseg_task` and `gan_task` over the shared base in `task`; DDP set-up in `distributed`; RNG state in `rng`;
the training-state checkpoint in `run_state`; NaN/inf detection and running means in `guards`; the run's log,
grids and metrics in `runlog`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from torch import nn

from m2u.core.errors import SettingError
from m2u.core.fileio import content_digest
from m2u.training.checkpoint import CheckpointError, load_model, shape_differences, tensor_shapes
from m2u.training.config import GanTrainConfig, MSegTrainConfig, RunConfig
from m2u.training.data import AugmentedSource, DataSource, ShardDataSource, source_batch_size
from m2u.training.device import resolve_device
from m2u.training.distributed import bind_device, init_distributed
from m2u.training.gan_task import GanTask
from m2u.training.guards import NonFiniteLossError
from m2u.training.loop import Trainer
from m2u.training.mseg_task import MSegTask
from m2u.training.rng import seed_everything
from m2u.training.run_state import check_resume, check_resume_init_weights, last_checkpoint_path
from m2u.training.task import TrainingTask


def check_model_sizes(config: RunConfig) -> None:
    """Refuse, before allocating, networks whose training state (weights, gradients, Adam's two moments)
    would not fit in this machine's memory."""
    from m2u.training.checkpoint import build_model, parameter_bytes

    networks = {"MSegTrainConfig": [("MSeg", "model")], "GanTrainConfig": [("CARU2Net", "generator"),
                ("PatchDiscriminator", "discriminator")]}.get(type(config).__name__, [])  # fmt: skip
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    for class_name, field_name in networks:
        model = build_model(class_name, getattr(config, field_name), f"the {field_name} config")
        needed = 4 * parameter_bytes(model)
        if needed > available:
            parameters = sum(p.numel() for p in model.parameters())
            raise ValueError(
                f"the {'M-Seg' if field_name == 'model' else field_name} ({_settings_changed(getattr(config, field_name), field_name)}) has "
                f"{parameters / 1e6:,.0f} M parameters, {needed / 2**30:,.1f} GiB to train before any activation: "
                f"more than this machine's {available / 2**30:.1f} GiB of memory"
            )


def _settings_changed(network_config: Any, field_name: str) -> str:
    """The settings of a network's config that differ from its defaults, each as `field.setting` value (a command
    says them as its options): the message printed the whole dataclass, a dozen fields the user never set."""
    default = type(network_config)()
    changed = [
        f"`{field_name}.{f.name}` {getattr(network_config, f.name)!r}"
        for f in dataclasses.fields(network_config)
        if getattr(network_config, f.name) != getattr(default, f.name)
    ]
    return ", ".join(changed) or "its default settings"


def _train(task_class: type[TrainingTask], config: RunConfig, data: DataSource | None) -> dict[str, Any]:
    if not config.out:
        raise ValueError("a run folder (config.out) is required")
    check_resume(config)
    check_model_sizes(config)
    device = resolve_device(config.device)  # under torchrun: cuda:LOCAL_RANK
    bind_device(device)  # before NCCL starts, so its communicator uses this rank's GPU
    dist = init_distributed(device)
    # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's at wrap time).
    seed_everything(config.seed)
    task = task_class(config, device, dist)
    if config.resume and last_checkpoint_path(config.out).exists():
        # The checkpoint holds every weight: the starting files are not read again (a resume failed where one had
        # been moved or reinstalled since). Where they came from is read back from the checkpoint (the loop).
        check_initial_weight_names(task, config.init_weights)
        check_resume_init_weights(config)
        task.initial_weights = {name: {"file": str(path)} for name, path in config.init_weights.items()}
    else:
        load_initial_weights(task, config.init_weights)
    if data is None:
        on_gpu = device.type == "cuda"  # pinned uint8 batches, converted on the GPU (_on_device)
        data = ShardDataSource(
            config.data, config.batch_size, config.seed, config.num_workers, dist.rank, dist.world_size,
            pin_memory=on_gpu, uint8=on_gpu,
        )  # fmt: skip
    if config.augment.enabled:
        data = AugmentedSource(data, config.augment, config.seed, dist.rank)
    _check_source_batch_size(data, config)
    _check_a_batch_per_epoch(data, config)
    return Trainer(task, data, config, dist).run()


def _check_source_batch_size(data: DataSource, config: RunConfig) -> None:
    """Refuse, before the run folder is touched, a data source whose batches are of another size than the config's
    `batch_size`: the run trained on the source's batches while its checkpoint, config.json and the resume checks
    said the config's (a source that does not say its size is taken at the config's word)."""
    given = source_batch_size(data)
    if given is not None and given != config.batch_size:
        raise SettingError(
            "batch_size",
            f"{config.batch_size}, but the data source gives batches of {given}: the run's records would say "
            f"{config.batch_size}; give the source's batch size, or a source of batches of {config.batch_size}",
        )


def _check_a_batch_per_epoch(data: DataSource, config: RunConfig) -> None:
    """Refuse, before the run folder is touched, a batch size the training split cannot fill once per rank (the
    last partial batch is dropped): found only after the first epoch, it ended as a failure (exit 1) with a "?"."""
    steps_per_epoch = getattr(data, "steps_per_epoch", None)
    if callable(steps_per_epoch) and steps_per_epoch("train") == 0:
        where = f"the training split of {config.data}" if config.data else "the training data"
        raise SettingError(
            "batch_size",
            f"{config.batch_size} is more than {where} holds per process (the last partial batch is dropped): "
            "no batch to train on; give a smaller batch size or more data",
        )


def load_initial_weights(task: TrainingTask, files: dict[str, str]) -> None:
    """Fine-tuning: each named network starts from a model file's weights (save_model / a shipped package).
    A file that does not fit its network is one sentence: how many tensors differ (the first one or two), the
    settings the file was trained with that this run sets otherwise (model files record their config), and what
    to do; not torch's list of every parameter."""
    check_initial_weight_names(task, files)
    for name, path in files.items():
        model, info = load_model(path, map_location="cpu")
        network = task.networks[name]
        misfit = initial_weights_misfit(task.config, name, network, model)
        if misfit:
            raise CheckpointError(f"{path} does not fit the {name} network of this run: {misfit}")
        try:
            network.load_state_dict(model.state_dict())
        except RuntimeError as exc:  # shapes and names fit: torch's first line, not its paragraphs
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise CheckpointError(f"{path} does not fit the {name} network of this run: {first}") from None
        task.initial_weights[name] = {"file": str(path), "sha256": content_digest(path)}
        if info.crop_size is not None:  # files from before the record say nothing
            task.initial_crop_sizes[name] = (str(path), info.crop_size)


def check_initial_weight_names(task: TrainingTask, files: dict[str, str]) -> None:
    """ValueError where `init_weights` names a network this run does not train (checked on a resume too)."""
    for name in files:
        if name not in task.networks:
            raise ValueError(f"init_weights names {name!r}; this run trains {', '.join(task.networks)}")


def initial_weights_misfit(config: RunConfig, name: str, network: nn.Module, model: nn.Module) -> str | None:
    """Why the weights of `model` (a model file, loaded) cannot start the network `name` of the run `config`;
    None when they fit."""
    ours, theirs = type(network).__name__, type(model).__name__
    if ours != theirs:
        return f"it holds {_a(theirs)} model, not {_a(ours)}; name {_a(ours)} model file in `init_weights.{name}`"
    detail = shape_differences(
        tensor_shapes(network.state_dict()), tensor_shapes(model.state_dict()), "this run"
    )
    if detail is None:
        return None
    setting = _config_field(config, network)
    differences = _config_differences(getattr(model, "config", None), getattr(network, "config", None))
    if not differences or setting is None:
        return f"{detail}; the file holds another architecture than this run's"
    if len(differences) == 1:
        key, filed, used = differences[0]
        trained = f"`{setting}.{key}` {_shown(filed)}, this run uses {_shown(used)}: use the file's value"
    else:
        pairs = [
            f"`{setting}.{key}` {_shown(filed)} (this run: {_shown(used)})"
            for key, filed, used in differences
        ]
        trained = f"{', '.join(pairs[:-1])} and {pairs[-1]}: use the file's values"
    return f"{detail}; the file was trained with {trained} to fine-tune from it, or leave out `init_weights.{name}`"


def _a(class_name: str) -> str:
    """The class name with its article, as said aloud ("an MSeg", "a CARU2Net")."""
    return f"{'an' if class_name[0] in 'AEFHILMNORSX' else 'a'} {class_name}"


def _config_field(config: RunConfig, network: nn.Module) -> str | None:
    """The run config's field that holds the network's architecture (`generator`; `model` for M-Seg)."""
    own = getattr(network, "config", None)
    if own is None:
        return None
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    same = [key for key, value in values.items() if value is own]
    alike = [key for key, value in values.items() if type(value) is type(own)]
    return next(iter(same or alike), None)


def _config_differences(filed: Any, used: Any) -> list[tuple[str, Any, Any]]:
    """(field, the file's value, this run's value) for each architecture field the two configs set otherwise."""
    if not hasattr(filed, "to_dict") or not hasattr(used, "to_dict"):
        return []
    theirs = json.loads(json.dumps(filed.to_dict()))  # tuples and lists compare alike
    ours = json.loads(json.dumps(used.to_dict()))
    return [(key, theirs.get(key), ours[key]) for key in ours if theirs.get(key) != ours[key]]


def _shown(value: Any) -> str:
    return ", ".join(str(v) for v in value).join("()") if isinstance(value, list) else str(value)


def train_mseg(config: MSegTrainConfig, data: DataSource | None = None) -> dict[str, Any]:
    """Train M-Seg; writes RUN/mseg.safetensors, RUN/checkpoints/last.pt, RUN/log.jsonl, RUN/metrics.json."""
    return _train(MSegTask, config, data)


def train_gan(config: GanTrainConfig, data: DataSource | None = None) -> dict[str, Any]:
    """Train the GAN; writes RUN/generator.safetensors and RUN/discriminator.safetensors besides the above."""
    return _train(GanTask, config, data)


__all__ = ["NonFiniteLossError", "check_model_sizes", "train_gan", "train_mseg"]
