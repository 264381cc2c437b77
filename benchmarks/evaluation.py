"""Evaluation-side benchmark: what m2u-eval / m2u-unmask cost per image at the paper's size (256x256).

    .venv/bin/python benchmarks/evaluation.py            # full run (~2-4 min on 2 CPU cores)
    .venv/bin/python benchmarks/evaluation.py --quick    # tiny smoke run at 64 px, not for the record

Writes benchmarks/results/evaluation.json:
- the two-stage model (M-Seg + CARU2-Net + composite, paper-size default configs, untrained weights: the cost does
  not depend on them) at batch 1: median seconds in PyTorch and in onnxruntime (the `m2u-export onnx` files),
  and the largest |onnxruntime - torch| difference;
- the cost per image of each metric and baseline in m2u-eval: PSNR+SSIM (both variants), LPIPS-AlexNet (random
  weights here, same cost as the published ones), identity (HOG detector + 2 embeddings by dlib's ResNet run in
  PyTorch, one image: the batched figure is below), OpenCV Telea and
  Navier-Stokes inpainting on a synthetic masked face;
- `identity_in_m2u_eval` (issue 28): what the identity metric adds to MetricSuite for a batch of 8 CelebA faces at
  128x128 (m2u-eval's evaluation size for the shipped model) scored for 7 methods, as m2u-eval's rows are, in
  interleaved rounds: the suite without identity (PSNR/SSIM/L1 and LPIPS-AlexNet, both variants; FID's Inception
  weights are not available offline), with identity as m2u computes it (dlib's ResNet in PyTorch, batched), and
  with identity through dlib's own per-face descriptor (`IdentityConfig(engine="dlib")`: the cost before issue 28).
  The ratios are medians of within-round ratios, so the load of a shared machine cancels out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from m2u.datasets.synthetic import make_synthetic_sample
from m2u.evaluation.baselines import run_baseline
from m2u.evaluation.identity import IdentityConfig, IdentityEmbedder
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
CELEBA = (
    Path(os.environ.get("M2U_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "faces" / "celeba"
)


def _identity_cost(rounds: int, faces: int = 8, size: int = 128) -> dict[str, Any]:
    """Seconds per batch of `faces` images x 7 methods through MetricSuite without identity, with it, and with the
    per-face dlib descriptor; medians of within-round ratios."""
    import cv2

    from m2u.evaluation.suite import MetricsConfig, MetricSuite

    files = sorted(CELEBA.glob("*.jpg"))[:faces]
    if len(files) < faces:
        return {"unavailable": f"needs {faces} CelebA photos in {CELEBA}"}
    crops = [
        cv2.resize(cv2.imread(str(f))[:, :, ::-1], (size, size), interpolation=cv2.INTER_AREA) for f in files
    ]
    target = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    mask = torch.zeros(faces, 1, size, size)
    mask[:, :, size * 9 // 16 : size * 15 // 16, size // 4 : size * 3 // 4] = 1
    blanked = target * (1 - mask) + 0.5 * mask
    methods = {
        "raw": torch.nn.functional.avg_pool2d(target, 3, 1, 1),
        "composite": target * (1 - mask) + torch.nn.functional.avg_pool2d(target, 3, 1, 1) * mask,
        "masked_input": blanked,
        "telea": run_baseline("telea", blanked, mask),
        "telea_gt_mask": run_baseline("telea", blanked, mask),
        "navier_stokes": run_baseline("navier_stokes", blanked, mask),
        "navier_stokes_gt_mask": run_baseline("navier_stokes", blanked, mask),
    }
    lpips = LPIPS(build_lpips_trunk("alex"))  # random weights: the published ones cost the same
    try:
        embedders = {e: IdentityEmbedder(IdentityConfig(engine=e)) for e in ("torch", "dlib")}
    except MetricUnavailable as exc:
        return {"unavailable": exc.reason}

    def one_batch(identity) -> float:
        suite = MetricSuite(
            MetricsConfig(enable_fid=False, enable_identity=identity is not None),
            lpips=lpips,
            identity=identity,
        )
        start = time.perf_counter()
        for name, pred in methods.items():
            suite.update(name, pred, target, mask)
        suite.summary()
        return time.perf_counter() - start

    one_batch(embedders["torch"])  # warm-up: model loading, first oneDNN kernels
    times: dict[str, list[float]] = {"without_identity": [], "identity_torch": [], "identity_dlib": []}
    for _ in range(rounds):
        times["without_identity"].append(one_batch(None))
        times["identity_torch"].append(one_batch(embedders["torch"]))
        times["identity_dlib"].append(one_batch(embedders["dlib"]))
    rest = times["without_identity"]
    added = {
        k: [t - r for t, r in zip(times[k], rest, strict=True)] for k in ("identity_torch", "identity_dlib")
    }
    ratio = lambda a, b: round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 3)  # noqa: E731
    return {
        "faces": faces,
        "methods": len(methods),
        "image_size": size,
        "rounds": rounds,
        "torch_threads": torch.get_num_threads(),
        "other_metrics": "PSNR, SSIM, L1, LPIPS-AlexNet, each whole-image and masked-region (FID unavailable offline)",
        "seconds_per_batch_median": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "identity_added_s_per_image": {k: round(statistics.median(v) / faces, 4) for k, v in added.items()},
        # The issue's target: identity costs at most as much as the other metrics together (ratio <= 1).
        "identity_over_other_metrics": ratio(added["identity_torch"], rest),
        "identity_over_other_metrics_before": ratio(added["identity_dlib"], rest),
        "speedup_vs_dlib_descriptor": ratio(added["identity_dlib"], added["identity_torch"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="64 px, small models, 1 repeat (smoke run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of the identity measurement"
    )
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
        per_image["identity"] = median_seconds(lambda: embedder.compare(out_u8, gt_u8), repeats)
    except MetricUnavailable as exc:
        result["identity_unavailable"] = exc.reason
    for name in ("telea", "navier_stokes"):
        per_image[f"baseline_{name}"] = median_seconds(lambda n=name: run_baseline(n, masked, mask), repeats)
    result["per_image_s"] = per_image
    # One intra-op thread: the per-core cost (two threads on a loaded shared machine wait on each other).
    torch.set_num_threads(1)
    result["identity_in_m2u_eval"] = _identity_cost(1 if args.quick else args.rounds)
    torch.set_num_threads(args.threads)
    print(json.dumps(result["identity_in_m2u_eval"]), flush=True)
    result["load_average_1_5_15_at_end"] = list(os.getloadavg())

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
