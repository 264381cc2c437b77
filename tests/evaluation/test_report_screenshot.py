"""The HTML report renders: a headless Chromium screenshot of index.html, checked for content (not blank, the
sample grid drawn, the warning box visible). Skipped when Chromium is not installed (Debian: apt-get install
chromium). Set M2U_SCREENSHOT_OUT=path.png to keep the screenshot."""

from __future__ import annotations

import os
import shutil
import subprocess
import unittest.mock

import cv2
import numpy as np
import pytest
import torch

import m2u.evaluation.evaluator as evaluate_module
from m2u.evaluation.evaluator import EvaluateConfig, evaluate
from m2u.evaluation.suite import MetricsConfig, MetricSuite

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
WIDTH, HEIGHT = 1280, 2600


def screenshot(page, png, profile) -> None:
    """Chromium's own screenshot of a local page; flags keep it off the network (this machine has none)."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--screenshot={png}",
        f"--window-size={WIDTH},{HEIGHT}",
        page.as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_the_html_report_renders_in_chromium(tiny_dataset, tiny_checkpoints, tmp_path):
    mseg_path, gen_path = tiny_checkpoints
    real_restore = evaluate_module.restore_batch

    def nearly_all_mask(*args, **kwargs):  # a broken M-Seg: the report must say so where it is seen
        pred, raw, comp = real_restore(*args, **kwargs)
        return torch.ones_like(pred), raw, comp

    suite = MetricSuite(MetricsConfig(enable_lpips=False, enable_fid=False, enable_identity=False))
    config = EvaluateConfig(
        progress=False, latency_warmup=1, latency_repeats=2, grid_rows=4, paper_size_cost=False
    )
    report_dir = tmp_path / "report"
    with unittest.mock.patch.object(evaluate_module, "restore_batch", nearly_all_mask):
        evaluate(tiny_dataset, mseg_path, gen_path, report_dir, config, metric_suite=suite)
    png = tmp_path / "report.png"
    screenshot(report_dir / "index.html", png, tmp_path / "profile")
    if os.environ.get("M2U_SCREENSHOT_OUT"):
        shutil.copy(png, os.environ["M2U_SCREENSHOT_OUT"])

    shot = cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
    assert shot.shape == (HEIGHT, WIDTH, 3)
    assert (shot < 200).any(axis=-1).mean() > 0.02, "the page is blank"
    # The warning box's background (#fde2e1) is on screen, wide as a paragraph.
    warning = np.all(shot == (0xFD, 0xE2, 0xE1), axis=-1)
    assert warning.sum() > 20_000
    # The sample grid (dark background, 48 grey) is drawn at its size: 4 rows of 128 px tiles.
    grid = cv2.imread(str(report_dir / "grid.png"))
    dark = np.all(shot == 48, axis=-1)
    rows = np.flatnonzero(dark.sum(axis=1) > 100)
    assert rows.size and rows[-1] - rows[0] + 1 >= 0.9 * grid.shape[0]
