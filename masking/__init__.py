"""m2u.masking: read images, find faces and landmarks, put a realistic mask on each face."""

from m2u.masking.detect import DetectorConfig, Face, FaceDetector
from m2u.masking.imageio import IMAGE_SUFFIXES, ImageReadError, read_image

__all__ = ["DetectorConfig", "Face", "FaceDetector", "IMAGE_SUFFIXES", "ImageReadError", "read_image"]
