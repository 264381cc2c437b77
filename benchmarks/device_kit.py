"""The GPU device kit (issue 27): what a lent GPU machine with no network needs, and the one run it does there.

    make device-kit                                   # here: wheels + face pack into .kit/, prints the kit's size
    bash benchmarks/device_run.sh                     # there: installs the wheels, GPU check, trains, evaluates
                                                      # and packages a 256x256 full-width model into $OUT
    bash benchmarks/device_run.sh --rehearsal --budget 120   # here, on CPU: the same path at tiny sizes

For real masks (issue 23: the masked faces m2u-unmask skips are mostly ones M-Seg marks too little of), M-Seg alone
fine-tuned from the shipped model on the realism engine's masks with the photometric augmentation, for as many
steps as the lease allows; its file comes back in OUT to be measured here (`benchmarks/real_mask_seg.py --mseg`;
`benchmarks/real_masks.py --model` takes a package folder holding it beside the shipped generator):

    python benchmarks/device_kit.py prepare --kit .kit128 --size 128 --store-size 128   # here, once: a 128 px kit
    M2U_KIT=.kit128 bash benchmarks/device_run.sh --networks mseg \
        --init-from inference/pretrained/m2unet-celeba-128 --augment --lr 2e-4 --batch-size 64 --check-seconds 0

`prepare` (what `make device-kit` runs; resumable, nothing it finished is redone):
  1. wheels for the device's Python 3.12 of what its image lacks (DEVICE_WHEELS) into .kit/wheels (carried), and
     the same packages for this machine's Python into .kit/wheels-here (the rehearsal's; never carried);
  2. the source dataset: m2u-make-dataset on the CelebA photos at 256x256, identity split, seed 0 (.kit/source,
     never carried);
  3. the face pack (m2u.datasets.facepack) cut from it to fill what the 64 MiB upload leaves after the code and
     the wheels: unmasked faces + landmarks for on-the-fly masks, plus the first test shards as fixed pairs;
  4. the kit's size, printed and written to .kit/kit.json.

`run` (what device_run.sh runs after installing the wheels): preflight, the GPU check (a subset of
benchmarks/gpu_check.py), M-Seg then the GAN on on-the-fly pairs within the wall-clock budget, evaluation on
the pack's test pairs at 256 and downscaled to 128 next to the shipped 128 model, and the package
(m2unet-celeba-256: fp16 weights + model card). $OUT gets 5 files, of the 8 a device sends back: device_run.json,
gpu_check.json, log.txt (device_run.sh), grid.png and the package as one tar, m2unet-celeba-256.tar (its five files
and m2u's record as a folder would be 10: `tar -xf m2unet-celeba-256.tar` here gives the folder). With `--networks mseg`: M-Seg alone, its test Dice on the
pack's pairs next to the starting model's (`--init-from`), and OUT/mseg.safetensors.
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / ".kit"
# The device's upload limit (working tree + carried folders) and what is kept free of it for files that appear
# after the kit is measured (results, notes): /work/.library/device/README.md, "Limits".
UPLOAD_LIMIT = 64 * 2**20
HEADROOM = 2 * 2**20
# What m2u needs that the device image lacks (KINDS.md's package list has everything else m2u imports: numpy,
# OpenCV, Pillow, pyarrow, pandas, scikit-image, safetensors, onnx...). dlib: m2u.masking imports it (the
# renderer shares the Face type with the detector); no model file is needed, landmarks come with the pack, so
# face-recognition-models (a 100 MB sdist) stays behind and the identity metric is left for this machine.
# simplejpeg (not in the image either) stays behind too: m2u.datasets.codecs falls back to OpenCV, same pixels.
# Their versions are the ones make setup installs here (constraints.txt), so the device runs what CI tested.
DEVICE_PACKAGES = ("dlib-bin", "webdataset", "braceexpand")


def constraint_pins(names: tuple[str, ...], path: Path = REPO / "constraints.txt") -> tuple[str, ...]:
    """ "name==version" for each of `names` from the constraints file make setup installs with (pip -c)."""
    pins = {}
    for line in path.read_text().splitlines():
        name, _, version = line.split("#", 1)[0].strip().partition("==")
        if version:  # keyed by the name's PEP 503 form, as pip compares them
            pins[re.sub(r"[-_.]+", "-", name).lower()] = f"{name}=={version}"
    missing = [n for n in names if n not in pins]
    if missing:
        raise SystemExit(f"device-kit: {path} pins no version of {', '.join(missing)}")
    return tuple(pins[n] for n in names)


DEVICE_WHEELS = constraint_pins(DEVICE_PACKAGES)
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                    "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip
# The paper preset's iterations (pipelines/presets/paper.yaml; benchmarks/gpu_check.py PAPER).
PAPER_ITERATIONS = 105_000
SHIPPED_MODEL = "m2unet-celeba-128"
PACKAGE_NAME = "m2unet-celeba-256"


def log(message: str) -> None:
    print(f"device-kit: {message}", flush=True)


# ------------------------------------------------------------------------------------------------- prepare
def _run(command: list[str]) -> None:
    log("$ " + shlex.join(command))
    subprocess.run(command, check=True)


def fetch_wheels(kit: Path) -> dict[str, Any]:
    """Device wheels (cp312, manylinux x86-64) and this machine's wheels of the same pins; requirements.txt."""
    device, here = kit / "wheels", kit / "wheels-here"
    for folder, target in ((device, True), (here, False)):
        folder.mkdir(parents=True, exist_ok=True)
        missing = [pin for pin in DEVICE_WHEELS if not _has_wheel(folder, pin)]
        if not missing:
            continue
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d",
                   str(folder), *missing]  # fmt: skip
        if target:
            command[4:4] = ["--python-version", DEVICE_PYTHON, "--implementation", "cp"]
            for platform in DEVICE_PLATFORMS:
                command[4:4] = ["--platform", platform]
        _run(command)
    (device / "requirements.txt").write_text("\n".join(DEVICE_WHEELS) + "\n")
    (here / "requirements.txt").write_text("\n".join(DEVICE_WHEELS) + "\n")
    return {"files": sorted(p.name for p in device.glob("*.whl")), "bytes": _folder_bytes(device)}


def _has_wheel(folder: Path, pin: str) -> bool:
    name, _, version = pin.partition("==")
    stem = name.replace("-", "_").lower()
    return any(p.name.lower().startswith(f"{stem}-{version}-") for p in folder.glob("*.whl"))


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def code_bytes() -> int:
    """Bytes of what travels besides carried folders: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "-c", "-o", "--exclude-standard"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")  # fmt: skip
    return sum((REPO / name).stat().st_size for name in listed if name and (REPO / name).is_file())


def stale_engine(source: Path, pack: Path) -> None:
    """Exit when the kit's dataset or pack (kept from an earlier prepare) was drawn by another mask engine than this
    m2u's: the GPU run would train on masks placed otherwise than its test pairs."""
    from m2u.datasets.facepack import FacePack
    from m2u.datasets.layout import dataset_render_version
    from m2u.masking.render import RENDER_VERSION

    drawn = {source: dataset_render_version(source)}
    if (pack / "pack.json").is_file():
        drawn[pack] = FacePack(pack).render_version
    for folder, version in drawn.items():
        if version is not None and version != RENDER_VERSION:
            raise SystemExit(
                f"{folder} was drawn by mask engine version {version}, and this m2u draws version {RENDER_VERSION}: "
                f"remove {source} and {pack} to prepare the kit again"
            )


def other_sizes(args: argparse.Namespace, source: Path, pack: Path) -> None:
    """Exit when the kit's dataset or pack (kept from an earlier prepare) has other sizes than this prepare asks
    for: `prepare --size 128` over a 256 kit would keep the 256 pack and say nothing."""
    from m2u.datasets.shardcheck import dataset_image_size

    asked = {
        source: ("size", args.size, dataset_image_size(source) if (source / "stats.json").is_file() else None)
    }
    checks = list(asked.items())
    if (pack / "pack.json").is_file():
        info = json.loads((pack / "pack.json").read_text())
        checks += [(pack, ("size", args.size, info.get("size"))),
                   (pack, ("store size", args.store_size, info.get("store_size")))]  # fmt: skip
    for folder, (what, wanted, kept) in checks:
        if kept is not None and kept != wanted:
            raise SystemExit(
                f"{folder} was prepared with {what} {kept}, and this prepare asks for {wanted}: remove {source} and "
                f"{pack}, or prepare into another --kit"
            )


def build_source(args: argparse.Namespace, source: Path) -> None:
    if (source / "stats.json").is_file():
        return
    command = [str(Path(sys.executable).parent / "m2u-make-dataset"), str(args.faces), "-o", str(source),
               "--size", str(args.size), "--split-by", "identity", "--identity-pattern", "{identity}_{id}.jpg",
               "--seed", str(args.seed), "--shard-size", str(args.shard_size), "--workers", str(args.workers),
               "--quiet"]  # fmt: skip
    if args.limit:
        command += ["--limit", str(args.limit)]
    _run(command)


def kit_sizes(kit: Path) -> dict[str, Any]:
    pack = {}
    if (kit / "pack" / "pack.json").is_file():
        pack = json.loads((kit / "pack" / "pack.json").read_text())
    sizes = {
        "code": code_bytes(),
        "wheels": _folder_bytes(kit / "wheels"),
        "pack": _folder_bytes(kit / "pack"),
    }
    sizes["total"] = sum(sizes.values())
    return {"bytes": sizes, "limit": UPLOAD_LIMIT, "fits": sizes["total"] <= UPLOAD_LIMIT, "pack": pack}


def print_sizes(report: dict[str, Any]) -> None:
    sizes, pack = report["bytes"], report["pack"]
    print("device kit (what travels to the lent machine):")
    for name in ("code", "wheels", "pack", "total"):
        print(f"  {name:7s} {sizes[name] / 2**20:7.2f} MiB")
    print(f"  limit   {report['limit'] / 2**20:7.2f} MiB: {'fits' if report['fits'] else 'DOES NOT FIT'}")
    for split, info in pack.get("splits", {}).items():
        print(f"  pack {split}: {info['faces']} faces, {info['bytes_per_face']} bytes per face (JPEG "
              f"q{pack['quality']} at {pack['store_size']}px, trained at {pack['size']}px)")  # fmt: skip
    if pack.get("test"):
        print(
            f"  pack test: {pack['test']['samples']} pre-rendered pairs, {pack['test']['bytes'] / 2**20:.2f} MiB"
        )


def prepare(args: argparse.Namespace) -> int:
    from m2u.datasets.facepack import PackConfig, write_face_pack

    kit = args.kit
    kit.mkdir(parents=True, exist_ok=True)
    wheels = fetch_wheels(kit)
    log(f"wheels: {', '.join(wheels['files'])} ({wheels['bytes'] / 2**20:.2f} MiB)")
    source = kit / "source"
    pack = kit / "pack"
    other_sizes(args, source, pack)
    build_source(args, source)
    stale_engine(source, pack)
    if not (pack / "pack.json").is_file():
        budget = args.max_bytes or (UPLOAD_LIMIT - HEADROOM - code_bytes() - wheels["bytes"])
        log(f"cutting the face pack: {budget / 2**20:.1f} MiB for faces and test pairs")
        config = PackConfig(store_size=args.store_size, quality=args.quality, max_bytes=budget,
                            test_shards=args.test_shards)  # fmt: skip
        write_face_pack(source, pack, config, log=log)
    report = kit_sizes(kit)
    (kit / "kit.json").write_text(json.dumps(report, indent=2) + "\n")
    print_sizes(report)
    return 0 if report["fits"] else 1


# --------------------------------------------------------------------------------------------------- run
class Phases:
    """Wall-clock seconds per phase, from one start; what the plan in the README is checked against."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seconds: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def run(self, name: str, function, *args, **kwargs):
        log(f"phase {name} (at {self.elapsed():.0f} s)")
        started = time.monotonic()
        try:
            return function(*args, **kwargs)
        finally:
            self.seconds[name] = round(time.monotonic() - started, 1)
            log(f"phase {name}: {self.seconds[name]} s")


def preflight(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the run needs, imported and opened before any long step: a missing piece costs seconds."""
    import dlib
    import torch
    import webdataset

    from m2u.datasets.facepack import FacePack
    from m2u.training.onthefly import RenderedPairs

    pack = FacePack(args.kit / "pack")
    sample = RenderedPairs(pack, "train", seed=args.seed).render(0)  # the masking engine runs here
    cuda = torch.cuda.is_available()
    if not cuda and not args.rehearsal:
        raise SystemExit(
            "device-kit: no CUDA device (torch.cuda.is_available() is False); --rehearsal runs on CPU"
        )
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cpus": os.cpu_count(),
        "dlib": dlib.__version__,
        "webdataset": getattr(webdataset, "__version__", "?"),
        "pack": {k: pack.info[k] for k in ("size", "store_size", "quality", "splits", "test")},
        "first_sample_shape": list(sample["masked"].shape),
    }


def gpu_check(args: argparse.Namespace, work: Path, out: Path, seconds: float) -> dict[str, Any]:
    """A subset of benchmarks/gpu_check.py (env, the GAN step in every precision, the latencies; M-Seg's path is
    proven by its training here; DDP, the shard loader and torch.compile are left for a longer lease), in its own
    process with its own time limit."""
    target = work / "gpu_check" / "gpu_check.json"
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--out", str(target), "--work",
               str(work / "gpu_check"), "--budget", str(int(seconds)), "--only", args.check_steps]  # fmt: skip
    if args.rehearsal:
        command.append("--dry-run")
    log("$ " + shlex.join(command))
    try:
        code = subprocess.run(command, timeout=seconds + 30).returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    result: dict[str, Any] = {"exit_code": code}
    if target.is_file():
        shutil.copy2(target, out / "gpu_check.json")
        report = json.loads(target.read_text())
        result["failed"] = report.get("failed")
        result["summary"] = report.get("summary")
    return result


def _init_files(args: argparse.Namespace) -> dict[str, Path]:
    """--init-from PACKAGE: the model files each network starts from (fine-tuning); {} without it."""
    from m2u.inference.pretrained import GENERATOR_FILE, MSEG_FILE

    if not args.init_from:
        return {}
    files = {"mseg": args.init_from / MSEG_FILE, "generator": args.init_from / GENERATOR_FILE}
    return {name: path for name, path in files.items() if name in _networks(args)}


def _networks(args: argparse.Namespace) -> tuple[str, ...]:
    return ("mseg",) if args.networks == "mseg" else ("mseg", "generator")


def _models(args: argparse.Namespace) -> dict[str, Any]:
    from m2u.training.checkpoint import read_model_metadata
    from m2u.training.models import DiscriminatorConfig, GeneratorConfig, MSegConfig

    if args.init_from:  # fine-tuning: the networks take the shapes of the files they start from
        shapes = {name: read_model_metadata(path)[1] for name, path in _init_files(args).items()}
        return {
            "mseg": MSegConfig(**shapes["mseg"]),
            "generator": GeneratorConfig(**shapes["generator"]) if "generator" in shapes else None,
            "discriminator": DiscriminatorConfig(),
        }
    if args.tiny:  # the rehearsal: the same code path, networks small enough for seconds on a CPU
        return {
            "mseg": MSegConfig(base_channels=4, levels=3),
            "generator": GeneratorConfig(width_multiplier=0.125, stages=3),
            "discriminator": DiscriminatorConfig(channels=(3, 8, 16, 16, 16, 1)),
        }
    return {
        "mseg": MSegConfig(base_channels=args.mseg_base_channels)
        if args.mseg_base_channels
        else MSegConfig(),
        "generator": GeneratorConfig(width_multiplier=args.width_multiplier),
        "discriminator": DiscriminatorConfig(),
    }


def _common(args: argparse.Namespace, run: Path, seconds: float) -> dict[str, Any]:
    from m2u.datasets.augment import AugmentConfig
    from m2u.training.config import OptimizerConfig

    steps = args.max_steps or None
    # The learning rate is divided by 10 at 75 % and 90 % of the expected steps (the release recipe's schedule);
    # with a time budget the expected steps are unknown, so the paper's milestones (far away) stay.
    optimizer = OptimizerConfig(learning_rate=args.lr)
    if steps:
        optimizer = OptimizerConfig(learning_rate=args.lr, milestones=tuple(sorted({max(1, round(steps * f))
                                    for f in (0.75, 0.9)})))  # fmt: skip
    return {
        "data": str(args.kit / "pack"),
        "out": str(run),
        "batch_size": args.batch_size,
        "epochs": 100_000,  # the clock (or max_steps) decides
        "max_steps": steps,
        "max_seconds": max(1.0, seconds),
        "optimizer": optimizer,
        "val_every": 0,
        "val_batches": args.val_batches,
        "grid_every": 10**9,
        "checkpoint_every": 10**9,  # one checkpoint at the end: writing 100 MB of state costs GPU time
        "log_every": args.log_every,
        "seed": args.seed,
        "num_workers": args.workers,
        "device": "cpu" if args.rehearsal else "auto",
        "precision": args.precision,
        "channels_last": args.channels_last,
        "progress": False,
        "evaluate_test": False,
        "recipe": args.command,
        "augment": AugmentConfig(enabled=args.augment, low_res=args.low_res),
    }


def _data_source(args: argparse.Namespace) -> Any:
    import torch

    from m2u.training.onthefly import OnTheFlyDataSource

    return OnTheFlyDataSource(str(args.kit / "pack"), args.batch_size, args.seed, args.workers,
                              pin_memory=torch.cuda.is_available() and not args.rehearsal)  # fmt: skip


def _training_figures(results: dict[str, Any], data: Any) -> dict[str, Any]:
    seconds = results.get("seconds") or 0.0
    steps = results.get("steps", 0)
    per_second = steps / seconds if seconds else None
    return {
        "steps": steps,
        "seconds": seconds,
        "steps_per_second": round(per_second, 3) if per_second else None,
        "stop_reason": results.get("stop_reason"),
        "val": results.get("val"),
        # The time the loop was blocked on the next training batch, over the run's wall time: the share of time
        # the accelerator waited for the CPU workers (an upper bound: the host runs a few steps ahead).
        "data_wait_seconds": round(data.wait_seconds, 2),
        "data_wait_share": round(data.wait_seconds / seconds, 4) if seconds else None,
        "refused_renders": data.refused_renders,
        "paper_preset_hours": round(PAPER_ITERATIONS / per_second / 3600, 2) if per_second else None,
    }


def train(args: argparse.Namespace, work: Path, seconds: float) -> dict[str, Any]:
    from m2u.training.config import GanTrainConfig, MSegTrainConfig
    from m2u.training.trainer import train_gan, train_mseg

    models = _models(args)
    init = {name: str(path) for name, path in _init_files(args).items()}
    mseg_seconds = seconds * (args.mseg_share if args.networks == "both" else 1.0)
    data = _data_source(args)
    mseg_config = MSegTrainConfig(
        model=models["mseg"],
        init_weights={"mseg": init["mseg"]} if "mseg" in init else {},
        **_common(args, work / "mseg", mseg_seconds),
    )
    mseg = _training_figures(train_mseg(mseg_config, data), data)
    data.close()
    log(
        f"M-Seg: {mseg['steps']} steps, {mseg['steps_per_second']} steps/s, data wait {mseg['data_wait_share']}"
    )
    if args.networks == "mseg":
        return {"mseg": mseg, "workers": args.workers, "batch_size": args.batch_size,
                "models": {"mseg": str(models["mseg"])}, "init_from": init}  # fmt: skip
    left = seconds - mseg["seconds"]
    data = _data_source(args)
    gan_config = GanTrainConfig(
        generator=models["generator"],
        discriminator=models["discriminator"],
        mask_source="mseg",
        mseg_checkpoint=str(work / "mseg" / "mseg.safetensors"),
        perceptual_weight=0.0,  # the VGG19 weights are not on the device (nothing is downloaded at run time)
        init_weights={"generator": init["generator"]} if "generator" in init else {},
        **_common(args, work / "gan", left),
    )
    gan = _training_figures(train_gan(gan_config, data), data)
    data.close()
    log(f"GAN: {gan['steps']} steps, {gan['steps_per_second']} steps/s, data wait {gan['data_wait_share']}")
    return {"mseg": mseg, "gan": gan, "workers": args.workers, "batch_size": args.batch_size,
            "models": {k: str(v) for k, v in models.items()}}  # fmt: skip


def mseg_test_dice(test: Path, mseg: Path, device: str, max_samples: int) -> dict[str, Any]:
    """Hard Dice of an M-Seg file's masks, as m2u-unmask and m2u-eval make them (`predict_masks`: mirror-averaged,
    holes filled, the file's threshold), against the pack's test pairs' masks: mean over the pairs and the pooled
    figure (every pixel of the split together)."""
    import torch

    from m2u.datasets.loader import LoaderConfig, make_loader, to_float_batch
    from m2u.inference.restore import predict_masks
    from m2u.training.checkpoint import load_model
    from m2u.training.imagespace import to_model_range
    from m2u.training.losses import dice_score

    model, info = load_model(mseg, map_location=device)
    threshold = info.mask_threshold_or_default()
    per_image: list[float] = []
    overlap = total = 0.0
    batch_size = min(16, max_samples or 16)
    loader = make_loader(
        test, "test", LoaderConfig.for_evaluation(batch_size=batch_size, num_workers=0, as_uint8=True)
    )
    with torch.no_grad():
        for raw in loader:
            batch = to_float_batch(raw, device)
            keep = max_samples - len(per_image) if max_samples else len(batch["mask"])
            predicted = predict_masks(model, to_model_range(batch["masked"][:keep]), threshold)
            truth = batch["mask"][:keep]
            per_image += dice_score(predicted, truth).tolist()
            overlap += float((predicted * truth).sum())
            total += float(predicted.sum() + truth.sum())
            if max_samples and len(per_image) >= max_samples:
                break
    return {
        "samples": len(per_image),
        "dice_mean": round(sum(per_image) / max(1, len(per_image)), 4),
        "dice_pooled": round(2 * overlap / total, 4) if total else None,
    }


def evaluate_mseg(args: argparse.Namespace, work: Path, out: Path) -> dict[str, Any]:
    """--networks mseg: the trained M-Seg's test Dice on the pack's pairs next to the starting model's (the same
    pairs, the same threshold rule), and its file into OUT (what the real-photo benchmarks measure here)."""
    import torch

    from m2u.datasets.facepack import FacePack

    test = FacePack(args.kit / "pack").test_dataset
    device = "cpu" if args.rehearsal or not torch.cuda.is_available() else "cuda"
    trained = work / "mseg" / "mseg.safetensors"
    result = {"trained": mseg_test_dice(test, trained, device, args.max_test_samples)}
    start = _init_files(args).get("mseg")
    if start is not None:
        result["init_from"] = mseg_test_dice(test, start, device, args.max_test_samples)
    shutil.copy2(trained, out / "mseg.safetensors")
    return result


def evaluate_pack(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """m2u-eval's evaluation of the new model on the pack's test pairs (256x256), then the comparison with the
    shipped 128 model on the same pairs downscaled to 128 (the new model's composite downscaled likewise)."""
    import torch

    from m2u.datasets.facepack import FacePack
    from m2u.evaluation.evaluator import EvaluateConfig, evaluate
    from m2u.evaluation.suite import MetricsConfig

    test = FacePack(args.kit / "pack").test_dataset
    device = "cpu" if args.rehearsal or not torch.cuda.is_available() else "cuda"
    config = EvaluateConfig(
        split="test",
        max_samples=args.max_test_samples or None,
        baseline_mask="predicted",
        metrics=MetricsConfig(enable_lpips=False, enable_fid=False, enable_identity=False),
        paper_size_cost=False,
        # The report's latency is timed on the CPU too: a few repeats (gpu_check's latency step times the GPU).
        latency_warmup=1,
        latency_repeats=3,
        progress=False,
        device=device,
    )
    mseg, generator = work / "mseg" / "mseg.safetensors", work / "gan" / "generator.safetensors"
    report = evaluate(test, mseg, generator, work / "eval", config)
    return {"at_256": report, "versus_shipped_128": compare_with_shipped(test, mseg, generator, device, args)}


def compare_with_shipped(
    test: Path, mseg: Path, generator: Path, device: str, args: argparse.Namespace
) -> dict:
    """PSNR/SSIM of the composites on the same test pairs: the new model at 256 (scored at 256 and downscaled
    to 128) and the shipped 128 model on the pairs downscaled to 128 (area averaging; masks by majority)."""
    import torch
    import torch.nn.functional as F

    from m2u.datasets.loader import LoaderConfig, make_loader, to_float_batch
    from m2u.evaluation.pixel import psnr_per_image, ssim_per_image
    from m2u.inference.restore import load_pretrained, load_two_stage, model_usage, restore_batch

    new = load_two_stage(mseg, generator, device)
    shipped = load_pretrained(SHIPPED_MODEL, device=device)

    def restored(models: Any, masked: torch.Tensor) -> torch.Tensor:
        threshold = model_usage(models).mask_threshold
        return restore_batch(models.mseg, models.generator, masked, threshold)[2]

    sums: dict[str, list[float]] = {}
    batch_size = min(16, args.max_test_samples or 16)
    loader = make_loader(
        test, "test", LoaderConfig.for_evaluation(batch_size=batch_size, num_workers=0, as_uint8=True)
    )
    seen = 0
    with torch.no_grad():
        for raw in loader:
            batch = to_float_batch(raw, device)
            masked, truth = batch["masked"], batch["unmasked"]
            ours = restored(new, masked)
            small = F.interpolate(masked, size=128, mode="area")
            truth_small = F.interpolate(truth, size=128, mode="area")
            theirs = restored(shipped, small)
            rows = {
                "new_256_at_256": (ours, truth),
                "new_256_at_128": (F.interpolate(ours, size=128, mode="area"), truth_small),
                "shipped_128_at_128": (theirs, truth_small),
                "masked_input_at_128": (small, truth_small),
            }
            for name, (x, y) in rows.items():
                entry = sums.setdefault(name, [0.0, 0.0, 0.0])
                entry[0] += float(psnr_per_image(x.clamp(0, 1), y).sum())
                entry[1] += float(ssim_per_image(x.clamp(0, 1), y).sum())
                entry[2] += x.shape[0]
            seen += masked.shape[0]
            if args.max_test_samples and seen >= args.max_test_samples:
                break
    table = {name: {"psnr": round(p / n, 3), "ssim": round(s / n, 4), "samples": int(n)}
             for name, (p, s, n) in sums.items()}  # fmt: skip
    if table:
        table["new_beats_shipped_at_128"] = (
            table["new_256_at_128"]["psnr"] > table["shipped_128_at_128"]["psnr"]
            and table["new_256_at_128"]["ssim"] > table["shipped_128_at_128"]["ssim"]
        )
    return table


def package(args: argparse.Namespace, work: Path, out: Path, report: dict[str, Any]) -> dict[str, Any]:
    """fp16 weights + model card in the shipped package's layout (WORK/m2unet-celeba-256), sent as one tar,
    OUT/m2unet-celeba-256.tar: a device sends back at most 8 files, and the folder alone holds 6."""
    from m2u.inference.pretrained import GENERATOR_FILE, MSEG_FILE, write_checksums
    from m2u.inference.pretrained.card import evaluation_section, write_model_card
    from m2u.training.checkpoint import load_model, m2u_version, read_run_config_dict, save_model

    folder = work / PACKAGE_NAME
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, source in ((MSEG_FILE, work / "mseg" / "mseg.safetensors"),
                         (GENERATOR_FILE, work / "gan" / "generator.safetensors")):  # fmt: skip
        files[name] = save_model(folder / name, *load_model(source), dtype="fp16").stat().st_size
    evaluation = report["evaluation"]["at_256"]
    pack = report["preflight"]["pack"]
    card = {
        "name": PACKAGE_NAME,
        "recipe_command": args.command,
        "m2u_version": m2u_version(),
        "data": {
            "faces": "CelebA (aligned), a face pack with masks rendered on the fly",
            "photos": sum(info["faces"] for info in pack["splits"].values()),
            "split_by": "identity",
            "size": pack["size"],
            "samples": {split: info["faces"] for split, info in pack["splits"].items()}
            | {"test": pack["test"]["samples"]},
        },
        "training": {
            name: {**report["training"][name], "config": read_run_config_dict(work / name)}
            for name in ("mseg", "gan")
        },
        "evaluation": evaluation_section(
            evaluation, versus_shipped_128=report["evaluation"]["versus_shipped_128"]
        ),
        "files": files,
    }
    write_model_card(folder, card)
    write_checksums(folder)  # verified whenever the shipped model loads
    archive = out / f"{PACKAGE_NAME}.tar"
    with tarfile.open(archive, "w") as tar:  # uncompressed: fp16 weights do not shrink
        for path in sorted(folder.iterdir()):
            if not path.name.startswith("."):  # m2u's record of what it wrote there stays behind
                tar.add(path, arcname=f"{PACKAGE_NAME}/{path.name}")
    return {"archive": str(archive), "files": files}


def _copy_grid(work: Path, out: Path) -> None:
    grids = sorted((work / "gan" / "grids").glob("*.png"))
    if grids:
        shutil.copy2(grids[-1], out / "grid.png")


def run(args: argparse.Namespace) -> int:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(os.environ.get("TMPDIR", "/tmp")) / "m2u-device-run"
    if work.exists():
        shutil.rmtree(work)  # scratch of an earlier run on this machine: the outputs are in OUT
    work.mkdir(parents=True)
    phases = Phases()
    report: dict[str, Any] = {
        "command": args.command,
        "budget_seconds": args.budget,
        "phases": phases.seconds,
    }

    def save() -> None:
        report["wall_seconds"] = round(phases.elapsed(), 1)
        (out / "device_run.json").write_text(json.dumps(report, indent=2, default=str) + "\n")

    try:
        import torch

        torch.set_num_threads(args.threads) if args.threads else None
        report["preflight"] = phases.run("preflight", preflight, args)
        save()
        if args.check_seconds > 0:
            report["gpu_check"] = phases.run("gpu_check", gpu_check, args, work, out, args.check_seconds)
            save()
        packaging = args.package_seconds if args.networks == "both" else 0.0  # M-Seg alone: no package
        training_seconds = args.budget - phases.elapsed() - args.eval_seconds - packaging
        if training_seconds < 10:
            raise SystemExit(f"device-kit: {training_seconds:.0f} s left for training: raise --budget")
        report["training_seconds_planned"] = round(training_seconds, 1)
        report["training"] = phases.run("training", train, args, work, training_seconds)
        save()
        if args.networks == "mseg":
            report["evaluation"] = phases.run("evaluation", evaluate_mseg, args, work, out)
            save()
            summary(report)
            return 0
        _copy_grid(work, out)
        report["evaluation"] = phases.run("evaluation", evaluate_pack, args, work)
        save()
        report["package"] = phases.run("package", package, args, work, out, report)
    except BaseException as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        save()
        raise
    save()
    summary(report)
    return 0


def summary(report: dict[str, Any]) -> None:
    training, evaluation = report["training"], report["evaluation"]
    if "gan" not in training:  # --networks mseg
        t = training["mseg"]
        print(f"\ndevice run summary (M-Seg alone)\n  mseg: {t['steps']} steps in {t['seconds']} s "
              f"({t['steps_per_second']} steps/s), data wait share {t['data_wait_share']}")  # fmt: skip
        for name, row in evaluation.items():
            print(f"  test Dice, {name}: {row}")
        return
    rows = evaluation["at_256"].get("rows", {})
    print("\ndevice run summary")
    print("  phases (s): " + ", ".join(f"{k} {v}" for k, v in report["phases"].items())
          + f"; wall {report['wall_seconds']} of budget {report['budget_seconds']}")  # fmt: skip
    for name in ("mseg", "gan"):
        t = training[name]
        print(f"  {name}: {t['steps']} steps in {t['seconds']} s ({t['steps_per_second']} steps/s), data wait "
              f"share {t['data_wait_share']}, paper preset {t['paper_preset_hours']} h at this rate")  # fmt: skip
    composite = rows.get("m2u_composite", {})
    print(f"  test at 256: composite PSNR {composite.get('psnr')} dB, SSIM {composite.get('ssim')}")
    for name, row in evaluation["versus_shipped_128"].items():
        print(f"  {name}: {row}")


# ---------------------------------------------------------------------------------------------- arguments
def m2u_packages() -> dict[str, str]:
    """setup.cfg's package_dir (m2u.x -> folder): the one place the layout is written; device_run.sh links the
    folders under a site directory with these names instead of building a wheel (no build tools needed)."""
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = [line.strip() for line in parser["options"]["package_dir"].splitlines() if line.strip()]
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines)  # type: ignore[misc]


def link_site(site: Path) -> None:
    """site/m2u/<name> -> the repository's folders (top-level packages only; subpackages come with them)."""
    for name, folder in m2u_packages().items():
        parts = name.split(".")
        if len(parts) != 2:
            continue
        target = site / parts[0] / parts[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(REPO / folder, target_is_directory=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("prepare", help="wheels + face pack into the kit folder; prints the kit's size")
    p.add_argument("--faces", type=Path, default=REPO.parent / "shared" / "faces" / "celeba")
    p.add_argument("--kit", type=Path, default=KIT)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--store-size", type=int, default=256, help="side the pack stores faces at (<= --size)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the pack's faces")
    p.add_argument("--max-bytes", type=int, default=0, help="pack size (0: what the upload limit leaves)")
    p.add_argument("--test-shards", type=int, default=2, help="test shards (of --shard-size pairs) carried")
    p.add_argument("--shard-size", type=int, default=100)
    p.add_argument("--limit", type=int, default=0, help="use the first N photos (0: all)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("size", help="print the kit's size")
    s.add_argument("--kit", type=Path, default=KIT)
    s.add_argument(
        "--write-results", action="store_true", help="also write benchmarks/results/device_kit.json"
    )
    l_ = sub.add_parser("link", help="link the m2u packages into a site folder (device_run.sh)")
    l_.add_argument("site", type=Path)
    r = sub.add_parser("run", help="the device run (device_run.sh calls it after installing the wheels)")
    r.add_argument("--kit", type=Path, default=KIT)
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "runs/device"))
    r.add_argument("--work", type=Path, default=None, help="scratch folder (default: /tmp/m2u-device-run)")
    r.add_argument("--budget", type=float, default=540.0, help="wall-clock seconds for the whole run")
    r.add_argument("--check-seconds", type=float, default=150.0, help="GPU check budget (0: skip it)")
    r.add_argument("--check-steps", default="env,dataset,train-gan,latency")
    r.add_argument("--eval-seconds", type=float, default=60.0, help="kept for evaluation")
    r.add_argument("--package-seconds", type=float, default=20.0, help="kept for packaging")
    r.add_argument("--mseg-share", type=float, default=0.2, help="share of the training time for M-Seg")
    r.add_argument(
        "--max-steps", type=int, default=0, help="also stop each network at N steps (0: clock only)"
    )
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="render workers")
    r.add_argument("--width-multiplier", type=float, default=1.0)
    r.add_argument("--mseg-base-channels", type=int, default=0, help="0: the paper's (MSegConfig)")
    r.add_argument("--lr", type=float, default=1e-3)
    r.add_argument("--precision", default="auto", help="auto (bf16 on the H200), fp32, bf16, fp16")
    r.add_argument("--channels-last", action="store_true")
    r.add_argument("--val-batches", type=int, default=4)
    r.add_argument("--log-every", type=int, default=50)
    r.add_argument("--max-test-samples", type=int, default=0, help="0: every pair the pack carries")
    r.add_argument("--threads", type=int, default=0, help="torch threads in the main process (0: default)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--rehearsal", action="store_true", help="CPU, tiny networks: proves the path, not speed")
    r.add_argument(
        "--networks",
        choices=("both", "mseg"),
        default="both",
        help="mseg: M-Seg alone, its test Dice and its file into OUT (a real-mask candidate)",
    )
    r.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="a model package folder (e.g. inference/pretrained/m2unet-celeba-128): the networks start from its "
        "files and take their shapes",
    )
    r.add_argument(
        "--augment",
        action="store_true",
        help="augment the training pairs (m2u.datasets.augment, photometric + crops)",
    )
    r.add_argument(
        "--low-res", type=float, default=0.0, help="with --augment: share of pairs shrunk and brought back"
    )
    args = parser.parse_args(argv)
    if args.verb == "run":
        if args.init_from is not None and not args.init_from.is_dir():
            parser.error(f"--init-from {args.init_from}: not a model package folder")
        if args.init_from is not None and (args.width_multiplier != 1.0 or args.mseg_base_channels):
            parser.error("--init-from: the networks take the package files' shapes; leave out --width-multiplier "
                         "and --mseg-base-channels")  # fmt: skip
        if args.low_res and not args.augment:
            parser.error("--low-res is part of the augmentation: give --augment too")
        if not 0.0 <= args.low_res <= 1.0:
            parser.error(f"--low-res is a share within [0, 1], got {args.low_res}")
        args.tiny = args.rehearsal and args.init_from is None  # fine-tuning keeps the package's shapes
        args.command = shlex.join(
            ["benchmarks/device_run.sh", *(argv[1:] if argv is not None else sys.argv[2:])]
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.verb == "prepare":
        return prepare(args)
    if args.verb == "size":
        report = kit_sizes(args.kit)
        print_sizes(report)
        if args.write_results:
            report["pack"].pop("source", None)  # a local path
            (REPO / "benchmarks" / "results" / "device_kit.json").write_text(
                json.dumps(report, indent=2) + "\n"
            )
        return 0 if report["fits"] else 1
    if args.verb == "link":
        link_site(args.site)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
