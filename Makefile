# sparsedense: `make demo` (train + evaluate Mask R-CNN and UperNet with HWT on the embedded dataset),
# `make test` (the test suite). Both create .venv first (tools/setup_env.sh; idempotent).
PY        ?= .venv/bin/python
DATA      ?= data/demo
WORK      ?= work_dirs/demo
DET_CFG   := configs/demo/mask-rcnn_hwt-demo_fpn_shapes-coco.py
SEG_CFG   := configs/demo/upernet_hwt-demo_shapes-ade-128x128.py
PYTEST_ARGS ?=
# one OpenMP thread per process: with these small tensors it was 2x faster than two threads on the shared 2-core
# machines (tools/train.py also sets OMP_WAIT_POLICY=PASSIVE); raise it on a quiet many-core machine
DEMO_THREADS ?= 1

.PHONY: all setup data demo demo-det demo-seg test clean-demo

all: demo

setup:
	bash tools/setup_env.sh

data: setup
	$(PY) tools/make_demo_data.py --out $(DATA)

demo:
	@mkdir -p $(WORK) && date +%s > $(WORK)/.start
	OMP_NUM_THREADS=$(DEMO_THREADS) $(MAKE) --no-print-directory data demo-det demo-seg
	$(PY) tools/demo_summary.py --work-dir $(WORK)

demo-det:
	$(PY) tools/train.py $(DET_CFG) --work-dir $(WORK)/det
	$(PY) tools/test.py $(DET_CFG) $$(cat $(WORK)/det/last_checkpoint) --work-dir $(WORK)/det \
	    --show-dir $(WORK)/det/vis

demo-seg:
	$(PY) tools/train.py $(SEG_CFG) --work-dir $(WORK)/seg
	$(PY) tools/test.py $(SEG_CFG) $$(cat $(WORK)/seg/last_checkpoint) --work-dir $(WORK)/seg \
	    --show-dir $(WORK)/seg/vis

test: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q $(PYTEST_ARGS)

clean-demo:
	rm -rf $(WORK) $(DATA)
