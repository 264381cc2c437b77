"""`make demo` shows only real faces: the embedded portrait variants are aligned on the astronaut's face, never on
the shoulder patch that dlib's low-threshold HOG once ranked first (variant 4)."""

from __future__ import annotations

from m2u.masking.blazeface import blazeface_detect
from m2u.pipelines.demo import _faces


def test_every_demo_sample_is_aligned_on_the_face(tmp_path):
    samples = _faces(5, 96, tmp_path)  # variant 4 is the one whose largest dlib "face" was the patch
    assert len(samples) == 5
    for original, _masked, mask in samples:
        found = blazeface_detect(original, "short", 0.5, pad=0.25)
        # The aligned crop is a face: BlazeFace finds one, surely, around the crop centre.
        assert found and found[0].score > 0.7  # RealFaceDetectorConfig.sure_score
        left, top, right, bottom = found[0].box
        assert left < 48 < right and top < 48 < bottom
        assert mask.mean() > 0.1  # the engine put a mask on it
