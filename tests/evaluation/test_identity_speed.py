"""The identity metric's faster path (ground truth embedded once, every method and variant of a batch embedded
together by dlib's ResNet run in PyTorch) gives the figures the per-image dlib path gave (issue 28)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from m2u.evaluation.identity import IdentityConfig, IdentityEmbedder
from m2u.evaluation.suite import MetricsConfig, MetricSuite
from m2u.evaluation.weights import MetricUnavailable
from m2u.training.imagespace import to_uint8_images

N_FACES = 6


def _per_image_dlib(outputs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The identity comparison as m2u computed it before issue 28 (commit e033c7a), kept here as the reference:
    for each pair, HOG on the ground truth (upsample 1, largest box), 5 landmarks, dlib's own descriptor for both
    images from that box, NaN where the box or a landmark is missing."""
    import dlib

    from m2u.evaluation.identity import _face_models_dir

    root = _face_models_dir(None)
    predictor = dlib.shape_predictor(str(root / "shape_predictor_5_face_landmarks.dat"))
    encoder = dlib.face_recognition_model_v1(str(root / "dlib_face_recognition_resnet_model_v1.dat"))
    detector = dlib.get_frontal_face_detector()

    def embed(image, box):
        shape = predictor(image, box)
        h, w = image.shape[:2]
        if any(not (0 <= p.x < w and 0 <= p.y < h) for p in shape.parts()):
            return None
        return np.asarray(encoder.compute_face_descriptor(np.ascontiguousarray(image), shape), np.float64)

    cos, dist, no_face = np.full(len(outputs), np.nan), np.full(len(outputs), np.nan), 0
    for i, (out, gt) in enumerate(zip(outputs, targets, strict=True)):
        boxes = list(detector(gt, 1))
        box = max(boxes, key=lambda r: r.width() * r.height()) if boxes else None
        e_gt = embed(gt, box) if box is not None else None
        e_out = embed(out, box) if e_gt is not None else None
        if e_gt is None or e_out is None:
            no_face += 1
            continue
        cos[i] = e_gt @ e_out / (np.linalg.norm(e_gt) * np.linalg.norm(e_out) + 1e-12)
        dist[i] = np.linalg.norm(e_gt - e_out)
    return cos, dist, no_face


@pytest.fixture(scope="module")
def faces(celeba_first) -> np.ndarray:
    """CelebA photos at 128x128 (the evaluation's size), plus one image without a face."""
    crops = [
        cv2.resize(cv2.imread(str(path))[:, :, ::-1], (128, 128), interpolation=cv2.INTER_AREA)
        for path in celeba_first(N_FACES - 1)
    ]
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    return np.stack([*crops, noise])


def _embedder(**overrides) -> IdentityEmbedder:
    try:
        return IdentityEmbedder(IdentityConfig(**overrides))
    except MetricUnavailable as exc:
        pytest.skip(exc.reason)


@pytest.mark.shared
def test_torch_descriptors_match_dlibs_own(faces):
    torch_engine, dlib_engine = _embedder(engine="torch"), _embedder(engine="dlib")
    refs_torch, refs_dlib = torch_engine.reference(faces), dlib_engine.reference(faces)
    found = [r is not None for r in refs_dlib]
    assert [r is not None for r in refs_torch] == found
    assert sum(found) >= N_FACES - 2  # the CelebA faces are found, the noise image is not
    for a, b in zip(refs_torch, refs_dlib, strict=True):
        if a is not None:
            assert np.abs(a[1] - b[1]).max() < 1e-5  # float rounding only (the descriptors' norm is ~1.5)


@pytest.mark.shared
def test_suite_identity_figures_equal_the_per_image_dlib_path(faces):
    """Several methods and both variants through MetricSuite (queued, batched, torch engine) against the
    reference implementation above, image by image."""
    target = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255
    mask = torch.zeros(len(faces), 1, 128, 128)
    mask[:, :, 70:120, 30:98] = 1  # where a mask sits on an aligned face
    methods = {
        "identical": target,
        "blurred": torch.nn.functional.avg_pool2d(target, 5, 1, 2),
        "blanked": target * (1 - mask) + 0.5 * mask,
    }
    suite = MetricSuite(
        MetricsConfig(enable_lpips=False, enable_fid=False), identity=_embedder(engine="torch")
    )
    for name, pred in methods.items():
        suite.update(name, pred, target, mask)
    rows = suite.summary()
    gt_u8 = to_uint8_images(target)
    for name, pred in methods.items():
        values = suite.per_image(name)
        region = target * (1 - mask) + pred.clamp(0, 1) * mask
        for variant, images in (
            ("", to_uint8_images(pred.clamp(0, 1))),
            ("_masked", to_uint8_images(region)),
        ):
            cos, dist, no_face = _per_image_dlib(images, gt_u8)
            got_cos = np.asarray(values[f"identity_cosine{variant}"])
            got_dist = np.asarray(values[f"identity_distance{variant}"])
            assert np.array_equal(np.isnan(got_cos), np.isnan(cos)), (name, variant)
            assert np.nanmax(np.abs(got_cos - cos)) < 1e-6, (name, variant)
            assert np.nanmax(np.abs(got_dist - dist)) < 1e-5, (name, variant)
            if not variant:
                assert rows[name]["n_identity_no_face"] == no_face
    assert rows["identical"]["identity_cosine"] == pytest.approx(1.0, abs=1e-9)
    assert rows["blanked"]["identity_distance"] > rows["blurred"]["identity_distance"] > 0


def test_suite_embeds_each_batch_once_for_all_methods(monkeypatch):
    """One `compare_many` call per batch of ground truth, holding every method and both variants; the ground truth
    is embedded once per batch."""
    embedder = _embedder(engine="torch")
    calls = {"reference": 0, "compare_many": []}
    real_reference, real_compare = embedder.reference, embedder.compare_many

    def reference(targets):
        calls["reference"] += 1
        return real_reference(targets)

    def compare_many(outputs, refs):
        calls["compare_many"].append(len(outputs))
        return real_compare(outputs, refs)

    monkeypatch.setattr(embedder, "reference", reference)
    monkeypatch.setattr(embedder, "compare_many", compare_many)
    suite = MetricSuite(MetricsConfig(enable_lpips=False, enable_fid=False), identity=embedder)
    rng = torch.Generator().manual_seed(0)
    for _ in range(2):  # two batches
        target = torch.rand(2, 3, 48, 48, generator=rng)
        mask = (torch.rand(2, 1, 48, 48, generator=rng) > 0.5).float()
        for method in ("a", "b", "c"):
            suite.update(method, target.flip(-1), target, mask)
    rows = suite.summary()
    assert calls == {"reference": 2, "compare_many": [6, 6]}
    assert all(rows[m]["n_images"] == 4 and rows[m]["n_identity_no_face"] == 4 for m in "abc")
    assert len(suite.per_image("a")["identity_cosine"]) == 4
