"""The shipped model: loaded by name; m2u-unmask and m2u-eval use it when no model file is given; a clear error
while no weights ship. The tests write a tiny model into a temporary pretrained folder."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import m2u.inference.pretrained as pretrained
from m2u.inference.cli import unmask_main
from m2u.inference.pretrained.card import render_model_card, write_model_card
from m2u.inference.restore import load_pretrained
from m2u.training.checkpoint import current_model_info, read_model_info, save_model
from m2u.training.models import CARU2Net, GeneratorConfig, MSeg, MSegConfig

SIZE = 64
# As tests/conftest.py finds the shared data (read at run time; the test falls back to the embedded default).
CELEBA_DIR = (
    Path(os.environ.get("M2U_SHARED", Path(__file__).resolve().parents[2].parent / "shared"))
    / "faces"
    / "celeba"
)


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
    # The decision's small nets as shipped: without them a test run alone found no mask classifier (a whole
    # suite passed only because an earlier test had loaded the shipped one).
    shipped_folder = Path(pretrained.__file__).parent / pretrained.DEFAULT_MODEL
    for name in (
        pretrained.MASK_CLASSIFIER_FILE,
        pretrained.UPSIDE_DOWN_FILE,
        pretrained.BOX_ORIENTATION_FILE,
    ):
        shutil.copyfile(shipped_folder / name, folder / name)
    pretrained.write_checksums(folder)  # as the release recipe does: verified on every load
    return folder


@pytest.fixture
def shipped(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(pretrained, "PRETRAINED_ROOT", tmp_path / "pretrained")
    return _write_tiny_shipped_model(tmp_path / "pretrained")


def _covers(box, mask: np.ndarray) -> bool:
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = box
    return bool(len(xs)) and x0 <= xs.mean() <= x1 and y0 <= ys.mean() <= y1


def _masked_photo(folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A real photo with a mask put on: a CelebA photo when ../shared is there, the embedded default otherwise.
    Returns (photo file, image, the region that must be restored). When the detector cannot find the masked
    face (the embedded portrait), the unmasked photo is used and the region is the face's (the tiny M-Seg
    marks its whole crop)."""
    from m2u.masking import DetectorConfig, FaceDetector, apply_mask, read_image
    from m2u.pipelines.demo_faces import write_demo_faces

    candidates = sorted(CELEBA_DIR.glob("*.jpg"))[:6] if CELEBA_DIR.is_dir() else []
    candidates = candidates or write_demo_faces(folder / "demo", count=2)
    detector = FaceDetector(DetectorConfig())
    for path in candidates:
        image = read_image(path)
        faces = detector.detect(image)
        if not faces:
            continue
        result = apply_mask(image, faces[0], seed=0)
        if any(_covers(face.box, result.mask) for face in detector.detect(result.image)):
            target = folder / f"masked_{path.stem}.png"
            cv2.imwrite(str(target), cv2.cvtColor(result.image, cv2.COLOR_RGB2BGR))
            return target, result.image, result.mask > 0
    path = candidates[0]
    image = read_image(path)
    x0, y0, x1, y1 = detector.detect(image)[0].box
    region = np.zeros(image.shape[:2], bool)
    region[y0:y1, x0:x1] = True
    return path, image, region


def test_no_shipped_weights_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "PRETRAINED_ROOT", tmp_path / "empty")
    with pytest.raises(pretrained.PretrainedUnavailable, match="no pretrained weights"):
        load_pretrained()
    photo = tmp_path / "x.png"
    cv2.imwrite(str(photo), np.zeros((64, 64, 3), np.uint8))
    result = CliRunner().invoke(unmask_main, [str(photo), "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code != 0 and "no pretrained weights" in result.output
    assert "Traceback" not in result.output


def test_load_pretrained_returns_the_ready_two_stage_model(shipped):
    models = load_pretrained()
    mseg, generator = models.mseg, models.generator
    assert isinstance(mseg, MSeg) and isinstance(generator, CARU2Net)
    assert not mseg.training and models.generator_info.crop_size == SIZE
    assert next(generator.parameters()).dtype == torch.float32  # fp16 file, fp32 model
    assert pretrained.available_models() == [pretrained.DEFAULT_MODEL]
    # Devices are named as every m2u command takes them: "auto", and one sentence for one m2u cannot use.
    assert next(load_pretrained(device="auto").mseg.parameters()).device.type in ("cpu", "cuda")
    from m2u.core.errors import SettingError

    with pytest.raises(SettingError, match="'mps' is not a device m2u runs on"):
        load_pretrained(device="mps")


def test_unmask_without_model_options_restores_a_real_photo_with_the_shipped_model(shipped, tmp_path):
    photo, masked, region = _masked_photo(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(unmask_main, [str(photo), "-o", str(out), "-q", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    # Size and threshold came from the files: no warning about them. The tiny M-Seg marks whole crops, which
    # m2u-unmask does warn about.
    warned = [line for line in result.output.splitlines() if "warning" in line]
    assert len(warned) == 1 and "M-Seg's mask covers more than 90% of the face crop" in warned[0], warned
    with open(out / "report.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["status"] == "ok", row
    restored = cv2.cvtColor(cv2.imread(row["output"]), cv2.COLOR_BGR2RGB)
    assert restored.shape == masked.shape
    # The restored region differs from the masked input ...
    changed = np.abs(restored.astype(int) - masked.astype(int)).max(axis=2) > 0
    assert changed[region].mean() > 0.5
    # ... and the rest of the photo is unchanged: away from the face crop every pixel is the input's.
    from m2u.datasets.align import align_face
    from m2u.masking.masked_faces import RealFaceDetector, visible_anchor_points

    footprint = np.zeros(masked.shape[:2], np.float32)
    for face in RealFaceDetector().detect(masked):  # m2u-unmask's default detector
        # The crop of each alignment m2u-unmask may use: the visible features' (its default, on dlib's or
        # BlazeFace's eyes) and the 68 landmarks'.
        anchors = [None, visible_anchor_points(face.landmarks, None)]
        if face.keypoints is not None:
            anchors.append(visible_anchor_points(face.landmarks, face.keypoints))
        for anchor in anchors:
            matrix = align_face(masked, face.landmarks, SIZE, anchor).matrix
            footprint += cv2.warpAffine(
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
        "training": {
            "mseg": {"steps": 5, "seconds": 1.0},
            "gan": {"steps": 7, "seconds": 2.0, "config": {"generator": {"width_multiplier": 0.25}}},
        },  # fmt: skip
        "evaluation": {
            "split": "test",
            "samples": 3,
            "mask_quality": {"dice": 0.9812},
            "rows": {
                "m2u_composite": {"psnr": 27.5, "ssim": 0.91, "l1": 0.012},
                "telea": {"psnr": 22.25, "ssim": 0.86, "l1": 0.02},
            },
        },  # fmt: skip
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
    assert "m2u.inference.pretrained = inference/pretrained" in setup
    assert "m2u.inference.pretrained = */*.safetensors" in setup


def test_shipped_files_record_how_to_use_them(shipped):
    info = read_model_info(shipped / pretrained.MSEG_FILE)
    assert info.crop_size == SIZE and info.mask_threshold == 0.5


def test_eval_without_model_options_uses_the_shipped_model(shipped, tmp_path):
    from m2u.datasets.synthetic import write_synthetic_dataset
    from m2u.evaluation.cli import main as eval_main

    data = tmp_path / "ds"
    write_synthetic_dataset(data, 12, size=SIZE, seed=0)
    report = tmp_path / "report"
    args = ["--data", str(data), "-o", str(report), "--split", "train", "--no-lpips", "--no-fid", "--no-identity",
            "--skip-paper-size-cost", "--latency-repeats", "1", "--grid-rows", "0", "-q"]  # fmt: skip
    result = CliRunner().invoke(eval_main, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["checkpoints"] == {"mseg": "shipped", "generator": "shipped"}
    assert metrics["image_size"] == SIZE and metrics["model_info"]["generator"]["crop_size"] == SIZE


def test_demo_page_shows_the_shipped_model_against_telea(shipped, tmp_path):
    from m2u.pipelines.demo import main as demo_main

    result = CliRunner().invoke(demo_main, ["-o", str(tmp_path / "demo"), "--count", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert report["crop_size"] == SIZE and set(report["rows"]) == {"m2unet", "telea", "masked_input"}
    grid = cv2.imread(str(tmp_path / "demo" / "demo.png"))
    assert grid.shape == (SIZE * report["faces"], SIZE * 4, 3)
    assert "predicted mask" in (tmp_path / "demo" / "index.html").read_text()


def test_a_demo_rerun_stopped_midway_leaves_the_earlier_demo_whole(shipped, tmp_path, monkeypatch):
    """Ctrl-C as the page was made: the rerun's grid and demo.json stood beside the earlier run's index.html."""
    from m2u.pipelines import demo

    out = tmp_path / "demo"
    assert CliRunner().invoke(demo.main, ["-o", str(out), "--count", "2"]).exit_code == 0
    files = ("demo.png", "demo.json", "index.html")
    before = {name: (out / name).read_bytes() for name in files}

    class Stopped:
        @staticmethod
        def escape(text, quote=True):
            raise KeyboardInterrupt  # the user's Ctrl-C while the page is made

    monkeypatch.setattr(demo, "html", Stopped)
    with pytest.raises(KeyboardInterrupt):
        demo.run_demo(out, count=1)
    assert {name: (out / name).read_bytes() for name in files} == before
    assert not list(out.glob(".*.tmp"))


def test_demo_check_says_when_no_model_ships(tmp_path, monkeypatch):
    from m2u.pipelines.demo import main as demo_main

    monkeypatch.setattr(pretrained, "PRETRAINED_ROOT", tmp_path / "empty")
    result = CliRunner().invoke(demo_main, ["--check"])
    assert result.exit_code == 1 and "no pretrained weights" in result.output


def test_model_card_of_a_fine_tuned_model_has_its_real_photo_section(tmp_path):
    card = {
        "name": "m2unet-test-real",
        "recipe_command": "benchmarks/release_recipe.py --work runs/x --init-from P --augment --gan-steps 0",
        "data": {"faces": "celeba", "photos": 12, "split_by": "identity", "size": 64, "samples": {"test": 3}},
        "training": {
            "mseg": {
                "steps": 5,
                "seconds": 1.0,
                "config": {"init_weights": {"mseg": "P/mseg.safetensors"}, "augment": {"enabled": True}},
            },
            "gan": {
                "steps": 0,
                "seconds": 0.0,
                "config": {"generator": {"width_multiplier": 0.25}, "kept_from": "P/generator.safetensors"},
            },
        },  # fmt: skip
        "evaluation": {"split": "test", "samples": 3, "mask_quality": {"dice": 0.98}, "rows": {}},
        "real_photos": {
            "photos": 102,
            "faces_found": 47,
            "dice_where_found": 0.8123,
            "dice_all": 0.3741,
            "remnants_where_found": 0.0712,
            "remnants_all": None,
            "data": "real-mask-seg",
        },  # fmt: skip
    }
    text = render_model_card(card)
    assert "## Real masked photos" in text and "47 of 102" in text and "0.812" in text and "7.1 %" in text
    assert "mseg fine-tuned from P/mseg.safetensors" in text and "kept as it is from P/generator" in text
    assert "mseg fine-tuned from P/mseg.safetensors," in text  # no start digest recorded: none said
    mseg = card["training"]["mseg"]
    recorded = {
        **mseg["config"],
        "init_from": {"mseg": {"file": "P/mseg.safetensors", "sha256": "0123456789ab" * 5}},
    }
    started = render_model_card(
        {**card, "training": {**card["training"], "mseg": {**mseg, "config": recorded}}}
    )
    assert "mseg fine-tuned from P/mseg.safetensors (SHA-256 0123456789ab)," in started
    # A resumed run's config may name another file than the one it started from: the record's file is named.
    moved = {**recorded, "init_weights": {"mseg": "Q/other.safetensors"}}
    started = render_model_card({**card, "training": {**card["training"], "mseg": {**mseg, "config": moved}}})
    assert "mseg fine-tuned from P/mseg.safetensors (SHA-256 0123456789ab)," in started
    assert "m2u.datasets.augment" in text
    assert "## Real masked photos" not in render_model_card({**card, "real_photos": None})


def test_model_card_names_the_recipe_of_a_network_kept_from_an_earlier_release():
    recipe = "benchmarks/release_recipe.py --work runs/old --augment --mseg-steps 2000 --gan-steps 0"
    kept = {
        "model": {},
        "kept_from": "P/mseg.safetensors",
        "kept_provenance": {"recipe": recipe, "steps": 2000},
    }
    card = {
        "name": "m2unet-test-kept",
        "recipe_command": "benchmarks/release_recipe.py --work runs/x --init-from P --mseg-steps 0 --gan-steps 9",
        "data": {"faces": "celeba", "photos": 12, "split_by": "identity", "size": 64, "samples": {"test": 3}},
        "training": {
            "mseg": {"steps": 0, "seconds": 0.0, "config": kept},
            "gan": {"steps": 9, "seconds": 1.0, "config": {"generator": {"width_multiplier": 0.25}}},
        },
        "evaluation": {"split": "test", "samples": 3, "mask_quality": {"dice": 0.98}, "rows": {}},
    }
    text = render_model_card(card)
    assert f"kept as it is from P/mseg.safetensors (trained by `{recipe}`)" in text
    # Where the kept file records the file its own training started from, the card names that file by its digest:
    # its path (often the package installed then) names another file today.
    started = {
        **kept,
        "kept_provenance": {"recipe": recipe, "init_from": {"file": "P/old", "sha256": "ab" * 32}},
    }
    text = render_model_card(
        {**card, "training": {**card["training"], "mseg": {"steps": 0, "config": started}}}
    )
    assert f"(trained by `{recipe}`, starting from a file of SHA-256 {'ab' * 6})" in text
    # The kept M-Seg was trained through the camera augmentation by its own recipe: the card still says so.
    assert "M-Seg also trained through camera augmentation for real photos" in text
    without_flag = {**kept, "kept_provenance": {"recipe": recipe.replace(" --augment", "")}}
    plain = render_model_card(
        {**card, "training": {**card["training"], "mseg": {"steps": 0, "config": without_flag}}}
    )
    assert "camera augmentation for real photos" not in plain and "(trained by `" in plain
    # A kept generator whose recipe trained it on the pairs as built (`--no-gan-augment`) saw no augmentation.
    gan_recipe = "benchmarks/release_recipe.py --work runs/old --augment --no-gan-augment --gan-steps 800"
    kept_gan = {
        "kept_from": "P/generator.safetensors",
        "kept_provenance": {"recipe": gan_recipe, "task": "gan"},
    }
    training = {"mseg": {"steps": 9, "config": {}}, "gan": {"steps": 0, "config": kept_gan}}
    assert "the generator also trained" not in render_model_card({**card, "training": training})
    with_gan_augment = {**kept_gan, "kept_provenance": {"recipe": gan_recipe.replace(" --no-gan-augment", ""),
                                                        "task": "gan"}}  # fmt: skip
    training["gan"] = {"steps": 0, "config": with_gan_augment}
    assert "the generator also trained through camera augmentation" in render_model_card(
        {**card, "training": training}
    )
