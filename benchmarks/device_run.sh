#!/usr/bin/env bash
# The one command for a lent GPU machine (issue 27), run from the repository root with .kit carried:
#
#     bash benchmarks/device_run.sh [--help] [--budget 540] [device_kit.py run options...]
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
#
# Nothing is created (not even $OUT) before the arguments and the kit are checked: --help and a missing kit
# leave the tree as it was.
set -euo pipefail
usage() {
    cat <<'USAGE'
usage: bash benchmarks/device_run.sh [--help] [--budget SECONDS] [device_kit.py run options...]

Installs the kit's wheels (pip --no-index) into $M2U_SITE, links the m2u packages there, then runs
`benchmarks/device_kit.py run --kit $M2U_KIT --out $OUT` with the options given (see
`python benchmarks/device_kit.py run --help`). Output: $OUT (default runs/device), log.txt the whole output.

Environment: PYTHON (default python3), OUT (default runs/device), M2U_KIT (default .kit),
M2U_SITE (default /tmp/m2u-site), M2U_WHEELS (default $M2U_KIT/wheels). Prepare the kit with `make device-kit`.
USAGE
}
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
for arg in "$@"; do
    case "$arg" in
        -h|--help)
            usage
            echo
            "$PYTHON" benchmarks/device_kit.py run --help
            exit 0
            ;;
    esac
done
# The options are device_kit.py run's: checked by its own parser (stdlib only) before anything is installed or made.
PYTHONDONTWRITEBYTECODE=1 "$PYTHON" -c 'import sys; sys.argv[0] = "device_run.sh"; sys.path.insert(0, "benchmarks"); import device_kit; device_kit.parse_args(["run", *sys.argv[1:]])' "$@"
KIT=${M2U_KIT:-.kit}
SITE=${M2U_SITE:-/tmp/m2u-site}
WHEELS=${M2U_WHEELS:-$KIT/wheels}
OUT=${OUT:-runs/device}
export OUT PYTHONUNBUFFERED=1
if [ ! -f "$KIT/pack/pack.json" ] || [ ! -f "$WHEELS/requirements.txt" ]; then
    echo "device_run: no kit at $KIT (pack/pack.json, $WHEELS/requirements.txt): run 'make device-kit' first" >&2
    usage >&2
    exit 2
fi
mkdir -p "$OUT"
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
