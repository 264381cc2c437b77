#!/usr/bin/env bash
# The one command for a lent GPU machine (issue 27), run from the repository root with .kit carried:
#
#     bash benchmarks/device_run.sh [--budget 540] [device_kit.py run options...]
#
# On the machine as it is (Python 3.12 with its own PyTorch, no network): installs the kit's wheels with
# pip --no-index into a site folder, links the m2u packages there (setup.cfg's package_dir; no build tools),
# then runs `benchmarks/device_kit.py run`: preflight, GPU check, M-Seg + GAN at 256x256 full width within the
# budget, evaluation, packaging. Everything lands in $OUT (default runs/device), at most 8 files; log.txt is the
# whole output. `make device-kit` prepares .kit here first. The rehearsal (tests/benchmarks/test_device_kit.py)
# runs this same script on CPU with PYTHON pointing at a fresh venv and --rehearsal.
#
# Environment: PYTHON (default python3), OUT, M2U_KIT (default .kit), M2U_SITE (default /tmp/m2u-site),
# M2U_WHEELS (wheel folder, default $M2U_KIT/wheels: the device's cp312 wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
KIT=${M2U_KIT:-.kit}
SITE=${M2U_SITE:-/tmp/m2u-site}
WHEELS=${M2U_WHEELS:-$KIT/wheels}
OUT=${OUT:-runs/device}
export OUT PYTHONUNBUFFERED=1
mkdir -p "$OUT"
if [ ! -f "$KIT/pack/pack.json" ] || [ ! -f "$WHEELS/requirements.txt" ]; then
    echo "device_run: no kit at $KIT (pack/pack.json, $WHEELS/requirements.txt): run 'make device-kit' first" >&2
    exit 2
fi
started=$(date +%s)
{
    echo "device_run: $($PYTHON --version 2>&1) at $(command -v "$PYTHON"); kit $KIT; out $OUT"
    # --no-deps: the image has what these need (numpy, pyyaml); --no-index: nothing can be fetched there.
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        --find-links "$WHEELS" -r "$WHEELS/requirements.txt"
    "$PYTHON" benchmarks/device_kit.py link "$SITE"
    echo "device_run: wheels installed and m2u linked into $SITE in $(( $(date +%s) - started )) s"
    PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" benchmarks/device_kit.py run --kit "$KIT" --out "$OUT" "$@"
} 2>&1 | tee "$OUT/log.txt"
