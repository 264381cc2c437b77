"""Pretrained metric networks: where their weights come from, and the error when they cannot be had.

Weights load through the standard channels: an explicit local path, or the torch.hub cache (downloaded on first
use when allowed). A metric is never computed with random or substitute weights: the loader raises
`MetricUnavailable` with the reason and the report says "unavailable: <reason>".
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["MetricUnavailable", "load_state_dict_file", "hub_cached_path", "hub_state_dict"]


class MetricUnavailable(RuntimeError):
    """A metric cannot be computed here (missing weights or library); `.reason` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise MetricUnavailable(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or foreign file: say which and why, in one line
        said = " ".join(str(exc).split())
        if said.startswith("Weights only load failed"):  # torch's paragraph advises loading it unsafely
            said = "not a plain state dict of tensors (torch.load with weights_only refuses it)"
        raise MetricUnavailable(f"cannot read weights {path}: {said[:200]}") from exc


def hub_cached_path(url: str) -> Path:
    """Where torch.hub keeps the file it downloads from `url` (whether or not it is there)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def hub_state_dict(url: str, allow_download: bool) -> dict[str, torch.Tensor]:
    cached = hub_cached_path(url)
    if cached.is_file():
        return load_state_dict_file(cached)
    if not allow_download:
        raise MetricUnavailable(f"weights not in the torch.hub cache ({cached}) and downloads are disabled")
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, weights_only=True)
    except Exception as exc:
        raise MetricUnavailable(f"cannot download {url}: {type(exc).__name__}: {exc}") from exc
