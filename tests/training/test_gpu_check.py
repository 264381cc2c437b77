"""benchmarks/gpu_check.py --dry-run: every step of the GPU check on CPU at a tiny size, so the script cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
RESULTS = SCRIPT.parent / "results"


def _dry_run(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    before = sorted(p.name for p in RESULTS.iterdir())
    out = tmp_path / "check.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--dry-run",
        "--out",
        str(out),
        "--work",
        str(tmp_path / "w"),
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert sorted(p.name for p in RESULTS.iterdir()) == before, "the dry run wrote into benchmarks/results/"
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return done, json.loads(out.read_text())


def test_dry_run_trains_every_setting_and_reports(tmp_path):
    done, report = _dry_run(tmp_path, "--only", "env,dataset,train-mseg,train-gan,latency,loader")
    assert "no GPU was found" in done.stdout and report["gpu_found"] is False and report["failed"] == []
    results = report["results"]
    for task in ("mseg", "gan"):
        settings = results[f"train-{task}"]["settings"]
        assert set(settings) == {
            "fp32",
            "fp32+channels_last",
            "bf16",
            "bf16+channels_last",
            "fp16",
            "fp16+channels_last",
        }
        for name, result in settings.items():
            if name.startswith("fp16"):
                assert "CUDA" in result["skipped"]
                continue
            assert result["losses_finite"] and all(result["weights_changed"].values()), name
            assert result["images_per_second"] > 0 and result["step_seconds"] > 0
        assert report["summary"]["tasks"][task]["best_vs_fp32"] >= 1.0
    assert {"generator/batch1/fp32", "generator/batch8/fp32", "mseg/batch8/fp32"} <= set(
        results["latency"]["results"]
    )
    assert results["loader"]["samples_per_second"] > 0 and results["loader"]["train_steps"] == 3
    projection = report["summary"]["paper_projection"]
    assert projection["steps_for_100_epochs"] == 105_000 and projection["total_hours_fp32"] > 0
    assert isinstance(report["summary"]["gpu_waits_for_data"], bool)
    table = (tmp_path / "check.md").read_text()
    assert "train-gan bf16" in table and "best vs fp32" in table
    assert "no paper-preset projection from a dry run" in table and "paper preset 0" not in table


@pytest.mark.slow
def test_full_dry_run_with_gloo_ddp_through_torchrun(tmp_path):
    _, report = _dry_run(tmp_path)
    ddp = report["results"]["ddp"]
    assert ddp["ok"] and ddp["world_size"] == ddp["trainer_world_size"] == 2 and ddp["backend"] == "gloo"
    assert report["failed"] == []


def test_a_failing_path_is_named_and_the_exit_code_says_so(tmp_path):
    # A budget too small to start anything: every step is reported as not run, and the exit code is 1.
    command = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path / "c.json"), "--budget", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    report = json.loads((tmp_path / "c.json").read_text())
    assert "ddp" in report["failed"] and "FAILED: " in done.stdout and "ddp" in done.stdout
