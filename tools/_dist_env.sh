# Sourced by tools/dist_train.sh and tools/dist_test.sh: chooses the Python and checks, in one line each, what
# a torchrun launch needs before starting it (torchrun's own failure is dozens of lines per process).
#   sd_dist_python ROOT GPUS   sets PYTHON, or prints "error: ..." and exits 2
# PYTHON: $PYTHON if set, else ROOT/.venv/bin/python, else the active interpreter (python3 / python on PATH).
sd_dist_python() {
  local root=$1 gpus=$2 missing count source
  if ! [[ "$gpus" =~ ^[1-9][0-9]*$ ]]; then
    echo "error: GPUS must be a positive number of processes, got '$gpus'" >&2
    exit 2
  fi
  source='PYTHON'
  if [ -z "${PYTHON:-}" ]; then
    if [ -x "$root/.venv/bin/python" ]; then
      PYTHON="$root/.venv/bin/python" source='.venv'
    else
      PYTHON=$(command -v python3 || command -v python || true) source="active python; no $root/.venv"
    fi
  fi
  if [ -z "$PYTHON" ]; then
    echo "error: no Python found: $root/.venv does not exist and neither python3 nor python is on PATH (set PYTHON=...)" >&2
    exit 2
  elif ! command -v "$PYTHON" >/dev/null; then
    echo "error: PYTHON=$PYTHON is not an executable" >&2
    exit 2
  fi
  missing=$("$PYTHON" -c "import importlib.util as u
print(' '.join(m for m in ('torch', 'mmengine', 'mmcv', 'mmdet', 'mmseg') if u.find_spec(m) is None))" 2>/dev/null) ||
    missing='(python failed to start)'
  if [ -n "$missing" ]; then
    echo "error: $PYTHON ($source) lacks $missing: activate an environment with torch and the OpenMMLab stack, run tools/setup_env.sh, or set PYTHON=..." >&2
    exit 2
  fi
  count=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
  if [ "$count" -lt "$gpus" ]; then
    echo "error: DDP needs CUDA devices: $gpus processes asked for, torch ($PYTHON) sees $count CUDA device(s); on a CPU machine run tools/train.py / tools/test.py directly" >&2
    exit 2
  fi
}
