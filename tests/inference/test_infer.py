"""m2u-unmask: feathered paste-back geometry, per-file statuses for bad input, and real photos (shared)."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from m2u.datasets.align import align_face
from m2u.datasets.synthetic import make_synthetic_sample
from m2u.inference.cli import unmask_main
from m2u.inference.paste import feather_weight, paste_feathered
from m2u.inference.photos import unmask_files
from m2u.inference.unmask import UnmaskConfig, Unmasker

CROP = 64


def test_feather_weight_is_one_on_the_region_soft_outside_and_zero_at_the_crop_border():
    region = np.zeros((64, 64), np.uint8)
    region[30:60, 10:54] = 1
    weight = feather_weight(region, feather_px=4)
    assert weight.dtype == np.float32 and weight.min() >= 0 and weight.max() <= 1
    # Every pixel the generator filled is pasted whole (away from the crop border's fade).
    assert (weight[30:60, 10:54][:, 4:-4] == 1.0).all()
    assert weight[5, 32] == 0.0  # far from the region
    assert weight[63].max() == 0.0 and weight[:, 0].max() == 0.0  # crop border: no seam in the photo
    outside = weight[30 - 4 : 30, 32]
    assert outside.min() > 0 and outside.max() < 1  # a soft edge outside the region, not a step
    hard = feather_weight(region, feather_px=0)
    assert set(np.unique(hard)) == {0.0, 1.0}


def test_paste_back_inverts_the_alignment():
    sample = make_synthetic_sample(160, seed=3)
    photo = np.pad(sample.unmasked, ((20, 30), (40, 10), (0, 0)), mode="edge")
    landmarks = sample.landmarks + np.array([40, 20], np.float32)
    aligned = align_face(photo, landmarks, CROP)
    centre = np.zeros((CROP, CROP), np.uint8)
    centre[16:48, 16:48] = 255
    weight = feather_weight(centre, 2)
    # The unchanged crop pasted back reproduces the photo up to resampling blur.
    same = paste_feathered(photo, aligned.image, aligned.matrix, weight)
    changed = np.abs(same.astype(int) - photo.astype(int))
    assert changed.mean() < 1.0
    # A black crop darkens only the region the weight covers; far pixels stay byte-identical.
    black = paste_feathered(photo, np.zeros_like(aligned.image), aligned.matrix, weight)
    alpha = cv2.warpAffine(weight, cv2.invertAffineTransform(aligned.matrix), photo.shape[1::-1])
    assert np.array_equal(black[alpha == 0], photo[alpha == 0])
    assert (black[alpha > 0.99].astype(int) <= 3).all()  # 1% of the photo left at most


def test_unmask_reports_every_bad_input(tmp_path, tiny_checkpoints):
    mseg_path, gen_path = tiny_checkpoints
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "noise.png"), rng.integers(0, 256, (120, 90, 3), dtype=np.uint8))
    (folder / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image, not picked up from a folder")
    options = ["--mseg", str(mseg_path), "--generator", str(gen_path), "-o", str(tmp_path / "out")]
    options += ["--size", str(CROP), "--quiet"]
    # An argument that names nothing is a usage error (exit 2), as in m2u-mask, before anything is written.
    missing = CliRunner().invoke(unmask_main, [str(folder), str(tmp_path / "missing.jpg"), *options])
    assert missing.exit_code == 2 and "missing.jpg' does not exist" in missing.output, missing.output
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(unmask_main, [str(folder), *options])
    assert result.exit_code == 1, result.output  # unreadable files: their rows, and exit code 1
    with open(tmp_path / "out" / "report.csv") as handle:
        rows = {row["input"].split("/")[-1]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"noise.png", "truncated.jpg", "empty.png"}
    assert rows["noise.png"]["status"] == "no_face" and rows["noise.png"]["width"] == "90"
    assert rows["truncated.jpg"]["status"] == "error" and rows["truncated.jpg"]["reason"]
    assert rows["empty.png"]["status"] == "error" and "empty" in rows["empty.png"]["reason"]
    assert "3 files" in result.output
    assert not list((tmp_path / "out").glob("*.png"))  # nothing written for files without a restored face


@pytest.mark.shared
def test_unmask_real_photos_with_several_faces_and_sizes(extras_dir, tiny_checkpoints, tmp_path):
    from m2u.masking import read_image

    mseg_path, gen_path = tiny_checkpoints
    photos = [
        extras_dir / "dlib-examples" / "2008_001322.jpg",  # several faces, 500x375
        extras_dir / "dlib-examples" / "Tom_Cruise_avp_2014_4.jpg",  # one face, 565x800
        extras_dir / "dlib-johns" / "John_Salley__000179_02159509.jpg",  # 150x150
    ]
    # Every face restored (masked_only=False): the tiny model's masks say nothing about real masks.
    config = UnmaskConfig(crop_size=CROP, keep_crops=True, progress=False, device="cpu", masked_only=False)
    unmasker = Unmasker.from_files(mseg_path, gen_path, config)
    results = unmask_files([str(p) for p in photos], mseg_path, gen_path, tmp_path, config, unmasker=unmasker)
    assert [r.status for r in results] == ["ok"] * 3, [(r.input, r.reason) for r in results]
    assert results[0].faces >= 2
    for photo, r in zip(photos, results):
        original = read_image(photo)
        restored = cv2.cvtColor(cv2.imread(r.output), cv2.COLOR_BGR2RGB)
        assert restored.shape == original.shape
        assert len(list((tmp_path / "crops").glob(f"{photo.name}_face*_restored.png"))) == r.faces
    # Only the faces' mask regions change; the rest of the photo is byte-identical.
    image = read_image(photos[0])
    result, faces = unmasker.unmask_image(image)
    touched = np.zeros(image.shape[:2], np.float32)
    for face in faces:
        weight = unmasker.paste_weight(face.mask)
        touched += cv2.warpAffine(weight, cv2.invertAffineTransform(face.matrix), image.shape[1::-1])
    assert np.array_equal(result[touched == 0], image[touched == 0])
    assert (result[touched > 0.5] != image[touched > 0.5]).any()
    crop = cv2.imread(str(next((tmp_path / "crops").glob("*_input.png"))))
    assert crop.shape == (CROP, CROP, 3)


@pytest.mark.parametrize("refine", [False, True])
def test_the_generator_fills_the_region_pasted_back_rim_included(tiny_checkpoints, monkeypatch, refine):
    """The region restored is the (refined) mask grown by `dilate`, and every pixel of it comes from the generator:
    before, the generator filled M-Seg's own mask only, so the grown rim (and what GrabCut added) was pasted back
    as the crop's own pixels, the mask's edge left showing."""
    import torch

    from m2u.inference.mask_refine import MaskRefineConfig
    from m2u.inference.paste import grow_region

    class PaintsGreen(torch.nn.Module):
        def forward(self, x, mask):  # model range [-1, 1]: pure green
            out = torch.full_like(x, -1.0)
            out[:, 1] = 1.0
            return out

    mseg_path, gen_path = tiny_checkpoints
    config = UnmaskConfig(
        crop_size=CROP,
        masked_only=False,
        progress=False,
        device="cpu",
        dilate=0.05,
        refine=MaskRefineConfig(enabled=refine),
    )
    unmasker = Unmasker.from_files(mseg_path, gen_path, config)
    unmasker.generator = PaintsGreen()
    rng = np.random.default_rng(0)
    crop = rng.integers(90, 160, (CROP, CROP, 3), dtype=np.uint8)
    mask = np.zeros((CROP, CROP), np.uint8)
    mask[30:50, 16:48] = 255
    crop[mask > 0] = (20, 20, 30)  # a dark mask on grey-brown skin: GrabCut keeps it
    monkeypatch.setattr(
        unmasker,
        "predict_masks_with_probabilities",
        lambda crops: (np.stack([mask] * len(crops)), np.stack([mask / 255.0] * len(crops))),
    )
    result, faces = unmasker.unmask_aligned(crop)
    (face,) = faces
    region = grow_region(face.mask, round(config.dilate * CROP)) > 0
    rim = region & (mask == 0)
    assert rim.sum() > 100
    green = np.array([0, 255, 0])
    assert (face.restored[region] == green).all()  # the composite: the generator's pixels on the whole region
    assert (face.restored[~region] == crop[~region]).all()  # and the crop's own elsewhere
    # In the photo, too, the whole region is the generator's (the feathered edge lies outside it), and nothing
    # beyond the weight's reach changes.
    assert (result[region] == green).all()
    weight = unmasker.paste_weight(face.mask)
    assert (weight[region] == 1.0).all()
    assert np.array_equal(result[weight == 0], crop[weight == 0])
    # faces.jsonl's restored_fraction is that region (grown), not the refined mask before --grow
    assert face.record()["restored_fraction"] == pytest.approx(region.mean(), abs=1e-4)
    assert face.record()["restored_fraction"] > (face.mask > 0).mean() + 0.01


def test_images_outside_0_1_are_refused_at_the_api_not_restored_into_garbage(tiny_checkpoints):
    """uint8 or 0..255 images ran through the networks: a wrong mask and a composite mixing two ranges."""
    from m2u.evaluation.baselines import run_baseline
    from m2u.inference.restore import load_two_stage, restore_batch

    model = load_two_stage(*tiny_checkpoints, "cpu")
    images = torch.rand(1, 3, 32, 32)
    mask = torch.zeros(1, 1, 32, 32)
    for bad, said in (((images * 255).to(torch.uint8), "floating-point"), (images * 255, r"lie in \[0, 1\]")):
        with pytest.raises(ValueError, match=said):
            restore_batch(model.mseg, model.generator, bad, 0.5)
        with pytest.raises(ValueError, match=said):
            run_baseline("telea", bad, mask)
    restored = restore_batch(model.mseg, model.generator, images.double(), 0.5)[2]  # float64: taken as floats
    assert restored.dtype == torch.float32


def test_export_leaves_the_callers_model_as_it_was(tiny_checkpoints, tmp_path):
    from m2u.inference.export import export_onnx
    from m2u.training.checkpoint import load_model

    model, info = load_model(tiny_checkpoints[0])
    model.train()
    export_onnx(model, tmp_path / "m.onnx", info=info)
    assert model.training  # not switched to eval behind the caller's back


def test_an_unmasker_given_models_honours_or_refuses_its_device_setting(tiny_checkpoints):
    """UnmaskConfig.device was read by Unmasker.from_files only: Unmasker(models, config) ignored it unchecked."""
    from m2u.core.errors import SettingError
    from m2u.inference import UnmaskConfig, Unmasker
    from m2u.inference.restore import load_two_stage

    model = load_two_stage(*tiny_checkpoints, "cpu")
    assert Unmasker(model, UnmaskConfig(device="cpu")).device.type == "cpu"
    with pytest.raises(SettingError, match="is not a device"):
        Unmasker(model, UnmaskConfig(device="nonsense-device"))
    if not torch.cuda.is_available():
        with pytest.raises(SettingError, match="CUDA is not available"):
            Unmasker(model, UnmaskConfig(device="cuda"))
