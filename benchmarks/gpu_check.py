"""GPU readiness: one command that proves every CUDA path of m2u and measures the paper preset (issue 18).

    .venv/bin/python benchmarks/gpu_check.py            # CUDA machine: at most 8 min, writes
                                                        # benchmarks/results/gpu_check.json and gpu_check.md
    .venv/bin/python benchmarks/gpu_check.py --dry-run  # any machine: the same steps on CPU at 32x32, batch 2
    make gpu-check                                      # the first line

Steps, in this order, each in a child process with its own time limit inside the overall budget (a hang or a
crash costs that step only; what a step finished before its limit is kept):

    env          device, driver, torch / CUDA / cuDNN versions, GPU memory
    dataset      a small synthetic dataset (m2u.datasets.write_synthetic_dataset) at the check's size
    train-mseg   the real MSegTask / GanTask steps (training/trainer.py) at 256x256, batch 8, in fp32, bf16 and
    train-gan    fp16 (with the GradScaler), each with and without channels_last: losses finite, every network's
                 weights changed, step time, images/s, peak memory
    latency      generator and M-Seg forward at 256x256, batch 1 and 8 (fp32, bf16), peak memory
    loader       the shard loader with pinned memory, workers and uint8 -> float on the GPU: samples/s alone, and
                 in GAN training the share of the time the GPU waits for data
    ddp          torchrun --nproc_per_node <every GPU> -m m2u.training.cli gan (NCCL; the real CLI, shard loader
                 and Trainer), plus an NCCL all-reduce and a DDP step on a one-rank group when there is one GPU
    compile-*    torch.compile (bf16, channels_last) for both tasks: last, the slowest to start

Then it reports the best setting of each task against fp32 (a ratio) and projects the paper preset's wall time
(105k iterations = 100 epochs of the 8,400 training photos of the 12k set at batch 8, for M-Seg and the GAN).
It exits 1 naming every failed path (a step, or a setting within one), 2 when there is no GPU and no --dry-run.

--dry-run (no CUDA needed; a test runs it): 32x32, batch 2, 2 steps, tiny networks, gloo DDP with 2 CPU
processes through torchrun; fp16 is skipped (CUDA only) and torch.compile too unless --with-compile. It writes
its JSON only where --out says (by default into a temporary folder, never into benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_check.json"
BUDGET_SECONDS = 480.0  # the 8 minutes, for everything
DRY_BUDGET_SECONDS = 300.0
# Per-step limits (seconds) on a GPU; the dry run uses DRY_LIMIT for every in-process group.
LIMITS = {
    "env": 30,
    "dataset": 45,
    "train-mseg": 60,
    "train-gan": 90,
    "latency": 45,
    "loader": 60,
    "ddp": 120,
    "compile-mseg": 75,
    "compile-gan": 120,
}
STEPS = tuple(LIMITS)
# Steps run in one child process (torchrun for ddp); the dry run groups the in-process ones into one child.
CHILD_STEPS = (
    "env",
    "dataset",
    "train-mseg",
    "train-gan",
    "latency",
    "loader",
    "compile-mseg",
    "compile-gan",
)
MIN_START_SECONDS = 10.0  # a step is not started with less budget left
PRECISION_SETTINGS = ("fp32", "bf16", "fp16")
# The paper preset (pipelines/presets/paper.yaml): 12,000 photos, 70 % train, batch 8, 100 epochs.
PAPER = {"photos": 12_000, "train_fraction": 0.7, "batch_size": 8, "epochs": 100, "iterations": 105_000}


COMPILE_SKIPPED = "torch.compile is not run in the dry run (minutes on CPU): --with-compile"
# Each path (a step, or one setting of a training step) ends as one of these; "ok" stays true for a skipped one
# (it did not fail), and its "status" says it did not run.
PASSED, SKIPPED, FAILED = "passed", "skipped", "failed"


def _skipped(reason: str) -> dict[str, Any]:
    return {"ok": True, "status": SKIPPED, "skipped": reason}


def status_of(result: dict[str, Any]) -> str:
    """passed, skipped or failed: a path with a `skipped` reason did not run, whatever its `ok`; a step made of
    settings is skipped when every one of them was."""
    if not result.get("ok"):
        return FAILED
    if result.get("skipped"):
        return SKIPPED
    settings = result.get("settings")
    if settings and all(status_of(r) == SKIPPED for r in settings.values()):
        return SKIPPED
    return PASSED


def path_statuses(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every path the check knows, as the table lists them ("train-gan/fp16", "ddp"): its status, and why it
    was skipped or failed."""
    paths: dict[str, dict[str, Any]] = {}
    for name, result in results.items():
        settings = result.get("settings")
        entries = {f"{name}/{s}": r for s, r in settings.items()} if settings else {name: result}
        if settings and not result.get("ok") and all(r.get("ok") for r in settings.values()):
            entries[name] = result  # the step failed around its settings (a timeout after the last one)
        for path, r in entries.items():
            status = status_of(r)
            entry: dict[str, Any] = {"status": status}
            if status == SKIPPED:
                entry["reason"] = r["skipped"]
            elif status == FAILED:
                entry["error"] = str(r.get("error", ""))[:300]
            paths[path] = entry
    return paths


def mark_statuses(results: dict[str, Any]) -> None:
    """Write each path's status into its result (the JSON carries it beside `ok`)."""
    for result in results.values():
        for setting in result.get("settings", {}).values():
            setting["status"] = status_of(setting)
        result["status"] = status_of(result)


def status_line(result: dict[str, Any]) -> str:
    """A step's outcome as the progress lines say it: "ok", "ok (2 of 6 settings skipped)", "skipped: why",
    "FAILED"."""
    status = status_of(result)
    settings = result.get("settings", {})
    if status == FAILED:
        return "FAILED"
    if status == SKIPPED:
        reasons = sorted({r.get("skipped", "") for r in settings.values()} or {result.get("skipped", "")})
        return f"skipped: {'; '.join(reasons)}"
    skipped = sum(status_of(r) == SKIPPED for r in settings.values())
    return f"ok ({skipped} of {len(settings)} settings skipped)" if skipped else "ok"


def count_statuses(paths: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {
        status: sum(e["status"] == status for e in paths.values()) for status in (PASSED, SKIPPED, FAILED)
    }


def verdict(paths: dict[str, dict[str, Any]], dry_run: bool) -> str:
    """The last line: how many paths ran and passed, how many were skipped (never "every path passed" when
    some did not run)."""
    counts = count_statuses(paths)
    failed = [path for path, e in paths.items() if e["status"] == FAILED]
    where = " (dry run)" if dry_run else ""
    passed = f"{counts[PASSED]} path{'s' if counts[PASSED] != 1 else ''} passed"
    if failed:
        return f"gpu_check: FAILED: {', '.join(failed)} ({passed}, {counts[SKIPPED]} skipped{where})"
    if counts[SKIPPED]:
        return f"gpu_check: {passed}, {counts[SKIPPED]} skipped{where}"
    return f"gpu_check: every path passed ({counts[PASSED]} paths{where})"


# --------------------------------------------------------------------------------------------- plan
def make_plan(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Everything a child needs, as JSON: sizes, device, which settings."""
    dry = args.dry_run
    plan = {
        "dry_run": dry,
        "device": "cpu" if dry else "cuda",
        "size": 32 if dry else 256,
        "batch_size": 2 if dry else 8,
        "warmup_steps": 1 if dry else 3,
        "timed_steps": 1 if dry else 5,
        "latency_repeats": 2 if dry else 20,
        "latency_precisions": ["fp32"] if dry else ["fp32", "bf16"],
        "samples": 24 if dry else 320,
        "loader_workers": 1 if dry else min(8, os.cpu_count() or 1),
        "loader_steps": 3 if dry else 30,
        "ddp_steps": 2 if dry else 8,
        "work": str(work),
        "tiny_models": dry,
        "with_compile": (not dry) or args.with_compile,
    }
    eager = [
        {"precision": p, "channels_last": cl, "compile": False}
        for p in PRECISION_SETTINGS
        for cl in (False, True)
    ]
    plan["settings"] = {
        "train": eager,
        "compile": [{"precision": "bf16", "channels_last": True, "compile": True}],
    }
    return plan


def setting_name(setting: dict[str, Any]) -> str:
    parts = [setting["precision"]]
    if setting["channels_last"]:
        parts.append("channels_last")
    if setting["compile"]:
        parts.append("compile")
    return "+".join(parts)


def _model_configs(plan: dict[str, Any]) -> dict[str, Any]:
    from m2u.training.models import DiscriminatorConfig, GeneratorConfig, MSegConfig

    if plan["tiny_models"]:
        return {
            "mseg": MSegConfig(base_channels=4, levels=3),
            "generator": GeneratorConfig(width_multiplier=0.125, stages=3),
            "discriminator": DiscriminatorConfig(channels=(3, 8, 16, 16, 16, 1)),
            "perceptual_layers": ("relu1_1", "relu2_1"),
        }
    return {
        "mseg": MSegConfig(),
        "generator": GeneratorConfig(),
        "discriminator": DiscriminatorConfig(),
        "perceptual_layers": None,  # the paper's five
    }


def _train_config(plan: dict[str, Any], task: str, setting: dict[str, Any], out: Path) -> Any:
    from m2u.training.config import GanTrainConfig, MSegTrainConfig

    models = _model_configs(plan)
    common = {
        "out": str(out),
        "batch_size": plan["batch_size"],
        "device": plan["device"],
        "precision": setting["precision"],
        "channels_last": setting["channels_last"],
        "compile": setting["compile"],
        "progress": False,
        "num_workers": 0,
    }
    if task == "mseg":
        return MSegTrainConfig(model=models["mseg"], **common)
    extra = {"perceptual_layers": models["perceptual_layers"]} if models["perceptual_layers"] else {}
    # VGG19 with random weights: the same cost as ImageNet's, and the GPU machine may be offline.
    return GanTrainConfig(
        generator=models["generator"],
        discriminator=models["discriminator"],
        mask_source="gt",
        vgg_weights="random",
        **extra,
        **common,
    )


# --------------------------------------------------------------------------------------------- child steps
def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: Any) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def _reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def step_env(plan: dict[str, Any]) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "ok": True,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "device_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "devices": [],
    }
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=20)
        info["driver"] = done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout else None
    for index in range(info["device_count"]):
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        info["devices"].append(
            {
                "index": index,
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count,
                "memory_gib": round(total / 2**30, 2),
                "free_gib": round(free / 2**30, 2),
                "bf16_supported": torch.cuda.is_bf16_supported(),
            }
        )
    if not plan["dry_run"] and not info["devices"]:
        info["ok"], info["error"] = False, "CUDA reports no device"
    return info


def step_dataset(plan: dict[str, Any]) -> dict[str, Any]:
    from m2u.datasets import write_synthetic_dataset

    started = time.monotonic()
    out = Path(plan["work"]) / "data"
    write_synthetic_dataset(
        out, plan["samples"], size=plan["size"], seed=0, split=(0.7, 0.15, 0.15), shard_size=16,
        image_format="jpg", overwrite=True,
    )  # fmt: skip
    from m2u.datasets.loader import count_samples

    counts = {split: count_samples(out, split) for split in ("train", "val", "test")}
    return {"ok": counts["train"] > 0, "path": str(out), "counts": counts, "seconds": _since(started)}


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _fixed_batch(plan: dict[str, Any], device: Any) -> dict[str, Any]:
    """One training batch of the check's dataset, already on the device."""
    from m2u.datasets.loader import LoaderConfig, make_loader, to_float_batch

    config = LoaderConfig.for_evaluation(batch_size=plan["batch_size"], num_workers=0, as_uint8=True)
    raw = next(iter(make_loader(Path(plan["work"]) / "data", "train", config)))
    return to_float_batch(raw, device)


def train_setting(plan: dict[str, Any], task_name: str, setting: dict[str, Any]) -> dict[str, Any]:
    """A few steps of the real task: warm-up (compile, cuDNN autotuning), then timed steps."""
    import torch

    from m2u.training.device import resolve_device
    from m2u.training.distributed import DistributedContext, bind_device
    from m2u.training.gan_task import GanTask
    from m2u.training.mseg_task import MSegTask
    from m2u.training.rng import seed_everything

    if setting["precision"] == "fp16" and plan["device"] != "cuda":
        return _skipped("fp16 autocast needs CUDA")
    if setting["compile"] and not plan["with_compile"]:
        return _skipped(COMPILE_SKIPPED)
    device = resolve_device(plan["device"])
    bind_device(device)
    _reset_peak(device)
    seed_everything(0)
    out = Path(plan["work"]) / "runs" / f"{task_name}-{setting_name(setting)}"
    config = _train_config(plan, task_name, setting, out)
    task = (MSegTask if task_name == "mseg" else GanTask)(config, device, DistributedContext())
    before = {name: [p.detach().clone() for p in m.parameters()] for name, m in task.networks.items()}
    batch = _fixed_batch(plan, device)
    started = time.monotonic()
    step = 0
    for _ in range(plan["warmup_steps"]):
        task.train_step(batch, step)
        step += 1
    _sync(device)
    warmup_seconds = time.monotonic() - started
    started = time.monotonic()
    for _ in range(plan["timed_steps"]):
        losses = task.train_step(batch, step)
        step += 1
    _sync(device)
    seconds = (time.monotonic() - started) / plan["timed_steps"]
    values = {name: float(value) for name, value in losses.items()}
    finite = all(torch.isfinite(torch.tensor(list(values.values()))).tolist())
    changed = {
        name: any(not torch.equal(a, b) for a, b in zip(before[name], module.parameters()))
        for name, module in task.networks.items()
    }
    result = {
        "ok": finite and all(changed.values()),
        "step_seconds": round(seconds, 5),
        "images_per_second": round(plan["batch_size"] / seconds, 2),
        "warmup_seconds": round(warmup_seconds, 3),
        "losses": values,
        "losses_finite": finite,
        "weights_changed": changed,
        "peak_memory_gib": _peak_gib(device),
    }
    if setting["precision"] == "fp16":
        result["grad_scale"] = float(task.scaler.get_scale())
    if not result["ok"]:
        result["error"] = "non-finite loss" if not finite else f"weights unchanged: {changed}"
    return result


def _train_matrix(plan: dict[str, Any], task_name: str, group: str, record: Any) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for setting in plan["settings"][group]:
        name = setting_name(setting)
        try:
            results[name] = train_setting(plan, task_name, setting)
        except Exception as error:  # noqa: BLE001 - a failing setting is a result, the others still run
            results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}"}
            results[name]["traceback"] = traceback.format_exc(limit=6)
        record(
            {"ok": all(r["ok"] for r in results.values()), "settings": results}
        )  # kept if a later one hangs
    return {"ok": all(r["ok"] for r in results.values()), "settings": results}


def _median_latency(model: Any, inputs: tuple, dtype: Any, device: Any, repeats: int) -> float:
    import torch

    def forward() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(*inputs)

    for _ in range(2):  # warm-up (cuDNN autotuning, allocator)
        forward()
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        forward()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def step_latency(plan: dict[str, Any]) -> dict[str, Any]:
    import torch

    from m2u.training.device import resolve_device
    from m2u.training.distributed import bind_device
    from m2u.training.models import CARU2Net, MSeg
    from m2u.training.rng import seed_everything

    device = resolve_device(plan["device"])
    bind_device(device)
    models = _model_configs(plan)
    seed_everything(0)
    size = plan["size"]
    results: dict[str, Any] = {}
    for name, model in (("generator", CARU2Net(models["generator"])), ("mseg", MSeg(models["mseg"]))):
        model = model.to(device).eval()
        for batch in (1, 8):
            masked = torch.rand(batch, 3, size, size, device=device) * 2 - 1
            mask = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
            inputs = (masked, mask) if name == "generator" else (masked,)
            for precision in plan["latency_precisions"]:
                _reset_peak(device)
                dtype = torch.bfloat16 if precision == "bf16" else None
                median = _median_latency(model, inputs, dtype, device, plan["latency_repeats"])
                results[f"{name}/batch{batch}/{precision}"] = {
                    "seconds": round(median, 6),
                    "seconds_per_image": round(median / batch, 6),
                    "peak_memory_gib": _peak_gib(device),
                }
    return {"ok": True, "size": size, "paper_seconds_per_image": 0.12, "results": results}


def step_loader(plan: dict[str, Any]) -> dict[str, Any]:
    """The shard loader into the device: pinned memory, workers kept between epochs, uint8 converted there."""
    from m2u.datasets.loader import LoaderConfig, make_loader, to_float_batch
    from m2u.training.device import resolve_device
    from m2u.training.distributed import DistributedContext, bind_device
    from m2u.training.gan_task import GanTask
    from m2u.training.rng import seed_everything

    device = resolve_device(plan["device"])
    bind_device(device)
    on_gpu = device.type == "cuda"
    config = LoaderConfig(
        batch_size=plan["batch_size"], num_workers=plan["loader_workers"], pin_memory=on_gpu,
        persistent_workers=True, as_uint8=True, drop_last=True,
    )  # fmt: skip
    loader = make_loader(Path(plan["work"]) / "data", "train", config)
    started = time.monotonic()
    first_epoch = sum(len(to_float_batch(batch, device)["key"]) for batch in loader)  # starts the workers
    startup = time.monotonic() - started
    _sync(device)
    started = time.monotonic()
    samples = sum(len(to_float_batch(batch, device)["key"]) for batch in loader)  # the same workers
    _sync(device)
    rate = samples / max(time.monotonic() - started, 1e-9)
    # In training: the GAN (fp32) fed from the loader; time spent waiting in next() against the whole loop.
    seed_everything(0)
    setting = {"precision": "fp32", "channels_last": False, "compile": False}
    task = GanTask(_train_config(plan, "gan", setting, Path(plan["work"]) / "runs" / "loader"), device,
                   DistributedContext())  # fmt: skip
    waited, steps = 0.0, 0
    started = time.monotonic()
    while steps < plan["loader_steps"]:
        iterator = iter(loader)  # the next epoch, same workers
        while steps < plan["loader_steps"]:
            fetch = time.monotonic()
            raw = next(iterator, None)
            if raw is None:
                break
            batch = to_float_batch(raw, device)
            waited += time.monotonic() - fetch  # the device is idle here: the step before was synchronised
            task.train_step(batch, steps)
            _sync(device)
            steps += 1
    total = time.monotonic() - started
    loop_rate = steps * plan["batch_size"] / total
    return {
        "ok": first_epoch > 0 and samples == first_epoch,
        "workers": plan["loader_workers"],
        "pin_memory": on_gpu,
        "samples_per_epoch": samples,
        "worker_startup_seconds": round(startup, 3),
        "samples_per_second": round(rate, 1),
        "train_loop_images_per_second": round(loop_rate, 2),
        "train_steps": steps,
        "train_loop_wait_seconds": round(waited, 3),
        "train_loop_wait_fraction": round(waited / total, 3),
    }


def step_ddp_nccl_one_rank(plan: dict[str, Any]) -> dict[str, Any]:
    """One GPU: the trainer runs without DDP at world size 1, so NCCL and a DDP step are checked directly."""
    import torch
    import torch.distributed as torch_dist

    from m2u.training.distributed import ddp_device_ids
    from m2u.training.models import MSeg

    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    init = Path(plan["work"]) / "nccl-init"
    torch_dist.init_process_group("nccl", init_method=f"file://{init}", rank=0, world_size=1)
    try:
        value = torch.ones(4, device=device)
        torch_dist.all_reduce(value)
        model = MSeg(_model_configs(plan)["mseg"]).to(device)
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=ddp_device_ids(device))
        loss = wrapped(torch.rand(2, 3, 64, 64, device=device)).float().mean()
        loss.backward()
        torch.cuda.synchronize()
        grads = all(p.grad is not None for p in model.parameters() if p.requires_grad)
        return {"ok": bool(value.sum().item() == 4 and grads), "all_reduce": True, "ddp_backward": grads}
    finally:
        torch_dist.destroy_process_group()


CHILD_FUNCTIONS = {
    "env": step_env,
    "dataset": step_dataset,
    "latency": step_latency,
    "loader": step_loader,
}


def run_child(names: list[str], plan_path: Path) -> int:
    plan = json.loads(plan_path.read_text())
    if plan["dry_run"]:
        import torch

        torch.set_num_threads(1)  # tiny tensors: threads only contend (CI and shared machines)
    for name in names:
        out = Path(plan["work"]) / f"{name}.json"

        def record(result: dict[str, Any], out: Path = out) -> None:
            out.write_text(json.dumps(result, indent=2, default=str))

        started = time.monotonic()
        try:
            if name.startswith(("train-", "compile-")):
                group, task_name = name.split("-", 1)
                result = _train_matrix(plan, task_name, "train" if group == "train" else "compile", record)
            elif name == "nccl-one-rank":
                result = step_ddp_nccl_one_rank(plan)
            else:
                result = CHILD_FUNCTIONS[name](plan)
        except Exception as error:  # noqa: BLE001 - recorded, the parent names it
            result = {
                "ok": False,
                "error": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(),
            }
        result["seconds"] = _since(started)
        record(result)
    return 0


# --------------------------------------------------------------------------------------------- parent
class Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _run_limited(
    command: list[str], limit: float, log: Path, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run a command with a wall-clock limit (its whole process group is killed at the limit)."""
    started = time.monotonic()
    with open(log, "w") as handle:
        process = subprocess.Popen(
            command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            returncode = process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
            return {"returncode": None, "timed_out": True, "seconds": _since(started)}
    return {"returncode": returncode, "timed_out": False, "seconds": _since(started)}


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def run_children(names: list[str], plan: dict[str, Any], plan_path: Path, limit: float) -> dict[str, Any]:
    work = Path(plan["work"])
    log = work / f"{names[0]}.log" if len(names) == 1 else work / "children.log"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        ",".join(names),
        "--plan",
        str(plan_path),
    ]
    run = _run_limited(command, limit, log)
    results = {}
    for name in names:
        path = work / f"{name}.json"
        result = json.loads(path.read_text()) if path.is_file() else {}
        if not path.is_file() or "seconds" not in result:  # the child did not finish this step
            reason = f"timed out after {limit:.0f} s" if run["timed_out"] else f"exit {run['returncode']}"
            result = {**result, "ok": False, "error": f"{reason}; log: {_tail(log)}"}
        results[name] = result
    return results


def _ddp_command(plan: dict[str, Any], world: int, run_dir: Path) -> list[str]:
    """The README's torchrun command, at the check's size."""
    work = Path(plan["work"])
    torchrun = Path(sys.executable).with_name("torchrun")
    models = _model_configs(plan)
    command = [str(torchrun), "--standalone", "--nproc_per_node", str(world), "-m", "m2u.training.cli", "gan"]
    command += [
        "--data",
        str(work / "data"),
        "--out",
        str(run_dir),
        "--mask-source",
        "gt",
        "--vgg-weights",
        "random",
    ]
    command += [
        "--max-steps",
        str(plan["ddp_steps"]),
        "--batch-size",
        str(plan["batch_size"]),
        "--log-every",
        "1",
    ]
    command += ["--val-every", "0", "--no-progress", "--no-test", "--device", plan["device"]]
    command += ["--num-workers", str(min(2, plan["loader_workers"])) if not plan["dry_run"] else "0"]
    if plan["tiny_models"]:
        command += ["--width-multiplier", str(models["generator"].width_multiplier), "--stages", "3"]
    else:
        command += ["--precision", "bf16", "--channels-last"]
    return command


def step_ddp(plan: dict[str, Any], plan_path: Path, limit: float, gpus: int) -> dict[str, Any]:
    """The README's torchrun command on every visible GPU (2 CPU processes, gloo, in the dry run)."""
    work = Path(plan["work"])
    world = 2 if plan["dry_run"] else max(1, gpus)
    run_dir = work / "runs" / "ddp"
    shutil.rmtree(run_dir, ignore_errors=True)
    command = _ddp_command(plan, world, run_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.monotonic()
    run = _run_limited(command, limit, work / "ddp.log", env)
    result: dict[str, Any] = {"world_size": world, "backend": "gloo" if plan["dry_run"] else "nccl", **run}
    metrics_path = run_dir / "metrics.json"
    if run["returncode"] != 0 or not metrics_path.is_file():
        reason = "timed out" if run["timed_out"] else f"torchrun exit {run['returncode']}"
        return {**result, "ok": False, "error": f"{reason}; log: {_tail(work / 'ddp.log')}"}
    metrics = json.loads(metrics_path.read_text())
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("split") == "train"]
    times = [r["time"] for r in train]
    step_seconds = statistics.median(b - a for a, b in zip(times[1:], times[2:])) if len(times) >= 3 else None
    finite = bool(train) and all(math.isfinite(float(r.get("g_loss", "nan"))) for r in train)
    result.update(
        {
            "ok": metrics.get("world_size") == world and metrics.get("steps") == plan["ddp_steps"] and finite,
            "steps": metrics.get("steps"),
            "trainer_world_size": metrics.get("world_size"),
            "losses_finite": finite,
            "step_seconds": round(step_seconds, 5) if step_seconds else None,
            "global_images_per_second": round(world * plan["batch_size"] / step_seconds, 2)
            if step_seconds
            else None,
        }
    )
    if not plan["dry_run"] and world == 1:
        remaining = limit - (time.monotonic() - started)
        one_rank = run_children(["nccl-one-rank"], plan, plan_path, max(remaining, MIN_START_SECONDS))
        result["nccl_one_rank"] = one_rank["nccl-one-rank"]
        result["ok"] = result["ok"] and one_rank["nccl-one-rank"]["ok"]
    return result


def _best(settings: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    timed = {name: r for name, r in settings.items() if r.get("ok") and r.get("step_seconds")}
    if not timed:
        return None
    name = min(timed, key=lambda n: timed[n]["step_seconds"])
    return name, timed[name]


def summarise(results: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    """Best setting per task against fp32, and the paper preset's projected wall time from the measured steps."""
    summary: dict[str, Any] = {"tasks": {}}
    world = max(1, results.get("env", {}).get("device_count", 0) or 1)
    train_steps = -(-int(PAPER["photos"] * PAPER["train_fraction"]) // PAPER["batch_size"]) * PAPER["epochs"]
    projection: dict[str, Any] = {
        "iterations": PAPER["iterations"],
        "steps_for_100_epochs": train_steps,
        "gpus": world,
        "assumes": "measured step time of one GPU x steps / GPUs (linear scaling, no validation or I/O time)",
    }
    totals = {"fp32": 0.0, "best": 0.0}
    for task in ("mseg", "gan"):
        settings = {**results.get(f"train-{task}", {}).get("settings", {})}
        settings.update(results.get(f"compile-{task}", {}).get("settings", {}))
        best = _best(settings)
        fp32 = settings.get("fp32", {})
        if best is None or not fp32.get("step_seconds"):
            continue
        name, best_result = best
        entry = {
            "best_setting": name,
            "best_images_per_second": best_result["images_per_second"],
            "fp32_images_per_second": fp32["images_per_second"],
            "best_vs_fp32": round(fp32["step_seconds"] / best_result["step_seconds"], 2),
        }
        for label, seconds in (("fp32", fp32["step_seconds"]), ("best", best_result["step_seconds"])):
            hours = seconds * max(PAPER["iterations"], train_steps) / world / 3600
            entry[f"paper_hours_{label}"] = round(hours, 2)
            totals[label] += hours
        summary["tasks"][task] = entry
    projection.update({f"total_hours_{k}": round(v, 2) for k, v in totals.items()})
    summary["paper_projection"] = projection
    if plan["dry_run"]:
        summary["note"] = "dry run on CPU at a tiny size: the figures prove the code paths, not the speed"
        # Kept (the arithmetic is what a dry run checks), marked: hours from tiny CPU steps are not the preset's.
        projection["assumes"] += "; from a dry run's tiny CPU steps: not the paper preset's cost"
    return summary


def failures(results: dict[str, Any]) -> list[str]:
    failed = []
    for name, result in results.items():
        if result.get("ok"):
            continue
        bad = [f"{name}/{s}" for s, r in result.get("settings", {}).items() if not r.get("ok")]
        failed.extend(bad or [name])
    return failed


WORDS = {PASSED: "ok", SKIPPED: "skipped", FAILED: "FAILED"}  # the table's result column


def _train_figures(result: dict[str, Any]) -> str:
    """Speed, and peak memory where it was measured (CUDA; a CPU run has none)."""
    figures = f"{result['images_per_second']} img/s, {result['step_seconds'] * 1000:.1f} ms/step"
    peak = result.get("peak_memory_gib")
    return figures if peak is None else f"{figures}, peak {peak} GiB"


def table(results: dict[str, Any], summary: dict[str, Any]) -> str:
    lines = ["| path | result | figures |", "|---|---|---|"]
    for name, result in results.items():
        status = WORDS[status_of(result)]
        for setting, r in result.get("settings", {}).items():
            figures = r.get("skipped") or (
                _train_figures(r) if r.get("step_seconds") else r.get("error", "")[:120]
            )
            lines.append(f"| {name} {setting} | {WORDS[status_of(r)]} | {figures} |")
        if "settings" in result:
            continue
        figures = result.get("error", "")[:160].replace("\n", " ")
        if name == "env":
            devices = ", ".join(f"{d['name']} {d['memory_gib']} GiB" for d in result.get("devices", []))
            figures = f"torch {result.get('torch')}, CUDA {result.get('cuda_runtime')}, {devices or 'no GPU'}"
        elif name == "dataset" and result.get("ok"):
            figures = ", ".join(f"{count} {split}" for split, count in result.get("counts", {}).items())
        elif name == "latency" and result.get("ok"):
            figures = ", ".join(
                f"{k} {v['seconds_per_image'] * 1000:.1f} ms/img"
                for k, v in result["results"].items()
                if k.endswith("fp32")
            )
        elif name == "loader" and result.get("ok"):
            figures = f"{result['samples_per_second']} samples/s alone, {result['workers']} workers"
        elif name == "ddp" and result.get("ok"):
            figures = f"world {result['world_size']} ({result['backend']}), {result['steps']} steps"
        lines.append(f"| {name} | {status} | {figures} |")
    for task, entry in summary.get("tasks", {}).items():
        # A dry run's steps are tiny networks at 32x32 on a CPU: hours projected from them would read as the
        # paper preset's cost, which they are not.
        projected = (
            "no paper-preset projection from a dry run"
            if summary.get("note")
            else f"paper preset {entry['paper_hours_best']} h (fp32 {entry['paper_hours_fp32']} h)"
        )
        lines.append(
            f"| {task}: best vs fp32 | {entry['best_setting']} | {entry['best_vs_fp32']}x; {projected} |"
        )
    waits = summary.get("gpu_waits_for_data")
    if waits is not None:
        lines.append(f"| loader vs GAN step | {'GPU waits' if waits else 'loader keeps up'} | |")
    return "\n".join(lines) + "\n"


def _loader_verdict(results: dict[str, Any], summary: dict[str, Any]) -> None:
    loader = results.get("loader", {})
    gan = summary.get("tasks", {}).get("gan")
    if loader.get("ok") and gan:
        # The loader alone must deliver more samples per second than the fastest GAN setting consumes, and in
        # the fed training loop the device must not sit idle for a tenth of the time.
        slower = loader["samples_per_second"] < gan["best_images_per_second"]
        summary["gpu_waits_for_data"] = slower or loader["train_loop_wait_fraction"] > 0.1
        summary["loader_samples_per_second"] = loader["samples_per_second"]
        summary["train_loop_wait_fraction"] = loader["train_loop_wait_fraction"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny sizes: proves the script, not speed"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"JSON path (default: {RESULTS}; dry run: a temp)"
    )
    parser.add_argument(
        "--budget", type=float, default=None, help="overall seconds (default 480; dry run 300)"
    )
    parser.add_argument("--only", default=None, help=f"comma-separated steps among {', '.join(STEPS)}")
    parser.add_argument(
        "--with-compile", action="store_true", help="dry run: run the torch.compile steps too"
    )
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temp folder)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--plan", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args.child.split(","), args.plan)
    import torch

    has_cuda = torch.cuda.is_available()
    if not has_cuda:
        print("gpu_check: no GPU was found (torch.cuda.is_available() is False)", flush=True)
        if not args.dry_run:
            print("gpu_check: nothing to measure; --dry-run runs the same steps on CPU at a tiny size")
            return 2
    chosen = STEPS if args.only is None else tuple(s.strip() for s in args.only.split(","))
    unknown = [s for s in chosen if s not in STEPS]
    if unknown:
        print(f"gpu_check: --only: unknown steps {unknown}; steps are {', '.join(STEPS)}")
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="m2u-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    out = args.out or (work / "gpu_check.json" if args.dry_run else RESULTS)
    plan = make_plan(args, work)
    plan_path = work / "plan.json"
    plan_path.write_text(json.dumps(plan, indent=2))
    budget = Budget(args.budget or (DRY_BUDGET_SECONDS if args.dry_run else BUDGET_SECONDS))
    print(f"gpu_check: {'dry run on CPU' if args.dry_run else 'CUDA'}; work folder {work}", flush=True)
    results = run_steps(chosen, plan, plan_path, budget, args.dry_run)
    summary = summarise(results, plan)
    _loader_verdict(results, summary)
    failed = failures(results)
    mark_statuses(results)
    paths = path_statuses(results)
    report = {
        "plan": {k: v for k, v in plan.items() if k != "work"},
        "gpu_found": has_cuda,
        "results": results,
        "summary": summary,
        "failed": failed,
        "paths": paths,  # every path: passed, skipped (with its reason) or failed
        "counts": count_statuses(paths),
        "skipped": [path for path, entry in paths.items() if entry["status"] == SKIPPED],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    text = table(results, summary)
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"gpu_check: wrote {out} and {out.with_suffix('.md')}")
    print(verdict(paths, args.dry_run))
    return 1 if failed else 0


def run_steps(
    chosen: tuple[str, ...], plan: dict[str, Any], plan_path: Path, budget: Budget, dry_run: bool
) -> dict[str, Any]:
    import torch

    results: dict[str, Any] = {}
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    # The dry run runs its in-process steps in one child (one start-up instead of eight); a GPU run isolates each.
    groups: list[list[str]] = []
    for name in chosen:
        if (
            dry_run
            and name in CHILD_STEPS
            and groups
            and groups[-1][0] in CHILD_STEPS
            and "ddp" not in groups[-1]
        ):
            groups[-1].append(name)
        else:
            groups.append([name])
    if "dataset" not in chosen and not (Path(plan["work"]) / "data").is_dir() and set(chosen) - {"env"}:
        groups.insert(1 if groups and groups[0] == ["env"] else 0, ["dataset"])
    for group in groups:
        if group[0].startswith("compile-") and not plan["with_compile"]:
            settings = {setting_name(s): _skipped(COMPILE_SKIPPED) for s in plan["settings"]["compile"]}
            results.update({name: {"ok": True, "settings": dict(settings)} for name in group})
            for name in group:
                print(f"gpu_check:   {name}: {status_line(results[name])}", flush=True)
            continue
        left = budget.left()
        limit = min(sum(LIMITS[name] for name in group) if not dry_run else left, left)
        if left < MIN_START_SECONDS:
            for name in group:
                results[name] = {"ok": False, "error": "not run: the time budget ran out"}
            continue
        print(f"gpu_check: {', '.join(group)} (limit {limit:.0f} s)", flush=True)
        if group == ["ddp"]:
            results["ddp"] = step_ddp(plan, plan_path, limit, gpus)
        else:
            results.update(run_children(group, plan, plan_path, limit))
        for name in group:
            print(f"gpu_check:   {name}: {status_line(results[name])}", flush=True)
    return results


if __name__ == "__main__":
    sys.exit(main())
