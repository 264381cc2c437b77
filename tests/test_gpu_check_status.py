"""benchmarks/gpu_check.py says which paths ran: a path it did not run (fp16 on a CPU, torch.compile in the dry run)
is "skipped" with its reason in the table and the JSON, never "ok"; the last line counts the paths that passed and
those skipped instead of "every path passed"; a figure not measured (peak memory on a CPU) is left out, not "None"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("m2u_bench_gpu_check_status", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _trained(peak):
    return {"ok": True, "step_seconds": 0.01, "images_per_second": 200.0, "peak_memory_gib": peak}


def _results(gpu_check):
    fp16 = gpu_check._skipped("fp16 autocast needs CUDA")
    compiled = gpu_check._skipped("torch.compile is not run in the dry run")
    return {
        "env": {"ok": True, "torch": "2", "cuda_runtime": None, "devices": []},
        "train-gan": {"ok": True, "settings": {"fp32": _trained(None), "bf16": _trained(1.5), "fp16": fp16}},
        "compile-gan": {"ok": True, "settings": {"bf16+channels_last+compile": compiled}},
    }


def test_skipped_paths_read_skipped_with_their_reason_and_no_peak_none(gpu_check):
    results = _results(gpu_check)
    text = gpu_check.table(results, {})
    assert "| train-gan fp16 | skipped | fp16 autocast needs CUDA |" in text
    assert (
        "| compile-gan bf16+channels_last+compile | skipped | torch.compile is not run in the dry run |"
        in text
    )
    assert "| train-gan fp32 | ok | 200.0 img/s, 10.0 ms/step |" in text  # not measured: left out
    assert "| train-gan bf16 | ok | 200.0 img/s, 10.0 ms/step, peak 1.5 GiB |" in text
    assert "None" not in text.replace("CUDA None", "")


def test_the_json_paths_and_the_last_line_count_passed_and_skipped(gpu_check):
    results = _results(gpu_check)
    paths = gpu_check.path_statuses(results)
    assert paths["train-gan/fp16"] == {"status": "skipped", "reason": "fp16 autocast needs CUDA"}
    assert paths["train-gan/fp32"] == {"status": "passed"} and paths["env"] == {"status": "passed"}
    assert gpu_check.verdict(paths, dry_run=True) == "gpu_check: 3 paths passed, 2 skipped (dry run)"
    gpu_check.mark_statuses(results)
    assert results["compile-gan"]["status"] == "skipped" and results["train-gan"]["status"] == "passed"
    assert results["train-gan"]["settings"]["fp16"]["status"] == "skipped"
    # Nothing skipped: every path passed, counted; a failure is named.
    ran = {"env": {"ok": True}, "ddp": {"ok": True}}
    assert gpu_check.verdict(gpu_check.path_statuses(ran), False) == "gpu_check: every path passed (2 paths)"
    ran["ddp"] = {"ok": False, "error": "torchrun exit 1"}
    assert gpu_check.verdict(gpu_check.path_statuses(ran), False) == (
        "gpu_check: FAILED: ddp (1 path passed, 0 skipped)"
    )


def test_the_dry_run_reports_what_it_skipped(tmp_path):
    out = tmp_path / "check.json"
    command = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--work", str(tmp_path / "w")]
    command += ["--only", "env,dataset,train-mseg,compile-mseg"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert done.stdout.rstrip().splitlines()[-1] == "gpu_check: 6 paths passed, 3 skipped (dry run)"
    assert "every path passed" not in done.stdout
    table = out.with_suffix(".md").read_text()
    assert "| train-mseg fp16 | skipped | fp16 autocast needs CUDA |" in table
    assert "| compile-mseg bf16+channels_last+compile | skipped | torch.compile" in table
    assert "peak None" not in table
    report = json.loads(out.read_text())
    assert report["counts"] == {"passed": 6, "skipped": 3, "failed": 0} and report["failed"] == []
    assert report["paths"]["train-mseg/fp16"]["status"] == "skipped"
    assert report["paths"]["train-mseg/fp32"]["status"] == "passed"
    assert report["results"]["compile-mseg"]["status"] == "skipped"
