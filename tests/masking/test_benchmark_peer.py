"""benchmarks/masking.py --peer runs a MaskTheFace checkout in the same run and counts its outputs and silent drops.

MaskTheFace itself is not installed here (it is never vendored): a stand-in checkout written by the test behaves as
its script does on the command line (`mask_the_face.py --path IN --mask_type T` run in the checkout's folder,
IN_masked/<stem>_<T>.<ext> for each photo it masks, nothing at all for a photo it does not)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "masking.py"

pytestmark = pytest.mark.shared

STAND_IN = """
import argparse, os, shutil, sys
parser = argparse.ArgumentParser()
parser.add_argument("--path")
parser.add_argument("--mask_type", default="surgical")
args = parser.parse_args()
assert os.path.isfile("masks/masks.cfg"), "run from the checkout's folder"
out = args.path + "_masked"
os.makedirs(out, exist_ok=True)
names = sorted(os.listdir(args.path))
for k, name in enumerate(names):
    if k == 1:
        continue  # as MaskTheFace does for a photo without a face: no output, no message
    stem, ext = name.rsplit(".", 1)
    shutil.copy(os.path.join(args.path, name), os.path.join(out, f"{stem}_{args.mask_type}.{ext}"))
print("Processing Done")
"""


def test_peer_comparison_reports_outputs_silent_drops_and_ratios(celeba_dir, tmp_path):
    checkout = tmp_path / "MaskTheFace"
    (checkout / "masks").mkdir(parents=True)
    (checkout / "masks" / "masks.cfg").write_text("[surgical]\n")
    (checkout / "mask_the_face.py").write_text(STAND_IN)
    out = tmp_path / "masking.json"
    out.write_text(json.dumps({"kept": 1}))
    command = [
        sys.executable,
        str(BENCHMARK),
        "--files",
        "3",
        "--repeats",
        "1",
        "--shared",
        str(celeba_dir.parents[1]),
        "--peer",
        str(checkout),
        "--peer-only",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["kept"] == 1  # --peer-only keeps the rest of the JSON
    peer = result["peer"]
    assert peer["files"] == 3 and peer["mask_type"] == "surgical" and len(peer["rounds"]) == 1
    assert peer["masktheface"] == {"inputs_with_output": 2, "outputs": 2, "silent_drops": 1}
    assert peer["m2u"]["silent_drops"] == 0 and peer["m2u"]["masked_inputs"] == 3
    assert peer["ratio_per_cpu_second"] > 0 and peer["ratio_wall"] > 0
    assert "against MaskTheFace" in done.stdout


def test_peer_without_the_script_is_a_clear_error(celeba_dir, tmp_path):
    command = [sys.executable, str(BENCHMARK), "--files", "1", "--repeats", "1"]
    command += ["--shared", str(celeba_dir.parents[1]), "--peer", str(tmp_path), "--peer-only"]
    done = subprocess.run([*command, "--out", str(tmp_path / "m.json")], capture_output=True, text=True)
    assert done.returncode != 0 and "mask_the_face.py" in done.stderr
