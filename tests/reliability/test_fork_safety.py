"""Worker processes forked after OpenCV ran multi-threaded in the parent must not hang.

Each case runs in a child interpreter with a timeout: OpenCV's thread pool is started first (a large blur with 2
threads), as drawing the templates or a validation pass does in real runs, then the tool forks its workers.
Before the fix m2u-mask --workers 2 waited forever in cv2.setNumThreads inside the workers.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image

WARM_OPENCV = """
import cv2, numpy as np
cv2.setNumThreads(2)
image = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
for _ in range(3):
    image = cv2.GaussianBlur(image, (0, 0), 3)
"""


def _run(script: str, timeout: float = 120) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WARM_OPENCV) + textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,  # a hang fails the test instead of stalling the suite
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    return completed.stdout


def test_m2u_mask_workers_start_after_opencv_ran_threaded(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        Image.fromarray(np.full((48, 48, 3), 40 * i, np.uint8)).save(src / f"blank{i}.png")
    out = _run(
        f"""
        from click.testing import CliRunner
        from m2u.masking.cli import main
        for attempt in range(3):  # several pools in one process: each fork must be safe
            result = CliRunner().invoke(main, [{str(src)!r}, "-o", {str(tmp_path / "out")!r} + str(attempt),
                                               "--workers", "2", "--quiet"])
            assert result.exit_code == 0, result.output
        print("rows", sum(1 for _ in open({str(tmp_path / "out2" / "report.csv")!r})) - 1)
        print("threads", cv2.getNumThreads())
        """
    )
    assert "rows 6" in out and "threads 2" in out  # every input reported; the caller's setting restored


def test_loader_workers_start_after_opencv_ran_threaded(tmp_path):
    from m2u.datasets import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data", 24, size=32, seed=0, split=(1.0, 0.0, 0.0), shard_size=6)
    out = _run(
        f"""
        from m2u.datasets import LoaderConfig, make_loader
        loader = make_loader({str(tmp_path / "data")!r}, "train", LoaderConfig(batch_size=4, num_workers=2))
        seen = []
        for epoch in range(2):  # workers are forked again each epoch
            seen.append(sum(len(batch["key"]) for batch in loader))
        print("samples", seen)
        """
    )
    assert "samples [24, 24]" in out
