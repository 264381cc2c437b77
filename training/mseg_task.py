"""The M-Seg task: masked face -> mask logits; BCE + soft Dice (the paper's segmentation objective); Dice and
pixel accuracy for evaluation."""

from __future__ import annotations

import torch

from m2u.training.checkpoint import ModelInfo, unwrap_model
from m2u.training.config import MSegTrainConfig
from m2u.training.distributed import DistributedContext
from m2u.training.imagespace import to_model_range
from m2u.training.losses import dice_score, pixel_accuracy, segmentation_loss
from m2u.training.models import MSeg
from m2u.training.task import TrainingTask, grid_rows


def with_bare_faces(
    masked: torch.Tensor, unmasked: torch.Tensor, mask: torch.Tensor, config: MSegTrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """About `bare_face_share` of the samples replaced by their bare face with an empty target. The draw comes from
    torch's global generator, which the trainer seeds and checkpoints (m2u.training.rng): resumed runs repeat it."""
    bare = torch.rand(masked.shape[0]) < config.bare_face_share
    if not bool(bare.any()):
        return masked, mask
    bare = bare.to(masked.device).view(-1, 1, 1, 1)
    return torch.where(bare, unmasked, masked), torch.where(bare, torch.zeros_like(mask), mask)


class MSegTask(TrainingTask):
    """M-Seg: masked face -> mask logits; BCE + soft Dice; Dice and pixel accuracy for evaluation."""

    name = "mseg"

    def __init__(self, config: MSegTrainConfig, device: torch.device, dist: DistributedContext) -> None:
        super().__init__(config, device, dist)
        self.config: MSegTrainConfig = config
        self.add_network("mseg", MSeg(config.model))

    def model_info(self, name: str, step: int) -> ModelInfo:
        info = super().model_info(name, step)
        info.mask_threshold = self.config.mask_threshold
        return info

    def train_step(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        self.observe_batch(batch)
        masked, target = self.to_device(batch["masked"]), self.to_device(batch["mask"])
        if self.config.bare_face_share > 0:
            masked, target = with_bare_faces(masked, self.to_device(batch["unmasked"]), target, self.config)
        masked = to_model_range(masked)
        with self.autocast():
            logits = self.wrapped["mseg"](masked)
        terms = segmentation_loss(logits.float(), target, self.config)
        self.check_finite(step, {"loss": terms["loss"]})
        self.optimise("mseg", terms["loss"])
        self.end_step()
        return {name: value.detach() for name, value in terms.items()}

    @torch.no_grad()
    def predict(self, masked01: torch.Tensor) -> torch.Tensor:
        model = unwrap_model(self.networks["mseg"])
        with self.autocast():
            logits = model(to_model_range(self.to_device(masked01)))
        return (torch.sigmoid(logits.float()) >= self.config.mask_threshold).float()

    def eval_metric_names(self) -> tuple[str, ...]:
        return ("dice", "pixel_accuracy")

    @torch.no_grad()
    def eval_batch(self, batch: dict) -> dict[str, tuple[float, int]]:
        predicted = self.predict(batch["masked"])
        target = self.to_device(batch["mask"])
        count = predicted.shape[0]
        return {
            "dice": (float(dice_score(predicted, target).sum()), count),
            "pixel_accuracy": (float(pixel_accuracy(predicted, target).sum()), count),
        }

    grid_columns = ("masked", "predicted mask", "masked x (1 - pred)", "true mask")

    @torch.no_grad()
    def grid(self, batch: dict) -> torch.Tensor:
        predicted = self.predict(batch["masked"]).cpu()
        masked = batch["masked"].cpu()
        return grid_rows([masked, predicted, masked * (1 - predicted), batch["mask"]])
