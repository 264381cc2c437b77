"""benchmarks/masking.py runs end to end on a handful of CelebA files (the real run is not CI: see benchmarks/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "masking.py"

pytestmark = [pytest.mark.shared, pytest.mark.slow]


def test_masking_benchmark_reports_every_process_and_the_detection_ceiling(
    celeba_dir, masktheface_templates_dir, tmp_path
):
    out = tmp_path / "masking.json"
    shared = celeba_dir.parents[1]
    command = [sys.executable, str(BENCHMARK), "--files", "6", "--repeats", "1", "--shared", str(shared)]
    done = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    one, many = result["one_worker"], result["all_workers"]
    assert one["report_rows"] == many["report_rows"] == 6  # every input has a row
    assert one["statuses"] == many["statuses"] and one["faces_masked"] >= 5
    detection = result["detection_only_process"]
    # Detection finds every face m2u-mask masks (m2u-mask may refuse a face, never invent one).
    assert detection["faces"] >= one["faces_masked"]
    assert detection["startup_s_in_process"] > 0 and detection["loop_ms_per_image"] > 0
    assert result["target_ratio_vs_masktheface_per_core"] == 3
    assert result["masktheface_style_baseline_same_run"]["images_masked"] >= 5
    assert "detection alone" in done.stdout


def test_blas_start_comparison_runs_both_entries_on_the_same_files(celeba_dir, tmp_path):
    out = tmp_path / "masking.json"
    out.write_text(json.dumps({"kept": 1}))  # the rest of the JSON is kept
    shared = celeba_dir.parents[1]
    command = [sys.executable, str(BENCHMARK), "--blas-start-only", "--files", "1", "--repeats", "2"]
    done = subprocess.run(
        [*command, "--shared", str(shared), "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    start = result["blas_start"]
    assert result["kept"] == 1 and start["files"] == 1 and len(start["rounds"]) == 2
    assert all(r["console_entry_cpu_s"] > 0 and r["click_command_cpu_s"] > 0 for r in start["rounds"])
    assert 0 <= start["rounds_faster"] <= 2
