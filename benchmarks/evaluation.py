"""Evaluation-side benchmark: what m2u-eval / m2u-unmask cost per image at the paper's size (256x256).

    .venv/bin/python benchmarks/evaluation.py            # full run (~2-4 min on 2 CPU cores)
    .venv/bin/python benchmarks/evaluation.py --quick    # tiny smoke run at 64 px, not for the record

Writes benchmarks/results/evaluation.json:
- the two-stage model (M-Seg + CARU2-Net + composite, paper-size default configs, untrained weights: the cost does
  not depend on them) at batch 1: median seconds in PyTorch and in onnxruntime (the `m2u-export onnx` files),
  and the largest |onnxruntime - torch| difference;
- the cost per image of each metric and baseline in m2u-eval: PSNR+SSIM (both variants), LPIPS-AlexNet (random
  weights here, same cost as the published ones), dlib identity (detector + 2 embeddings), OpenCV Telea and
  Navier-Stokes inpainting on a synthetic masked face.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2u.datasets.synthetic import make_synthetic_sample
from m2u.evaluation.baselines import run_baseline
from m2u.evaluation.identity import IdentityEmbedder
from m2u.evaluation.lpips import LPIPS, build_lpips_trunk
from m2u.evaluation.pixel import (
    l1_error,
    masked_l1,
    masked_psnr,
    masked_ssim,
    psnr_per_image,
    ssim_per_image,
)
from m2u.evaluation.weights import MetricUnavailable
from m2u.inference.export import ExportConfig, export_onnx
from m2u.inference.restore import restore_batch
from m2u.training.flops import count_macs, count_params
from m2u.training.imagespace import to_uint8_images
from m2u.training.models import CARU2Net, GeneratorConfig, MSeg, MSegConfig
from m2u.training.models.mseg import DEFAULT_MASK_THRESHOLD

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks/timing.py
from timing import median_seconds

RESULTS = Path(__file__).resolve().parent / "results" / "evaluation.json"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="64 px, small models, 1 repeat (smoke run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-o", "--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    size = 64 if args.quick else 256
    repeats = 1 if args.quick else args.repeats
    mseg = MSeg(MSegConfig(base_channels=4, levels=3) if args.quick else MSegConfig()).eval()
    generator = CARU2Net(GeneratorConfig(width_multiplier=0.125) if args.quick else GeneratorConfig()).eval()

    sample = make_synthetic_sample(size, seed=0)
    to_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255  # noqa: E731
    masked, truth = to_tensor(sample.masked), to_tensor(sample.unmasked)
    mask = torch.from_numpy(sample.mask > 127)[None, None].float()

    result: dict[str, Any] = {
        "image_size": size,
        "quick": args.quick,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        # Other jobs on a shared machine slow every figure down: the load when the run started says how much.
        "load_average_1_5_15_at_start": list(os.getloadavg()),
        "mseg_params": count_params(mseg),
        "generator_params": count_params(generator),
        "mseg_gmacs": count_macs(mseg, [(1, 3, size, size)]) / 1e9,
        "generator_gmacs": count_macs(generator, [(1, 3, size, size), (1, 1, size, size)]) / 1e9,
        "macs_note": "multiply-accumulates; FLOPs = 2 x MACs",
    }
    result["two_stage_torch_s"] = median_seconds(
        lambda: restore_batch(mseg, generator, masked, DEFAULT_MASK_THRESHOLD), repeats
    )

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        config = ExportConfig(image_size=size)
        m_res = export_onnx(mseg, Path(tmp) / "mseg.onnx", config)
        g_res = export_onnx(generator, Path(tmp) / "generator.onnx", config)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        ms = ort.InferenceSession(str(m_res.path), options, providers=["CPUExecutionProvider"])
        gs = ort.InferenceSession(str(g_res.path), options, providers=["CPUExecutionProvider"])
        x = (masked * 2 - 1).numpy()

        def run_onnx() -> None:
            (logits,) = ms.run(None, {"image": x})
            pred = (1 / (1 + np.exp(-logits)) >= 0.5).astype(np.float32)
            gs.run(None, {"masked": x, "mask": pred})

        result["two_stage_onnxruntime_s"] = median_seconds(run_onnx, repeats)
        result["onnx_max_abs_diff"] = {"mseg": m_res.max_abs_diff, "generator": g_res.max_abs_diff}

    per_image: dict[str, float] = {}
    per_image["psnr_ssim_l1_both_variants"] = median_seconds(
        lambda: (
            psnr_per_image(masked, truth),
            ssim_per_image(masked, truth),
            masked_psnr(masked, truth, mask),
            masked_ssim(masked, truth, mask),
            l1_error(masked, truth),
            masked_l1(masked, truth, mask),
        ),
        repeats,
    )
    lpips = LPIPS(build_lpips_trunk("alex"))
    with torch.no_grad():
        per_image["lpips_alex_both_variants"] = median_seconds(
            lambda: (lpips(masked, truth), lpips.masked(masked, truth, mask)), repeats
        )
    try:
        embedder = IdentityEmbedder()
        out_u8, gt_u8 = to_uint8_images(masked), to_uint8_images(truth)
        per_image["identity_dlib"] = median_seconds(lambda: embedder.compare(out_u8, gt_u8), repeats)
    except MetricUnavailable as exc:
        result["identity_unavailable"] = exc.reason
    for name in ("telea", "navier_stokes"):
        per_image[f"baseline_{name}"] = median_seconds(lambda n=name: run_baseline(n, masked, mask), repeats)
    result["per_image_s"] = per_image
    result["load_average_1_5_15_at_end"] = list(os.getloadavg())

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
