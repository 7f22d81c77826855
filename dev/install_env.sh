#!/usr/bin/env bash
# Build the whole fiber-det environment in .venv/ at the project root (idempotent).
#
#   dev/install_env.sh            # or: make install
#
# Steps: venv -> torch 2.14.1 + torchvision 0.29.1 -> pinned requirements -> detectron2
# (an importable official build is kept as it is; otherwise the pure-Python part of the PyPI
# package `sal-detectron2==0.7.2`, with its compiled `_C` removed) -> D3 toolkit -> fiber_det
# in editable mode, with its optional compiled DCN sampler (fiber_det/csrc). Environment knobs:
#   PYTHON=python3.11     interpreter used to create the venv
#   VENV=.venv            where the environment goes
#   DETECTRON2_SRC=path   a detectron2 source checkout to build and install instead of the fallback
#   FIBER_DET_BUILD_EXT=0 do not compile fiber_det._C (the DCN then uses grid_sample: same results)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
log() { printf '\n[install] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)

log "torch 2.14.1 + torchvision 0.29.1"
if ! "$PY" -c "import torch, torchvision, sys; sys.exit(not (torch.__version__.startswith('2.14.1') and torchvision.__version__.startswith('0.29.1')))" 2>/dev/null; then
  "${PIP[@]}" install torch==2.14.1 torchvision==0.29.1
fi

log "pinned requirements"
"${PIP[@]}" install -r requirements.txt

log "detectron2"
if [ -n "${DETECTRON2_SRC:-}" ]; then
  "${PIP[@]}" install --no-build-isolation -e "$DETECTRON2_SRC"
fi
SITE=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
FALLBACK="$PWD/$VENV/detectron2-fallback"
if "$PY" -c "import detectron2, sys; sys.exit(0 if '$FALLBACK' not in detectron2.__file__ else 1)" 2>/dev/null; then
  echo "using the installed detectron2 build"
else
  if [ ! -f "$FALLBACK/detectron2/__init__.py" ]; then
    echo "no importable detectron2 build: installing the pure-Python fallback (sal-detectron2 0.7.2)"
    rm -rf "$FALLBACK"
    "${PIP[@]}" install --no-deps --target "$FALLBACK" --python-version 3.10 \
      --only-binary=:all: sal-detectron2==0.7.2
    # No compiled ops: ROIAlign / NMS / deformable conv come from torchvision.
    find "$FALLBACK" -name '_C*.so' -delete
    rm -rf "$FALLBACK/tools"
  fi
  echo "$FALLBACK" > "$SITE/detectron2_fallback.pth"
fi

log "D3 toolkit (ddd-dataset, CC BY-NC 4.0; --no-deps keeps opencv headless)"
"${PIP[@]}" install --no-deps ddd-dataset==0.1.2

log "fiber_det (editable; compiles the optional DCN sampler fiber_det._C with g++, ~40 s)"
"${PIP[@]}" install --no-deps --no-build-isolation -e .

"$PY" - <<'PY'
import detectron2, torch, torchvision, transformers
import fiber_det
from fiber_det.modeling.head.dcn_sampler import compiled_sampler_status
print(f"[install] DCN sampler: {compiled_sampler_status()}")
print(f"[install] ok: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"transformers {transformers.__version__}, detectron2 {detectron2.__version__} "
      f"({detectron2.__file__}), fiber_det {fiber_det.__version__}")
PY
