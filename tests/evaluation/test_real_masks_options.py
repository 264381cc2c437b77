"""m2u-eval real-masks runs m2u-unmask's restoration on its photos: it takes the same restoration options, defined
once (m2u.inference.cli.restoration_options), and they reach its Unmasker."""

from __future__ import annotations

import cv2
from click.testing import CliRunner

from m2u.datasets.synthetic import make_synthetic_sample
from m2u.evaluation.cli import real_masks_main
from m2u.inference.cli import unmask_main
from m2u.inference.unmask import UnmaskConfig, Unmasker

CROP = 32  # the tiny checkpoints' size
# m2u-unmask's options about its own outputs and inputs, not about how a photo is restored
UNMASK_ONLY = {"inputs", "mseg_path", "generator_path", "out_dir", "output_format", "keep_crops", "limit"}
UNMASK_ONLY |= {"progress", "quiet"}


def _declaration(param) -> tuple:
    return (param.opts, param.secondary_opts, param.default, repr(param.type), param.is_flag, param.help)


def test_real_masks_takes_every_restoration_option_of_m2u_unmask_as_m2u_unmask_declares_it():
    unmask = {p.name: p for p in unmask_main.params if p.name not in UNMASK_ONLY}
    real_masks = {p.name: p for p in real_masks_main.params}
    assert {"dilate", "feather", "mask_threshold", "tiles", "whole_frame", "alignment", "crop_size"} <= set(
        unmask
    )
    assert {name: _declaration(p) for name, p in unmask.items()} == {
        name: _declaration(real_masks[name]) for name in unmask if name in real_masks
    }
    assert set(unmask) <= set(real_masks)


class _Loaded(Exception):
    """Raised where the Unmasker would load: the configuration the command built is all the test needs."""


def test_the_same_options_give_both_commands_the_same_unmasker_configuration(tmp_path, monkeypatch):
    seen: list[UnmaskConfig] = []

    def from_files(mseg_path, generator_path, config=None):
        seen.append(config)
        raise _Loaded

    monkeypatch.setattr(Unmasker, "from_files", staticmethod(from_files))
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "face.png"), make_synthetic_sample(CROP, seed=0).masked)
    options = ["--grow", "0.02", "--feather", "0.05", "--threshold", "0.4", "--tiles", "--no-whole-frame"]
    options += [
        "--alignment",
        "landmarks",
        "--size",
        "48",
        "--no-try-turned",
        "--all-faces",
        "--min-score",
        "0.3",
    ]
    options += ["--no-refine-mask", "--device", "cpu", "-q"]
    for command, out in ((unmask_main, "unmasked"), (real_masks_main, "scored")):
        result = CliRunner().invoke(command, [str(photos), "-o", str(tmp_path / out), *options])
        assert isinstance(result.exception, _Loaded), result.output
    unmask, real_masks = seen
    assert real_masks == unmask
    assert (real_masks.dilate, real_masks.crop_size, real_masks.whole_frame, real_masks.masked_only) == (
        0.02,
        48,
        False,
        False,
    )


def test_grow_given_to_real_masks_grows_the_region_restored(tmp_path, tiny_checkpoints):
    mseg_path, gen_path = tiny_checkpoints
    photos = tmp_path / "photos"
    photos.mkdir()
    masked = make_synthetic_sample(CROP, seed=1).masked
    cv2.imwrite(str(photos / "face.png"), cv2.cvtColor(masked, cv2.COLOR_RGB2BGR))
    models = ["--mseg", str(mseg_path), "--generator", str(gen_path), "--size", str(CROP), "--device", "cpu"]
    # --thumb at the crop's size: the sheet's restored cell is the restored photo itself
    models += ["--aligned", "--all-faces", "--thumb", str(CROP), "-q"]

    def changed(grow: str) -> int:
        out = tmp_path / f"grow{grow}"
        result = CliRunner().invoke(real_masks_main, [str(photos), "-o", str(out), *models, "--grow", grow])
        assert result.exit_code == 0, result.output
        restored = cv2.cvtColor(cv2.imread(str(out / "sheet" / "00000_restored.png")), cv2.COLOR_BGR2RGB)
        return int((restored != masked).any(axis=2).sum())

    less, more = changed("0"), changed("0.25")
    assert 0 < less < more and more - less > CROP * CROP // 10, (less, more)
