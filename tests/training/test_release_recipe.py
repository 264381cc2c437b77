"""The release recipe end to end at a tiny size: a few photos, a few steps, in two pieces (--stop-after, then
the same command again), writing the fp16 package folder and its model card."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import m2u.inference.pretrained as pretrained
from m2u.inference.pretrained import GENERATOR_FILE, MSEG_FILE
from m2u.inference.restore import load_pretrained
from m2u.training.checkpoint import read_model_info

REPO = Path(__file__).resolve().parents[2]
CELEBA_DIR = Path(os.environ.get("M2U_SHARED", REPO.parent / "shared")) / "faces" / "celeba"


def test_release_recipe_tiny_end_to_end_in_pieces(tmp_path, monkeypatch, load_benchmark):
    if CELEBA_DIR.is_dir():
        faces, limit = CELEBA_DIR, "60"
    else:
        from m2u.pipelines.demo_faces import write_demo_faces

        faces, limit = tmp_path / "faces", "0"
        write_demo_faces(faces, count=40)
    package = tmp_path / "pretrained" / "m2unet-tiny"
    args = ["--faces", str(faces), "--work", str(tmp_path / "work"), "--package", str(package), "--size", "64",
            "--limit", limit, "--workers", "1", "--batch-size", "2", "--mseg-steps", "2", "--mseg-base-channels", "4",
            "--gan-steps", "3", "--width-multiplier", "0.125", "--val-every", "1000", "--checkpoint-every", "1",
            "--threads", "1", "--max-test-samples", "4", "--precision", "fp32", "--no-identity"]  # fmt: skip
    recipe = load_benchmark("release_recipe")
    recipe.main([*args, "--stop-after", "mseg"])
    assert (tmp_path / "work" / "mseg" / "mseg.safetensors").is_file()
    assert not (tmp_path / "work" / "gan").exists()
    mseg_mtime = (tmp_path / "work" / "mseg" / "metrics.json").stat().st_mtime_ns
    # The second piece: M-Seg is done; the soup's second run, the GAN, both evaluations and the package follow.
    # The generator fine-tunes at its own learning rate, without the camera augmentation M-Seg trains through.
    report = recipe.main(
        [*args, "--mseg-soup-steps", "2", "--also-evaluate", str(tmp_path / "work" / "data"),
         "--augment", "--low-res", "0.25", "--no-gan-augment", "--gan-lr", "3e-4"]
    )  # fmt: skip
    gan_config = json.loads((tmp_path / "work" / "gan" / "config.json").read_text())
    soup_config = json.loads((tmp_path / "work" / "mseg-soup" / "config.json").read_text())
    assert gan_config["optimizer"]["learning_rate"] == 3e-4 and not gan_config["augment"]["enabled"]
    assert soup_config["augment"]["enabled"] and soup_config["optimizer"]["learning_rate"] == 1e-3 * 0.3
    assert soup_config["augment"]["low_res"] == 0.25
    assert (tmp_path / "work" / "mseg" / "metrics.json").stat().st_mtime_ns == mseg_mtime
    assert report["training"]["mseg"]["steps"] == 2 and report["training"]["gan"]["steps"] == 3
    assert report["training"]["mseg-soup"]["steps"] == 2
    assert report["files"]["mseg"].endswith("mseg-soup/soup.safetensors")
    files = {p.name for p in package.iterdir()}
    assert files == {
        MSEG_FILE,
        GENERATOR_FILE,
        "card.json",
        "MODEL_CARD.md",
        "checksums.json",
        ".m2u-written",
    }
    assert sum(p.stat().st_size for p in package.iterdir()) < 15_000_000
    info = read_model_info(package / GENERATOR_FILE)
    assert info.crop_size == 64 and info.provenance["recipe"].startswith("benchmarks/release_recipe.py")
    card = json.loads((package / "card.json").read_text())
    text = (package / "MODEL_CARD.md").read_text()
    assert card["evaluation"]["rows"]["telea"]["psnr"] is not None
    assert f"{card['evaluation']['rows']['m2u_composite']['psnr']:.2f}" in text
    assert "identity" in text and "non-commercial" in text
    assert "M-Seg soup" in text and "### Also on" in text
    assert card["also_evaluated"]["evaluation"]["rows"]["telea"]["psnr"] is not None
    monkeypatch.setattr(pretrained, "PRETRAINED_ROOT", package.parent)
    generator = load_pretrained("m2unet-tiny").generator
    assert generator.config.width_multiplier == 0.125
    # The generator alone, fine-tuned from the package on grown holes: its M-Seg is kept (and frozen), none trained.
    tune = ["--work", str(tmp_path / "tune"), "--data", str(tmp_path / "work" / "data"), "--init-from", str(package),
            "--mseg-steps", "0", "--gan-steps", "2", "--hole-grow", "2", "--stop-after", "gan"]  # fmt: skip
    with pytest.raises(SystemExit, match="--init-from"):
        recipe.main([*args, *tune[:4], "--mseg-steps", "0"])
    recipe.main([*args, *tune])
    tuned = json.loads((tmp_path / "tune" / "gan" / "config.json").read_text())
    assert tuned["hole_grow_px"] == 2 and tuned["mseg_checkpoint"] == str(package / MSEG_FILE)
    assert not (tmp_path / "tune" / "mseg").exists()


def test_recipe_help_lists_the_budget(capsys, load_benchmark):
    with pytest.raises(SystemExit):
        load_benchmark("release_recipe").main(["--help"])
    assert "2 hours" in capsys.readouterr().out


def test_a_kept_network_carries_the_provenance_its_file_records(tmp_path, load_benchmark):
    """The card names the recipe of a network kept from an earlier release: the recipe reads it from the file."""
    from m2u.training.checkpoint import current_model_info, save_model
    from m2u.training.models import MSeg, MSegConfig

    recipe = load_benchmark("release_recipe")
    provenance = {
        "recipe": "benchmarks/release_recipe.py --work runs/old --augment",
        "steps": 7,
        "task": "mseg",
    }
    path = save_model(
        tmp_path / MSEG_FILE,
        MSeg(MSegConfig(base_channels=4, levels=3)),
        current_model_info(32, 0.5, provenance=provenance),
    )
    config = recipe._kept_config({"kept": str(path)})
    assert config["kept_from"] == str(path) and config["kept_provenance"] == provenance
    assert config["model"]["base_channels"] == 4
    assert recipe._kept_config({"steps": 3}) == {}


def test_the_card_config_of_a_fine_tune_carries_the_start_its_model_file_records(tmp_path, load_benchmark):
    from m2u.training.checkpoint import current_model_info, save_model
    from m2u.training.models import MSeg, MSegConfig

    recipe = load_benchmark("release_recipe")
    start = {"file": "inference/pretrained/x/mseg.safetensors", "sha256": "cd" * 32}
    save_model(
        tmp_path / MSEG_FILE,
        MSeg(MSegConfig(base_channels=4, levels=3)),
        current_model_info(32, 0.5, provenance={"task": "mseg", "init_from": start}),
    )
    config = {"init_weights": {"mseg": start["file"]}, "lr": 1}
    assert recipe._with_starts(config, tmp_path) == {**config, "init_from": {"mseg": start}}
    assert recipe._with_starts({"lr": 1}, tmp_path) == {"lr": 1}  # trained from scratch
    assert recipe._with_starts(config, tmp_path / "elsewhere") == config  # no model file (yet)
