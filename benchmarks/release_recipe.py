"""The release recipe: one command builds the CelebA dataset, trains M-Seg and the generator, evaluates them on the
identity-disjoint test split and writes the shipped model (fp16 safetensors + model card) into ONE package folder.

    .venv/bin/python benchmarks/release_recipe.py --faces ../shared/faces/celeba --work runs/release

Every stage is resumable: run the same command again (after a kill, or in pieces with --stop-after) and finished
stages are skipped, an interrupted training continues from its last checkpoint (m2u-train --resume semantics).

Budget (2 cores, otherwise idle; the figures behind it are benchmarks/results/celeba_cpu_run.json and
training.json): at 128x128 and batch 8, M-Seg at 8 base channels takes about 0.43 s a step and reached Dice 0.984
in 946 steps; the generator at width x0.25 takes about 2.5 s a G+D step and was still improving at 485 steps
(+3.8 dB over Telea). So: the dataset (12,000 photos, about 3-5 min), M-Seg 1,500 steps (about 11 min), the GAN
2,200 steps (about 92 min) with the learning rate divided by 10 at 75 % and 90 % of the steps, evaluation about
5 min: under 2 hours in all. The generator is narrower than the paper's (x0.25): say so wherever its figures
appear (the model card does). Change --gan-steps / --width-multiplier / --size after the coordinator's sweep.

A short sweep on one shared dataset (each piece trains and evaluates on 500 test samples, no package written):

    .venv/bin/python benchmarks/release_recipe.py --work runs/sweep/data-only --data runs/sweep/celeba128 --stop-after dataset
    for w in 0.25 0.375 0.5; do .venv/bin/python benchmarks/release_recipe.py --work runs/sweep/w$w \
        --data runs/sweep/celeba128 --width-multiplier $w --mseg-steps 800 --gan-steps 400 \
        --max-test-samples 500 --no-identity --stop-after evaluate; done

Outputs: WORK/data (dataset), WORK/mseg, WORK/gan (runs), WORK/eval (m2u-eval report), WORK/release.json (the
measured figures) and PACKAGE/ (default WORK/package): mseg.safetensors, generator.safetensors (fp16), card.json,
MODEL_CARD.md. The model shipped with m2u (inference/pretrained/m2unet-celeba-128) is replaced only with
--install, which copies PACKAGE/ there once it is complete.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from m2u.inference.pretrained import GENERATOR_FILE, MSEG_FILE

REPO = Path(__file__).resolve().parents[1]
STAGES = ("dataset", "mseg", "gan", "evaluate", "package")


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def build_dataset(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    stats = data / "stats.json"
    if not stats.is_file():
        command = [_bin("m2u-make-dataset"), str(args.faces), "-o", str(data), "--size", str(args.size),
                   "--split-by", "identity", "--identity-pattern", "{identity}_{id}.jpg",
                   "--workers", str(args.workers), "--seed", str(args.seed)]  # fmt: skip
        if args.limit:
            command += ["--limit", str(args.limit)]
        print("$", shlex.join(command), flush=True)
        subprocess.run(command, check=True)
    else:
        from m2u.datasets.layout import dataset_render_version
        from m2u.masking.render import RENDER_VERSION

        drawn = dataset_render_version(data)
        if drawn is not None and drawn != RENDER_VERSION:
            # Kept (the run's stages were trained on it), but said: a rerun after an upgrade trains on older masks.
            print(
                f"note: {data} was drawn by mask engine version {drawn}, and this m2u draws version {RENDER_VERSION}: "
                "the models train on the older masks (a new --work or --data builds with this engine)",
                flush=True,
            )
    return json.loads(stats.read_text())


def _finished(run: Path, steps: int) -> dict[str, Any] | None:
    metrics = run / "metrics.json"
    if metrics.is_file():
        results = json.loads(metrics.read_text())
        if results.get("steps", 0) >= steps:
            return results
    return None


def _common(
    args: argparse.Namespace,
    data: Path,
    run: Path,
    steps: int,
    lr: float | None = None,
    decay_at: tuple[float, ...] = (0.75, 0.9),
) -> dict[str, Any]:
    from m2u.datasets.augment import AugmentConfig
    from m2u.training.config import OptimizerConfig

    milestones = tuple(sorted({max(1, round(steps * f)) for f in decay_at}))
    return {
        "data": str(data),
        "out": str(run),
        "batch_size": args.batch_size,
        "epochs": 10_000,  # the step count decides
        "max_steps": steps,
        "optimizer": OptimizerConfig(learning_rate=args.lr if lr is None else lr, milestones=milestones),
        "val_every": args.val_every,
        "val_batches": 5,
        "grid_every": args.val_every,
        "checkpoint_every": args.checkpoint_every,
        "log_every": 10,
        "seed": args.seed,
        "num_workers": 0,  # on two cores a loader process competes with the two PyTorch threads
        "precision": args.precision,
        "resume": (run / "checkpoints" / "last.pt").exists(),
        "progress": sys.stderr.isatty(),
        "evaluate_test": False,  # the evaluate stage does it once, with the baselines
        "recipe": args.command,
        "max_seconds": args.max_seconds,
        "augment": AugmentConfig(enabled=args.augment, low_res=args.low_res),
    }


def _init_weights(args: argparse.Namespace, files: dict[str, str]) -> dict[str, str]:
    """--init-from PACKAGE: the networks start from that model package's files (fine-tuning)."""
    if not args.init_from:
        return {}
    return {name: str(Path(args.init_from) / file) for name, file in files.items()}


def _unfinished(results: dict[str, Any], steps: int, name: str) -> bool:
    """True (and says so) when a training piece stopped before its steps (--max-seconds): run again to go on."""
    done = int(results.get("steps", 0))
    if done < steps:
        print(f"{name}: {done} of {steps} steps; run the same command again to continue", flush=True)
        return True
    return False


def _with_starts(config: dict[str, Any], run: Path) -> dict[str, Any]:
    """A run's saved config with, under "init_from", what each network it fine-tuned records of its start (the file
    and its SHA-256, read when training began: the card names the file by its digest, since --install may have
    replaced the package at that path since)."""
    from m2u.training.checkpoint import read_model_info

    starts = {}
    for network in config.get("init_weights") or {}:
        path = run / f"{network}.safetensors"
        start = read_model_info(path).provenance.get("init_from") if path.is_file() else None
        if isinstance(start, dict):
            starts[network] = start
    return {**config, "init_from": starts} if starts else config


def _kept_config(results: dict[str, Any]) -> dict[str, Any]:
    """For a network kept from --init-from (no run folder): its architecture, read from the model file, under the
    name its training config gives it ("generator"; "model" for M-Seg), and the provenance the file records (the
    card names the recipe that trained it)."""
    if "kept" not in results:
        return {}
    import dataclasses

    from m2u.training.checkpoint import load_model

    model, info = load_model(results["kept"])
    name = "generator" if Path(results["kept"]).name == GENERATOR_FILE else "model"
    return {
        name: dataclasses.asdict(model.config),
        "kept_from": results["kept"],
        "kept_provenance": dict(info.provenance) if isinstance(info.provenance, dict) else {},
    }


def train_mseg_stage(args: argparse.Namespace, data: Path, run: Path) -> dict[str, Any]:
    from m2u.training.config import MSegTrainConfig
    from m2u.training.models import MSegConfig
    from m2u.training.trainer import train_mseg

    if args.mseg_steps == 0:
        # Fine-tuning the generator alone: the M-Seg of --init-from is kept as it is (and frozen for the GAN).
        if not args.init_from or args.mseg_soup_steps:
            raise SystemExit(
                "--mseg-steps 0 keeps the M-Seg of --init-from: give --init-from, no --mseg-soup-steps"
            )
        return {"steps": 0, "seconds": 0.0, "kept": str(Path(args.init_from) / MSEG_FILE)}
    done = _finished(run, args.mseg_steps)
    if done:
        return done
    config = MSegTrainConfig(
        model=MSegConfig(base_channels=args.mseg_base_channels),
        bare_face_share=args.bare_face_share,
        init_weights=_init_weights(args, {"mseg": MSEG_FILE}),
        **_common(args, data, run, args.mseg_steps),
    )
    return train_mseg(config)


# The soup's second run divides its learning rate by 10 at these fractions of its steps (700 and 1,000 of 1,200).
SOUP_DECAY_AT = (7 / 12, 5 / 6)
SOUP_FILE = "soup.safetensors"


def mseg_soup_stage(
    args: argparse.Namespace, data: Path, first: Path, run: Path
) -> tuple[Path, dict[str, Any]]:
    """--mseg-soup-steps: a second M-Seg run continues from the first (another seed, a lower learning rate), and
    the shipped M-Seg is the uniform average of the two ("model soup"). Measured on the real-mask candidate: the
    continuation alone kept the synthetic Dice (0.9805) but lost the real masks the first run had learned (Dice
    0.873 -> 0.815 on real-mask-seg: 13 crops went to an empty mask), the first run alone had the real masks but
    Dice 0.9798 on the template-mask test split; their average was chosen beforehand (no weight was tuned)."""
    from m2u.training.checkpoint import average_models, save_model
    from m2u.training.config import MSegTrainConfig
    from m2u.training.models import MSegConfig
    from m2u.training.trainer import train_mseg

    soup = run / SOUP_FILE
    done = _finished(run, args.mseg_soup_steps)
    if done is None:
        common = _common(args, data, run, args.mseg_soup_steps, lr=args.mseg_soup_lr, decay_at=SOUP_DECAY_AT)
        config = MSegTrainConfig(
            model=MSegConfig(base_channels=args.mseg_base_channels),
            bare_face_share=args.bare_face_share,
            init_weights={"mseg": str(first)},
            **{**common, "seed": args.seed + 1},
        )
        done = train_mseg(config)
        if _unfinished(done, args.mseg_soup_steps, "M-Seg (the soup's second run)"):
            return soup, done
    # Averaged on every call (two small files): a soup kept from before a continued run would be stale.
    save_model(soup, *average_models([first, run / MSEG_FILE]))
    return soup, done


def train_gan_stage(args: argparse.Namespace, data: Path, mseg: Path, run: Path) -> dict[str, Any]:
    from m2u.datasets.augment import AugmentConfig
    from m2u.training.config import GanTrainConfig
    from m2u.training.models import GeneratorConfig
    from m2u.training.trainer import train_gan

    if args.gan_steps == 0:
        # Fine-tuning M-Seg alone: the generator of --init-from is kept as it is.
        if not args.init_from:
            raise SystemExit("--gan-steps 0 keeps the generator of --init-from: give --init-from")
        return {"steps": 0, "seconds": 0.0, "kept": str(Path(args.init_from) / GENERATOR_FILE)}
    done = _finished(run, args.gan_steps)
    if done:
        return done
    config = GanTrainConfig(
        generator=GeneratorConfig(width_multiplier=args.width_multiplier),
        mask_source="mseg",
        mseg_checkpoint=str(mseg),
        hole_grow_px=args.hole_grow,
        perceptual_weight=args.perceptual_weight,
        vgg_weights=args.vgg_weights,
        init_weights=_init_weights(args, {"generator": GENERATOR_FILE}),
        **{
            **_common(args, data, run, args.gan_steps, lr=args.gan_lr),
            "augment": AugmentConfig(enabled=args.augment and args.gan_augment, low_res=args.low_res),
        },
    )
    return train_gan(config)


def evaluate_stage(args: argparse.Namespace, data: Path, mseg: Path, generator: Path, out: Path) -> dict:
    from m2u.evaluation.evaluator import EvaluateConfig, evaluate
    from m2u.evaluation.suite import MetricsConfig

    metrics_path = out / "metrics.json"
    if metrics_path.is_file():
        return json.loads(metrics_path.read_text())
    metrics = MetricsConfig(enable_lpips=False, enable_fid=False, enable_identity=args.identity)
    config = EvaluateConfig(
        split="test",
        max_samples=args.max_test_samples or None,
        baseline_mask="predicted",
        metrics=metrics,
        paper_size_cost=False,
        progress=sys.stderr.isatty(),
        device="cpu",
    )
    return evaluate(data, mseg, generator, out, config)


def _median_seconds(run, repeats: int = 10) -> float:
    import statistics

    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_latencies(mseg_path: Path, generator_path: Path, size: int) -> dict[str, Any]:
    """Seconds per face (batch 1, M-Seg + generator at `size`) on this CPU: fp32, bf16 autocast where the CPU
    has native bf16, and onnxruntime; a setting that cannot run records why."""
    import tempfile

    import numpy as np

    from m2u.inference.export import ExportConfig, export_onnx
    from m2u.inference.restore import restore_batch
    from m2u.training.checkpoint import load_model
    from m2u.training.device import cpu_native_bf16

    (mseg, mseg_info), (generator, _) = load_model(mseg_path), load_model(generator_path)
    threshold = mseg_info.mask_threshold_or_default()
    image = torch.rand(1, 3, size, size)
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "size": size}
    with torch.no_grad():
        out["cpu fp32"] = _median_seconds(lambda: restore_batch(mseg, generator, image, threshold))
        if cpu_native_bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out["cpu bf16"] = _median_seconds(lambda: restore_batch(mseg, generator, image, threshold))
        else:
            out["cpu bf16"] = "not measured: this CPU has no native bf16"
    try:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as folder:
            sessions = []
            for name, model in (("mseg", mseg), ("generator", generator)):
                path = export_onnx(model, Path(folder) / f"{name}.onnx", ExportConfig(image_size=size)).path
                sessions.append(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
            x = image.numpy() * 2 - 1
            mseg_input = sessions[0].get_inputs()[0].name
            generator_inputs = [i.name for i in sessions[1].get_inputs()]

            def run() -> None:
                logits = sessions[0].run(None, {mseg_input: x})[0]
                mask = (1 / (1 + np.exp(-logits)) >= threshold).astype(np.float32)
                sessions[1].run(None, dict(zip(generator_inputs, (x, mask), strict=True)))

            out["onnxruntime"] = _median_seconds(run)
    except Exception as exc:  # noqa: BLE001 - the figure is optional: say why it is missing
        out["onnxruntime"] = f"not measured: {type(exc).__name__}: {exc}"
    return out


def _real_photo_figures(args: argparse.Namespace, package: Path) -> dict[str, Any] | None:
    """benchmarks/real_mask_seg.py on --real-mask-seg with the packaged model (None when that folder is absent);
    its photo | mask | restored sheet goes to WORK/real-photos.png (research photos: never into the package)."""
    if args.real_mask_seg is None:
        return None
    if not (Path(args.real_mask_seg) / "image").is_dir():
        print(
            f"no labelled real masks at {args.real_mask_seg}: the card gets no real-photo section", flush=True
        )
        return None
    import importlib.util

    spec = importlib.util.spec_from_file_location("real_mask_seg", REPO / "benchmarks" / "real_mask_seg.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    figures = module.main(
        ["--data", str(args.real_mask_seg), "--model", str(package), "--sheet", str(args.work / "real-photos.png"),
         "--json", str(args.work / "real_mask_seg.json"), "--threads", str(args.threads),
         "--detections", str(args.work / "real_detections.json")]
    )  # fmt: skip
    return {k: v for k, v in figures.items() if k not in ("rows", "model")}


def package_folder(args: argparse.Namespace) -> Path:
    """Where the package is written: --package, else WORK/package (never the shipped model: see --install)."""
    return Path(args.package) if args.package else Path(args.work) / "package"


def install_package(package: Path, target: Path) -> Path:
    """Copy a complete package's files over the shipped model's (each file replaced atomically)."""
    import shutil

    from m2u.inference.pretrained import (
        CARD_FILE,
        CARD_JSON,
        CHECKSUMS_FILE,
        GENERATOR_FILE,
        MSEG_FILE,
        checksum_record,
    )

    # checksums.json travels with the weights: the shipped model is verified against it on every load.
    names = (MSEG_FILE, GENERATOR_FILE, CARD_JSON, CARD_FILE, CHECKSUMS_FILE)
    missing = [n for n in names if not (package / n).is_file()]
    if missing:
        raise SystemExit(f"--install: {package} is not a complete package (missing {', '.join(missing)})")
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        temporary = target / f".{name}.installing"
        if (
            name == CHECKSUMS_FILE
        ):  # made anew: the package's record lacks the classifier that ships beside it
            temporary.write_text(checksum_record(target))
        else:
            shutil.copyfile(package / name, temporary)
        temporary.replace(target / name)
    return target


def package_stage(args: argparse.Namespace, report: dict[str, Any]) -> Path:
    from m2u.inference.pretrained import GENERATOR_FILE, MSEG_FILE, write_checksums
    from m2u.inference.pretrained.card import evaluation_section, write_model_card
    from m2u.training.checkpoint import load_model, save_model

    package = package_folder(args)
    package.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, source in (
        (MSEG_FILE, report["files"]["mseg"]),
        (GENERATOR_FILE, report["files"]["generator"]),
    ):
        path = save_model(package / name, *load_model(source), dtype="fp16")
        files[name] = path.stat().st_size
    write_checksums(package)  # verified whenever the shipped model loads
    evaluation = report["evaluation"]
    latency = measure_latencies(package / MSEG_FILE, package / GENERATOR_FILE, report["data"]["size"])
    card = {
        "name": package.name,
        "recipe_command": args.command,
        "m2u_version": report["m2u_version"],
        "data": report["data"],
        "training": report["training"],
        "evaluation": evaluation_section(evaluation, latency=latency),
        "files": files,
    }
    if report.get("also_evaluated"):
        also = report["also_evaluated"]
        card["also_evaluated"] = {"data": also["data"], "evaluation": evaluation_section(also["evaluation"])}
    real = _real_photo_figures(args, package)
    if real:
        card["real_photos"] = real
    total = sum(files.values())
    if total > args.max_package_bytes:
        raise SystemExit(f"the package would hold {total / 1e6:.1f} MB, over --max-package-bytes")
    write_model_card(package, card)
    return package


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--faces", type=Path, default=REPO.parent / "shared" / "faces" / "celeba")
    parser.add_argument("--work", type=Path, required=True, help="work folder (resumable)")
    parser.add_argument(
        "--data", type=Path, default=None, help="dataset folder (default WORK/data; share one across a sweep)"
    )
    parser.add_argument("--package", default=None, help="package folder (default: WORK/package)")
    parser.add_argument(
        "--install",
        action="store_true",
        help="replace the model shipped with m2u (inference/pretrained/m2unet-celeba-128) with the package",
    )
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--limit", type=int, default=0, help="use the first N photos (0: all)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--mseg-steps", type=int, default=1500, help="0 with --init-from: keep that package's M-Seg"
    )
    parser.add_argument("--mseg-base-channels", type=int, default=8)
    parser.add_argument(
        "--bare-face-share",
        type=float,
        default=0.25,
        help="M-Seg sees this share of samples as the bare face with an empty mask (m2u-unmask's decision)",
    )
    parser.add_argument(
        "--mseg-soup-steps",
        type=int,
        default=0,
        help="train a second M-Seg run this long from the first (seed+1) and ship the average of the two",
    )
    parser.add_argument(
        "--mseg-soup-lr",
        type=float,
        default=None,
        help="the soup's second run's learning rate (default: --lr x 0.3)",
    )
    parser.add_argument(
        "--also-evaluate",
        type=Path,
        default=None,
        help="a second dataset (e.g. the template-mask build) whose test split the card reports too",
    )
    parser.add_argument(
        "--gan-steps", type=int, default=2200, help="0 with --init-from: keep that package's generator"
    )
    parser.add_argument("--width-multiplier", type=float, default=0.25)
    parser.add_argument(
        "--hole-grow",
        type=int,
        default=0,
        help="the generator trains on holes grown by a random 0..N px each (GanTrainConfig.hole_grow_px)",
    )
    parser.add_argument("--perceptual-weight", type=float, default=0.0, help="VGG19 term (needs weights)")
    parser.add_argument("--vgg-weights", default="imagenet")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--gan-lr",
        type=float,
        default=None,
        help="the generator's (and discriminator's) learning rate (default: --lr); lower when fine-tuning",
    )
    parser.add_argument("--precision", default="auto", help="auto (bf16 where the CPU has it natively), fp32")
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--max-test-samples", type=int, default=0, help="0: the whole test split")
    parser.add_argument(
        "--no-identity", dest="identity", action="store_false", help="skip the identity cosine (dlib)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-package-bytes", type=int, default=15_000_000)
    parser.add_argument(
        "--real-mask-seg",
        default=None,
        help="labelled real masked crops (image/, mask/; e.g. ../shared/faces/real-mask-seg) for the card's "
        "real-photo section (benchmarks/real_mask_seg.py)",
    )
    parser.add_argument("--stop-after", choices=STAGES, default="package", help="run in pieces")
    parser.add_argument(
        "--init-from",
        default=None,
        help="fine-tune: start M-Seg and the generator from this model package folder",
    )
    parser.add_argument(
        "--augment",
        action="store_true",
        help="train through m2u.datasets.augment (tight crops, camera effects)",
    )
    parser.add_argument(
        "--low-res",
        type=float,
        default=0.0,
        help="with --augment: the share of samples seen at a few dozen pixels (small faces; AugmentConfig.low_res)",
    )
    parser.add_argument(
        "--no-gan-augment",
        dest="gan_augment",
        action="store_false",
        help="with --augment: the generator trains on the pairs as built (M-Seg still through the augmentation)",
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop each training piece after this long (resume later)",
    )
    args = parser.parse_args(argv)
    if args.hole_grow < 0:
        parser.error(f"--hole-grow is a number of pixels >= 0, got {args.hole_grow}")
    if args.mseg_soup_lr is None:
        args.mseg_soup_lr = args.lr * 0.3
    if args.gan_lr is None:
        args.gan_lr = args.lr
    args.command = shlex.join(["benchmarks/release_recipe.py", *(argv if argv is not None else sys.argv[1:])])
    torch.set_num_threads(args.threads)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    data = args.data or work / "data"
    stats = build_dataset(args, data)
    report: dict[str, Any] = {"command": args.command}
    if args.stop_after == "dataset":
        return report
    mseg_results = train_mseg_stage(args, data, work / "mseg")
    if args.stop_after == "mseg" or _unfinished(mseg_results, args.mseg_steps, "M-Seg"):
        return report
    mseg_path = Path(mseg_results.get("kept", work / "mseg" / MSEG_FILE))
    soup_results: dict[str, Any] | None = None
    if args.mseg_soup_steps:
        mseg_path, soup_results = mseg_soup_stage(args, data, mseg_path, work / "mseg-soup")
        if _unfinished(soup_results, args.mseg_soup_steps, "M-Seg (the soup's second run)"):
            return report
    gan_results = train_gan_stage(args, data, mseg_path, work / "gan")
    if args.stop_after == "gan" or _unfinished(gan_results, args.gan_steps, "the generator"):
        return report
    generator_path = Path(gan_results.get("kept", work / "gan" / "generator.safetensors"))
    evaluation = evaluate_stage(args, data, mseg_path, generator_path, work / "eval")
    also = (
        evaluate_stage(args, args.also_evaluate, mseg_path, generator_path, work / "eval-also")
        if args.also_evaluate
        else None
    )
    from m2u.training.checkpoint import m2u_version, read_run_config_dict

    report.update(
        {
            "m2u_version": m2u_version(),
            "data": {
                "faces": str(args.faces),
                "photos": stats.get("inputs"),
                "split_by": "identity",
                "size": args.size,
                "samples": stats.get("counts", {}).get("samples", {}),
            },
            "training": {
                name: {
                    "steps": results["steps"],
                    "seconds": results.get("seconds"),
                    "val": results.get("val"),
                    "config": _with_starts(read_run_config_dict(work / name), work / name)
                    or _kept_config(results),
                }
                for name, results in (
                    ("mseg", mseg_results),
                    ("mseg-soup", soup_results),
                    ("gan", gan_results),
                )
                if results is not None
            },
            "evaluation": evaluation,
            "also_evaluated": None if also is None else {"data": str(args.also_evaluate), "evaluation": also},
            "files": {"mseg": str(mseg_path), "generator": str(generator_path)},
            "wall_seconds_this_piece": round(time.monotonic() - started, 1),
        }
    )
    (work / "release.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    if args.stop_after == "evaluate":
        return report
    package = package_stage(args, report)
    print(f"wrote {package} (card: {package / 'MODEL_CARD.md'})")
    if args.install:
        from m2u.inference.pretrained import pretrained_dir

        print(f"installed as the shipped model: {install_package(package, pretrained_dir())}")
    return report


if __name__ == "__main__":
    main()
