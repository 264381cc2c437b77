"""m2u.training.inference: the two-stage restorer, unmasking photos, and export. Never imports evaluation.

Public surface::

    load_two_stage(mseg_path, generator_path, device) -> (MSeg, CARU2Net)
    restore_batch(mseg, generator, masked01, threshold) -> (mask, raw, composite)
    Unmasker, UnmaskConfig, FileResult, unmask_files(inputs, mseg_path, generator_path, out_dir, config)
    ExportConfig, export_onnx(model, path, config)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_two_stage": "restore",
    "restore_batch": "restore",
    "Unmasker": "unmask",
    "UnmaskConfig": "unmask",
    "FileResult": "unmask",
    "unmask_files": "unmask",
    "ExportConfig": "export",
    "export_onnx": "export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'm2u.training.inference' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"m2u.training.inference.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
