"""The one device resolver of m2u: training, evaluation, inference and export all call it."""

from __future__ import annotations

import os
import warnings

import torch

from m2u.core.errors import SettingError

__all__ = ["cpu_native_bf16", "resolve_device", "resolve_precision", "usable_precision"]


def _local_rank() -> int | None:
    """This process's GPU slot under torchrun (LOCAL_RANK with WORLD_SIZE > 1), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "LOCAL_RANK" not in os.environ:
        return None
    return int(os.environ["LOCAL_RANK"])


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when present, else CPU; 'cuda' without an index -> the current rank's GPU.

    Under torchrun every rank takes the GPU of its LOCAL_RANK, whatever index was asked for (an explicit
    `cuda:0` would otherwise put every rank on GPU 0); a differing index is honoured only for one process.
    A CUDA device that is not there, or a name torch does not know, is a SettingError naming the setting."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise SettingError("device", f"{name!r} is not a device: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cpu":
        return torch.device("cpu")  # "cpu:0" is the one CPU device
    if device.type != "cuda":  # mps, xpu, meta...: torch parses them, m2u runs on none of them
        raise SettingError("device", f"{name!r} is not a device m2u runs on: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise SettingError("device", f"{name!r} asked for, but CUDA is not available here")
    rank = _local_rank()
    if rank is not None:
        if device.index is not None and device.index != rank:
            warnings.warn(
                f"device {name} under torchrun: rank {rank} uses cuda:{rank} (one GPU per LOCAL_RANK)",
                stacklevel=2,
            )
        return torch.device("cuda", rank)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise SettingError("device", f"{name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return torch.device("cuda", index)


def _cpuinfo() -> str:
    """/proc/cpuinfo's text ("" where there is none: not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def cpu_model_name(cpuinfo: str | None = None) -> str:
    """The CPU's model ("AMD EPYC 9B14"), from /proc/cpuinfo's first "model name", else Python's
    platform.processor() (empty on most Linux machines, where the report said "cpu, cpu"), else "unknown CPU"."""
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip() or "unknown CPU"
    import platform

    return platform.processor() or "unknown CPU"


def cpu_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags). Without
    them PyTorch's CPU bf16 convolutions take a reference path measured ~100x slower than fp32."""
    if cpuinfo is None:
        cpuinfo = _cpuinfo()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def usable_precision(precision: str, device: torch.device) -> str:
    """`resolve_precision`, refused (SettingError) where it cannot train: fp16 autocast off CUDA."""
    resolved = resolve_precision(precision, device)
    if resolved == "fp16" and device.type != "cuda":
        raise SettingError("precision", "fp16 autocast needs CUDA; on CPU use bf16 or fp32")
    return resolved


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 autocast where the hardware has native bf16 (CPU: AVX512-BF16/AMX; CUDA: bf16 support),
    else fp32; a named precision is kept. Decided at start-up, on the machine that trains."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_native_bf16() else "fp32"
