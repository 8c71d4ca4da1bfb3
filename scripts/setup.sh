#!/usr/bin/env bash
# Set up asymfuse from nothing on a fresh machine: a virtual environment in .venv with the CPU
# torch wheel first (it must come before anything that depends on torch), then the package with
# all extras. Idempotent: re-running only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT

pip_install() {  # quiet pip; on failure show its whole output and stop
  if ! .venv/bin/python -m pip install --disable-pip-version-check -q "$@" >"$LOG" 2>&1; then
    cat "$LOG" >&2
    echo "setup.sh: pip install $* failed" >&2
    exit 1
  fi
}

# torch 2.13.0 first: on this machine kind pip resolves it to a local CPU wheel, and litert-torch
# needs torch < 2.15 (torchvision 0.28 pairs with it). Where pip would pull the CUDA build, choose the
# wheel index: TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  pip_install --index-url "$TORCH_INDEX_URL" "torch==2.13.0"
else
  pip_install "torch==2.13.0"
fi
pip_install -c scripts/constraints.txt -e ".[all]"
# A missing install step fails here, not later in the tests.
.venv/bin/python - <<'PY'
from asymfuse.cloud.compat import import_torchvision
import_torchvision()
import cv2, faiss, h5py, onnxruntime, skimage, torch  # noqa: F401
import asymfuse.cloud, asymfuse.edge, asymfuse.export, asymfuse.proto  # noqa: F401
if torch.__version__.split("+")[0] != "2.13.0":
    raise SystemExit(f"setup.sh: expected torch 2.13.0, got {torch.__version__}; see scripts/constraints.txt")
print(f"asymfuse is set up in .venv (torch {torch.__version__})")
PY
