"""benchmarks/masking.py's comparison with MaskTheFace (`--peer`), run against a stand-in checkout: every round's
outputs stay until the last round ends, and both tools run with their bytecode cached."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# A checkout's entry point as the benchmark calls it (`mask_the_face.py --path IN --mask_type T`, in the checkout's
# folder): it writes IN_masked/<stem>_<type>.jpg for every input but the first (a silent drop, as MaskTheFace does
# for a photo without a face) and logs what it saw.
FAKE_PEER = """
import json, os, sys
from pathlib import Path
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
src = Path(args["--path"])
out = src.parent / (src.name + "_masked")
out.mkdir()
for photo in sorted(src.iterdir())[1:]:
    (out / f"{photo.stem}_{args['--mask_type']}.jpg").write_bytes(b"jpeg")
scratch = src.parents[1]
entry = {
    "dont_write_bytecode": sys.flags.dont_write_bytecode,
    "pycache_prefix": sys.pycache_prefix,
    "scratch": str(scratch),
    "peer_outputs_present": len(list(scratch.glob("*/in_masked"))),
    "m2u_outputs_present": len(list(scratch.glob("*/out/report.csv"))),
}
with open(os.environ["FAKE_PEER_LOG"], "a") as log:
    log.write(json.dumps(entry) + "\\n")
"""


def test_peer_rounds_keep_their_outputs_until_the_end_and_run_from_cached_bytecode(
    tmp_path, monkeypatch, load_benchmark
):
    peer = tmp_path / "MaskTheFace"
    peer.mkdir()
    (peer / "mask_the_face.py").write_text(FAKE_PEER)
    log = tmp_path / "peer.log"
    monkeypatch.setenv("FAKE_PEER_LOG", str(log))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # as on the machines m2u is developed on
    photos = []
    for k in range(3):  # faceless: m2u-mask reports each as no_face, quickly
        photos.append(tmp_path / f"photo{k}.jpg")
        Image.fromarray(np.full((64, 64, 3), 40 * k, np.uint8)).save(photos[-1])

    result = load_benchmark("masking")._peer_comparison(
        photos, peer, sys.executable, repeats=2, mask_type="surgical"
    )

    assert len(result["rounds"]) == 2
    assert all(r["m2u"]["report_rows"] == 3 and r["m2u"]["silent_drops"] == 0 for r in result["rounds"])
    assert all(r["masktheface"]["silent_drops"] == 1 for r in result["rounds"])
    assert result["m2u"]["statuses"] == {"ok": 0, "no_face": 3, "error": 0}
    assert result["load_average_at_start"] and result["ratio_user_time"] > 0
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(seen) == 3  # the untimed warm-up, then one run per round
    # Nothing was deleted between runs: each peer run found every earlier run's outputs (warm-up included).
    assert [s["peer_outputs_present"] for s in seen] == [1, 2, 3]
    assert [s["m2u_outputs_present"] for s in seen] == [1, 2, 3]
    # Bytecode written and read from one folder of the scratch space, in spite of PYTHONDONTWRITEBYTECODE ...
    assert not any(s["dont_write_bytecode"] for s in seen)
    assert {s["pycache_prefix"] for s in seen} == {str(Path(seen[0]["scratch"]) / "bytecode")}
    # ... and all of it deleted with the scratch space after the last round.
    assert not Path(seen[0]["scratch"]).exists()
