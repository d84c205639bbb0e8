#!/usr/bin/env bash
# Create .venv with the pinned OpenMMLab stack and this project (idempotent).
#
# torch is installed first and pinned (a bare `torch` pulls CUDA builds); mmcv 2.1.0
# has only an sdist on PyPI, so it is built here with its compiled ops, without build
# isolation (isolation would hide torch and silently build without ops).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.sparsedense-setup-v1"
[ -f "$STAMP" ] && exit 0

# the environment takes ~2.7 GB (torch 0.8, triton 1.0) and pip needs ~1 GB more while it unpacks and builds; a
# full disk otherwise shows up as a bare "OSError: [Errno 28]" in the middle of an install
NEED_GB=${SETUP_NEED_GB:-4}
FREE_KB=$(df -Pk "$(dirname "$(realpath -m "$VENV")")" | awk 'NR == 2 {print $4}')
if [ -n "$FREE_KB" ] && [ "$FREE_KB" -lt $((NEED_GB * 1024 * 1024)) ]; then
  echo "[setup] WARNING: only $((FREE_KB / 1024)) MiB free on the disk of $(realpath -m "$VENV"); setup needs" \
       "about ${NEED_GB} GiB (pip stops with 'No space left on device' when it runs out)" >&2
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
PIP="$PY -m pip --disable-pip-version-check"

if ! "$PY" -c "import torch" 2>/dev/null; then
  $PIP install "torch==${TORCH_VERSION:-2.13.0}"
fi
$PIP install "setuptools<70" wheel ninja "numpy<2.5" packaging
if ! "$PY" -c "import mmcv.ops, mmcv; assert mmcv.__version__ == '2.1.0'" 2>/dev/null; then
  echo "[setup] building mmcv 2.1.0 with compiled ops (15-20 min on 2 cores, cached afterwards)"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} $PIP install --no-build-isolation --no-deps mmcv==2.1.0
  $PIP install addict yapf pyyaml Pillow opencv-python
fi
$PIP install mmengine==0.10.7 mmdet==3.3.0 mmsegmentation==1.2.2 ftfy regex \
  "triton==3.9.0" opencv-python pycocotools pytest matplotlib "setuptools<70"
$PIP install --no-build-isolation --no-deps -e .
"$PY" - <<'PY'
import mmcv, mmcv.ops, mmdet, mmseg, mmengine, torch, triton
print(f"[setup] torch {torch.__version__} mmcv {mmcv.__version__} mmengine {mmengine.__version__} "
      f"mmdet {mmdet.__version__} mmseg {mmseg.__version__} triton {triton.__version__}")
PY
touch "$STAMP"
