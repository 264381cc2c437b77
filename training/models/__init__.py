"""m2u.training.models: the M-Seg segmenter, the CARU2-Net generator and the discriminator."""

from m2u.training.models.caru2net import CARU2Net, GeneratorConfig
from m2u.training.models.discriminator import DiscriminatorConfig, PatchDiscriminator
from m2u.training.models.mseg import MSeg, MSegConfig

__all__ = [
    "CARU2Net",
    "GeneratorConfig",
    "DiscriminatorConfig",
    "PatchDiscriminator",
    "MSeg",
    "MSegConfig",
]
