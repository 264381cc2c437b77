"""A fixed-budget CPU run: M-Seg, then the GAN, then a test-split comparison against simple baselines.

    .venv/bin/m2u-make-dataset ../shared/faces/celeba -o out/celeba128 --size 128 --workers 2 --seed 0
    .venv/bin/python benchmarks/celeba_cpu_run.py --data out/celeba128 --out runs/celeba_cpu --budget-minutes 30

The budget covers everything: M-Seg gets `--mseg-share` of the training time, the GAN the rest, and
`--eval-reserve-minutes` are kept for the final evaluation. Both trainers stop on their wall-clock budget at a
step boundary and write their checkpoints, so the run can be inspected (or resumed with m2u-train --resume).

The test-split evaluation (every sample once, stored order) reports:
- M-Seg: Dice and pixel accuracy of the predicted mask against the dataset's mask;
- PSNR and SSIM against the unmasked ground truth of: the generator's output composited under the predicted
  mask (the M2UNet output), the masked input itself, and OpenCV Telea inpainting under the predicted mask and
  under the ground-truth mask;
- pass/fail of the targets: Dice >= 0.95, composite PSNR above the masked input and above Telea.

CPU choices (documented, all options): the paper's schedule is for a GPU (about 9 days at 128 px here), so the
generator uses a width multiplier (default 0.25: 2.2 s per G+D step at batch 8 and 128 px on two free cores,
against 3.9 s at 0.5), M-Seg half its default width (8 base channels) with a quarter of the training time, and
the perceptual term is off by default (ImageNet VGG19 weights are not reachable on this machine, and the VGG
doubles the step cost); pass --perceptual-weight 10 --vgg-weights PATH to use it. The learning rate and loss
weights are the paper's. Data is read in the training process (--num-workers 0): on two cores a loader process
would compete with the two PyTorch threads, whose OpenMP barriers then spin.
Writes RUN/celeba_cpu_run.json (and the two run folders RUN/mseg, RUN/gan).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from m2u.evaluation.baselines import run_baseline
from m2u.training.checkpoint import load_model
from m2u.training.config import GanTrainConfig, MSegTrainConfig, OptimizerConfig
from m2u.training.data import ShardDataSource
from m2u.training.imagespace import composite, from_model_range, to_model_range
from m2u.training.losses import dice_score, pixel_accuracy
from m2u.training.models import GeneratorConfig, MSegConfig
from m2u.training.ssim import psnr, ssim
from m2u.training.trainer import train_gan, train_mseg

DICE_TARGET = 0.95


class _Sums:
    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.count = 0

    def add(self, name: str, values: torch.Tensor) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + float(values.double().sum())

    def means(self) -> dict[str, float]:
        return {name: round(total / self.count, 5) for name, total in sorted(self.totals.items())}


@torch.no_grad()
def evaluate_test_split(
    data: str, mseg_path: Path, generator_path: Path, batch_size: int, max_samples: int | None = None
) -> dict[str, Any]:
    """The metrics above over the test split in stored order (the first `max_samples` when given)."""
    mseg, mseg_info = load_model(mseg_path)
    generator = load_model(generator_path).module
    sums = _Sums()
    source = ShardDataSource(data, batch_size, num_workers=0)
    for batch in source.batches("test", 0):
        if max_samples is not None:
            if sums.count >= max_samples:
                break
            batch = {name: value[: max_samples - sums.count] for name, value in batch.items()}
        masked01, target, gt_mask = batch["masked"], batch["unmasked"], batch["mask"]
        masked = to_model_range(masked01)
        mask = mseg.predict_mask(masked, mseg_info.mask_threshold_or_default())
        output01 = from_model_range(generator(masked, mask))
        candidates = {
            "m2unet_composite": composite(output01, masked01, mask),
            "generator_raw": output01,
            "masked_input": masked01,
            "telea_predicted_mask": run_baseline("telea", masked01, mask),
            "telea_ground_truth_mask": run_baseline("telea", masked01, gt_mask),
        }
        for name, image in candidates.items():
            sums.add(f"psnr/{name}", psnr(image, target, reduction="none"))
            sums.add(f"ssim/{name}", ssim(image, target, reduction="none"))
        sums.add("mseg/dice", dice_score(mask, gt_mask))
        sums.add("mseg/pixel_accuracy", pixel_accuracy(mask, gt_mask))
        sums.count += target.shape[0]
    if sums.count == 0:
        raise RuntimeError(f"the test split of {data} is empty")
    means = sums.means()
    report: dict[str, Any] = {"samples": sums.count}
    for key, value in means.items():
        group, name = key.split("/", 1)
        report.setdefault(group, {})[name] = value
    composite_psnr = report["psnr"]["m2unet_composite"]
    report["targets"] = {
        "mseg_dice_at_least_0.95": report["mseg"]["dice"] >= DICE_TARGET,
        "composite_beats_masked_input_psnr": composite_psnr > report["psnr"]["masked_input"],
        "composite_beats_telea_psnr": composite_psnr > report["psnr"]["telea_predicted_mask"],
    }
    return report


def _evaluate_run(args: argparse.Namespace) -> dict[str, Any]:
    """evaluate_test_split on the two models the run in --out wrote."""
    return evaluate_test_split(
        args.data,
        args.out / "mseg" / "mseg.safetensors",
        args.out / "gan" / "generator.safetensors",
        args.batch_size,
        args.max_test_samples or None,
    )


def _evaluate_again(args: argparse.Namespace) -> dict[str, Any]:
    path = args.out / "celeba_cpu_run.json"
    if not path.is_file():
        sys.exit(f"--evaluate-only needs a finished run in {args.out} (no {path.name})")
    report = json.loads(path.read_text())
    started = time.monotonic()
    test = _evaluate_run(args)
    test["evaluation_seconds"] = round(time.monotonic() - started, 1)
    report[f"test_{args.max_test_samples or 'all'}"] = test
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(test, indent=2))
    print(f"updated {path}")
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True, help="dataset folder (m2u-make-dataset layout)")
    parser.add_argument("--out", required=True, type=Path, help="run folder (must not hold a run yet)")
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="wall clock for everything")
    parser.add_argument("--mseg-share", type=float, default=0.25, help="share of the training time for M-Seg")
    parser.add_argument(
        "--eval-reserve-minutes", type=float, default=3.0, help="kept for the final evaluation"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--width-multiplier", type=float, default=0.25, help="generator width multiplier")
    parser.add_argument(
        "--mseg-base-channels", type=int, default=8, help="M-Seg width (16 is the default model)"
    )
    parser.add_argument(
        "--max-test-samples",
        type=int,
        default=0,
        help="evaluate the first N test samples (0: the whole split)",
    )
    parser.add_argument("--perceptual-weight", type=float, default=0.0)
    parser.add_argument("--vgg-weights", default="imagenet")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--val-every", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="no training: evaluate the run already in --out again (e.g. on the whole test split) and add the "
        "result to RUN/celeba_cpu_run.json under test_<N or all>",
    )
    args = parser.parse_args(argv)
    if not 0 < args.mseg_share < 1:
        parser.error("--mseg-share must be in (0, 1)")
    torch.set_num_threads(args.threads)
    if args.evaluate_only:
        return _evaluate_again(args)

    started = time.monotonic()
    train_seconds = max(1.0, (args.budget_minutes - args.eval_reserve_minutes) * 60)
    common: dict[str, Any] = {
        "data": args.data,
        "batch_size": args.batch_size,
        "epochs": 10_000,  # the wall clock decides
        "val_every": args.val_every,
        "val_batches": 5,
        "grid_every": args.val_every,
        "checkpoint_every": args.val_every,
        "log_every": 10,
        "seed": args.seed,
        "num_workers": args.num_workers,
        "evaluate_test": False,  # done once below, on both models together
        "progress": sys.stderr.isatty(),
    }
    optimizer = OptimizerConfig(learning_rate=args.lr)
    mseg_results = train_mseg(
        MSegTrainConfig(
            out=str(args.out / "mseg"),
            model=MSegConfig(base_channels=args.mseg_base_channels),
            max_seconds=train_seconds * args.mseg_share,
            optimizer=optimizer,
            **common,
        )
    )
    gan_seconds = max(1.0, train_seconds - (time.monotonic() - started))
    gan_results = train_gan(
        GanTrainConfig(
            out=str(args.out / "gan"),
            generator=GeneratorConfig(width_multiplier=args.width_multiplier),
            mask_source="mseg",
            mseg_checkpoint=str(args.out / "mseg" / "mseg.safetensors"),
            perceptual_weight=args.perceptual_weight,
            vgg_weights=args.vgg_weights,
            max_seconds=gan_seconds,
            optimizer=optimizer,
            **common,
        )
    )
    evaluation_started = time.monotonic()
    test = _evaluate_run(args)
    report = {
        "command": " ".join(["benchmarks/celeba_cpu_run.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {
            key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
        },
        "mseg_training": {k: mseg_results[k] for k in ("steps", "epoch", "seconds", "stop_reason", "val")},
        "gan_training": {k: gan_results[k] for k in ("steps", "epoch", "seconds", "stop_reason", "val")},
        "evaluation_seconds": round(time.monotonic() - evaluation_started, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "test": test,
    }
    path = args.out / "celeba_cpu_run.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["test"], indent=2))
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
