"""The M2UNet GAN task (the paper's objective, eqs. 1-5): CARU2-Net generator and patch discriminator, LSGAN +
reconstruction (L1 + SSIM) + VGG perceptual loss; the mask from a frozen M-Seg or from the dataset."""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from m2u.core.fileio import content_digest
from m2u.training.checkpoint import CheckpointError, ModelInfo, ModelUsageWarning, load_model, unwrap_model
from m2u.training.config import GanTrainConfig
from m2u.training.distributed import DistributedContext
from m2u.training.imagespace import composite, from_model_range, to_model_range
from m2u.training.losses import (
    VGGPerceptualLoss,
    dice_score,
    generator_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    reconstruction_loss,
)
from m2u.training.models import CARU2Net, MSeg, PatchDiscriminator
from m2u.training.ssim import psnr, ssim
from m2u.training.task import TrainingTask, grid_rows


def grow_holes(mask: torch.Tensor, most_px: int) -> torch.Tensor:
    """Each sample's (B, 1, H, W) {0, 1} mask grown by its own random 0..`most_px` pixels every way (a square
    neighbourhood, as m2u-unmask grows the region it restores: m2u.inference.paste.grow_region). The radii come
    from torch's global generator, which the run seeds and its checkpoints capture (an exact --resume)."""
    radii = torch.randint(0, most_px + 1, (mask.shape[0],))
    grown = mask.clone()
    for radius in radii.unique().tolist():
        if radius:
            chosen = (radii == radius).to(mask.device)
            grown[chosen] = F.max_pool2d(mask[chosen], 2 * radius + 1, stride=1, padding=radius)
    return grown


class GanTask(TrainingTask):
    """The M2UNet GAN: CARU2-Net generator and patch discriminator, LSGAN + reconstruction + perceptual."""

    name = "gan"

    def __init__(self, config: GanTrainConfig, device: torch.device, dist: DistributedContext) -> None:
        super().__init__(config, device, dist)
        self.config: GanTrainConfig = config
        # The perceptual backbone first: a missing VGG stops the run before anything is built or written.
        self.perceptual: VGGPerceptualLoss | None = None
        if config.perceptual_weight > 0:
            self.perceptual = VGGPerceptualLoss(config.vgg_weights, config.perceptual_layers).to(device)
        self.mseg: MSeg | None = None
        self.mseg_sha256: str | None = None
        self.mseg_crop_size: int | None = None
        self.mask_threshold: float | None = None  # the frozen M-Seg's: the config's, else its file's
        if config.mask_source == "mseg":
            assert config.mseg_checkpoint is not None  # checked by the config
            try:
                model, info = load_model(config.mseg_checkpoint, map_location=device)
            except CheckpointError as error:
                # A resume reads it again (its checkpoint does not hold it): a moved file is found by its new path,
                # and the digest check (resume_problem) makes sure it is the same file.
                moved = (
                    "" if os.path.lexists(config.mseg_checkpoint) else "; if it was moved, give its new path"
                )
                raise CheckpointError(f"the frozen M-Seg (`mseg_checkpoint`): {error}{moved}") from None
            if not isinstance(model, MSeg):
                raise CheckpointError(
                    f"{config.mseg_checkpoint} holds a {type(model).__name__}, not an M-Seg model"
                )
            self.mseg = model.eval().requires_grad_(False)
            # Its checkpoint does not hold the frozen M-Seg: a resume reads the file again, and must read the same.
            self.mseg_sha256 = content_digest(config.mseg_checkpoint)
            self.mseg_crop_size = info.crop_size  # warned against the training crops' (observe_batch)
            self.mask_threshold = (
                info.mask_threshold_or_default() if config.mask_threshold is None else config.mask_threshold
            )
        elif config.mseg_checkpoint or config.mask_threshold is not None:
            # Said, not refused: the README's `--mseg FILE [--mask-source gt]` keeps one command for both sources.
            unused = [
                f"`mseg_checkpoint` {config.mseg_checkpoint}" if config.mseg_checkpoint else "",
                "`mask_threshold`" if config.mask_threshold is not None else "",
            ]
            warnings.warn(
                f"{' and '.join(u for u in unused if u)} not read: with `mask_source` 'gt' the generator is given "
                "the dataset's masks",
                ModelUsageWarning,
                stacklevel=2,
            )
        self.add_network("generator", CARU2Net(config.generator))
        self.add_network("discriminator", PatchDiscriminator(config.discriminator))

    @torch.no_grad()
    def mask_for(self, masked: torch.Tensor, gt_mask: torch.Tensor) -> torch.Tensor:
        """The mask fed to the generator and used for compositing: the frozen M-Seg's, or the dataset's."""
        if self.mseg is None or self.mask_threshold is None:
            return gt_mask
        return self.mseg.predict_mask(masked, self.mask_threshold)

    def observe_batch(self, batch: dict) -> None:
        first = self.crop_size is None
        super().observe_batch(batch)
        if first and self.mseg_crop_size is not None and self.mseg_crop_size != self.crop_size:
            # As m2u-eval warns: a frozen M-Seg read at another size than it learned gives poorer masks.
            warnings.warn(
                f"the frozen M-Seg {self.config.mseg_checkpoint} was trained on {self.mseg_crop_size} px crops, "
                f"this dataset's are {self.crop_size} px: its masks, which the generator learns to fill, may be "
                "poorer at this size",
                ModelUsageWarning,
                stacklevel=2,
            )

    def model_info(self, name: str, step: int) -> ModelInfo:
        info = super().model_info(name, step)
        info.provenance["mask_source"] = self.config.mask_source
        if self.mseg is not None:
            info.provenance["mseg"] = self.config.mseg_checkpoint
            info.provenance["mseg_sha256"] = self.mseg_sha256
            info.provenance["mask_threshold"] = self.mask_threshold
        return info

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.mseg_sha256 is not None:
            state["frozen_mseg_sha256"] = self.mseg_sha256
        return state

    def resume_problem(self, state: dict[str, Any]) -> str:
        """A resume whose frozen M-Seg file is not the one the run began with (a package reinstalled at its path):
        the generator would go on learning to fill another network's masks."""
        began = state.get("frozen_mseg_sha256")
        if not isinstance(began, str) or self.mseg_sha256 is None or began == self.mseg_sha256:
            return ""
        return (
            f"resume: the frozen M-Seg {self.config.mseg_checkpoint} is not the file this run began with "
            f"(SHA-256 {self.mseg_sha256[:12]} now, {began[:12]} then); put that file back at the path, or start "
            "a new run to train against this one"
        )

    def train_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        self.observe_batch(batch)
        masked = to_model_range(self.to_device(batch["masked"]))
        real = to_model_range(self.to_device(batch["unmasked"]))
        mask = self.mask_for(masked, self.to_device(batch["mask"]))
        if self.config.hole_grow_px:
            mask = grow_holes(mask, self.config.hole_grow_px)
        generator, discriminator = self.wrapped["generator"], self.wrapped["discriminator"]

        # Discriminator step (eq. 5): real and fake in one forward (no normalisation layers in D, so this
        # equals two forwards, with one spectral-norm power iteration and one DDP synchronisation).
        with self.autocast():
            fake = generator(masked, mask)
            scores = discriminator(torch.cat([real, fake.detach()], dim=0))
        real_scores, fake_scores = scores.float().chunk(2, dim=0)
        d_loss = lsgan_discriminator_loss(real_scores, fake_scores)
        self.check_finite(step, {"d_loss": d_loss})
        self.optimise("discriminator", d_loss)

        # Generator step (eq. 1): the weighted sum with the paper's weights (GanLossConfig, configurable). D is
        # frozen and called unwrapped: its gradients are neither computed nor all-reduced (DDP would wait for them).
        with self.autocast(), self.frozen("discriminator") as frozen_discriminator:
            generated_scores = frozen_discriminator(fake)
            perceptual = self.perceptual(fake, real) if self.perceptual is not None else None
        fake32 = fake.float()
        adversarial = lsgan_generator_loss(generated_scores.float())
        reconstruction = reconstruction_loss(fake32, real, self.config.ssim_share)
        perceptual = perceptual.float() if perceptual is not None else torch.zeros((), device=self.device)
        terms = {"adversarial": adversarial, "reconstruction": reconstruction, "perceptual": perceptual}
        g_loss = generator_loss(terms, self.config)
        self.check_finite(step, {"g_loss": g_loss})
        with self.frozen("discriminator"):  # the backward runs through D: still no gradient for its weights
            self.optimise("generator", g_loss)
        self.end_step()
        return {
            "d_loss": d_loss.detach(),
            "g_loss": g_loss.detach(),
            "adversarial": adversarial.detach(),
            "reconstruction": reconstruction.detach(),
            "perceptual": perceptual.detach(),
            "d_real": real_scores.detach().mean(),
            "d_fake": fake_scores.detach().mean(),
        }

    @torch.no_grad()
    def generate(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(output01, composite01, mask, masked01) for a batch, generator in its current mode."""
        masked01 = self.to_device(batch["masked"])
        masked = to_model_range(masked01)
        mask = self.mask_for(masked, self.to_device(batch["mask"]))
        with self.autocast():
            output = unwrap_model(self.networks["generator"])(masked, mask)
        output01 = from_model_range(output.float())
        return output01, composite(output01, masked01, mask), mask, masked01

    def eval_metric_names(self) -> tuple[str, ...]:
        names = ("psnr", "ssim", "psnr_raw_output", "psnr_masked_input")
        return (*names, "mseg_dice") if self.mseg is not None else names

    @torch.no_grad()
    def eval_batch(self, batch: dict) -> dict[str, tuple[float, int]]:
        output01, composite01, mask, masked01 = self.generate(batch)
        target = self.to_device(batch["unmasked"])
        count = target.shape[0]
        metrics = {
            "psnr": (float(psnr(composite01, target, reduction="none").sum()), count),
            "ssim": (float(ssim(composite01, target, reduction="none").sum()), count),
            "psnr_raw_output": (float(psnr(output01, target, reduction="none").sum()), count),
            "psnr_masked_input": (float(psnr(masked01, target, reduction="none").sum()), count),
        }
        if self.mseg is not None:
            gt_mask = self.to_device(batch["mask"])
            metrics["mseg_dice"] = (float(dice_score(mask, gt_mask).sum()), count)
        return metrics

    grid_columns = ("masked", "mask", "output", "ground truth")

    @torch.no_grad()
    def grid(self, batch: dict) -> torch.Tensor:
        output01, _, mask, masked01 = self.generate(batch)
        return grid_rows([masked01, mask, output01, batch["unmasked"]])
