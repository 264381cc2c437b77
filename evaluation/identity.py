"""Identity similarity: cosine and distance of dlib's 128-D face descriptors of output and ground truth."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m2u.evaluation.weights import MetricUnavailable

__all__ = ["IdentityConfig", "IdentityResult", "IdentityEmbedder"]


@dataclass
class IdentityConfig:
    """dlib's face embedding (the ResNet of face_recognition_models) for identity similarity."""

    models_dir: str | None = None  # None: the installed face_recognition_models package
    box: str = "detect"  # "detect": HOG face box on the ground truth; "frame": the whole (aligned) crop
    upsample: int = 1  # HOG detector upsampling (small crops need it)
    match_distance: float = 0.6  # dlib's same-person threshold on the Euclidean distance


@dataclass
class IdentityResult:
    """Per-pair identity scores; entries are NaN where no face or landmarks could be found."""

    cosine: np.ndarray
    distance: np.ndarray
    no_face: int


def _face_models_dir(models_dir: str | None) -> Path:
    if models_dir:
        return Path(models_dir)
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MetricUnavailable("identity similarity needs the face-recognition-models package")
    # Importing the package itself fails (it imports pkg_resources): locate its files without importing it.
    return Path(spec.submodule_search_locations[0]) / "models"


class IdentityEmbedder:
    """128-D dlib face descriptors of aligned face images, compared pairwise."""

    def __init__(self, config: IdentityConfig | None = None):
        self.config = config or IdentityConfig()
        if self.config.box not in ("detect", "frame"):
            raise ValueError(f"IdentityConfig.box must be 'detect' or 'frame', got {self.config.box!r}")
        try:
            import dlib
        except Exception as exc:
            raise MetricUnavailable(f"identity similarity needs dlib: {exc}") from exc
        root = _face_models_dir(self.config.models_dir)
        predictor = root / "shape_predictor_5_face_landmarks.dat"
        encoder = root / "dlib_face_recognition_resnet_model_v1.dat"
        for path in (predictor, encoder):
            if not path.is_file():
                raise MetricUnavailable(f"dlib model not found: {path}")
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(predictor))
        self._encoder = dlib.face_recognition_model_v1(str(encoder))
        self._detector = dlib.get_frontal_face_detector() if self.config.box == "detect" else None

    def face_box(self, image: np.ndarray):
        """The dlib rectangle of the largest face, or None when there is none."""
        h, w = image.shape[:2]
        if self._detector is None:
            return self._dlib.rectangle(0, 0, w - 1, h - 1)
        boxes = list(self._detector(image, self.config.upsample))
        if not boxes:
            return None
        return max(boxes, key=lambda r: r.width() * r.height())

    def embed(self, image: np.ndarray, box) -> np.ndarray | None:
        """Descriptor of the face in `box`, or None when its landmarks fall outside the image."""
        shape = self._predictor(image, box)
        h, w = image.shape[:2]
        points = [(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)]
        if any(not (0 <= x < w and 0 <= y < h) for x, y in points):
            return None
        return np.asarray(
            self._encoder.compute_face_descriptor(np.ascontiguousarray(image), shape), np.float64
        )

    def reference(self, targets: np.ndarray) -> list[tuple[object, np.ndarray] | None]:
        """Face box and descriptor of each ground-truth image (None where no face or landmarks are found);
        computed once and shared by every method compared against the same images."""
        refs: list[tuple[object, np.ndarray] | None] = []
        for gt in targets:
            box = self.face_box(gt)
            embedding = self.embed(gt, box) if box is not None else None
            refs.append((box, embedding) if embedding is not None else None)
        return refs

    def compare(
        self,
        outputs: np.ndarray,
        targets: np.ndarray,
        reference: list[tuple[object, np.ndarray] | None] | None = None,
    ) -> IdentityResult:
        """outputs, targets: (B, H, W, 3) uint8 RGB. The face box is found on the ground truth and reused for
        the output, so both are embedded from the same region."""
        refs = reference if reference is not None else self.reference(targets)
        if len(refs) != len(outputs):
            raise ValueError(f"{len(outputs)} outputs but {len(refs)} reference faces")
        cos = np.full(len(outputs), np.nan)
        dist = np.full(len(outputs), np.nan)
        no_face = 0
        for i, (out, ref) in enumerate(zip(outputs, refs, strict=True)):
            e_out = self.embed(out, ref[0]) if ref is not None else None
            if ref is None or e_out is None:
                no_face += 1
                continue
            e_gt = ref[1]
            cos[i] = float(e_gt @ e_out / (np.linalg.norm(e_gt) * np.linalg.norm(e_out) + 1e-12))
            dist[i] = float(np.linalg.norm(e_gt - e_out))
        return IdentityResult(cosine=cos, distance=dist, no_face=no_face)
