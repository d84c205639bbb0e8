#!/usr/bin/env bash
# Check the fast path on one CUDA machine: the GPU tests of the backbones and kernels, then tools/train.py for 300
# iterations with graph replay on, with the 1x keep-ratio and the 3x multi-scale-crop pipelines.
#   bash tools/gpu_validate.sh [tests|train|all] [DATA_ROOT=data/tiny_coco] [LOG_DIR=work_dirs/gpu_validate]
# tests: the fused blocks and block math on the GPU, Triton = twin for every backbone, the multi-scale graph
#   schedule (one dtype per preset, two graphed models with DDP hooks, with_cp), the NaN rule, the kernels at
#   real shapes, and the routing / packed-op tests compiled on the GPU (they run on CUDA where there is one).
#   Needs torch + Triton + mmengine + mmdet / mmseg importable; mmcv's compiled ops are not needed (its Python
#   source on PYTHONPATH is enough).
# train: Mask R-CNN HWT-T 1x and ms-crop-3x on DATA_ROOT (a COCO-layout folder; ../shared/data/tiny_coco has
#   50 + 50 images: 12 epochs of batch 2 = 300 iterations), no pretrained weights. Needs the full mm stack (on a
#   machine without a registry: tools/fetch_offline_wheels.sh + tools/setup_offline_gpu.sh). The two runs share the
#   GPU. A line per log says what to look for: capture warnings, tracebacks, first / last loss and memory.
# Exit status: non-zero when a pytest run or a training run failed.
set -uo pipefail
STAGE=${1:-all}
DATA_ROOT=${2:-data/tiny_coco}
LOG_DIR=${3:-work_dirs/gpu_validate}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PY=${PYTHON:-python3}
case "$STAGE" in tests|train|all) ;; *) echo "error: stage must be tests, train or all, got '$STAGE'" >&2; exit 2 ;; esac
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "error: $PY sees no CUDA device; this script checks the GPU paths" >&2
  exit 2
fi
mkdir -p "$LOG_DIR"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
STATUS=0
PT=("$PY" -m pytest -q -p no:cacheprovider -rfE)

if [ "$STAGE" != train ]; then
  "${PT[@]}" tests/backbones/test_hwt_fused.py tests/backbones/test_biformer_fused.py tests/backbones/test_nat_fused.py \
    tests/backbones/test_block_math.py tests/backbones/test_graphs.py tests/backbones/test_path_log.py \
    tests/backbones/test_gpu_backbones.py > "$LOG_DIR/tests_backbones.log" 2>&1 &
  A=$!
  { "${PT[@]}" tests/backbones/test_graphs_schedule_gpu.py \
      -k 'HWT-T-bf16 or NAT-T-fp16 or DiNAT-T-bf16 or BiFormer-S-bf16 or HNT-T-fp16 or ddp or with_cp or capture' \
      > "$LOG_DIR/tests_schedule.log" 2>&1 || STATUS=1
    "${PT[@]}" tests/sparse_ops/test_nan.py tests/sparse_ops/test_gpu.py tests/sparse_ops/test_routing_triton.py \
      tests/sparse_ops/test_routing_tables.py tests/sparse_ops/test_qkv_attention.py > "$LOG_DIR/tests_ops.log" 2>&1 \
      || STATUS=1
    exit $STATUS; } &
  B=$!
  wait $A || STATUS=1
  wait $B || STATUS=1
  for f in "$LOG_DIR"/tests_*.log; do echo "$f: $(tail -1 "$f")"; done
fi

if [ "$STAGE" != tests ]; then
  OPTS=(data_root="${DATA_ROOT%/}/" model.backbone.init_cfg=None train_cfg.max_epochs=12 train_cfg.val_interval=12
        default_hooks.checkpoint.interval=12 default_hooks.logger.interval=25)
  PIDS=()
  for recipe in 1x ms-crop-3x; do
    "$PY" tools/train.py "configs/hwt/mask-rcnn_hwt-t_fpn_${recipe}_coco.py" --work-dir "$LOG_DIR/train_$recipe" \
      --cfg-options "${OPTS[@]}" > "$LOG_DIR/train_$recipe.log" 2>&1 &
    PIDS+=($!)
  done
  for p in "${PIDS[@]}"; do wait "$p" || STATUS=1; done
  for recipe in 1x ms-crop-3x; do
    f="$LOG_DIR/train_$recipe.log"
    echo "$f: $(grep -ciE 'capture' "$f") capture lines, $(grep -c Traceback "$f") tracebacks;" \
      "first: $(grep -m1 -oE 'Epoch\(train\).*loss: [0-9.]+' "$f" | grep -oE 'loss: [0-9.]+$')," \
      "last: $(grep -oE 'Epoch\(train\).*' "$f" | tail -1 | grep -oE '\[[0-9]+\]\[ *[0-9]+/[0-9]+\]|loss: [0-9.]+|memory: [0-9]+' | tr '\n' ' ')"
  done
fi
exit $STATUS
