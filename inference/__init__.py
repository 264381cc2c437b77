"""m2u.inference: the two-stage restorer, unmasking photos, and export. Never imports evaluation.

Public surface::

    load_two_stage(mseg_path, generator_path, device) -> (MSeg, CARU2Net); load_pretrained(name) (the shipped one)
    restore_batch(mseg, generator, masked01, threshold) -> (mask, raw, composite)
    Unmasker, UnmaskConfig, FileResult, unmask_files(inputs, mseg_path, generator_path, out_dir, config)
    ExportConfig, export_onnx(model, path, config)
"""

from __future__ import annotations

from m2u.inference.export import ExportConfig, export_onnx
from m2u.inference.photos import FileResult, unmask_files
from m2u.inference.restore import load_pretrained, load_two_stage, restore_batch
from m2u.inference.unmask import UnmaskConfig, Unmasker

__all__ = [
    "ExportConfig",
    "FileResult",
    "UnmaskConfig",
    "Unmasker",
    "export_onnx",
    "load_pretrained",
    "load_two_stage",
    "restore_batch",
    "unmask_files",
]
