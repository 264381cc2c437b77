"""m2u.masking: read images, find faces and landmarks, put a realistic mask on each face.

Public surface (imported lazily: OpenCV and dlib load only when a name is used)::

    read_image(path) -> uint8 RGB; ImageReadError   (re-exported from m2u.core.imageio)
    FaceDetector(DetectorConfig).detect(image) -> list[Face]
    apply_mask(image, face, MaskConfig, seed) -> MaskResult; MaskingError; PlacementConfig
    load_template_pack(path), TemplatePackError, MASK_TYPES, COLORS
    mask_files(inputs, out_dir, BatchConfig) -> BatchResult     # what m2u-mask runs
"""

from __future__ import annotations

from m2u.core.lazy import lazy_exports

_EXPORTS = {
    "BatchConfig": "batch",
    "BatchResult": "batch",
    "mask_files": "batch",
    "COLORS": "templates",
    "DetectorConfig": "detect",
    "Face": "detect",
    "FaceDetector": "detect",
    "ImageReadError": "m2u.core.imageio",
    "MASK_TYPES": "templates",
    "MaskConfig": "render",
    "MaskResult": "render",
    "MaskingError": "geometry",
    "PlacementConfig": "geometry",
    "TemplatePackError": "templates_pack",
    "apply_mask": "render",
    "load_template_pack": "templates_pack",
    "read_image": "m2u.core.imageio",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
