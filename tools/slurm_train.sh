#!/usr/bin/env bash
# Train on a Slurm cluster: one task per GPU, mmengine reads the rank/world size from Slurm (--launcher slurm).
#
#   [GPUS=16] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS="--quotatype=auto"] \
#       bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [extra tools/train.py args]
#
# e.g. GPUS=8 bash tools/slurm_train.sh gpu upernet-hwt configs/hwt/upernet_hwt-t_8xb2-160k_ade20k-512x512.py \
#          work_dirs/upernet_hwt-t --resume
set -euo pipefail

if [ $# -lt 4 ]; then
    sed -n '2,8p' "$0" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
shift 4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(( GPUS < 8 ? GPUS : 8 ))}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python

[ -f "$CONFIG" ] || { echo "error: config file '$CONFIG' does not exist" >&2; exit 2; }

# shellcheck disable=SC2086  # SRUN_ARGS is a list of options on purpose
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    $SRUN_ARGS \
    "$PYTHON" -u "$ROOT/tools/train.py" "$CONFIG" --work-dir="$WORK_DIR" --launcher=slurm "$@"
