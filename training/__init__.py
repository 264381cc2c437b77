"""m2u.training: the M2UNet models, losses and trainers (and, from the evaluation modules, metrics).

Public surface (imported lazily: torch loads only when a name is used)::

    CARU2Net(GeneratorConfig), MSeg(MSegConfig), PatchDiscriminator(DiscriminatorConfig)
    to_model_range(x01), from_model_range(x), composite(output, masked, mask)
    ssim_map(x, y, data_range=1.0), psnr(x, y, data_range=1.0)
    (the function ssim lives at m2u.training.ssim.ssim: the package attribute `ssim` is that module)
    save_model(path, model), load_model(path, map_location="cpu")
    count_params(model), count_macs(model, input_shapes), count_flops(model, input_shapes)
    train_mseg(MSegTrainConfig, data=None), train_gan(GanTrainConfig, data=None)
    MSegTrainConfig, GanTrainConfig, OptimizerConfig, TensorDataSource, ShardDataSource
    NonFiniteLossError, VGGWeightsUnavailable, CheckpointError
"""

from __future__ import annotations

from m2u.core.lazy import lazy_exports

_EXPORTS = {
    "CARU2Net": "models",
    "GeneratorConfig": "models",
    "MSeg": "models",
    "MSegConfig": "models",
    "PatchDiscriminator": "models",
    "DiscriminatorConfig": "models",
    "to_model_range": "imagespace",
    "from_model_range": "imagespace",
    "composite": "imagespace",
    "ssim_map": "ssim",
    "psnr": "ssim",
    "save_model": "checkpoint",
    "load_model": "checkpoint",
    "CheckpointError": "checkpoint",
    "count_params": "flops",
    "count_macs": "flops",
    "count_flops": "flops",
    "VGGPerceptualLoss": "losses",
    "VGGWeightsUnavailable": "losses",
    "MSegTrainConfig": "config",
    "GanTrainConfig": "config",
    "OptimizerConfig": "config",
    "TensorDataSource": "data",
    "ShardDataSource": "data",
    "train_mseg": "trainer",
    "train_gan": "trainer",
    "NonFiniteLossError": "guards",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
