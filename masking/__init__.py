"""m2u.masking: read images, find faces and landmarks, put a realistic mask on each face.

Names load lazily (m2u.masking.lazy): `import m2u.masking.fileio` from another package does not load dlib.
"""

from m2u.masking.lazy import lazy_exports

_EXPORTS = {
    "DetectorConfig": "detect",
    "Face": "detect",
    "FaceDetector": "detect",
    "MaskingError": "geometry",
    "PlacementConfig": "geometry",
    "IMAGE_SUFFIXES": "imageio",
    "ImageReadError": "imageio",
    "is_hidden": "imageio",
    "is_image_entry": "imageio",
    "read_image": "imageio",
    "MaskConfig": "render",
    "MaskResult": "render",
    "apply_mask": "render",
    "COLORS": "templates",
    "MASK_TYPES": "templates",
    "TemplatePackError": "templates",
    "load_template_pack": "templates",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
