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
    # "torch": dlib's network run batched by PyTorch (m2u.evaluation.face_descriptor; the same descriptors to
    # float rounding, several times faster on CPU); "dlib": dlib's own compute_face_descriptor, one face at a time.
    engine: str = "torch"


@dataclass
class IdentityResult:
    """Per-pair identity scores; entries are NaN where no face or landmarks could be found."""

    cosine: np.ndarray
    distance: np.ndarray
    no_face: int


# One ground-truth face: its box (a dlib rectangle) and descriptor; None where no face or landmarks were found.
Reference = tuple[object, np.ndarray] | None
ENGINES = ("torch", "dlib")


def _face_models_dir(models_dir: str | None) -> Path:
    if models_dir:
        return Path(models_dir)
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MetricUnavailable("identity similarity needs the face-recognition-models package")
    # Importing the package itself fails (it imports pkg_resources): locate its files without importing it.
    return Path(spec.submodule_search_locations[0]) / "models"


class IdentityEmbedder:
    """128-D dlib face descriptors of aligned face images, compared pairwise.

    Each ground-truth face is detected and embedded once (`reference`); every output compared with it reuses its
    box, and all the outputs of a batch (every method and variant: `compare_many`) are embedded in one batch."""

    def __init__(self, config: IdentityConfig | None = None):
        self.config = config or IdentityConfig()
        if self.config.box not in ("detect", "frame"):
            raise ValueError(f"IdentityConfig.box must be 'detect' or 'frame', got {self.config.box!r}")
        if self.config.engine not in ENGINES:
            raise ValueError(f"IdentityConfig.engine must be one of {ENGINES}, got {self.config.engine!r}")
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
        self._encoder = dlib.face_recognition_model_v1(str(encoder)) if self.config.engine == "dlib" else None
        self._net = None
        if self.config.engine == "torch":
            from m2u.evaluation.face_descriptor import load_dlib_face_net

            try:
                self._net = load_dlib_face_net(str(encoder))
            except ValueError as exc:
                raise MetricUnavailable(f"cannot read {encoder}: {exc}") from exc
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

    def _shape(self, image: np.ndarray, box):
        """The 5 landmarks in `box`, or None when one falls outside the image."""
        shape = self._predictor(image, box)
        h, w = image.shape[:2]
        for i in range(shape.num_parts):
            point = shape.part(i)
            if not (0 <= point.x < w and 0 <= point.y < h):
                return None
        return shape

    def _descriptors(self, images: list[np.ndarray], shapes: list) -> np.ndarray:
        """One descriptor per (image, landmarks), from the 150-px chip dlib's compute_face_descriptor cuts; the
        same chip appearing twice (an output equal to another in the face region) is embedded once."""
        from m2u.evaluation.face_descriptor import CHIP_PADDING, CHIP_SIZE

        if not images:
            return np.zeros((0, 128))
        if self._net is None:
            assert self._encoder is not None  # engine "dlib"
            return np.stack(
                [
                    np.asarray(self._encoder.compute_face_descriptor(np.ascontiguousarray(im), s), np.float64)
                    for im, s in zip(images, shapes, strict=True)
                ]
            )
        chips = [
            np.asarray(self._dlib.get_face_chip(np.ascontiguousarray(im), s, CHIP_SIZE, CHIP_PADDING))
            for im, s in zip(images, shapes, strict=True)
        ]
        unique: dict[bytes, int] = {}
        index = [unique.setdefault(chip.tobytes(), len(unique)) for chip in chips]
        first = {i: k for k, i in reversed(list(enumerate(index)))}
        distinct = np.stack([chips[first[i]] for i in range(len(unique))])
        return self._net.descriptors(distinct)[index]

    def embed(self, image: np.ndarray, box) -> np.ndarray | None:
        """Descriptor of the face in `box`, or None when its landmarks fall outside the image."""
        shape = self._shape(image, box)
        return None if shape is None else self._descriptors([image], [shape])[0]

    def reference(self, targets: np.ndarray) -> list[Reference]:
        """Face box and descriptor of each ground-truth image (None where no face or landmarks are found);
        computed once and shared by every method compared against the same images."""
        boxes = [self.face_box(gt) for gt in targets]
        shapes = [self._shape(gt, box) if box is not None else None for gt, box in zip(targets, boxes)]
        found = [i for i, s in enumerate(shapes) if s is not None]
        descriptors = self._descriptors([targets[i] for i in found], [shapes[i] for i in found])
        refs: list[Reference] = [None] * len(targets)
        for i, descriptor in zip(found, descriptors, strict=True):
            refs[i] = (boxes[i], descriptor)
        return refs

    def compare(
        self,
        outputs: np.ndarray,
        targets: np.ndarray,
        reference: list[Reference] | None = None,
    ) -> IdentityResult:
        """outputs, targets: (B, H, W, 3) uint8 RGB. The face box is found on the ground truth and reused for
        the output, so both are embedded from the same region."""
        refs = reference if reference is not None else self.reference(targets)
        return self.compare_many([outputs], refs)[0]

    def compare_many(self, outputs: list[np.ndarray], reference: list[Reference]) -> list[IdentityResult]:
        """Several sets of outputs (e.g. every method and variant of a batch), each (B, H, W, 3) uint8 RGB, against
        the same ground-truth faces: every face embedded in one batch."""
        for out in outputs:
            if len(reference) != len(out):
                raise ValueError(f"{len(out)} outputs but {len(reference)} reference faces")
        images, shapes, slots = [], [], []
        for k, out in enumerate(outputs):
            for i, (image, ref) in enumerate(zip(out, reference, strict=True)):
                shape = self._shape(image, ref[0]) if ref is not None else None
                if shape is not None:
                    images.append(image)
                    shapes.append(shape)
                    slots.append((k, i))
        descriptors = self._descriptors(images, shapes)
        results = [
            IdentityResult(np.full(len(out), np.nan), np.full(len(out), np.nan), len(out)) for out in outputs
        ]
        for (k, i), e_out in zip(slots, descriptors, strict=True):
            e_gt = reference[i][1]  # type: ignore[index]
            result = results[k]
            result.cosine[i] = float(e_gt @ e_out / (np.linalg.norm(e_gt) * np.linalg.norm(e_out) + 1e-12))
            result.distance[i] = float(np.linalg.norm(e_gt - e_out))
            result.no_face -= 1
        return results
