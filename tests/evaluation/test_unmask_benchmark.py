"""benchmarks/unmask.py runs end to end in its quick mode (the record run is not CI: see benchmarks/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "unmask.py"

pytestmark = [pytest.mark.shared, pytest.mark.slow]


def test_unmask_benchmark_reports_detection_alignment_and_speed(celeba_dir, tmp_path):
    out = tmp_path / "unmask.json"
    shared = celeba_dir.parents[1]
    command = [sys.executable, str(BENCHMARK), "--quick", "--shared", str(shared), "--pipeline-photos", "1"]
    done = subprocess.run([*command, "-o", str(out)], capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    shipped = result["shipped_cascade"]
    assert shipped["faces"] == result["protocol"]["masked_faces"] >= 20
    assert shipped["found"] >= result["candidates"]["hog upsample 0"]["found"]
    assert set(shipped["rate_per_mask_type"]) == set(result["mask_types"])
    for source in ("visible", "landmarks"):
        errors = result["alignment_error_crop_px"][source]
        assert errors["faces"] > 0 and 0 <= errors["eye_px_mean"] <= errors["eye_px_p95"]
    assert result["pipeline"]["faces_per_cpu_s"] > 0
    assert "shipped cascade" in done.stdout
