"""m2u.inference: the two-stage restorer, unmasking photos, and export. Never imports evaluation.

Public surface (imported lazily: torch loads only when a name is used)::

    load_two_stage(mseg_path, generator_path, device) -> TwoStageModel (.mseg, .generator, their ModelInfo);
    load_pretrained(name) -> TwoStageModel (the shipped one)
    restore_batch(mseg, generator, masked01, mask_threshold) -> (mask, raw, composite)
    Unmasker, UnmaskConfig, FileResult, unmask_files(inputs, mseg_path, generator_path, out_dir, config)
    ExportConfig, export_onnx(model, path, config)
"""

from __future__ import annotations

from m2u.core.lazy import lazy_exports

_EXPORTS = {
    "ExportConfig": "export",
    "FileResult": "photos",
    "UnmaskConfig": "unmask",
    "Unmasker": "unmask",
    "export_onnx": "export",
    "load_pretrained": "restore",
    "load_two_stage": "restore",
    "restore_batch": "restore",
    "unmask_files": "photos",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
