"""m2u.training.inference: the two-stage restorer, unmasking photos, and export. Never imports evaluation.

Public surface::

    load_two_stage(mseg_path, generator_path, device) -> (MSeg, CARU2Net)
    restore_batch(mseg, generator, masked01, threshold) -> (mask, raw, composite)
    Unmasker, UnmaskConfig, FileResult, unmask_files(inputs, mseg_path, generator_path, out_dir, config)
    ExportConfig, export_onnx(model, path, config)
"""

from __future__ import annotations

from m2u.masking.lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
