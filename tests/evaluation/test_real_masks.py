"""Real masks (issue 23): the BlazeFace detector and the --detector choice, the masked-face rule that leaves faces
without a mask exactly as they are (with the reason), --min-score, and `m2u-eval real-masks` against label images."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import unicodedata
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from m2u.datasets.synthetic import make_synthetic_sample
from m2u.evaluation.cli import real_masks_main
from m2u.evaluation.real_masks import (
    RealMaskConfig,
    evaluate_real_masks,
    left_unchanged,
    mask_scores,
    photo_mask,
    read_label,
)
from m2u.inference.masked_rule import MaskedFaceRule
from m2u.inference.photos import summarize, unmask_files
from m2u.inference.unmask import DETECTORS, FaceRestoration, UnmaskConfig, Unmasker
from m2u.masking.detect import Face

CROP = 32  # the tiny checkpoints' size (tests/evaluation/conftest.py)


# Upright, but not surely (below BOX_TURN_CONFIDENCE): neither a turn nor an overrule of the upside-down classifier.
UNSURE = [0.7, 0.1, 0.1, 0.1]


def _boxes_read(monkeypatch, *readings) -> None:
    """The box orientation net's reading of every box replaced by `readings` (each 4 numbers: how sure it is that
    each number of quarter turns shows the face upright), one per call in order (the photo as it is, then each turned
    view asked), then UNSURE."""
    queue = list(readings)

    def box_orientations(image, boxes, net=None):
        ways = queue.pop(0) if queue else UNSURE
        return np.tile(np.asarray(ways, float), (len(boxes), 1))

    monkeypatch.setattr("m2u.inference.mask_presence.box_orientations", box_orientations)


@pytest.fixture(autouse=True)
def _boxes_read_upright(monkeypatch):
    """Here the box orientation net reads every box upright, unsurely, unless a test says otherwise: the drawn faces are
    nothing it was trained on, and the turned try's tests count the detector's calls. The shipped net is tested on a
    real face by its own test."""
    _boxes_read(monkeypatch)


def _astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


# --- the detector ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["short", "full"])
def test_blazeface_finds_the_astronaut_face_with_its_eyes_above_the_mouth(model):
    from m2u.masking.blazeface import blazeface_detect

    found = blazeface_detect(_astronaut(), model)
    assert len(found) == 1 and found[0].score > 0.8
    left, top, right, bottom = found[0].box
    assert 160 < left < 200 and 60 < top < 100 and 260 < right < 290 and 160 < bottom < 190
    eyes, mouth = found[0].keypoints[:2], found[0].keypoints[3]
    assert eyes[0, 0] < eyes[1, 0]  # keypoint 0 is the eye on the image's left
    assert (eyes[:, 1] < mouth[1]).all()
    # A tight crop of the face, letterboxed with a border, is still found; a flat image gives nothing.
    crop = _astronaut()[70:190, 165:285]
    assert blazeface_detect(crop, model, pad=0.25)
    assert blazeface_detect(np.full((200, 300, 3), 128, np.uint8), model) == []


def test_real_face_detector_gives_faces_with_landmarks_and_falls_back_to_dlib(monkeypatch):
    from m2u.masking import masked_faces
    from m2u.masking.masked_faces import RealFaceDetector, RealFaceDetectorConfig

    faces = RealFaceDetector().detect(_astronaut())
    assert len(faces) == 1 and faces[0].detector.startswith("blaze-") and not faces[0].problem
    eyes = faces[0].landmarks[36:48]
    assert (eyes[:, 0] > 160).all() and (eyes[:, 0] < 280).all() and (eyes[:, 1] > 80).all()
    # BlazeFace's keypoints travel with the face (the alignment's eyes): its eyes near dlib's eye centres.
    keypoints = faces[0].keypoints
    assert keypoints is not None and keypoints.shape == (6, 2)
    dlib_eyes = np.stack([eyes[:6].mean(0), eyes[6:].mean(0)])
    assert np.hypot(*(keypoints[:2] - dlib_eyes).T).max() < 0.2 * np.hypot(*(dlib_eyes[1] - dlib_eyes[0]))

    calls = []
    dlib_face = Face.from_landmarks(faces[0].landmarks, score=0.3)

    class _Fallback:
        def __init__(self, config):
            pass

        def detect(self, image):
            calls.append(image.shape)
            return [dlib_face]

    monkeypatch.setattr("m2u.masking.blazeface.blazeface_detect", lambda *a, **k: [])
    monkeypatch.setattr(masked_faces, "MaskedFaceDetector", _Fallback)
    (fallback,) = RealFaceDetector().detect(_astronaut())
    assert calls == [(512, 512, 3)] and fallback.box == dlib_face.box
    assert fallback.retry  # the fallback's faces are uncertain: faces only where a mask is found on them
    assert fallback.keypoints is None  # aligned on dlib's eye centres
    assert RealFaceDetector(RealFaceDetectorConfig(fallback=None)).detect(_astronaut()) == []


def test_detector_choice_is_checked_and_offered_on_the_command_line():
    from m2u.inference.cli import unmask_main

    assert UnmaskConfig().detector_model == "blazeface" and "blazeface" in DETECTORS
    with pytest.raises(ValueError, match="detector must be one of"):
        UnmaskConfig(detector_model="yolo")
    result = CliRunner().invoke(unmask_main, ["x.jpg", "-o", "out", "--detector", "yolo"])
    assert result.exit_code == 2 and "blazeface" in result.output
    from m2u.masking.masked_faces import BlazePass, RealFaceDetectorConfig

    with pytest.raises(ValueError, match="bad BlazeFace pass"):
        RealFaceDetectorConfig(blaze_stages=((BlazePass("medium"),),))


# --- the masked-face rule ------------------------------------------------------------------------------------------


def _crop_mask(size: int, y0: float, y1: float, x0: float = 0.2, x1: float = 0.8) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    mask[round(y0 * size) : round(y1 * size), round(x0 * size) : round(x1 * size)] = 255
    return mask


def test_the_rule_restores_masked_faces_and_says_why_it_leaves_the_rest():
    rule = MaskedFaceRule(min_mouth_probability=0.5)
    lower = _crop_mask(128, 0.5, 0.95)  # nose to chin
    assert rule.not_masked_reason(lower, 0.99) == ""
    assert rule.not_masked_reason(lower, 0.1).startswith(
        f"not masked: the mask classifier gives 0.10 (below {rule.min_mask_probability:g}) and M-Seg covers 100% of "
        "the mouth"
    )
    # The M-Seg route: the mouth covered and the classifier at least min_mouth_probability.
    assert rule.not_masked_reason(lower, 0.6) == ""
    assert rule.not_masked_reason(_crop_mask(128, 0.3, 0.5), 0.6).startswith("not masked")  # mouth bare
    assert rule.restores(rule.evidence(lower, 0.6)) and not rule.restores(rule.evidence(lower, 0.4))
    # An uncertain detection M-Seg finds no mask on is no face, whatever the classifier says.
    empty = np.zeros((128, 128), np.uint8)
    assert rule.not_masked_reason(empty, 0.99, uncertain=True).startswith("no face: an uncertain detection")
    # M-Seg marking the lower face of a bare face is what the classifier is there for; a masked-looking face with
    # no mask from M-Seg has nothing to restore.
    assert rule.not_masked_reason(np.zeros((128, 128), np.uint8), 0.99).startswith(
        "not masked: M-Seg marks 0.0%"
    )
    assert rule.not_masked_reason(lower, 0.2, uncertain=True).startswith("no face: an uncertain detection")
    # An uncertain detection is a face only where the rule restores it: a mask M-Seg finds but the classifier and
    # the M-Seg route do not accept (a texture such as scikit-image's coins) is no face, not a face "not masked".
    strict = MaskedFaceRule(min_mouth_probability=1.0)  # the classifier route alone
    assert strict.not_masked_reason(lower, 0.86, uncertain=True) == (
        "no face: an uncertain detection with no mask to restore on it (mask classifier 0.86, below 0.95)"
    )
    assert not strict.uncertain_is_face(lower, 0.86) and strict.uncertain_is_face(lower, 0.99)
    assert strict.not_masked_reason(lower, 0.86).startswith("not masked")  # a sure detection is a face
    assert strict.not_masked_reason(lower, 0.99, uncertain=True) == ""
    assert rule.uncertain_is_face(lower, 0.6)  # the M-Seg route restores it: a face
    # The route wants a mask's shape: M-Seg marking the eyes too (a texture, a face covered all over) is no mask.
    tall = _crop_mask(128, 0.3, 0.95)  # brows to chin
    assert rule.evidence(tall, 0.6)["eye_coverage"] == 1.0
    assert not rule.restores(rule.evidence(tall, 0.6)) and rule.restores(rule.evidence(tall, 0.99))
    assert "at most 20%" in rule.not_masked_reason(tall, 0.6)
    # The shipped defaults: the route from the classifier's 0.8 up, below it only the classifier's own 0.95.
    shipped = MaskedFaceRule()
    assert shipped.restores(shipped.evidence(lower, 0.8))
    assert not shipped.restores(shipped.evidence(lower, 0.79))
    with pytest.raises(ValueError, match="max_mouth_route_eye_coverage"):
        MaskedFaceRule(max_mouth_route_eye_coverage=-0.1)
    evidence = rule.evidence(_crop_mask(100, 0.5, 1.0), 0.75)
    assert evidence["eye_coverage"] == 0.0 and evidence["mouth_coverage"] == 1.0
    assert evidence["mask_fraction"] == pytest.approx(0.3, abs=0.01) and evidence["mask_probability"] == 0.75
    with pytest.raises(ValueError, match="min_mask_probability"):
        MaskedFaceRule(min_mask_probability=1.5)


def test_the_shipped_mask_classifier_tells_masked_from_bare_synthetic_faces():
    from m2u.inference.mask_presence import mask_probabilities

    samples = [make_synthetic_sample(128, seed=seed) for seed in range(6)]
    p_masked = mask_probabilities([s.masked for s in samples])
    p_bare = mask_probabilities([s.unmasked for s in samples])
    assert p_masked.shape == (6,) and ((p_masked >= 0) & (p_masked <= 1)).all()
    assert p_masked.mean() > p_bare.mean() + 0.3, (p_masked, p_bare)


def test_the_mask_classifier_gives_a_face_and_its_mirror_image_one_probability():
    from m2u.inference.mask_presence import mask_probabilities

    crops = [make_synthetic_sample(128, seed=seed).masked for seed in range(3)]
    crops.append(np.ascontiguousarray(crops[0][:, ::-1]))
    p = mask_probabilities(crops)
    mirrored = mask_probabilities([np.ascontiguousarray(c[:, ::-1]) for c in crops])
    np.testing.assert_allclose(p, mirrored, atol=1e-6)
    assert p[0] == pytest.approx(p[3], abs=1e-6)


def _photo_with_faces(n: int, face_px: int = 120):
    rng = np.random.default_rng(0)
    photo = cv2.GaussianBlur(
        rng.integers(0, 256, (face_px + 10, n * (face_px + 10), 3), dtype=np.uint8), (0, 0), 3
    )
    faces = []
    for k in range(n):
        sample = make_synthetic_sample(face_px, seed=k)
        x = 5 + k * (face_px + 10)
        photo[5 : 5 + face_px, x : x + face_px] = sample.masked
        faces.append(
            Face.from_landmarks(sample.landmarks + np.array([x, 5], np.float32), score=0.9 - 0.5 * k)
        )
    return photo, faces


class _Detector:
    """The faces listed for a photo's shape; in that photo turned k quarter turns anticlockwise (np.rot90: m2u-unmask's
    turned try), those listed in `turned[k]` (none by default)."""

    def __init__(self, faces_by_shape, turned=None):
        self.faces_by_shape, self.turned = faces_by_shape, turned or {}
        self.seen: list[np.ndarray] = []
        self.calls = 0

    def detect(self, image):
        self.calls += 1
        for original in self.seen:
            for k in (1, 2, 3):
                rotated = np.rot90(original, k)
                if rotated.shape == image.shape and np.array_equal(rotated, image):
                    return list(self.turned.get(k, []))
        if not any(o.shape == image.shape and np.array_equal(o, image) for o in self.seen):
            self.seen.append(image.copy())
        return list(self.faces_by_shape[image.shape])


def _two_face_unmasker(tiny_checkpoints) -> tuple[np.ndarray, Unmasker]:
    """A photo with two faces and an Unmasker (the tiny models, the default decision) whose detector finds both."""
    mseg_path, gen_path = tiny_checkpoints
    photo, faces = _photo_with_faces(2)
    unmasker = Unmasker.from_files(
        mseg_path, gen_path, UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
    )
    unmasker.detector = _Detector({photo.shape: list(faces)})
    return photo, unmasker


def _steer_masks(unmasker: Unmasker, masks: list[np.ndarray], sure: list[float] | None = None) -> None:
    """M-Seg's masks for the decision replaced by `masks`, in order of the faces given to it (the generator still
    runs on the faces kept, and they are pasted back by these masks). M-Seg's per-pixel probabilities: `sure`
    (one per mask) inside each mask, 0 outside; by default 0.6 (M-Seg unsure: its sure-mask route stays shut)."""
    sure = list(sure) if sure is not None else [0.6] * len(masks)

    def predict_masks_with_probabilities(crops):
        chosen, levels = masks[: len(crops)], sure[: len(crops)]
        del masks[: len(crops)], sure[: len(crops)]
        binary = np.stack([cv2.resize(m, (CROP, CROP), interpolation=cv2.INTER_NEAREST) for m in chosen])
        maps = np.stack([(b > 0) * np.float32(level) for b, level in zip(binary, levels, strict=True)])
        return binary, maps

    unmasker.predict_masks_with_probabilities = predict_masks_with_probabilities


def _steer_probabilities(monkeypatch, values: list[float]) -> None:
    """The mask classifier's answers replaced by `values`, in order of the crops given to it."""

    def probabilities(crops):
        chosen = values[: len(crops)]
        del values[: len(crops)]
        return np.array(chosen)

    monkeypatch.setattr("m2u.inference.mask_presence.mask_probabilities", probabilities)


def test_a_face_without_a_mask_keeps_every_pixel_with_its_reason_and_status(
    tmp_path, tiny_checkpoints, monkeypatch
):
    mseg_path, gen_path = tiny_checkpoints
    photo, (masked, bare) = _photo_with_faces(2)
    lone = photo[:, :130].copy()
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "two.png"), photo[..., ::-1])
    cv2.imwrite(str(inputs / "lone.png"), lone[..., ::-1])
    config = UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
    unmasker = Unmasker.from_files(mseg_path, gen_path, config)
    lone_face = Face.from_landmarks(masked.landmarks)
    unmasker.detector = _Detector({photo.shape: [masked, bare], lone.shape: [lone_face]})
    # Inputs are taken in name order: lone.png (its face without a mask), then two.png (masked, bare).
    lower = _crop_mask(CROP, 0.5, 0.95)
    _steer_masks(unmasker, [lower, lower, lower])  # M-Seg marks every lower face, as the shipped one does
    _steer_probabilities(monkeypatch, [0.05, 0.99, 0.1])
    out = tmp_path / "out"
    results = {
        Path(r.input).name: r for r in unmask_files([str(inputs)], None, None, out, config, unmasker=unmasker)
    }
    assert (results["lone.png"].status, results["lone.png"].faces, results["lone.png"].left_faces) == (
        "not_masked",
        0,
        1,
    )
    assert "not masked" in results["lone.png"].reason and not (out / "lone.png").exists()
    two = results["two.png"]
    assert (two.status, two.faces, two.left_faces) == ("ok", 1, 1)
    restored = cv2.imread(str(out / "two.png"))[..., ::-1]
    left, top, right, bottom = bare.box
    assert np.array_equal(restored[top:bottom, left:right], photo[top:bottom, left:right])  # untouched
    assert not np.array_equal(restored[:, :130], photo[:, :130])  # the masked face was restored
    lines = [json.loads(t) for t in (out / "faces.jsonl").read_text().splitlines()]
    left_lines = [x for x in lines if not x["restored"]]
    assert len(left_lines) == 2 and all(x["problem"].startswith("not masked") for x in left_lines)
    assert all(
        {"mask_probability", "mouth_coverage", "eye_coverage", "mask_fraction"} <= set(x) for x in lines
    )
    with open(out / "report.csv") as handle:
        assert {r["status"] for r in csv.DictReader(handle)} == {"not_masked", "ok"}
    # The run's summary counts the faces judged not masked and names the way to restore them anyway.
    assert (
        "; 2 judged not masked: if they wear masks after all, --all-faces restores every face found (bare ones too)"
        in summarize(list(results.values()), out / "faces.jsonl")
    )


def test_a_masked_face_that_looks_upside_down_keeps_every_pixel_with_its_reason(
    tiny_checkpoints, monkeypatch
):
    photo, unmasker = _two_face_unmasker(tiny_checkpoints)
    lower = _crop_mask(CROP, 0.5, 0.95)
    _steer_masks(unmasker, [lower, lower])
    _steer_probabilities(monkeypatch, [0.99, 0.99])  # both wear a mask by the mask classifier
    turned = iter([np.array([0.2, 0.9])])
    monkeypatch.setattr("m2u.inference.mask_presence.upside_down_probabilities", lambda crops: next(turned))
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert len(restored) == 1 and restored[0].evidence["upside_down_probability"] == 0.2
    assert len(left) == 1 and left[0].problem.startswith("the face looks upside down")
    assert "0.90" in left[0].problem and left[0].evidence["upside_down_probability"] == 0.9
    x0, y0, x1, y1 = left[0].box  # the second face
    assert np.array_equal(result[y0:y1, x0:x1], photo[y0:y1, x0:x1])  # not one pixel of it changed
    assert MaskedFaceRule().upside_down_reason(0.5) == "" and MaskedFaceRule().upside_down_reason(0.51)


def test_a_face_called_upside_down_is_restored_where_its_box_reads_surely_upright(
    tiny_checkpoints, monkeypatch
):
    from m2u.inference.unmask import BOX_TURN_CONFIDENCE

    for box_upright, uncertain, restored in (
        (BOX_TURN_CONFIDENCE, False, True),
        (BOX_TURN_CONFIDENCE - 0.01, False, False),
        (1.0, True, False),
    ):
        mseg_path, gen_path = tiny_checkpoints
        photo, (first,) = _photo_with_faces(1)
        unmasker = Unmasker.from_files(
            mseg_path, gen_path, UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
        )
        unmasker.detector = _Detector({photo.shape: [dataclasses.replace(first, retry=uncertain)]})
        _steer_masks(unmasker, [_crop_mask(CROP, 0.5, 0.95)], sure=[0.95])
        _steer_probabilities(monkeypatch, [0.99])
        monkeypatch.setattr(
            "m2u.inference.mask_presence.upside_down_probabilities", lambda crops: np.full(len(crops), 0.9)
        )
        rest = (1.0 - box_upright) / 3
        # The face's box (read where the upside-down classifier calls it so), then the photo's boxes for a turn.
        _boxes_read(monkeypatch, [box_upright, rest, rest, rest], UNSURE)
        result, kept, left = unmasker.unmask_with_refusals(photo)
        if restored:
            assert len(kept) == 1 and not left and not np.array_equal(result, photo)
            record = kept[0].record()
            assert record["upside_down_probability"] == 0.9
            assert record["box_upright_probability"] == pytest.approx(box_upright)
        else:
            assert not kept and np.array_equal(result, photo)
            assert left[0].problem.startswith("the face looks upside down")


@pytest.mark.parametrize("inner_restored", [False, True])
def test_a_second_box_on_one_face_is_no_face_and_never_a_second_restoration(
    tiny_checkpoints, monkeypatch, inner_restored
):
    """BlazeFace boxes one face twice (the whole face, and its upper half inside it): one record restored, the other
    "no face: a second box", counted as no face and never pasted. The face the decision restores wins; of two
    restored, the higher detector score (the inner box here)."""
    mseg_path, gen_path = tiny_checkpoints
    photo, (whole,) = _photo_with_faces(1)
    x0, y0, x1, y1 = whole.box
    # The inner box's BlazeFace eyes disagree with dlib's: a face left with them gets a second look (never a second box).
    eyes = np.stack([whole.landmarks[36:42].mean(0), whole.landmarks[42:48].mean(0)])
    shift = np.array([0.0, 0.2 * np.hypot(*(eyes[1] - eyes[0]))])
    keypoints = np.vstack([eyes - shift, whole.landmarks[[30, 62, 0, 16]]]).astype(np.float32)
    inner = dataclasses.replace(
        whole, box=(x0 + 10, y0, x1 - 10, (y0 + y1) // 2), score=0.95, keypoints=keypoints
    )
    unmasker = Unmasker.from_files(
        mseg_path, gen_path, UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
    )
    unmasker.detector = _Detector({photo.shape: [whole, inner]})
    _steer_masks(unmasker, [_crop_mask(CROP, 0.5, 0.95)] * 3)
    _steer_probabilities(monkeypatch, [0.99, 0.99 if inner_restored else 0.01, 0.99])
    monkeypatch.setattr(
        "m2u.inference.mask_presence.upside_down_probabilities", lambda crops: np.zeros(len(crops))
    )
    result, kept, left = unmasker.unmask_with_refusals(photo)
    assert len(kept) == 1 and not np.array_equal(result, photo)
    assert kept[0].box == (inner.box if inner_restored else whole.box)
    (second,) = left
    assert second.box == (whole.box if inner_restored else inner.box)
    assert second.problem.startswith(f"no face: a second box on the face at {tuple(kept[0].box)} (")
    assert "second look" not in second.problem
    # The photo as restored from the kept face alone: the second box pasted nothing.
    alone = Unmasker.from_files(
        mseg_path, gen_path, UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
    )
    alone.detector = _Detector({photo.shape: [inner if inner_restored else whole]})
    _steer_masks(alone, [_crop_mask(CROP, 0.5, 0.95)])
    _steer_probabilities(monkeypatch, [0.99])
    assert np.array_equal(alone.unmask_with_refusals(photo)[0], result)


def test_an_uncertain_box_with_no_mask_on_a_face_kept_is_named_a_second_box(tiny_checkpoints, monkeypatch):
    """An uncertain detection the rule judges no face (no mask on it) that lies on a face kept says which face it
    doubles, rather than that it is an uncertain detection with no mask: the status is no face either way."""
    mseg_path, gen_path = tiny_checkpoints
    photo, (whole,) = _photo_with_faces(1)
    x0, y0, x1, y1 = whole.box
    inner = dataclasses.replace(whole, box=(x0 + 10, y0, x1 - 10, (y0 + y1) // 2), score=0.4, retry=True)
    unmasker = Unmasker.from_files(
        mseg_path, gen_path, UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
    )
    unmasker.detector = _Detector({photo.shape: [whole, inner]})
    _steer_masks(unmasker, [_crop_mask(CROP, 0.5, 0.95), np.zeros((CROP, CROP), np.uint8)])
    _steer_probabilities(monkeypatch, [0.99, 0.01])
    monkeypatch.setattr(
        "m2u.inference.mask_presence.upside_down_probabilities", lambda crops: np.zeros(len(crops))
    )
    result, kept, left = unmasker.unmask_with_refusals(photo)
    assert [f.box for f in kept] == [whole.box]
    (second,) = left
    assert second.box == inner.box
    assert second.problem.startswith(f"no face: a second box on the face at {whole.box} (")
    # The rule's evidence kept after the verdict.
    assert "; an uncertain detection with no mask to restore on it (" in second.problem
    # An uncertain box with no mask elsewhere in the photo keeps its own reason.
    apart = dataclasses.replace(inner, box=(x1 - 4, y0, x1 + 4, y0 + 8))  # half of it on the face
    unmasker.detector = _Detector({photo.shape: [whole, apart]})
    _steer_masks(unmasker, [_crop_mask(CROP, 0.5, 0.95), np.zeros((CROP, CROP), np.uint8)])
    _steer_probabilities(monkeypatch, [0.99, 0.01])
    _, kept, left = unmasker.unmask_with_refusals(photo)
    assert [f.box for f in kept] == [whole.box]
    assert left[0].problem.startswith("no face: an uncertain detection with no mask to restore on it")


def _hog_doubted(face: Face, retry: bool = False) -> Face:
    from dataclasses import replace

    from m2u.masking.detect import upside_down_problem

    return replace(face, retry=retry, problem=upside_down_problem(0.1, 0.6, 0.0))


@pytest.mark.parametrize(
    ("mask_probability", "turned", "box_upright", "restored"),
    [
        (0.99, 0.01, None, True),  # both classifiers vouch
        (0.99, 0.2, None, False),
        (0.9, 0.01, None, False),
        # The upside-down classifier does not vouch (0.2, above the overrule's 0.05) but does not call the face
        # upside down either, and the box orientation net reads the box surely upright: the evidence that overrules
        # the upside-down classifier overrules HOG. Against both checks (the classifier at 0.9) the box alone is not
        # enough.
        (0.99, 0.2, 0.95, True),
        (0.99, 0.2, 0.89, False),
        (0.99, 0.9, 0.95, False),
    ],
)
def test_a_face_the_detector_finds_upside_down_is_restored_only_where_the_evidence_vouches(
    tiny_checkpoints, monkeypatch, mask_probability, turned, box_upright, restored
):
    mseg_path, gen_path = tiny_checkpoints
    photo, (first,) = _photo_with_faces(1)
    config = UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
    unmasker = Unmasker.from_files(mseg_path, gen_path, config)
    doubted = _hog_doubted(first)
    unmasker.detector = _Detector({photo.shape: [doubted]})
    _steer_masks(unmasker, [_crop_mask(CROP, 0.5, 0.95)])
    _steer_probabilities(monkeypatch, [mask_probability])
    monkeypatch.setattr(
        "m2u.inference.mask_presence.upside_down_probabilities", lambda crops: np.array([turned])
    )
    if box_upright is not None:  # otherwise the box reads unsurely upright (UNSURE)
        rest = (1.0 - box_upright) / 3
        _boxes_read(monkeypatch, [box_upright, rest, rest, rest])
    result, kept, left = unmasker.unmask_with_refusals(photo)
    if restored:
        assert len(kept) == 1 and not left and not np.array_equal(result, photo)
        record = kept[0].record()
        assert record["detector_problem"] == doubted.problem  # the overruled refusal, in faces.jsonl
        if box_upright is not None:
            assert record["box_upright_probability"] == pytest.approx(box_upright)
    else:
        # Left with the detector's own reason, every pixel as it was, the decision's evidence recorded.
        assert not kept and len(left) == 1 and left[0].problem == doubted.problem
        assert left[0].evidence["upside_down_probability"] == turned
        assert np.array_equal(result, photo)


def test_the_detectors_upside_down_refusal_stands_for_uncertain_faces_and_all_faces(
    tiny_checkpoints, monkeypatch
):
    mseg_path, gen_path = tiny_checkpoints
    photo, (first,) = _photo_with_faces(1)
    _steer_probabilities(monkeypatch, [0.99, 0.99])
    monkeypatch.setattr(
        "m2u.inference.mask_presence.upside_down_probabilities", lambda crops: np.zeros(len(crops))
    )
    # An uncertain detection the detector also refuses is no face (never shown to the classifier).
    unmasker = Unmasker.from_files(
        mseg_path, gen_path, UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
    )
    unmasker.detector = _Detector({photo.shape: [_hog_doubted(first, retry=True)]})
    _, kept, left = unmasker.unmask_with_refusals(photo)
    assert not kept and left[0].problem.startswith(
        "no face: an uncertain detection; the face looks upside down"
    )
    # --all-faces asks no classifier: the detector's refusal stands.
    every = UnmaskConfig(crop_size=CROP, device="cpu", progress=False, masked_only=False)
    unmasker = Unmasker.from_files(mseg_path, gen_path, every)
    unmasker.detector = _Detector({photo.shape: [_hog_doubted(first)]})
    _, kept, left = unmasker.unmask_with_refusals(photo)
    assert not kept and left[0].problem.startswith("the face looks upside down (the detector")


def test_a_face_left_on_dlibs_eyes_gets_a_second_look_on_blazefaces_eyes(tiny_checkpoints, monkeypatch):
    from m2u.datasets.align import alignment_matrix
    from m2u.masking.masked_faces import visible_anchor_points

    mseg_path, gen_path = tiny_checkpoints
    photo, (first,) = _photo_with_faces(1)
    eyes = np.stack([first.landmarks[36:42].mean(0), first.landmarks[42:48].mean(0)])
    # BlazeFace's eyes higher than dlib's by a fifth of their distance (as where a mask pulls dlib's eye points down).
    shift = np.array([0.0, 0.2 * np.hypot(*(eyes[1] - eyes[0]))])
    keypoints = np.vstack([eyes - shift, first.landmarks[[30, 62, 0, 16]]]).astype(np.float32)
    lower, nothing = _crop_mask(CROP, 0.5, 0.95), np.zeros((CROP, CROP), np.uint8)

    def unmask(alignment: str, face: Face, turned: list[float]):
        config = UnmaskConfig(
            crop_size=CROP, device="cpu", progress=False, alignment=alignment, whole_frame=False
        )
        unmasker = Unmasker.from_files(mseg_path, gen_path, config)
        unmasker.detector = _Detector({photo.shape: [face]})
        # M-Seg marks nothing on the crop aligned on dlib's eyes, a mask on the one aligned on BlazeFace's.
        _steer_masks(unmasker, [nothing, lower])
        _steer_probabilities(monkeypatch, [0.99, 0.99])
        answers = iter(turned)
        monkeypatch.setattr(
            "m2u.inference.mask_presence.upside_down_probabilities",
            lambda crops: np.full(len(crops), next(answers)),
        )
        return unmasker.unmask_with_refusals(photo)

    blazed = dataclasses.replace(first, keypoints=keypoints)
    result, restored, left = unmask("visible", blazed, [0.0, 0.0])
    assert not left and restored[0].record()["eyes"] == "blazeface"
    anchors = visible_anchor_points(first.landmarks, keypoints)
    assert np.allclose(restored[0].matrix, alignment_matrix(first.landmarks, CROP, anchors))
    assert not np.array_equal(result, photo)
    # A face the upside-down classifier refuses on the second look keeps its first look's record.
    result, restored, left = unmask("visible", blazed, [0.0, 0.9])
    assert not restored and left[0].record()["eyes"] == "dlib" and left[0].problem.startswith("not masked")
    assert "on a second look aligned on BlazeFace's eyes: the face looks upside down" in left[0].problem
    assert np.array_equal(result, photo)
    # No second look with --alignment visible-dlib, nor for a face without BlazeFace's keypoints, nor for an
    # uncertain detection (its first look decides whether it is a face at all), nor where BlazeFace's eyes agree with
    # dlib's (the crop would be nearly the same).
    uncertain = dataclasses.replace(blazed, retry=True)
    agreeing = dataclasses.replace(blazed, keypoints=np.vstack([eyes, keypoints[2:]]).astype(np.float32))
    cases = (("visible-dlib", blazed), ("visible", first), ("visible", uncertain), ("visible", agreeing))
    for alignment, face in cases:
        result, restored, left = unmask(alignment, face, [0.0, 0.0])
        assert not restored and np.array_equal(result, photo) and "second look" not in left[0].problem
        assert left[0].problem.startswith("no face" if face.retry else "not masked")


def test_a_photo_whose_only_face_the_upside_down_classifier_refuses_is_reported_refused(
    tmp_path, tiny_checkpoints, monkeypatch
):
    mseg_path, gen_path = tiny_checkpoints
    photo, (first,) = _photo_with_faces(1)
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "turned.png"), photo[..., ::-1])
    config = UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
    unmasker = Unmasker.from_files(mseg_path, gen_path, config)
    unmasker.detector = _Detector({photo.shape: [first]})
    _steer_masks(unmasker, [_crop_mask(CROP, 0.5, 0.95)])
    _steer_probabilities(monkeypatch, [0.99])
    monkeypatch.setattr(
        "m2u.inference.mask_presence.upside_down_probabilities", lambda crops: np.array([0.9])
    )
    (row,) = unmask_files([str(inputs)], None, None, tmp_path / "out", config, unmasker=unmasker)
    assert (row.status, row.faces, row.left_faces) == ("refused", 0, 1)
    assert "upside-down classifier gives 0.90" in row.reason


def test_a_photo_whose_faces_all_look_upside_down_is_unmasked_turned_and_turned_back(
    tmp_path, tiny_checkpoints, monkeypatch, load_benchmark
):
    from m2u.datasets.align import alignment_matrix
    from m2u.masking.masked_faces import visible_anchor_points

    mseg_path, gen_path = tiny_checkpoints
    photo, (first,) = _photo_with_faces(1)
    height, width = photo.shape[:2]
    # The face as the detector finds it in the photo turned 180 degrees (upright there).
    turned_points = np.array([width - 1, height - 1], np.float32) - first.landmarks
    turned_face = Face.from_landmarks(turned_points, score=0.9)

    def unmasker_for(
        config: UnmaskConfig,
        turned_faces: list[Face],
        quarter_turns: int = 2,
        as_is: list[Face] | None = None,
        masks: list[np.ndarray] | None = None,
        answers: list[float] | None = None,
    ) -> Unmasker:
        unmasker = Unmasker.from_files(mseg_path, gen_path, config)
        unmasker.detector = _Detector(
            {photo.shape: [first] if as_is is None else as_is}, {quarter_turns: turned_faces}
        )
        lower = _crop_mask(CROP, 0.5, 0.95)
        _steer_masks(unmasker, masks or [lower, lower.copy()])
        _steer_probabilities(monkeypatch, [0.99, 0.99])  # a mask by the classifier, as is and turned
        answers = iter(answers or [0.9, 0.0])  # upside down as is, upright turned
        monkeypatch.setattr(
            "m2u.inference.mask_presence.upside_down_probabilities",
            lambda crops: np.full(len(crops), next(answers)),
        )
        return unmasker

    config = UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
    unmasker = unmasker_for(config, [turned_face])
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert unmasker.detector.calls == 2 and not left and len(restored) == 1
    face = restored[0]
    assert face.turned == 180 and face.record()["turned"] == 180
    # Box and crop matrix are in the photo's own pixels: the box is the face's, the matrix is the turned photo's
    # alignment composed with the turn, so M-Seg's mask lands where the turned photo's mask lands, turned back.
    assert np.abs(np.subtract(face.box, first.box)).max() <= 1
    turned_matrix = alignment_matrix(turned_points, CROP, visible_anchor_points(turned_points))
    in_turned = cv2.warpAffine(
        face.mask.astype(np.float32) / 255.0,
        cv2.invertAffineTransform(turned_matrix),
        (width, height),
        flags=cv2.INTER_LINEAR,
    )
    mapped = photo_mask((height, width), [face])
    assert mapped.any() and np.mean(mapped != (in_turned[::-1, ::-1] >= 0.5)) < 0.002
    # Only the face changed: every changed pixel lies under its paste weight mapped back through that matrix.
    changed = np.any(result != photo, axis=2)
    weight = cv2.warpAffine(face.weight, cv2.invertAffineTransform(face.matrix), (width, height))
    assert (
        changed.any() and not changed[cv2.dilate((weight > 0).astype(np.uint8), np.ones((3, 3))) == 0].any()
    )

    # The file loop says so in report.csv and faces.jsonl.
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "turned.png"), photo[..., ::-1])
    unmasker = unmasker_for(config, [turned_face])
    (row,) = unmask_files([str(inputs)], None, None, tmp_path / "out", config, unmasker=unmasker)
    assert (row.status, row.faces, row.left_faces) == ("ok", 1, 0)
    assert row.reason.startswith("restored in the photo turned 180 degrees")
    (line,) = [json.loads(t) for t in (tmp_path / "out" / "faces.jsonl").read_text().splitlines()]
    assert (
        line["turned"] == 180 and line["restored"] and np.abs(np.subtract(line["box"], first.box)).max() <= 1
    )
    # m2u-eval real-masks counts them apart (on photos turned on purpose, a face restored as it is is upside down).
    unmasker = unmasker_for(config, [turned_face])
    summary = evaluate_real_masks(
        [str(inputs)], tmp_path / "report", unmasker, None, RealMaskConfig(thumb=64)
    )
    assert (summary["faces_restored"], summary["faces_restored_turned"]) == (1, 1)
    assert summary["photos_restored_by_turn"] == {"180": 1}
    with open(tmp_path / "report" / "real_masks.csv") as handle:
        (scored,) = csv.DictReader(handle)
    assert scored["faces_restored_turned"] == "1" and scored["reason"].startswith(
        "restored in the photo turned"
    )
    assert scored["turned_degrees"] == "180"
    # benchmarks/real_masks.py: a set turned 180 degrees is right side up when restored turned 180 degrees, a set
    # turned 90 degrees clockwise (3 quarter turns anticlockwise) when restored turned 90 anticlockwise.
    right_side_up = load_benchmark("real_masks").right_side_up
    assert right_side_up(summary, 2) == {
        "photos_restored_right_side_up": 1,
        "photos_restored_wrong_way_up": 0,
    }
    assert right_side_up(summary, 3) == {
        "photos_restored_right_side_up": 0,
        "photos_restored_wrong_way_up": 1,
    }
    assert (
        right_side_up({"photos_restored_by_turn": {"0": 4, "90": 2}}, 3)["photos_restored_right_side_up"] == 2
    )

    # Nothing found turned (180 degrees, then 90 either way), --no-try-turned, a dlib --detector, or --all-faces (no
    # decision to vouch for faces found turned): the photo stays as it is, its face left with the upside-down reason.
    for chosen, tries in (
        (UnmaskConfig(crop_size=CROP, device="cpu", progress=False), 4),
        (UnmaskConfig(crop_size=CROP, device="cpu", progress=False, try_turned=False), 1),
        (UnmaskConfig(crop_size=CROP, device="cpu", progress=False, detector_model="hog"), 1),
    ):
        unmasker = unmasker_for(chosen, [] if tries == 4 else [turned_face])
        result, restored, left = unmasker.unmask_with_refusals(photo)
        assert unmasker.detector.calls == tries and not restored and np.array_equal(result, photo)
        assert left[0].problem.startswith("the face looks upside down") and left[0].turned == 0
    every = UnmaskConfig(crop_size=CROP, device="cpu", progress=False, masked_only=False)
    unmasker = Unmasker.from_files(mseg_path, gen_path, every)
    unmasker.detector = _Detector({photo.shape: [_hog_doubted(first)]}, {2: [turned_face]})
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert unmasker.detector.calls == 1 and not restored and np.array_equal(result, photo)

    # A photo with no face found as it is is tried turned too (a face upside down is often not found at all)...
    no_frame = UnmaskConfig(crop_size=CROP, device="cpu", progress=False, whole_frame=False)
    unmasker = unmasker_for(no_frame, [turned_face], as_is=[], answers=[0.0])
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert unmasker.detector.calls == 2 and len(restored) == 1 and restored[0].turned == 180 and not left
    # A photo stored sideways: nothing found as it is nor turned 180 degrees, the face found upright once the photo
    # is turned 90 degrees anticlockwise, and restored there, its box and mask back in the photo's pixels.
    sideways_points = np.stack([first.landmarks[:, 1], width - 1 - first.landmarks[:, 0]], axis=1)
    sideways = Face.from_landmarks(sideways_points.astype(np.float32), score=0.9)
    unmasker = unmasker_for(no_frame, [sideways], quarter_turns=1, as_is=[], answers=[0.0])
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert unmasker.detector.calls == 3 and len(restored) == 1 and restored[0].turned == 90 and not left
    assert np.abs(np.subtract(restored[0].box, first.box)).max() <= 1
    weight = cv2.warpAffine(
        restored[0].weight, cv2.invertAffineTransform(restored[0].matrix), (width, height)
    )
    changed = np.any(result != photo, axis=2)
    assert (
        changed.any() and not changed[cv2.dilate((weight > 0).astype(np.uint8), np.ones((3, 3))) == 0].any()
    )
    # Sideways, an uncertain detection is not asked (each extra view is another chance of a face in a faceless image).
    unsure = dataclasses.replace(sideways, retry=True)
    unmasker = unmasker_for(no_frame, [unsure], quarter_turns=1, as_is=[], answers=[0.0])
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert unmasker.detector.calls == 4 and not restored and not left and np.array_equal(result, photo)
    # ... but not one whose faces are all left as not masked: that photo was read the right way up.
    nothing = np.zeros((CROP, CROP), np.uint8)
    default = UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
    unmasker = unmasker_for(default, [turned_face], masks=[nothing], answers=[0.0])
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert unmasker.detector.calls == 1 and not restored and left[0].problem.startswith("not masked")
    assert np.array_equal(result, photo)


def test_a_photo_whose_restored_faces_lie_on_their_side_is_restored_turned_upright(
    tmp_path, tiny_checkpoints, monkeypatch
):
    from m2u.inference.unmask import SIDEWAYS_LEAN, _turn_matrix

    mseg_path, gen_path = tiny_checkpoints
    upright, (first,) = _photo_with_faces(1)
    height, width = upright.shape[:2]
    # The photo stored turned 90 degrees clockwise: its face lies on its side, found there with its points right.
    photo = np.ascontiguousarray(np.rot90(upright, 3))
    turn = _turn_matrix(3, width, height)
    lying = Face.from_landmarks((first.landmarks @ turn[:, :2].T + turn[:, 2]).astype(np.float32), score=0.9)
    # Turned back upright (a quarter turn anticlockwise) the face is found upright; turned the other way, upside
    # down, where a face is "found" upright-looking on the wrong features (its points upright, where the face is).
    centre = first.landmarks.mean(0)
    upside_down = Face.from_landmarks(
        first.landmarks - centre + (np.array([width - 1, height - 1], np.float32) - centre), score=0.9
    )
    lower = _crop_mask(CROP, 0.5, 0.95)

    def unmasker_for(config, as_is, turned, doubts):
        unmasker = Unmasker.from_files(mseg_path, gen_path, config)
        unmasker.detector = _Detector({photo.shape: as_is}, turned)
        _steer_masks(unmasker, [lower.copy() for _ in range(3)])
        _steer_probabilities(monkeypatch, [0.99] * 3)
        answers = iter(doubts)  # the upside-down classifier: as it is, then each turn tried
        monkeypatch.setattr(
            "m2u.inference.mask_presence.upside_down_probabilities",
            lambda crops: np.full(len(crops), next(answers)),
        )
        return unmasker

    config = UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
    unmasker = unmasker_for(config, [lying], {1: [first], 3: [upside_down]}, [0.0, 0.0, 0.3])
    result, restored, left = unmasker.unmask_with_refusals(photo)
    # As it is, turned anticlockwise, turned clockwise: the upright view wins (the upside-down classifier surer).
    assert unmasker.detector.calls == 3 and len(restored) == 1 and not left
    face = restored[0]
    assert face.turned == 90 and abs(face.lean) < 1.0
    assert np.abs(np.subtract(face.box, lying.box)).max() <= 1
    assert face.turned_because.startswith("as it is, its faces lie on their side, leaning 90 degrees")
    # Only the face changed, in the stored photo's own pixels.
    changed = np.any(result != photo, axis=2)
    weight = cv2.warpAffine(face.weight, cv2.invertAffineTransform(face.matrix), photo.shape[1::-1])
    assert (
        changed.any() and not changed[cv2.dilate((weight > 0).astype(np.uint8), np.ones((3, 3))) == 0].any()
    )
    # Either way round: the sign of the lean orders the turns, the upside-down classifier chooses between them.
    unmasker = unmasker_for(config, [lying], {1: [first], 3: [upside_down]}, [0.0, 0.2, 0.1])
    _, restored, _ = unmasker.unmask_with_refusals(photo)
    assert restored[0].turned == 270
    # The file loop's report says why.
    inputs = tmp_path / "in"
    inputs.mkdir()
    cv2.imwrite(str(inputs / "lying.png"), photo[..., ::-1])
    unmasker = unmasker_for(config, [lying], {1: [first], 3: []}, [0.0, 0.0])
    (row,) = unmask_files([str(inputs)], None, None, tmp_path / "out", config, unmasker=unmasker)
    assert row.reason.startswith(
        "restored in the photo turned 90 degrees anticlockwise (as it is, its faces lie"
    )
    (line,) = [json.loads(t) for t in (tmp_path / "out" / "faces.jsonl").read_text().splitlines()]
    assert line["turned"] == 90 and line["restored"]

    # Kept as it is: a turn that restores nothing, or its faces leaning as far, or --no-try-turned.
    for turned, doubts, chosen, calls in (
        ({}, [0.0], config, 3),
        ({1: [lying], 3: [lying]}, [0.0, 0.0, 0.0], config, 3),
        ({1: [first]}, [0.0], dataclasses.replace(config, try_turned=False), 1),
    ):
        unmasker = unmasker_for(chosen, [lying], turned, doubts)
        result, restored, left = unmasker.unmask_with_refusals(photo)
        assert unmasker.detector.calls == calls and len(restored) == 1 and restored[0].turned == 0
        assert abs(abs(restored[0].lean) - 90.0) < 1.0
    # A face leaning less than SIDEWAYS_LEAN is restored as it is, no turn tried.
    angle = np.radians(SIDEWAYS_LEAN - 5.0)
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]], np.float32)
    leaning = Face.from_landmarks((first.landmarks - centre) @ rotation.T + centre, score=0.9)
    unmasker = Unmasker.from_files(mseg_path, gen_path, config)
    unmasker.detector = _Detector({upright.shape: [leaning]}, {1: [first], 3: [first]})
    _steer_masks(unmasker, [lower.copy()])
    _steer_probabilities(monkeypatch, [0.99])
    monkeypatch.setattr(
        "m2u.inference.mask_presence.upside_down_probabilities", lambda crops: np.zeros(len(crops))
    )
    _, restored, _ = unmasker.unmask_with_refusals(upright)
    assert unmasker.detector.calls == 1 and restored[0].turned == 0
    assert SIDEWAYS_LEAN - 8.0 < abs(restored[0].lean) < SIDEWAYS_LEAN


def test_a_photo_with_a_face_left_whose_eye_keypoints_stand_one_above_the_other_is_tried_a_quarter_turn(
    tiny_checkpoints, monkeypatch
):
    from m2u.inference.unmask import SIDEWAYS_KEYPOINT_ROLL

    mseg_path, gen_path = tiny_checkpoints
    upright, (first,) = _photo_with_faces(1)
    photo = np.ascontiguousarray(np.rot90(upright, 3))  # stored turned 90 degrees clockwise
    # Found as it is with its 68 points fitted upright on the wrong features (the crop shows no mask), BlazeFace's eye
    # keypoints one above the other.
    centre = first.landmarks.mean(0)
    moved = np.array([photo.shape[1] - 1, photo.shape[0] - 1], np.float32) / 2 - centre

    def found_with_eyes(roll_degrees: float) -> Face:
        angle = np.radians(roll_degrees)
        half = 15.0 * np.array([np.cos(angle), np.sin(angle)], np.float32)
        middle = centre + moved
        keypoints = np.stack([middle - half, middle + half, middle, middle, middle, middle]).astype(
            np.float32
        )
        return dataclasses.replace(
            Face.from_landmarks(first.landmarks + moved, score=0.9), keypoints=keypoints
        )

    nothing = np.zeros((CROP, CROP), np.uint8)
    lower = _crop_mask(CROP, 0.5, 0.95)

    def unmasker_for(as_is: Face, turned_mask: np.ndarray = lower) -> Unmasker:
        config = UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
        unmasker = Unmasker.from_files(mseg_path, gen_path, config)
        unmasker.detector = _Detector({photo.shape: [as_is]}, {1: [first]})
        # As it is (and its second look on BlazeFace's eyes): no mask; turned back upright: a mask.
        _steer_masks(unmasker, [nothing, nothing, turned_mask])
        _steer_probabilities(monkeypatch, [0.1, 0.1, 0.99])
        monkeypatch.setattr(
            "m2u.inference.mask_presence.upside_down_probabilities", lambda crops: np.zeros(len(crops))
        )
        return unmasker

    unmasker = unmasker_for(found_with_eyes(90.0))
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert len(restored) == 1 and restored[0].turned == 90 and not left
    assert (
        restored[0].turned_because
        == "as it is, a face found lies on its side, its eyes 90 degrees from level"
    )
    assert not np.array_equal(result, photo)
    # Turned, the face must show a mask's shape too: M-Seg over its eyes as well (the classifier sure) is no turn.
    unmasker = unmasker_for(found_with_eyes(90.0), _crop_mask(CROP, 0.2, 0.95))
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert unmasker.detector.calls == 3 and not restored and np.array_equal(result, photo)
    # Eyes nearer level than SIDEWAYS_KEYPOINT_ROLL: the face was read the right way up, never turned.
    for roll in (0.0, SIDEWAYS_KEYPOINT_ROLL - 5.0):
        unmasker = unmasker_for(found_with_eyes(roll))
        result, restored, left = unmasker.unmask_with_refusals(photo)
        assert unmasker.detector.calls == 1 and not restored and left[0].problem.startswith("not masked")
        assert np.array_equal(result, photo)
    # The lying face restored as it is (a smear on a crop aligned on the wrong features): the turn that restores it
    # upright, with a mask's shape, is taken; with its eyes nearer level, the restoration as it is stands.
    for roll, turned in ((90.0, 90), (SIDEWAYS_KEYPOINT_ROLL - 5.0, 0)):
        unmasker = unmasker_for(found_with_eyes(roll))
        _steer_masks(unmasker, [lower, lower])
        _steer_probabilities(monkeypatch, [0.99, 0.99])
        result, restored, left = unmasker.unmask_with_refusals(photo)
        assert len(restored) == 1 and restored[0].turned == turned and not left
        assert unmasker.detector.calls == (3 if turned else 1)


def test_a_photo_restored_only_on_uncertain_detections_is_tried_a_quarter_turn(tiny_checkpoints, monkeypatch):
    mseg_path, gen_path = tiny_checkpoints
    upright, (first,) = _photo_with_faces(1)
    photo = np.ascontiguousarray(np.rot90(upright, 3))  # stored turned 90 degrees clockwise
    moved = np.array([photo.shape[1] - 1, photo.shape[0] - 1], np.float32) / 2 - first.landmarks.mean(0)
    lower = _crop_mask(CROP, 0.5, 0.95)

    def unmasker_for(as_is: Face, turned: dict) -> Unmasker:
        config = UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
        unmasker = Unmasker.from_files(mseg_path, gen_path, config)
        unmasker.detector = _Detector({photo.shape: [as_is]}, turned)
        # A mask on the face found as it is, and on the face found turned back upright.
        _steer_masks(unmasker, [lower, lower])
        _steer_probabilities(monkeypatch, [0.99, 0.99])
        monkeypatch.setattr(
            "m2u.inference.mask_presence.upside_down_probabilities", lambda crops: np.zeros(len(crops))
        )
        return unmasker

    # As it is, BlazeFace unsure of a face (its box on the lying face's forehead, say) that the decision restores;
    # turned a quarter turn, a sure face restored upright: that turn is taken.
    unsure = dataclasses.replace(Face.from_landmarks(first.landmarks + moved, score=0.6), retry=True)
    unmasker = unmasker_for(unsure, {1: [first]})
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert len(restored) == 1 and restored[0].turned == 90 and not restored[0].uncertain and not left
    assert restored[0].turned_because == "as it is, only detections the detector was unsure of were restored"
    assert not np.array_equal(result, photo)
    # No face restored turned: the restoration as it is stands, and says its detection was uncertain.
    unmasker = unmasker_for(unsure, {})
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert unmasker.detector.calls == 3 and len(restored) == 1 and restored[0].turned == 0
    assert restored[0].record()["uncertain_detection"] is True
    # A turn two checks ask for is unmasked once: the box reads the quarter turn anticlockwise, which restores
    # nothing, and the uncertain-detection check asks for that turn again, and for the other.
    unmasker = unmasker_for(unsure, {})
    _boxes_read(monkeypatch, [0.0, 1.0, 0.0, 0.0])
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert unmasker.detector.calls == 3 and len(restored) == 1 and restored[0].turned == 0
    # A sure detection restored as it is is never turned.
    unmasker = unmasker_for(dataclasses.replace(unsure, retry=False, score=0.9), {1: [first]})
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert unmasker.detector.calls == 1 and len(restored) == 1 and restored[0].turned == 0
    assert "uncertain_detection" not in restored[0].record()
    # No face found as it is, the whole photo restored as one face crop: the turn that restores a sure face wins.
    unmasker = unmasker_for(unsure, {1: [first]})
    unmasker.detector.faces_by_shape[photo.shape] = []
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert len(restored) == 1 and restored[0].turned == 90 and restored[0].detector != "whole-frame"
    assert restored[0].turned_because == (
        "as it is, no face was found and the whole photo was restored as one face crop"
    )


def test_a_photo_whose_boxes_read_turned_is_unmasked_turned_that_way(tiny_checkpoints, monkeypatch):
    mseg_path, gen_path = tiny_checkpoints
    upright, (first,) = _photo_with_faces(1)
    photo = np.ascontiguousarray(np.rot90(upright, 2))  # stored upside down
    centre = np.array([photo.shape[1] - 1, photo.shape[0] - 1], np.float32) / 2
    # As it is, a sure detection with its points fitted upright-looking on the wrong features (restored upside down).
    as_is = Face.from_landmarks(first.landmarks - first.landmarks.mean(0) + centre, score=0.9)
    lower = _crop_mask(CROP, 0.5, 0.95)

    def unmask(ways, turned, probabilities=(0.99, 0.99), config=None):
        """`ways`: the box reading as it is, or a list of readings (as it is, then the turned view)."""
        unmasker = Unmasker.from_files(
            mseg_path, gen_path, config or UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
        )
        unmasker.detector = _Detector({photo.shape: [as_is]}, turned)
        _steer_masks(unmasker, [lower.copy(), lower.copy()])
        _steer_probabilities(monkeypatch, list(probabilities))
        monkeypatch.setattr(
            "m2u.inference.mask_presence.upside_down_probabilities", lambda crops: np.zeros(len(crops))
        )
        _boxes_read(monkeypatch, *(ways if isinstance(ways[0], list) else [ways]))
        return unmasker, unmasker.unmask_with_refusals(photo)

    # The box read upside down, surely: turned 180 degrees the face is found upright and restored there.
    unmasker, (result, restored, left) = unmask([0.02, 0.02, 0.94, 0.02], {2: [first]})
    assert len(restored) == 1 and restored[0].turned == 180 and not left
    assert restored[0].turned_because == (
        "as it is, the box orientation net reads its faces upright turned 180 degrees"
    )
    assert not np.array_equal(result, photo)
    # Where the face restored turned still reads turned there (restored lying or upside down), that turn is not taken.
    unmasker, (result, restored, left) = unmask([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]], {2: [first]})
    assert unmasker.detector.calls == 2 and len(restored) == 1 and restored[0].turned == 0
    # An uncertain detection restored as it is is read too (the photo's only face may be found so).
    unsure = dataclasses.replace(as_is, retry=True, score=0.6)
    unmasker = Unmasker.from_files(
        mseg_path, gen_path, UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
    )
    unmasker.detector = _Detector({photo.shape: [unsure]}, {2: [first]})
    _steer_masks(unmasker, [lower.copy(), lower.copy()])
    _steer_probabilities(monkeypatch, [0.99, 0.99])
    _boxes_read(monkeypatch, [0.0, 0.0, 1.0, 0.0])
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert len(restored) == 1 and restored[0].turned == 180 and not restored[0].uncertain
    assert restored[0].turned_because.startswith("as it is, the box orientation net reads")
    # Not sure enough, or read upright: restored as it is, no turn tried.
    for ways in ([0.1, 0.05, 0.8, 0.05], [0.92, 0.0, 0.08, 0.0]):
        unmasker, (result, restored, left) = unmask(ways, {2: [first]})
        assert unmasker.detector.calls == 1 and len(restored) == 1 and restored[0].turned == 0
    # A turn that restores nothing keeps the restoration as it is; so does --no-try-turned.
    unmasker, (result, restored, left) = unmask([0.0, 0.0, 1.0, 0.0], {})
    assert unmasker.detector.calls == 2 and len(restored) == 1 and restored[0].turned == 0
    config = UnmaskConfig(crop_size=CROP, device="cpu", progress=False, try_turned=False)
    unmasker, (result, restored, left) = unmask([0.0, 0.0, 1.0, 0.0], {2: [first]}, config=config)
    assert unmasker.detector.calls == 1 and restored[0].turned == 0
    # Nothing restored as it is (the face left as not masked): the turn is taken where the face it restores has a
    # mask's shape (the mouth covered, the eyes not), and not where M-Seg's mask covers the eyes.
    unmasker, (result, restored, left) = unmask([0.0, 0.0, 1.0, 0.0], {2: [first]}, probabilities=(0.1, 0.99))
    assert len(restored) == 1 and restored[0].turned == 180
    unmasker = Unmasker.from_files(
        mseg_path, gen_path, UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
    )
    unmasker.detector = _Detector({photo.shape: [as_is]}, {2: [first]})
    _steer_masks(unmasker, [lower.copy(), _crop_mask(CROP, 0.2, 0.95)])
    _steer_probabilities(monkeypatch, [0.1, 0.99])
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert not restored and len(left) == 1 and np.array_equal(result, photo)


def test_a_turned_view_whose_uncertain_face_still_reads_turned_is_not_taken(tiny_checkpoints, monkeypatch):
    """An upright close-up whose only face is an uncertain detection called upside down: turned 180 degrees, the
    face found there is restored only where its box does not read turned there too (a stretched close-up was
    restored turned, its hair repainted, when only sure detections' boxes were read)."""
    mseg_path, gen_path = tiny_checkpoints
    photo, (first,) = _photo_with_faces(1)
    unsure = dataclasses.replace(first, retry=True, score=0.6)
    lower = _crop_mask(CROP, 0.5, 0.95)

    def unmask(turned_view_reads):
        unmasker = Unmasker.from_files(
            mseg_path, gen_path, UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
        )
        unmasker.detector = _Detector({photo.shape: [unsure]}, {2: [unsure]})
        _steer_masks(unmasker, [lower.copy(), lower.copy()])
        _steer_probabilities(monkeypatch, [0.99, 0.99])
        upside_down = [0.99, 0.0]  # as it is: called upside down; turned: upright to the classifier

        def upside_down_probabilities(crops):
            chosen = upside_down[: len(crops)]
            del upside_down[: len(crops)]
            return np.array(chosen)

        monkeypatch.setattr(
            "m2u.inference.mask_presence.upside_down_probabilities", upside_down_probabilities
        )
        _boxes_read(monkeypatch, turned_view_reads)
        return unmasker.unmask_with_refusals(photo)

    # The turned view's box reads turned there too: that view is not taken, the photo is left as it is.
    result, restored, left = unmask([0.0, 0.0, 1.0, 0.0])
    assert not restored and np.array_equal(result, photo)
    # Read upright there (or not surely otherwise): the turn is taken.
    result, restored, left = unmask([0.95, 0.0, 0.05, 0.0])
    assert len(restored) == 1 and restored[0].turned == 180


def test_the_box_turn_needs_a_sure_box_and_no_box_surely_upright(monkeypatch):
    from m2u.inference.unmask import BOX_TURN_CONFIDENCE

    turn = Unmasker._box_turn
    sure = Face.from_landmarks(_photo_with_faces(1)[1][0].landmarks)
    readings: dict = {}
    monkeypatch.setattr(
        "m2u.inference.mask_presence.box_orientations",
        lambda image, boxes, net=None: np.array([readings[b] for b in boxes], float),
    )
    image = np.zeros((10, 10, 3), np.uint8)
    sideways = dataclasses.replace(sure, box=(1, 1, 2, 2))
    readings.update({sure.box: [0.0, 0.0, 0.0, 1.0], sideways.box: [0.0, 1.0, 0.0, 0.0]})
    assert turn(image, [sure.box]) == 3 and turn(image, []) == 0
    readings[sure.box] = [0.0, 0.0, 1.0 - BOX_TURN_CONFIDENCE + 0.01, BOX_TURN_CONFIDENCE - 0.01]
    assert turn(image, [sure.box]) == 0  # not sure enough
    readings[sure.box] = [BOX_TURN_CONFIDENCE, 0.0, 0.0, 1.0 - BOX_TURN_CONFIDENCE]
    assert turn(image, [sure.box, sideways.box]) == 0  # one box surely upright: no turn
    readings[sure.box] = [0.0, 0.0, 0.0, 1.0]
    third = dataclasses.replace(sure, box=(3, 3, 4, 4))
    readings[third.box] = [0.0, 0.0, 0.0, 1.0]
    assert turn(image, [sure.box, sideways.box, third.box]) == 3  # the turn most boxes read


def test_the_turned_try_asks_blazeface_alone(tiny_checkpoints, monkeypatch):
    from m2u.masking.masked_faces import RealFaceDetector

    mseg_path, gen_path = tiny_checkpoints
    config = UnmaskConfig(crop_size=CROP, device="cpu", progress=False, whole_frame=False)
    unmasker = Unmasker.from_files(mseg_path, gen_path, config)
    asked = []
    monkeypatch.setattr(RealFaceDetector, "detect", lambda self, image: asked.append(self.config) or [])
    photo, _ = _photo_with_faces(1)
    unmasker.unmask_with_refusals(photo)
    # As it is, the default detector (BlazeFace, then the dlib cascade); turned, BlazeFace's passes alone.
    assert [c.fallback is None for c in asked] == [False, True, True, True]  # as it is, 180, 90, 270 degrees
    assert dataclasses.replace(asked[1], fallback=asked[0].fallback) == asked[0]


@pytest.mark.parametrize("quarter_turns", [1, 2, 3])
def test_faces_found_turned_and_left_are_reported_in_the_photos_own_pixels(quarter_turns):
    from m2u.inference.unmask import _turned_back

    photo, (first,) = _photo_with_faces(1)
    photo = np.ascontiguousarray(photo[:, 20:])  # not square: a quarter turn swaps width and height
    height, width = photo.shape[:2]
    points = first.landmarks - np.array([20, 0], np.float32)
    # Where each point's pixel lands in the photo turned by np.rot90, found by turning a marker image.
    turned_points = []
    for x, y in np.rint(points).astype(int):
        marker = np.zeros((height, width), np.uint8)
        marker[y, x] = 1
        row, col = np.argwhere(np.rot90(marker, quarter_turns))[0]
        turned_points.append((col, row))
    found = Face.from_landmarks(np.array(turned_points, np.float32))
    found = dataclasses.replace(
        found, keypoints=found.landmarks[[36, 45, 30, 62, 0, 16]], problem="not masked: a test"
    )
    back = _turned_back(found, quarter_turns, width, height)
    assert np.allclose(back.landmarks, np.rint(points)) and np.allclose(
        back.keypoints, np.rint(points)[[36, 45, 30, 62, 0, 16]]
    )
    degrees = {1: "90 degrees anticlockwise", 2: "180 degrees", 3: "90 degrees clockwise"}[quarter_turns]
    assert back.problem == f"in the photo turned {degrees}: not masked: a test"
    assert back.box == Face.from_landmarks(np.rint(points).astype(np.float32)).box
    # A detection judged no face stays one where it was found turned: its reason still starts "no face: ".
    no_face = _turned_back(
        dataclasses.replace(found, problem="no face: a test"), quarter_turns, width, height
    )
    assert no_face.problem == f"no face: in the photo turned {degrees}: a test"


def test_the_shipped_upside_down_classifier_tells_a_real_face_from_the_same_face_turned():
    """The astronaut's face aligned as found, and found again in the photo turned 180 degrees with its landmarks
    fitted as if upright (dlib's predictor on the turned face's box, as the detectors do)."""
    import dlib

    from m2u.datasets.align import align_face
    from m2u.inference.mask_presence import upside_down_probabilities
    from m2u.masking.detect import _shape_predictor
    from m2u.masking.masked_faces import RealFaceDetector, visible_anchor_points

    real_photo = _astronaut()
    face = RealFaceDetector().detect(real_photo)[0]
    height, width = real_photo.shape[:2]
    turned = np.ascontiguousarray(real_photo[::-1, ::-1])
    x0, y0, x1, y1 = face.box
    box = dlib.rectangle(width - 1 - x1, height - 1 - y1, width - 1 - x0, height - 1 - y0)
    shape = _shape_predictor()(turned, box)
    fitted = np.array([(q.x, q.y) for q in shape.parts()], np.float32)
    crops = [
        align_face(image, points, 128, visible_anchor_points(points)).image
        for image, points in ((real_photo, face.landmarks), (turned, fitted))
    ]
    upright, upside_down = upside_down_probabilities(crops)
    assert upright < 0.5 < upside_down, (upright, upside_down)


def test_the_shipped_box_orientation_net_reads_which_way_up_a_real_face_lies(monkeypatch):
    """The astronaut's face box, in her photo turned each quarter turn: the turn back reads surest."""
    monkeypatch.undo()  # the real net, not this module's stand-in
    from m2u.inference.mask_presence import box_orientations
    from m2u.inference.unmask import _turn_matrix
    from m2u.masking.masked_faces import RealFaceDetector

    real_photo = _astronaut()
    face = RealFaceDetector().detect(real_photo)[0]
    height, width = real_photo.shape[:2]
    corners = np.array([face.box[:2], face.box[2:]], np.float64)
    for quarter_turns in range(4):
        turned = np.ascontiguousarray(np.rot90(real_photo, quarter_turns))
        if quarter_turns:
            matrix = _turn_matrix(quarter_turns, width, height)
            moved = corners @ matrix[:, :2].T + matrix[:, 2]
        else:
            moved = corners
        box = (*moved.min(0), *moved.max(0))
        (ways,) = box_orientations(turned, [box])
        assert ways.sum() == pytest.approx(1.0)
        assert int(ways.argmax()) == (4 - quarter_turns) % 4, (quarter_turns, ways)


def test_min_score_leaves_low_scoring_faces_as_they_are(tiny_checkpoints):
    mseg_path, gen_path = tiny_checkpoints
    photo, faces = _photo_with_faces(2)  # scores 0.9 and 0.4
    config = UnmaskConfig(crop_size=CROP, device="cpu", progress=False, min_score=0.5, masked_only=False)
    unmasker = Unmasker.from_files(mseg_path, gen_path, config)
    unmasker.detector = _Detector({photo.shape: faces})
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert [f.score for f in restored] == [pytest.approx(0.9)]
    assert len(left) == 1 and left[0].problem == "detector score 0.400 below --min-score 0.5"
    left_x, top, right, bottom = faces[1].box
    assert np.array_equal(result[top:bottom, left_x:right], photo[top:bottom, left_x:right])


# --- m2u-eval real-masks -------------------------------------------------------------------------------------------


def test_mask_scores_against_a_label():
    label = np.zeros((10, 10), bool)
    label[2:6, 2:6] = True  # 16 pixels
    predicted = np.zeros((10, 10), bool)
    predicted[4:8, 2:6] = True  # 8 of them shared
    unchanged = np.ones((10, 10), bool)
    unchanged[2:4, 2:6] = False  # 8 label pixels were changed
    dice, iou, remnant = mask_scores(predicted, label, unchanged)
    assert dice == pytest.approx(0.5) and iou == pytest.approx(8 / 24) and remnant == pytest.approx(0.5)


def test_left_unchanged_exactly_or_within_a_tolerance():
    image = np.full((2, 3, 3), 100, np.uint8)
    result = image.copy()
    result[0, 0] = (100, 100, 101)  # one level in one channel
    result[0, 1] = (112, 88, 100)  # 12 levels: a resampled copy of itself
    result[0, 2] = (113, 100, 100)  # repainted
    result[1, 0] = (0, 255, 0)
    assert left_unchanged(result, image).tolist() == [[False, False, False], [False, True, True]]
    assert left_unchanged(result, image, 12).tolist() == [[True, True, False], [False, True, True]]


def test_a_label_pixel_is_one_whose_brightest_channel_reaches_the_threshold(tmp_path):
    label = np.zeros((8, 12, 3), np.uint8)
    label[0, 0] = (127, 0, 0)  # at the threshold, in one channel: label
    label[0, 1] = (126, 126, 126)  # just below: background
    label[1, :] = 255
    cv2.imwrite(str(tmp_path / "label.png"), label[..., ::-1])
    read = read_label(tmp_path / "label.png")
    assert read.dtype == bool and read.shape == (8, 12)
    assert read[0, :2].tolist() == [True, False] and read[1].all() and not read[2:].any()
    assert read_label(tmp_path / "label.png", threshold=128)[0, 0] == False  # noqa: E712 - numpy bool
    # A label at another resolution than its photo is read at the photo's, still binary.
    resized = read_label(tmp_path / "label.png", (16, 24))
    assert resized.shape == (16, 24) and resized[2:4].all() and not resized[5:].any()


class _FakeUnmasker:
    """Restores one face per photo whose crop is the photo itself: its mask is the lower half."""

    def unmask_with_refusals(self, image):
        height, width = image.shape[:2]
        mask = np.zeros((height, width), np.uint8)
        mask[height // 2 :] = 255
        result = image.copy()
        result[height // 2 :] = 0
        matrix = np.array([[1.0, 0, 0], [0, 1.0, 0]])
        face = FaceRestoration(
            image, mask, result, matrix, 0.5, "fake", 0.9, (0, 0, width, height), "aligned-input"
        )
        return result, [face], []


def test_real_masks_evaluation_scores_photos_against_labels_and_writes_a_sheet(tmp_path):
    photos, labels = tmp_path / "photos", tmp_path / "labels"
    photos.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        image = rng.integers(1, 255, (40, 30, 3), dtype=np.uint8)
        if name == "a":
            image[20:25] = 5  # near black: the fake's black fill changes these rows by 5 levels only
        cv2.imwrite(str(photos / f"{name}.png"), image)
    label = np.zeros((40, 30), np.uint8)
    label[20:] = 200  # exactly the fake's mask, on a label with soft grey values
    cv2.imwrite(str(labels / "a.png"), label)
    label[:10] = 255  # 10 more rows: Dice 2*20/(20+30) = 0.8
    cv2.imwrite(str(labels / "b.jpg"), label)
    (photos / "broken.jpg").write_bytes(b"not an image")
    (photos / "notes.txt").write_text("not a photo")  # passed over, and said to be
    (photos / "no_suffix").write_bytes((photos / "a.png").read_bytes())
    (labels / ".hidden.png").write_bytes((labels / "a.png").read_bytes())
    out = tmp_path / "report"
    summary = evaluate_real_masks([str(photos)], out, _FakeUnmasker(), labels, RealMaskConfig(thumb=32))
    assert summary["passed_over"] == [
        "2 file(s) in the input folders have no image suffix and were not read ((none) 1, .txt 1)",
        "1 image file(s) in the labels folder are hidden (a name or folder starting with '.') and were not read",
    ]
    with open(out / "real_masks.csv") as handle:
        rows = {Path(r["photo"]).name: r for r in csv.DictReader(handle)}
    assert float(rows["a.png"]["dice"]) == 1.0 and float(rows["a.png"]["remnant"]) == 0.0
    assert float(rows["b.png"]["dice"]) == pytest.approx(0.8, abs=0.01)
    assert float(rows["b.png"]["remnant"]) == pytest.approx(1 / 3, abs=0.01)  # the top rows were left
    # Near remnants: also the label pixels the output changed by 12 levels or less (the near-black rows of a).
    photo_a = cv2.imread(str(photos / "a.png"))
    near_a = float((photo_a[20:].max(axis=2) <= 12).mean())
    assert near_a >= 0.25 and float(rows["a.png"]["remnant_near"]) == pytest.approx(near_a, abs=1e-4)
    assert float(rows["b.png"]["remnant_near"]) >= float(rows["b.png"]["remnant"])
    assert summary["remnant_near_all_labelled"] >= summary["remnant_all_labelled"]
    assert rows["c.png"]["status"] == "no_label" and rows["broken.jpg"]["status"] == "unreadable"
    assert summary["labelled_photos"] == 2 and summary["photos_with_face_found"] == 3
    assert summary["dice_all_labelled"] == pytest.approx(0.9, abs=0.01)
    page = (out / "index.html").read_text()
    assert page.count("<tr>") == 3 and "label" in page  # header + the two photos scored against labels
    assert page.count('<tr class="failed">') == 2  # c.png has no label, broken.jpg cannot be read
    assert "<b>photos by status:</b> no_label 1, ok 2, unreadable 1" in page
    assert "1 image file(s) in the labels folder are hidden" in page
    assert len(list((out / "sheet").glob("*_label.png"))) == 2
    # One line per face found, named by its photo (the unreadable photo has none).
    lines = [json.loads(t) for t in (out / "faces.jsonl").read_text().splitlines()]
    assert sorted(Path(x["photo"]).name for x in lines) == ["a.png", "b.png", "c.png"]
    assert all(x["restored"] and x["detector"] == "fake" and x["face"] == 0 for x in lines)
    # Without labels: faces found and mask fraction, no Dice.
    plain = evaluate_real_masks([str(photos)], tmp_path / "plain", _FakeUnmasker())
    assert plain["labelled_photos"] == 0 and plain["mean_mask_fraction_where_restored"] == 0.5


def test_a_label_that_cannot_be_its_photos_mask_is_the_labels_fault_said_so(tmp_path):
    photos, labels = tmp_path / "photos", tmp_path / "labels"
    photos.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(1)
    for name in ("photo_as_label", "wide", "empty", "text", "fine", "dark", "faint"):
        cv2.imwrite(str(photos / f"{name}.png"), rng.integers(1, 255, (40, 30, 3), dtype=np.uint8))
    cv2.imwrite(str(labels / "photo_as_label.png"), rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))
    cv2.imwrite(str(labels / "wide.png"), np.full((10, 40), 255, np.uint8))  # 4:1, its photo 3:4
    cv2.imwrite(str(labels / "empty.png"), np.zeros((40, 30), np.uint8))
    two_levels = np.zeros((40, 30), np.uint8)
    two_levels[20:] = 100  # a clean mask drawn in dark grey: all of it under the threshold 127
    cv2.imwrite(str(labels / "dark.png"), two_levels)
    two_levels[20:] = 40  # fainter, not near the threshold: read as an empty label (Dice 0) before
    cv2.imwrite(str(labels / "faint.png"), two_levels)
    (labels / "text.png").write_text("not an image")
    fine = np.zeros((80, 60), np.uint8)  # twice the photo's size, same shape: resized
    fine[40:] = 255
    cv2.imwrite(str(labels / "fine.png"), fine)
    cv2.imwrite(str(labels / "typo.png"), fine)  # names no photo
    out = tmp_path / "report"
    summary = evaluate_real_masks([str(photos)], out, _FakeUnmasker(), labels, RealMaskConfig(thumb=32))
    with open(out / "real_masks.csv") as handle:
        rows = {Path(r["photo"]).stem: r for r in csv.DictReader(handle)}
    for name, said in (
        ("photo_as_label", "not a binary label"),
        ("wide", "the label is 40x10 px, its photo 30x40: another shape"),
        ("text", "labels/text.png: not an image"),
        (
            "dark",
            "its only values are 0 and 100, both below the threshold 127: give a threshold between them",
        ),
        ("faint", "its only values are 0 and 40, both below the threshold 127"),
    ):
        assert rows[name]["status"] == "bad_label" and said in rows[name]["reason"], rows[name]
        assert rows[name]["faces_found"] == "1" and not rows[name]["dice"]  # the photo itself was read
    # an empty label: Dice of the prediction against nothing, and no remnant share (no perfect 0)
    assert (
        rows["empty"]["status"] == "ok"
        and float(rows["empty"]["dice"]) == 0.0
        and rows["empty"]["remnant"] == ""
    )
    assert float(rows["fine"]["dice"]) == 1.0 and float(rows["fine"]["remnant"]) == 0.0
    assert summary["remnant_all_labelled"] == 0.0  # the empty label is not averaged in
    assert summary["labels_without_a_photo"] == 1 and summary["labels_without_a_photo_e_g"] == ["typo.png"]
    assert summary["statuses"] == {"bad_label": 5, "ok": 2}


def test_the_real_masks_command_says_a_refusal_with_2_and_unread_inputs_with_1(tmp_path, tiny_checkpoints):
    mseg_path, gen_path = tiny_checkpoints
    photos, labels = tmp_path / "photos", tmp_path / "labels"
    photos.mkdir()
    labels.mkdir()
    cv2.imwrite(str(photos / "face.png"), cv2.cvtColor(_astronaut(), cv2.COLOR_RGB2BGR))
    models = ["--mseg", str(mseg_path), "--generator", str(gen_path), "-q"]
    into_labels = CliRunner().invoke(
        real_masks_main, [str(photos), "--labels", str(labels), "-o", str(labels), *models]
    )
    assert into_labels.exit_code == 2 and "is the labels folder" in into_labels.output
    swapped = ["--mseg", str(gen_path), "--generator", str(mseg_path), "-q"]
    result = CliRunner().invoke(real_masks_main, [str(photos), "-o", str(tmp_path / "s"), *swapped])
    assert result.exit_code == 2, result.output
    (photos / "broken.jpg").write_bytes(b"not an image")
    result = CliRunner().invoke(real_masks_main, [str(photos), "-o", str(tmp_path / "r"), *models])
    assert result.exit_code == 1 and ", unreadable 1" in result.output.split("statuses: ")[1], result.output
    # ... and names it in one line, as m2u-unmask names the photos it could not read
    assert f"unreadable: {photos / 'broken.jpg'}: not an image (unrecognised format)" in result.output


def test_photo_mask_maps_crop_masks_back_through_the_alignment():
    mask = np.zeros((20, 20), np.uint8)
    mask[10:] = 255
    face = FaceRestoration(None, mask, None, np.array([[0.5, 0, 0], [0, 0.5, 0]]), 0.5)  # a 2x shrink
    back = photo_mask((40, 40), [face])
    assert back[25:38, 2:38].all() and not back[:15].any()


def test_real_masks_command_runs_unmask_and_writes_its_report(tmp_path, tiny_checkpoints):
    mseg_path, gen_path = tiny_checkpoints
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "face.png"), cv2.cvtColor(_astronaut(), cv2.COLOR_RGB2BGR))
    out = tmp_path / "report"
    args = [str(photos), "--mseg", str(mseg_path), "--generator", str(gen_path), "-o", str(out), "-q"]
    result = CliRunner().invoke(real_masks_main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["photos_with_face_found"] == 1 and summary["faces_found"] == 1
    assert (out / "index.html").is_file() and "found" in result.output
    # Without labels the label figures are not said as "None", nor a mapping as Python writes it
    figures = (out / "index.html").read_text().split("</h1>")[1].split("<table")[0]
    for said in (result.output, figures):
        assert "None" not in said and "{" not in said and "dice" not in said, said
    assert f"faces_found: {summary['faces_found']}" in result.output
    (line,) = [json.loads(t) for t in (out / "faces.jsonl").read_text().splitlines()]
    assert line["photo"] == str(photos / "face.png") and {"mask_fraction", "mask_probability"} <= line.keys()
    assert (
        line["restored"] == (summary["faces_restored"] == 1) and bool(line.get("problem")) != line["restored"]
    )
    # --limit N: the first N photos found, as every per-file command takes it
    cv2.imwrite(str(photos / "later.png"), cv2.cvtColor(_astronaut(), cv2.COLOR_RGB2BGR))
    limited = CliRunner().invoke(
        real_masks_main, [*args[:-3], "-o", str(tmp_path / "one"), "-q", "--limit", "1"]
    )
    assert limited.exit_code == 0, limited.output
    assert json.loads((tmp_path / "one" / "summary.json").read_text())["photos"] == 1


def test_an_uncertain_detection_is_a_face_only_where_a_mask_is_found(tmp_path, tiny_checkpoints, monkeypatch):
    import dataclasses

    mseg_path, gen_path = tiny_checkpoints
    photo, (face, _) = _photo_with_faces(2)
    unsure = dataclasses.replace(face, retry=True)
    config = UnmaskConfig(
        crop_size=CROP, device="cpu", progress=False, masked_only=False, whole_frame=False
    )  # even with --all-faces (the whole-frame fallback, tested below, would try the photo as one face)
    unmasker = Unmasker.from_files(mseg_path, gen_path, config)
    unmasker.detector = _Detector({photo.shape: [unsure]})
    _steer_masks(unmasker, [_crop_mask(CROP, 0.5, 0.95)] * 2)
    _steer_probabilities(monkeypatch, [0.2, 0.99])
    path = tmp_path / "p.png"
    cv2.imwrite(str(path), photo[..., ::-1])
    (row,) = unmask_files([str(path)], None, None, tmp_path / "a", config, unmasker=unmasker)
    assert (row.status, row.faces, row.left_faces) == (
        "no_face",
        0,
        1,
    ) and "uncertain detection" in row.reason
    (line,) = [json.loads(t) for t in (tmp_path / "a" / "faces.jsonl").read_text().splitlines()]
    assert not line["restored"] and line["problem"].startswith("no face") and line["mask_probability"] == 0.2
    # The same detection with a mask found on it is restored.
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert len(restored) == 1 and not left and not np.array_equal(result, photo)


def test_the_whole_frame_needs_both_routes_of_the_rule():
    rule = MaskedFaceRule()
    lower = rule.evidence(_crop_mask(128, 0.5, 0.95), 0.99)
    assert rule.frame_is_masked_face(lower)
    assert not rule.frame_is_masked_face(
        {**lower, "mask_probability": 0.9}
    )  # the M-Seg route alone is not enough
    assert not rule.frame_is_masked_face(rule.evidence(_crop_mask(128, 0.3, 0.95), 0.99))  # over the eyes
    assert not rule.frame_is_masked_face(rule.evidence(_crop_mask(128, 0.2, 0.5), 0.99))  # the mouth bare


def test_a_photo_with_no_face_found_is_tried_as_one_face_crop(tmp_path, tiny_checkpoints, monkeypatch):
    import dataclasses

    mseg_path, gen_path = tiny_checkpoints
    photo, (face, _) = _photo_with_faces(2)
    unsure = dataclasses.replace(face, retry=True)
    config = UnmaskConfig(crop_size=CROP, device="cpu", progress=False)
    unmasker = Unmasker.from_files(mseg_path, gen_path, config)
    lower = _crop_mask(CROP, 0.5, 0.95)
    # The upside-down classifier, asked about the frame's crop and its three quarter turns (np.rot90), reads it most
    # upright as it is; a landmarked face is read upright.
    frame_readings = [0.1, 0.6, 0.9, 0.6]
    turns_asked: list[bool] = []

    def upside_down(crops):
        if len(crops) != 4:
            return np.zeros(len(crops))
        turns_asked.append(all(np.array_equal(crops[k], np.rot90(crops[0], k)) for k in range(4)))
        return np.array(frame_readings)

    monkeypatch.setattr("m2u.inference.mask_presence.upside_down_probabilities", upside_down)

    # Nothing found, or only an uncertain detection judged no face: the photo is tried whole, and restored where
    # the classifier and M-Seg's mask shape both say masked face.
    for found, probabilities in (([], [0.99]), ([unsure], [0.2, 0.99])):
        unmasker.detector = _Detector({photo.shape: found})
        _steer_masks(unmasker, [lower] * len(probabilities))
        _steer_probabilities(monkeypatch, list(probabilities))
        result, restored, left = unmasker.unmask_with_refusals(photo)
        assert [(f.detector, f.alignment) for f in restored] == [("whole-frame", "whole-frame")]
        assert len(left) == len(found) and not np.array_equal(result, photo)

    # The classifier below min_mask_probability: nothing restored, the photo unchanged, reported as no face.
    unmasker.detector = _Detector({photo.shape: []})
    _steer_masks(unmasker, [lower])
    _steer_probabilities(monkeypatch, [0.9])
    path = tmp_path / "p.png"
    cv2.imwrite(str(path), photo[..., ::-1])
    (row,) = unmask_files([str(path)], None, None, tmp_path / "a", config, unmasker=unmasker)
    assert (row.status, row.faces) == ("no_face", 0) and not (tmp_path / "a" / "p.png").exists()
    assert row.reason.endswith("the whole photo, tried as one face crop, is not a masked face")
    _steer_masks(unmasker, [lower])
    _steer_probabilities(monkeypatch, [0.99])
    (row,) = unmask_files([str(path)], None, None, tmp_path / "b", config, unmasker=unmasker)
    assert (row.status, row.faces) == ("ok", 1) and "whole photo restored" in row.reason
    (line,) = [json.loads(t) for t in (tmp_path / "b" / "faces.jsonl").read_text().splitlines()]
    assert line["detector"] == "whole-frame" and line["restored"]

    assert turns_asked and all(turns_asked) and line["upside_down_probability"] == 0.1

    # A frame that reads more upright turned (a photo stored sideways with no face found) is not restored whole: a
    # smear beside the face is what it gave. The turned try looks for the face instead (none found here).
    frame_readings = [0.3, 0.2, 0.9, 0.6]
    unmasker.detector = _Detector({photo.shape: []})
    _steer_masks(unmasker, [lower])
    _steer_probabilities(monkeypatch, [0.99])
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert not restored and not left and np.array_equal(result, photo) and unmasker.detector.calls == 4
    frame_readings = [0.1, 0.6, 0.9, 0.6]

    # A face found and left "not masked" is a face: the photo is not tried whole (no second M-Seg pass asked).
    unmasker.detector = _Detector({photo.shape: [face]})
    _steer_masks(unmasker, [lower])
    _steer_probabilities(monkeypatch, [0.1])
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert not restored and [f.problem[:10] for f in left] == ["not masked"]
    assert np.array_equal(result, photo)

    # --no-whole-frame: never tried.
    unmasker.config = dataclasses.replace(config, whole_frame=False)
    unmasker.detector = _Detector({photo.shape: []})
    _steer_masks(unmasker, [lower])
    _steer_probabilities(monkeypatch, [0.99])
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert not restored and not left and np.array_equal(result, photo)


def test_a_mask_classifier_of_another_width_loads_from_its_weights(tmp_path):
    """The loader reads the base width off the first convolution: a wider candidate (train_mask_classifier.py
    --width) loads and answers as the net that was saved."""
    import torch
    from safetensors.torch import save_file

    from m2u.inference.mask_presence import MaskPresenceNet, load_mask_classifier, mask_probabilities

    torch.manual_seed(0)
    wide = MaskPresenceNet(24).eval()
    file = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in wide.state_dict().items()}, str(file))
    loaded = load_mask_classifier(str(file))
    assert loaded.features[0].out_channels == 24
    crops = [make_synthetic_sample(128, seed=seed).masked for seed in range(2)]
    np.testing.assert_allclose(mask_probabilities(crops, loaded), mask_probabilities(crops, wide), atol=1e-6)


def test_the_sure_mask_route_restores_a_mask_shaped_mask_m_seg_is_sure_of_whatever_the_classifier_says():
    rule = MaskedFaceRule()
    lower = _crop_mask(128, 0.5, 0.95)  # nose to chin: a mask's shape
    sure_map = np.where(lower > 0, 0.97, 0.0).astype(np.float32)
    unsure_map = np.where(lower > 0, 0.7, 0.0).astype(np.float32)
    evidence = rule.evidence(lower, 0.05, sure_map)
    assert evidence["mask_confidence"] == 1.0 and rule.restores(evidence)
    assert rule.not_masked_reason(lower, 0.05, mask_map=sure_map) == ""
    assert rule.evidence(lower, 0.05, unsure_map)["mask_confidence"] == 0.0
    reason = rule.not_masked_reason(lower, 0.05, mask_map=unsure_map)
    assert (
        reason.startswith("not masked")
        and "M-Seg sure of 80% of its mask: 0%, 70% of the mouth and at most 50% of the eyes" in reason
    )
    assert "mask_confidence" not in rule.evidence(lower, 0.05)  # no map, no confidence: the route stays shut
    assert not rule.restores(rule.evidence(lower, 0.05))
    # Sure of 79 % of its pixels: below min_mask_confidence (0.8).
    part = sure_map.copy()
    rows = np.flatnonzero(lower.any(axis=1))
    part[rows[: round(0.21 * len(rows)) + 1]] = np.where(
        lower[rows[: round(0.21 * len(rows)) + 1]] > 0, 0.5, 0
    )
    assert rule.evidence(lower, 0.05, part)["mask_confidence"] < 0.8
    assert not rule.restores(rule.evidence(lower, 0.05, part))
    # The shape still rules: M-Seg sure of a mask over the eyes (a texture, a face covered all over) restores nothing.
    tall = _crop_mask(128, 0.3, 0.95)
    assert not rule.restores(rule.evidence(tall, 0.05, np.where(tall > 0, 0.99, 0.0).astype(np.float32)))
    # A mask worn up to the lower lids covers the eye band's lower part: the sure route takes it (up to
    # max_sure_route_eye_coverage), the classifier's M-Seg route does not (max_mouth_route_eye_coverage).
    high = _crop_mask(128, 0.4, 0.95)
    high_sure = rule.evidence(high, 0.75, np.where(high > 0, 0.99, 0.0).astype(np.float32))
    assert 0.2 < high_sure["eye_coverage"] <= 0.5 and rule.restores(high_sure)
    assert not rule.restores(rule.evidence(high, 0.75, np.where(high > 0, 0.6, 0.0).astype(np.float32)))
    # A mask ending above the mouth box's lower edge (a close-up aligned a little off) covers 75 % of the mouth: the
    # sure route takes it from min_sure_route_mouth_coverage (0.7), the classifier's M-Seg route needs 0.9; half the
    # mouth is not a mask's shape for either.
    short = _crop_mask(128, 0.5, 0.675)
    short_sure = rule.evidence(short, 0.75, np.where(short > 0, 0.99, 0.0).astype(np.float32))
    assert 0.7 <= short_sure["mouth_coverage"] < 0.9 and rule.restores(short_sure)
    assert not rule.restores(rule.evidence(short, 0.75, np.where(short > 0, 0.6, 0.0).astype(np.float32)))
    half = _crop_mask(128, 0.45, 0.635)
    half_sure = rule.evidence(half, 0.75, np.where(half > 0, 0.99, 0.0).astype(np.float32))
    assert half_sure["mouth_coverage"] < 0.7 and not rule.restores(half_sure)
    # An uncertain detection with a sure mask-shaped mask is a face (and restored).
    assert rule.uncertain_is_face(lower, 0.05, sure_map) and not rule.uncertain_is_face(
        lower, 0.05, unsure_map
    )
    with pytest.raises(ValueError, match="min_mask_confidence"):
        MaskedFaceRule(min_mask_confidence=1.5)


def test_m2u_unmask_restores_by_the_sure_mask_route_and_records_the_confidence(
    tmp_path, tiny_checkpoints, monkeypatch
):
    photo, unmasker = _two_face_unmasker(tiny_checkpoints)
    lower = _crop_mask(CROP, 0.5, 0.95)
    # Both faces: the classifier unsure (0.3); M-Seg sure of the first face's mask only.
    _steer_masks(unmasker, [lower, lower], sure=[0.95, 0.6])
    _steer_probabilities(monkeypatch, [0.3, 0.3])
    result, restored, left = unmasker.unmask_with_refusals(photo)
    assert len(restored) == 1 and len(left) == 1
    assert restored[0].evidence["mask_confidence"] == 1.0 and left[0].evidence["mask_confidence"] == 0.0
    # m2u-eval's per-photo row carries the confidence of the face it reports.
    from m2u.evaluation.real_masks import PhotoScore, _record_faces

    row = PhotoScore(photo="p.png", status="ok")
    _record_faces(row, restored, left, [])
    assert row.mseg_mask_confidence == 1.0 and row.faces_restored == 1  # the first of equal probabilities
    assert left[0].problem.startswith("not masked")
    x0, y0, x1, y1 = left[0].box
    assert np.array_equal(result[y0:y1, x0:x1], photo[y0:y1, x0:x1])
    assert not np.array_equal(result, photo)


def test_m_seg_probabilities_are_what_its_masks_are_thresholded_from():
    import torch

    from m2u.inference.restore import predict_masks, predict_masks_and_probabilities
    from m2u.training.models.mseg import MSeg, MSegConfig

    torch.manual_seed(0)
    mseg = MSeg(MSegConfig(base_channels=4, levels=2, cbam_reduction=2)).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    masks, probabilities = predict_masks_and_probabilities(mseg, x, 0.5, mirror=True, fill_holes=False)
    assert torch.equal(masks, (probabilities >= 0.5).float())
    assert torch.equal(masks, predict_masks(mseg, x, 0.5, mirror=True, fill_holes=False))
    assert torch.equal(mseg.predict_mask(x, 0.5, mirror=True), masks)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()


def test_an_ensemble_classifier_file_loads_and_answers_its_members_mean(tmp_path):
    """An ensemble file (keys members.<k>.<net key>, benchmarks/pack_classifier_ensemble.py) loads as one classifier
    whose probability is the mean of its members' (each mirror-averaged); a file whose members skip a number is
    refused with a clear error."""
    import torch
    from safetensors.torch import save_file

    from m2u.inference.mask_presence import (
        MaskPresenceEnsemble,
        MaskPresenceNet,
        load_mask_classifier,
        mask_probabilities,
    )

    torch.manual_seed(0)
    members = [MaskPresenceNet(8).eval(), MaskPresenceNet(8).eval()]
    state = MaskPresenceEnsemble(members).state_dict()
    file = tmp_path / "ensemble.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    loaded = load_mask_classifier(str(file))
    assert isinstance(loaded, MaskPresenceEnsemble) and len(loaded.members) == 2
    crops = [make_synthetic_sample(128, seed=seed).masked for seed in range(3)]
    each = [mask_probabilities(crops, member) for member in members]
    assert not np.allclose(each[0], each[1], atol=1e-3)  # two different nets: the mean is not either one
    np.testing.assert_allclose(mask_probabilities(crops, loaded), (each[0] + each[1]) / 2, atol=1e-6)
    gap = {k.replace("members.1.", "members.2."): v.contiguous() for k, v in state.items()}
    save_file(gap, str(tmp_path / "gap.safetensors"))
    with pytest.raises(ValueError, match=r"numbered \[0, 2\]"):
        load_mask_classifier(str(tmp_path / "gap.safetensors"))
    narrow = {k: v.contiguous() for k, v in MaskPresenceNet(8).state_dict().items()}
    narrow["head.weight" if "head.weight" in narrow else next(iter(narrow))] = torch.zeros(3, 3)
    save_file(narrow, str(tmp_path / "narrow.safetensors"))
    with pytest.raises(ValueError, match=r"narrow.safetensors is not a mask classifier m2u can load") as info:
        load_mask_classifier(str(tmp_path / "narrow.safetensors"))
    assert "\n" not in str(info.value)  # torch's first line, not its list of every tensor


def test_the_rules_reasons_never_round_a_figure_onto_its_threshold():
    """A figure below (or above) the threshold it is compared with is shown with as many decimals as it takes to
    stay on its side: a classifier's 0.9494 is not "0.95 (below 0.95)", M-Seg sure of 79.6 % of its mask not "80 %"
    where 80 % are needed, 1.96 % of the crop not "2.0 % (at least 2 %)", an upside-down 0.5004 not "0.50, above
    0.5"; figures far from their thresholds keep their usual decimals."""
    rule = MaskedFaceRule()
    upper = _crop_mask(128, 0.1, 0.45)  # covers neither mouth route: the classifier decides
    reason = rule.not_masked_reason(upper, 0.9494)
    assert "the mask classifier gives 0.949 (below 0.95)" in reason
    # 0.95 as the rule reads it (the evidence keeps four places): restored, no reason.
    assert rule.not_masked_reason(upper, 0.94996) == ""
    lower = _crop_mask(128, 0.5, 0.95)
    sure_map = np.where(lower > 0, 0.97, 0.0).astype(np.float32)
    sure_map[lower > 0] = np.where(np.arange(int((lower > 0).sum())) < 0.796 * (lower > 0).sum(), 0.97, 0.5)
    confidence = rule.evidence(lower, 0.05, sure_map)["mask_confidence"]
    assert 0.795 <= confidence < 0.8
    assert f"M-Seg sure of 80% of its mask: {confidence:.1%}" in rule.not_masked_reason(
        lower, 0.05, mask_map=sure_map
    )
    small = np.zeros((100, 100), np.uint8)
    small[60:74, 30:44] = 255  # 196 pixels: 1.96 % of the crop
    assert "M-Seg marks 1.96% of the face crop" in rule.not_masked_reason(small, 0.99)
    assert "gives 0.5004, above 0.5" in rule.upside_down_reason(0.5004)
    assert "gives 0.73, above 0.5" in rule.upside_down_reason(0.7311)
    assert "the mask classifier gives 0.30 (below 0.95)" in rule.not_masked_reason(upper, 0.3)


def test_real_masks_evaluation_runs_again_into_its_own_report_and_never_over_a_users_file(tmp_path):
    """Its reports and sheet go through m2u.core.fileio: a second run replaces what the first wrote (the first
    run's files were once unrecorded, so the second was refused), while a file of the same name m2u did not write
    is refused before any work, left as it was."""
    from m2u.core.inputs import OutputFolderError

    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), np.full((40, 30, 3), 100, np.uint8))
    out = tmp_path / "report"
    first = evaluate_real_masks([str(photos)], out, _FakeUnmasker())
    again = evaluate_real_masks([str(photos)], out, _FakeUnmasker())
    assert first == again and len((out / "faces.jsonl").read_text().splitlines()) == 1
    other = tmp_path / "other"
    other.mkdir()
    (other / "faces.jsonl").write_text("the user's own file\n")
    with pytest.raises(OutputFolderError, match="was not written by m2u"):
        evaluate_real_masks([str(photos)], other, _FakeUnmasker())
    assert (other / "faces.jsonl").read_text() == "the user's own file\n"
    assert not (other / "real_masks.csv").exists()


class _CountingUnmasker(_FakeUnmasker):
    def __init__(self) -> None:
        self.calls = 0

    def unmask_with_refusals(self, image):
        self.calls += 1
        return super().unmask_with_refusals(image)


def _half_label(path: Path, value: int = 255) -> None:
    label = np.zeros((40, 30), np.uint8)
    label[20:] = value
    from PIL import Image

    Image.fromarray(label).save(path, format="GIF" if path.suffix == ".gif" else "PNG")


def test_a_label_is_found_at_its_photos_path_with_any_suffix_and_never_at_another_photos(tmp_path):
    """a/x.png and b/x.png have one stem: each is scored against its own LABELS/a/x.*, LABELS/b/x.*, never a
    flat LABELS/x.* (another person's); .gif and upper-case suffixes count; two labels for a photo are said."""
    photos, labels = tmp_path / "photos", tmp_path / "labels"
    rng = np.random.default_rng(3)
    for name in ("a/x", "b/x", "c/x", "g", "twice"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(photos / f"{name}.png"), rng.integers(1, 255, (40, 30, 3), dtype=np.uint8))
    (labels / "a").mkdir(parents=True)
    (labels / "b").mkdir()
    _half_label(labels / "a" / "x.Jpg")
    _half_label(labels / "b" / "x.gif")
    _half_label(labels / "x.png")  # names no photo: c/x has no label
    _half_label(labels / "g.png")
    _half_label(labels / "twice.png")
    _half_label(labels / "twice.jpg")
    out = tmp_path / "report"
    summary = evaluate_real_masks([str(photos)], out, _FakeUnmasker(), labels, RealMaskConfig(thumb=32))
    with open(out / "real_masks.csv") as handle:
        rows = {Path(r["photo"]).relative_to(photos).as_posix(): r for r in csv.DictReader(handle)}
    assert rows["a/x.png"]["label"].endswith("labels/a/x.Jpg") and float(rows["a/x.png"]["dice"]) == 1.0
    assert rows["b/x.png"]["label"].endswith("labels/b/x.gif") and float(rows["b/x.png"]["dice"]) == 1.0
    assert rows["c/x.png"]["status"] == "no_label" and f"{labels}/c/x.*" in rows["c/x.png"]["reason"]
    assert rows["twice.png"]["status"] == "bad_label" and "2 labels for it" in rows["twice.png"]["reason"]
    assert rows["g.png"]["status"] == "ok"
    assert summary["labels_without_a_photo_e_g"] == ["x.png"]


@pytest.mark.parametrize("threshold", [1, 50, 127, 200, 254])
def test_every_label_threshold_reads_a_clean_label(tmp_path, threshold):
    photos, labels = tmp_path / "photos", tmp_path / "labels"
    photos.mkdir()
    labels.mkdir()
    cv2.imwrite(str(photos / "p.png"), np.full((40, 30, 3), 90, np.uint8))
    _half_label(labels / "p.png")
    summary = evaluate_real_masks(
        [str(photos)], tmp_path / "r", _FakeUnmasker(), labels, RealMaskConfig(label_threshold=threshold)
    )
    assert summary["statuses"] == {"ok": 1} and summary["dice_all_labelled"] == 1.0


def test_refusals_come_before_any_photo_is_unmasked(tmp_path):
    """A labels folder that is the photo folder, a missing input, a file of someone else's at a contact-sheet
    name: refused before the first photo (the unmasker never runs); a labels folder inside the photo folder holds
    labels, not photos."""
    from m2u.core.inputs import InputError, OutputFolderError

    photos = tmp_path / "photos"
    (photos / "labels").mkdir(parents=True)
    for name in ("a", "b"):
        cv2.imwrite(str(photos / f"{name}.png"), np.full((40, 30, 3), 90, np.uint8))
        _half_label(photos / "labels" / f"{name}.png")
    unmasker = _CountingUnmasker()
    with pytest.raises(ValueError, match="is the photo folder"):
        evaluate_real_masks([str(photos)], tmp_path / "r", unmasker, photos)
    with pytest.raises(
        ValueError, match=f"is the folder {photos} of the photo glob {photos}/\\*.png: its labels"
    ):
        evaluate_real_masks([str(photos / "*.png")], tmp_path / "r", unmasker, photos)
    with pytest.raises(InputError, match="'missing' does not exist"):
        evaluate_real_masks([str(photos), "missing"], tmp_path / "r", unmasker)
    (tmp_path / "mine" / "sheet").mkdir(parents=True)
    (tmp_path / "mine" / "sheet" / "00001_photo.png").write_text("someone's")
    with pytest.raises(OutputFolderError, match="00001_photo.png"):
        evaluate_real_masks([str(photos)], tmp_path / "mine", unmasker)
    assert (
        unmasker.calls == 0 and (tmp_path / "mine" / "sheet" / "00001_photo.png").read_text() == "someone's"
    )
    summary = evaluate_real_masks([str(photos)], tmp_path / "r", unmasker, photos / "labels")
    assert (
        summary["photos"] == 2 and summary["statuses"] == {"ok": 2} and summary["labels_without_a_photo"] == 0
    )


def test_a_photo_that_fails_leaves_no_face_lines_and_no_mask_fraction(tmp_path):
    class Failing(_FakeUnmasker):
        def unmask_with_refusals(self, image):
            if image[0, 0, 0] == 7:
                raise RuntimeError("boom")
            return super().unmask_with_refusals(image)

    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a.png"), np.full((40, 30, 3), 7, np.uint8))
    cv2.imwrite(str(photos / "b.png"), np.full((40, 30, 3), 90, np.uint8))
    (photos / "c.png").write_bytes(b"not an image")
    out = tmp_path / "r"
    summary = evaluate_real_masks([str(photos)], out, Failing())
    with open(out / "real_masks.csv") as handle:
        rows = {Path(r["photo"]).name: r for r in csv.DictReader(handle)}
    assert rows["a.png"]["status"] == "error" and rows["a.png"]["mask_fraction"] == ""
    assert rows["c.png"]["status"] == "unreadable" and rows["c.png"]["mask_fraction"] == ""
    lines = (out / "faces.jsonl").read_text().splitlines()
    assert len(lines) == summary["faces_found"] == 1 and "b.png" in lines[0]


def test_the_quiet_flag_may_come_before_the_subcommand(tmp_path, monkeypatch, capsys):
    from m2u.evaluation.cli import entry

    monkeypatch.setattr("sys.argv", ["m2u-eval", "-q", "real-masks", str(tmp_path / "missing"), "-o", "r"])
    with pytest.raises(SystemExit) as ended:
        entry()
    assert (
        ended.value.code == 2 and f"input '{tmp_path / 'missing'}' does not exist" in capsys.readouterr().err
    )


def test_photos_of_two_folders_with_one_path_below_them_get_no_label_told(tmp_path):
    """`real-masks a b --labels L`, a/x.png and b/x.png: both looked for L/x.* and both were scored against it."""
    photos_a, photos_b, labels = tmp_path / "a", tmp_path / "b", tmp_path / "labels"
    for folder in (photos_a, photos_b, labels):
        folder.mkdir()
    for folder in (photos_a, photos_b):
        cv2.imwrite(str(folder / "x.png"), np.full((40, 30, 3), 90, np.uint8))
        cv2.imwrite(str(folder / f"only_{folder.name}.png"), np.full((40, 30, 3), 90, np.uint8))
    for name in ("x", "only_a", "only_b"):
        _half_label(labels / f"{name}.png")
    out = tmp_path / "r"
    summary = evaluate_real_masks([str(photos_a), str(photos_b)], out, _FakeUnmasker(), labels)
    with open(out / "real_masks.csv") as handle:
        rows = {Path(r["photo"]).relative_to(tmp_path).as_posix(): r for r in csv.DictReader(handle)}
    for name, other in (("a/x.png", "b/x.png"), ("b/x.png", "a/x.png")):
        assert rows[name]["status"] == "bad_label" and not rows[name]["dice"]
        assert f"{tmp_path / other} also looks for {labels / 'x'}.*" in rows[name]["reason"]
    assert rows["a/only_a.png"]["status"] == rows["b/only_b.png"]["status"] == "ok"
    assert summary["labelled_photos"] == 2


def test_an_unmask_run_and_a_real_masks_report_never_replace_each_others_reports(tmp_path, tiny_checkpoints):
    """Both write faces.jsonl and index.html at their folder's top: the second command into a folder holding the
    first's reports is refused in one line before any work, and the first's files are left as they were. Each run
    records its report names in its lock file, which is how the other command knows."""
    from m2u.inference.cli import unmask_main

    mseg_path, gen_path = tiny_checkpoints
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "face.png"), cv2.cvtColor(_astronaut(), cv2.COLOR_RGB2BGR))
    models = ["--mseg", str(mseg_path), "--generator", str(gen_path), "-q"]
    shared = tmp_path / "shared"
    unmasked = CliRunner().invoke(unmask_main, [str(photos), "-o", str(shared), *models, "--device", "cpu"])
    assert unmasked.exit_code in (0, 1) and (shared / "faces.jsonl").is_file(), unmasked.output
    before = {p.name: p.read_bytes() for p in shared.iterdir() if p.is_file()}
    evaluated = CliRunner().invoke(real_masks_main, [str(photos), "-o", str(shared), *models])
    assert evaluated.exit_code == 2, evaluated.output
    assert f"{shared} holds an m2u-unmask run's faces.jsonl, index.html" in evaluated.output
    assert {p.name: p.read_bytes() for p in shared.iterdir() if p.is_file()} == before
    # The other way round, and each command still reruns into its own folder.
    report = tmp_path / "report"
    assert CliRunner().invoke(real_masks_main, [str(photos), "-o", str(report), *models]).exit_code == 0
    refused = CliRunner().invoke(unmask_main, [str(photos), "-o", str(report), *models, "--device", "cpu"])
    assert (
        refused.exit_code == 2
        and "holds an m2u-eval-real-masks run's faces.jsonl, index.html" in refused.output
    )
    again = CliRunner().invoke(unmask_main, [str(photos), "-o", str(shared), *models, "--device", "cpu"])
    assert again.exit_code == unmasked.exit_code, again.output


def test_a_lock_file_that_is_not_m2us_is_never_written_into(tmp_path):
    from m2u.core.inputs import output_lock

    out = tmp_path / "out"
    out.mkdir()
    theirs = tmp_path / "precious.txt"
    theirs.write_text("a person's file")
    os.link(theirs, out / ".m2u-unmask.lock")  # a hard link planted at the lock's name
    with output_lock(out, "m2u-unmask", reports=("report.csv",)):
        pass
    assert theirs.read_text() == "a person's file"
    empty = tmp_path / "empty.txt"  # an empty file of theirs stays empty too
    empty.touch()
    os.link(empty, out / ".m2u-mask.lock")
    with output_lock(out, "m2u-mask", reports=("report.csv",)):
        pass
    assert empty.read_bytes() == b""
    with output_lock(tmp_path, "m2u-unmask", reports=("report.csv",)):
        pass
    assert json.loads((tmp_path / ".m2u-unmask.lock").read_text()) == {"reports": ["report.csv"]}


def test_a_label_in_decomposed_unicode_is_its_photos_and_one_in_another_case_is_named(tmp_path):
    photos, labels = tmp_path / "photos", tmp_path / "labels"
    photos.mkdir()
    labels.mkdir()
    image = np.random.default_rng(0).integers(1, 255, (40, 30, 3), dtype=np.uint8)
    label = np.zeros((40, 30), np.uint8)
    label[20:] = 255  # the fake's mask
    for name in ("café.png", "P01_Case.png"):
        cv2.imwrite(str(photos / name), image)
    cv2.imwrite(str(labels / unicodedata.normalize("NFD", "café.png")), label)  # as macOS writes the name
    cv2.imwrite(str(labels / "p01_case.png"), label)
    evaluate_real_masks([str(photos)], tmp_path / "r", _FakeUnmasker(), labels, RealMaskConfig(thumb=32))
    with open(tmp_path / "r" / "real_masks.csv") as handle:
        rows = {unicodedata.normalize("NFC", Path(r["photo"]).name): r for r in csv.DictReader(handle)}
    assert rows["café.png"]["status"] == "ok" and float(rows["café.png"]["dice"]) == 1.0
    assert rows["P01_Case.png"]["status"] == "no_label"
    assert rows["P01_Case.png"]["reason"].endswith(
        "(any image suffix); p01_case.png differs only in letter case"
    )
