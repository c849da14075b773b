#!/usr/bin/env bash
# Create the separate virtualenv that benchmarks/data_loader.py uses to time mxnet's own
# RecordIO reader next to ours. mxnet is a measurement reference only, never a facevib
# dependency: it needs numpy < 1.24, which facevib's own environment does not allow.
#
# Usage: bash benchmarks/setup_mxnet_venv.sh [VENV_DIR]   (default: .venv-mxnet at the repo root)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_DIR="${1:-.venv-mxnet}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV_DIR/bin/python" ]; then
    "$PYTHON" -m venv "$VENV_DIR"
fi
# The versions the mxnet fixture in tests/fixtures/mxnet_rec was written with.
# Keep the venv out of git without touching the repository's .gitignore (Python >= 3.13 does the same).
printf "*\n" > "$VENV_DIR/.gitignore"
"$VENV_DIR/bin/python" -m pip install --quiet \
    "mxnet==1.9.1" "numpy==1.23.5" "opencv-python-headless==4.11.*"
"$VENV_DIR/bin/python" -c "import mxnet, numpy, cv2; print('mxnet', mxnet.__version__, 'numpy', numpy.__version__, 'opencv', cv2.__version__)"
