"""m2u.masking: read images, find faces and landmarks, put a realistic mask on each face."""

from m2u.masking.batch import BatchConfig, BatchResult, mask_files
from m2u.masking.detect import DetectorConfig, Face, FaceDetector
from m2u.masking.geometry import MaskingError, PlacementConfig
from m2u.masking.imageio import IMAGE_SUFFIXES, ImageReadError, is_hidden, is_image_entry, read_image
from m2u.masking.inputs import Discovery, InputEntry, OutputFolderError, discover
from m2u.masking.render import MaskConfig, MaskResult, apply_mask
from m2u.masking.templates import COLORS, MASK_TYPES, TemplatePackError, load_template_pack

__all__ = [
    "BatchConfig",
    "BatchResult",
    "COLORS",
    "DetectorConfig",
    "Discovery",
    "Face",
    "FaceDetector",
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "InputEntry",
    "MASK_TYPES",
    "MaskConfig",
    "MaskResult",
    "MaskingError",
    "OutputFolderError",
    "PlacementConfig",
    "TemplatePackError",
    "apply_mask",
    "discover",
    "is_hidden",
    "is_image_entry",
    "load_template_pack",
    "mask_files",
    "read_image",
]
