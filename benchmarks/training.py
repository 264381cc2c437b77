"""Training-side benchmark: CARU2-Net size and cost, forward latency, G+D training throughput.

    .venv/bin/python benchmarks/training.py                  # full run (~10-15 min on 2 shared CPU cores)
    .venv/bin/python benchmarks/training.py --quick          # tiny smoke run (well under a minute), not for the record

Writes benchmarks/results/training.json:
- parameters of G, D, M-Seg; multiply-accumulates (MACs; FLOPs = 2 x MACs) of G at 1x4x256x256 and of D;
- generator forward latency at 256x256, batch 1 (median), in fp32 and channels_last; bf16 autocast against
  fp32 at 64x64 (on CPUs without AVX512-BF16/AMX, bf16 was measured ~100x slower than fp32);
- a full GAN training step (D update, then G with LSGAN + reconstruction + VGG19 perceptual) in images/s at
  64, 128 and 256 (the 256 case is 1 measured step after 1 warm-up), and at 64 the channels_last ratio (and
  bf16 with --bf16-train). The perceptual VGG19 has random weights here (no ImageNet file is reachable on
  this machine): same cost as the real one.
- `training_options`: the G+D step (the release recipe's: generator width x0.25, no perceptual term, batch 8)
  at 128x128 for each speed option, as ratios against fp32 measured in the same run, in interleaved rounds:
  channels_last, bf16 autocast (where the CPU has native bf16, or with --bf16-train), bf16 + channels_last,
  torch.compile, and one intra-op thread instead of --threads; with what `--precision auto` resolves to on this
  machine (m2u.training.device.resolve_precision). Only this part: --options-only.

Full run of the options part, on otherwise idle cores (~10 min):
    .venv/bin/python benchmarks/training.py --options-only --options-rounds 5 --out benchmarks/results/training_options.json
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

import torch

from m2u.training.config import GanTrainConfig
from m2u.training.device import cpu_native_bf16, resolve_precision
from m2u.training.distributed import DistributedContext
from m2u.training.flops import count_macs, count_params, ptflops_macs
from m2u.training.gan_task import GanTask
from m2u.training.models import CARU2Net, GeneratorConfig, MSeg, PatchDiscriminator
from m2u.training.rng import seed_everything

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks/timing.py
from timing import median_seconds

RESULTS = Path(__file__).resolve().parent / "results" / "training.json"


OPTIONS = ("fp32", "channels_last", "bf16", "bf16_channels_last", "compile", "one_thread")


def _option_task(option: str, out: str, batch_size: int, generator_config: GeneratorConfig) -> GanTask:
    config = GanTrainConfig(
        out=out,
        batch_size=batch_size,
        generator=generator_config,
        mask_source="gt",
        vgg_weights="random",
        perceptual_weight=0.0,  # as the release recipe trains
        precision="bf16" if option.startswith("bf16") else "fp32",
        channels_last=option.endswith("channels_last"),
        compile=option == "compile",
    )
    return GanTask(config, torch.device("cpu"), DistributedContext())


def training_options(
    size: int,
    batch_size: int,
    rounds: int,
    threads: int,
    generator_config: GeneratorConfig,
    with_bf16: bool,
    chosen: tuple[str, ...] = OPTIONS,
) -> dict[str, Any]:
    """Seconds per G+D step for each option (median over interleaved rounds) and its speed-up over fp32."""
    import time

    options = ["fp32", *(o for o in chosen if o != "fp32" and (with_bf16 or not o.startswith("bf16")))]
    unmasked = torch.rand(batch_size, 3, size, size)
    mask = torch.zeros(batch_size, 1, size, size)
    mask[:, :, size // 2 :] = 1
    batch = {"masked": unmasked * (1 - mask) + 0.5 * mask, "unmasked": unmasked, "mask": mask}
    times: dict[str, list[float]] = {o: [] for o in options}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as out:
        tasks = {}
        for option in options:
            seed_everything(0)
            try:
                tasks[option] = _option_task(option, out, batch_size, generator_config)
                torch.set_num_threads(1 if option == "one_thread" else threads)
                tasks[option].train_step(batch, 0)  # warm-up (and torch.compile's compilation)
            except Exception as error:  # noqa: BLE001 - e.g. no C++ compiler for torch.compile
                errors[option] = f"{type(error).__name__}: {str(error)[:200]}"
                tasks.pop(option, None)
            finally:
                torch.set_num_threads(threads)
        for _ in range(rounds):
            for option, task in tasks.items():
                torch.set_num_threads(1 if option == "one_thread" else threads)
                start = time.perf_counter()
                task.train_step(batch, 0)
                times[option].append(time.perf_counter() - start)
                torch.set_num_threads(threads)
    import statistics

    result: dict[str, Any] = {"size": size, "batch": batch_size, "rounds": rounds, "threads": threads}
    fp32 = statistics.median(times["fp32"]) if times["fp32"] else None
    for option in options:
        if option in errors:
            result[option] = {"error": errors[option]}
            continue
        median = statistics.median(times[option])
        result[option] = {
            "seconds_per_step": round(median, 4),
            "speedup_vs_fp32": round(fp32 / median, 3) if fp32 else None,
        }
    if not with_bf16 and "bf16" in chosen:
        result["bf16"] = {"skipped": "no native bf16 on this CPU (pass --bf16-train to time it anyway)"}
    result["cpu_native_bf16"] = cpu_native_bf16()
    result["precision_auto_resolves_to"] = resolve_precision("auto", torch.device("cpu"))
    return result


def forward_latency(size: int, repeats: int, mode: str, generator_config: GeneratorConfig) -> float:
    seed_everything(0)
    model = CARU2Net(generator_config).eval()
    masked, mask = torch.rand(1, 3, size, size) * 2 - 1, torch.ones(1, 1, size, size)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16")
    if mode == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        masked = masked.contiguous(memory_format=torch.channels_last)
        mask = mask.contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.no_grad(), autocast:
            model(masked, mask)

    return median_seconds(run, repeats)


def train_throughput(
    size: int, batch_size: int, steps: int, mode: str, generator_config: GeneratorConfig
) -> dict[str, float]:
    seed_everything(0)
    with tempfile.TemporaryDirectory() as out:
        config = GanTrainConfig(
            out=out,
            batch_size=batch_size,
            generator=generator_config,
            mask_source="gt",
            vgg_weights="random",
            precision="bf16" if mode == "bf16" else "fp32",
            channels_last=mode == "channels_last",
        )
        task = GanTask(config, torch.device("cpu"), DistributedContext())
        unmasked = torch.rand(batch_size, 3, size, size)
        mask = torch.zeros(batch_size, 1, size, size)
        mask[:, :, size // 2 :] = 1
        batch = {"masked": unmasked * (1 - mask) + 0.5 * mask, "unmasked": unmasked, "mask": mask}
        seconds = median_seconds(lambda: task.train_step(batch, 0), repeats=steps)
    return {"seconds_per_step": round(seconds, 3), "images_per_second": round(batch_size / seconds, 3)}


# --quick's comparison: no torch.compile (its compilation alone takes minutes) unless --options names it.
QUICK_OPTIONS = ("fp32", "channels_last")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options; --quick's defaults (1 round, 1 step, fp32 and channels_last only) where none was given."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sizes", default="64,128,256")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="measured training steps (after 1 warm-up) below 256 (default 2; 1 with --quick)",
    )
    parser.add_argument("--latency-repeats", type=int, default=None, help="default 3; 1 with --quick")
    parser.add_argument(
        "--bf16-train",
        action="store_true",
        help="also time a bf16 training step (very slow without native bf16)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny widths and sizes, 1 round, options fp32,channels_last only: a smoke test, not a result",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--options-size", type=int, default=128, help="size of the speed-option comparison")
    parser.add_argument(
        "--options-width", type=float, default=0.25, help="generator width of that comparison"
    )
    parser.add_argument(
        "--options-rounds",
        type=int,
        default=None,
        help="interleaved rounds of that comparison (default 3; 1 with --quick)",
    )
    parser.add_argument("--options-only", action="store_true", help="only the speed-option comparison")
    parser.add_argument(
        "--options",
        default=None,
        help=f"options compared (of {','.join(OPTIONS)}; default all, {','.join(QUICK_OPTIONS)} with --quick)",
    )
    args = parser.parse_args(argv)
    if args.options is None:
        args.options = ",".join(QUICK_OPTIONS if args.quick else OPTIONS)
    if args.options_rounds is None:
        args.options_rounds = 1 if args.quick else 3
    if args.steps is None:
        args.steps = 1 if args.quick else 2
    if args.latency_repeats is None:
        args.latency_repeats = 1 if args.quick else 3
    args.options = tuple(o for o in args.options.split(",") if o)
    unknown = sorted(set(args.options) - set(OPTIONS))
    if unknown:
        parser.error(f"--options: unknown {unknown}; choose from {','.join(OPTIONS)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.options_only:
        return _options_main(args, argv)

    generator_config = GeneratorConfig(width_multiplier=0.125) if args.quick else GeneratorConfig()
    sizes = [32] if args.quick else [int(s) for s in args.sizes.split(",")]
    latency_size = 32 if args.quick else 256
    batch_size = 2 if args.quick else args.batch_size
    results: dict[str, Any] = {
        "quick": args.quick,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        # The machine is shared: a load above the core count slows every figure below.
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "generator_config": generator_config.to_dict(),
        "params": {
            "generator": count_params(CARU2Net(generator_config)),
            "discriminator": count_params(PatchDiscriminator()),
            "mseg": count_params(MSeg()),
        },
    }
    g_macs = count_macs(
        CARU2Net(generator_config), [(1, 3, latency_size, latency_size), (1, 1, latency_size, latency_size)]
    )
    d_macs = count_macs(PatchDiscriminator(), [(1, 3, latency_size, latency_size)])
    results["cost"] = {
        "input": f"1x4x{latency_size}x{latency_size}",
        "convention": "MACs (multiply-accumulates, as thop/fvcore and the paper's 42.53 'GFLOPs'); FLOPs = 2 x MACs",
        "generator_gmacs": round(g_macs / 1e9, 3),
        "generator_gflops_2x": round(2 * g_macs / 1e9, 3),
        "discriminator_gmacs": round(d_macs / 1e9, 3),
    }
    # A counter the literature uses, beside ours (None when ptflops is not installed).
    g_ptflops = ptflops_macs(
        CARU2Net(generator_config), [(1, 3, latency_size, latency_size), (1, 1, latency_size, latency_size)]
    )
    results["cost"]["generator_ptflops_gmacs"] = None if g_ptflops is None else round(g_ptflops / 1e9, 3)
    print(json.dumps(results, indent=2), flush=True)

    # fp32 and channels_last at the paper's size. bf16 at 64 only: CPUs without AVX512-BF16/AMX (this one)
    # run bf16 convolutions on a slow reference path (~100x fp32), which at 256 would take minutes per forward.
    latency: dict[str, Any] = {"size": latency_size, "batch": 1}
    for mode in ("fp32", "channels_last"):
        latency[mode] = round(forward_latency(latency_size, args.latency_repeats, mode, generator_config), 4)
        print(f"forward {latency_size}^2 batch 1 {mode}: {latency[mode]} s", flush=True)
    latency["channels_last_speedup"] = round(latency["fp32"] / latency["channels_last"], 3)
    bf16_size = sizes[0]
    small_fp32 = forward_latency(bf16_size, args.latency_repeats, "fp32", generator_config)
    small_bf16 = forward_latency(bf16_size, 2, "bf16", generator_config)
    latency[f"fp32_at_{bf16_size}"] = round(small_fp32, 4)
    latency[f"bf16_at_{bf16_size}"] = round(small_bf16, 4)
    latency[f"bf16_speedup_at_{bf16_size}"] = round(small_fp32 / small_bf16, 3)
    latency["cpu_bf16_native"] = cpu_native_bf16()
    print(f"forward {bf16_size}^2 batch 1 fp32 {small_fp32:.4f} s, bf16 {small_bf16:.4f} s", flush=True)
    results["forward_latency_s"] = latency

    throughput: dict[str, Any] = {}
    for size in sizes:
        steps = 1 if size >= 256 else args.steps
        throughput[str(size)] = {"batch": batch_size, "measured_steps": steps}
        throughput[str(size)].update(train_throughput(size, batch_size, steps, "fp32", generator_config))
        print(f"train step {size}^2 batch {batch_size} fp32: {throughput[str(size)]}", flush=True)
    compare_size = sizes[0]
    for mode in ("channels_last", "bf16") if args.bf16_train else ("channels_last",):
        measured = train_throughput(compare_size, batch_size, args.steps, mode, generator_config)
        fp32 = throughput[str(compare_size)]["seconds_per_step"]
        throughput[f"{compare_size}_{mode}"] = {
            **measured,
            "speedup_vs_fp32": round(fp32 / measured["seconds_per_step"], 3),
        }
        print(f"train step {compare_size}^2 {mode}: {throughput[f'{compare_size}_{mode}']}", flush=True)
    results["gan_train_step"] = throughput
    if args.options:
        with_bf16 = cpu_native_bf16() or args.bf16_train
        options_size = 32 if args.quick else args.options_size
        options_width = 0.125 if args.quick else args.options_width
        results["training_options"] = training_options(
            options_size, batch_size, args.options_rounds, args.threads,
            GeneratorConfig(width_multiplier=options_width), with_bf16, args.options,
        )  # fmt: skip
        print(f"training options: {results['training_options']}", flush=True)
    results["command"] = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])

    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


def _options_main(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    size = 32 if args.quick else args.options_size
    width = 0.125 if args.quick else args.options_width
    batch = 2 if args.quick else args.batch_size
    results: dict[str, Any] = {
        "quick": args.quick,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        "generator_width_multiplier": width,
    }
    with_bf16 = cpu_native_bf16() or args.bf16_train
    results["training_options"] = training_options(
        size,
        batch,
        args.options_rounds,
        args.threads,
        GeneratorConfig(width_multiplier=width),
        with_bf16,
        args.options,
    )
    results["command"] = " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])
    results["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(results["training_options"], indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
