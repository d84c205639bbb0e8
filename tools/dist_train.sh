#!/usr/bin/env bash
# Multi-process training with torchrun (PyTorch DDP through mmengine), one process per GPU.
#   bash tools/dist_train.sh CONFIG GPUS [train.py args...]
# PYTHON: $PYTHON, else .venv/bin/python, else the active python3.
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, PORT environment variables.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG GPUS [train.py args...]" >&2
  exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=tools/_dist_env.sh
. "$ROOT/tools/_dist_env.sh"
sd_dist_python "$ROOT" "$GPUS"  # sets PYTHON; one-line error without torch / CUDA devices
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

PYTHONPATH="$ROOT:${PYTHONPATH:-}" exec "$PYTHON" -m torch.distributed.run \
  --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
  --nproc_per_node="$GPUS" --master_port="$PORT" \
  "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "$@"
