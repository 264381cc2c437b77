"""The shipped model the way users load others: torch.hub from the repository, a HuggingFace-style model card; and
the README's HuggingFace `datasets` snippet where the README says to run it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from m2u.inference.pretrained import DEFAULT_MODEL, pretrained_dir
from m2u.inference.pretrained.card import render_model_card

REPO = Path(__file__).resolve().parents[1]
SHIPPED = pretrained_dir(DEFAULT_MODEL)


def _shipped_or_skip() -> None:
    if not (SHIPPED / "generator.safetensors").is_file():
        pytest.skip("no shipped model in this checkout")


def test_torch_hub_load_returns_the_ready_model():
    _shipped_or_skip()
    from m2u.inference.unmask import Unmasker

    unmasker = torch.hub.load(str(REPO), "m2unet", source="local", aligned=True, masked_only=False)
    assert isinstance(unmasker, Unmasker) and not unmasker.generator.training
    size = unmasker.usage.crop_size
    crop = np.random.default_rng(0).integers(0, 255, (size, size, 3), np.uint8)
    restored, faces = unmasker.unmask_image(crop)
    assert restored.shape == crop.shape and restored.dtype == np.uint8 and len(faces) == 1
    mseg, generator = torch.hub.load(str(REPO), "m2unet_models", source="local")
    with torch.no_grad():
        logits = mseg(torch.zeros(1, 3, size, size))
    assert logits.shape == (1, 1, size, size)
    assert type(generator).__name__ == "CARU2Net"
    # As hub users pass them: a torch.device, an UnmaskConfig field the entry point also sets; a bad device named
    loaded = torch.hub.load(str(REPO), "m2unet", source="local", device=torch.device("cpu"), progress=True)
    assert loaded.config.progress and loaded.device.type == "cpu"
    with pytest.raises(ValueError, match="is not a device m2u runs on"):
        torch.hub.load(str(REPO), "m2unet_models", source="local", device="meta")


def _front_matter(text: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "no YAML front matter at the top of the card"
    return yaml.safe_load(match.group(1))


def test_the_model_card_has_huggingface_front_matter_generated_from_card_json():
    _shipped_or_skip()
    text = (SHIPPED / "MODEL_CARD.md").read_text()
    card = json.loads((SHIPPED / "card.json").read_text())
    assert text == render_model_card(card)  # generated, not hand-edited
    meta = _front_matter(text)
    assert meta["license"] == "other" and meta["license_name"] and meta["license_link"]
    assert {"face-unmasking", "pytorch"} <= set(meta["tags"]) and meta["datasets"] == ["celeba"]
    assert {"psnr", "ssim"} <= set(meta["metrics"])
    (result,) = meta["model-index"][0]["results"]
    values = {m["type"]: m["value"] for m in result["metrics"]}
    composite = card["evaluation"]["rows"]["m2u_composite"]
    assert values["psnr"] == pytest.approx(composite["psnr"], abs=1e-4)
    assert values["ssim"] == pytest.approx(composite["ssim"], abs=1e-4)
    assert result["dataset"]["split"] == "test"


def test_front_matter_follows_the_figures():
    card = {
        "name": "m",
        "recipe_command": "x",
        "data": {"faces": "f", "photos": 1, "split_by": "identity", "size": 64},
        "training": {"mseg": {"steps": 1}, "gan": {"steps": 1}},
        "evaluation": {"split": "test", "rows": {"m2u_composite": {"psnr": 20.5, "ssim": None}}},
    }
    meta = _front_matter(render_model_card(card))
    assert meta["model-index"][0]["results"][0]["metrics"] == [
        {"type": "psnr", "name": "PSNR (dB) (composite, 64x64)", "value": 20.5}
    ]


def _readme_hf_snippet() -> str:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    (snippet,) = [b for b in blocks if "load_dataset" in b]
    return snippet


def test_the_readme_hf_snippet_runs_where_the_readme_says(tmp_path):
    pytest.importorskip("datasets")
    from m2u.datasets import write_synthetic_dataset

    readme = " ".join((REPO / "README.md").read_text().split())
    assert "run it outside the m2u repository folder" in readme and "python -P" in readme
    write_synthetic_dataset(
        tmp_path / "OUT", 12, size=32, seed=0, split=(0.5, 0.25, 0.25), image_format="jpg"
    )
    snippet = _readme_hf_snippet() + "\nprint(len(ds), sorted(dd))\n"
    env = {
        "HF_DATASETS_CACHE": str(tmp_path / "hf-cache"),
        "HF_DATASETS_OFFLINE": "1",
        "PATH": "/usr/bin:/bin",
    }
    # Outside the repository, as written:
    done = subprocess.run(
        [sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-3:] == ["['test',", "'train',", "'validation']"]
    # From the repository root, python -P keeps the folder datasets/ from hiding HF's package (OUT by full path).
    from_root = snippet.replace('"OUT/', f'"{tmp_path}/OUT/')
    shadowed = subprocess.run(
        [sys.executable, "-c", from_root], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert shadowed.returncode != 0  # why the README says where to run it: the folder datasets/ hides HF's
    done = subprocess.run(
        [sys.executable, "-P", "-c", from_root], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
