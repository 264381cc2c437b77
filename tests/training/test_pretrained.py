"""The shipped model: loaded by name; m2u-unmask and m2u-eval use it when no model file is given; a clear error
while no weights ship. The tests write a tiny model into a temporary pretrained folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import m2u.training.pretrained as pretrained
from m2u.training.checkpoint import current_model_info, read_model_info, save_model
from m2u.training.inference.cli import unmask_main
from m2u.training.models import CARU2Net, GeneratorConfig, MSeg, MSegConfig
from m2u.training.pretrained.card import render_model_card, write_model_card
from tests.conftest import CELEBA_DIR

SIZE = 64


def _write_tiny_shipped_model(root: Path) -> Path:
    """A tiny M-Seg that marks the whole crop as mask (its head bias is large) and a random tiny generator,
    saved as fp16 with their ModelInfo, as the release recipe writes them."""
    torch.manual_seed(0)
    mseg = MSeg(MSegConfig(base_channels=4, levels=3))
    with torch.no_grad():
        mseg.head.bias.fill_(20.0)
    generator = CARU2Net(GeneratorConfig(width_multiplier=0.125))
    folder = root / pretrained.DEFAULT_MODEL
    save_model(folder / pretrained.MSEG_FILE, mseg, current_model_info(SIZE, 0.5), dtype="fp16")
    save_model(folder / pretrained.GENERATOR_FILE, generator, current_model_info(SIZE), dtype="fp16")
    return folder


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(pretrained, "PRETRAINED_ROOT", tmp_path / "pretrained")
    return _write_tiny_shipped_model(tmp_path / "pretrained")


def _masked_photo(folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A real photo with a mask put on: a CelebA photo when ../shared is there, the embedded default otherwise.
    Returns (masked photo file, masked image, mask)."""
    from m2u.masking import DetectorConfig, FaceDetector, apply_mask, read_image
    from m2u.pipelines.demo_faces import write_demo_faces

    candidates = sorted(CELEBA_DIR.glob("*.jpg"))[:6] if CELEBA_DIR.is_dir() else []
    candidates = candidates or write_demo_faces(folder / "demo", count=4)
    detector = FaceDetector(DetectorConfig())
    for path in candidates:
        image = read_image(path)
        faces = detector.detect(image)
        if not faces:
            continue
        result = apply_mask(image, faces[0], seed=0)
        if detector.detect(result.image):  # m2u-unmask must find the masked face
            target = folder / f"masked_{path.stem}.png"
            cv2.imwrite(str(target), cv2.cvtColor(result.image, cv2.COLOR_RGB2BGR))
            return target, result.image, result.mask
    pytest.skip("no candidate photo whose masked face the detector finds")


def test_no_shipped_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "PRETRAINED_ROOT", tmp_path / "empty")
    with pytest.raises(pretrained.PretrainedUnavailable, match="no pretrained weights"):
        pretrained.load_pretrained()
    photo = tmp_path / "x.png"
    cv2.imwrite(str(photo), np.zeros((64, 64, 3), np.uint8))
    result = CliRunner().invoke(unmask_main, [str(photo), "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code != 0 and "no pretrained weights" in result.output
    assert "Traceback" not in result.output


def test_load_pretrained_returns_the_ready_two_stage_model(shipped):
    mseg, generator = pretrained.load_pretrained()
    assert isinstance(mseg, MSeg) and isinstance(generator, CARU2Net)
    assert not mseg.training and generator.info.crop_size == SIZE
    assert next(generator.parameters()).dtype == torch.float32  # fp16 file, fp32 model
    assert pretrained.available_models() == [pretrained.DEFAULT_MODEL]


def test_unmask_without_model_options_restores_a_real_photo_with_the_shipped_model(shipped, tmp_path):
    photo, masked, mask = _masked_photo(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(unmask_main, [str(photo), "-o", str(out), "-q", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output  # size and threshold came from the files
    with open(out / "report.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["status"] == "ok", row
    restored = cv2.cvtColor(cv2.imread(row["output"]), cv2.COLOR_BGR2RGB)
    assert restored.shape == masked.shape
    # The restored region differs from the masked input ...
    under_mask = mask > 0
    changed = np.abs(restored.astype(int) - masked.astype(int)).max(axis=2) > 0
    assert changed[under_mask].mean() > 0.5
    # ... and the rest of the photo is unchanged: away from the face crop every pixel is the input's.
    from m2u.datasets.align import align_face
    from m2u.masking import DetectorConfig, FaceDetector

    face = FaceDetector(DetectorConfig()).detect(masked)[0]
    matrix = align_face(masked, face.landmarks, SIZE).matrix
    footprint = cv2.warpAffine(
        np.ones((SIZE, SIZE), np.float32), cv2.invertAffineTransform(matrix), masked.shape[1::-1]
    )
    outside = footprint == 0
    assert outside.any()
    assert np.array_equal(restored[outside], masked[outside])


def test_model_card_is_generated_from_the_measured_figures(tmp_path):
    card = {
        "name": "m2unet-test",
        "recipe_command": "benchmarks/release_recipe.py --work runs/x",
        "m2u_version": "0.1.0",
        "data": {"faces": "celeba", "photos": 12, "split_by": "identity", "size": 64, "samples": {"test": 3}},
        "training": {"mseg": {"steps": 5, "seconds": 1.0}, "gan": {"steps": 7, "seconds": 2.0,
                     "config": {"generator": {"width_multiplier": 0.25}}}},  # fmt: skip
        "evaluation": {"split": "test", "samples": 3, "mask_quality": {"dice": 0.9812},
                       "rows": {"m2u_composite": {"psnr": 27.5, "ssim": 0.91, "l1": 0.012},
                                "telea": {"psnr": 22.25, "ssim": 0.86, "l1": 0.02}}},  # fmt: skip
        "files": {"mseg.safetensors": 1_000_000},
    }
    path = write_model_card(tmp_path, card)
    text = path.read_text()
    assert text == render_model_card(card)
    assert "+5.25 dB" in text and "0.9812" in text and "x0.25" in text and "64x64" in text
    assert "non-commercial" in text and "300-W" in text
    assert json.loads((tmp_path / "card.json").read_text()) == card


def test_package_data_includes_the_pretrained_folder():
    setup = (Path(__file__).resolve().parents[2] / "setup.cfg").read_text()
    assert "m2u.training.pretrained = training/pretrained" in setup
    assert "m2u.training.pretrained = */*.safetensors" in setup


def test_shipped_files_record_how_to_use_them(shipped):
    info = read_model_info(shipped / pretrained.MSEG_FILE)
    assert info.crop_size == SIZE and info.mask_threshold == 0.5
