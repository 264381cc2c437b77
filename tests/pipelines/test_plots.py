"""Training curves: no panel for timestamps or switched-off terms, train and val on one axis, smoothed train."""

from __future__ import annotations

import json

import matplotlib.image
import pytest

from m2u.pipelines.plots import curve_panels, plot_training_curves, read_log, smoothed
from m2u.training.runlog import LOG_NAME


def _log(folder, records):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOG_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))


def test_panels_skip_timestamps_and_zero_terms_and_pair_train_with_val(tmp_path):
    records = [
        {"split": "train", "step": s, "time": 1.7e9 + s, "loss": 1 / s, "perceptual": 0.0, "lr": 1e-3}
        for s in range(1, 21)
    ]
    records += [
        {"split": "val", "step": s, "time": 1.7e9 + s, "loss": 0.5 / s, "psnr": 20.0 + s} for s in (10, 20)
    ]
    _log(tmp_path / "gan", records)
    panels = curve_panels(read_log(tmp_path / "gan" / LOG_NAME))
    assert set(panels) == {"loss", "psnr"}  # no time, no all-zero perceptual term
    assert set(panels["loss"]) == {"train", "val"} and set(panels["psnr"]) == {"val"}
    (path,) = plot_training_curves({"gan": tmp_path / "gan"}, tmp_path / "plots")
    assert path.name == "gan_train.png" and matplotlib.image.imread(path).shape[0] > 100


def test_smoothing_follows_a_constant_and_damps_noise():
    assert smoothed([2.0] * 5) == pytest.approx(
        [2.0] * 5
    )  # bias-corrected: no pull towards zero at the start
    noisy = [1.0, -1.0] * 20
    assert max(abs(v) for v in smoothed(noisy)[10:]) < 0.2


def test_each_split_has_its_own_colour_and_label():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from m2u.pipelines.plots import draw_panel

    figure, axis = plt.subplots()
    points = [(s, 1.0 / s) for s in range(1, 11)]
    draw_panel(axis, {"train": points, "val": points[::3], "test": points[-1:]})
    labelled = {
        line.get_label(): line.get_color()
        for line in axis.get_lines()
        if not line.get_label().startswith("_")
    }
    plt.close(figure)
    assert set(labelled) == {"train (smoothed)", "val", "test"}
    assert len(set(labelled.values())) == 3  # val and test no longer share a colour
