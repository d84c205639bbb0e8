#!/usr/bin/env bash
# Offline setup for a CUDA machine with no package registry (source this file).
#
# Expects a folder of wheels (default .whl/: mmengine, mmdet, mmsegmentation, their pure-Python
# needs, setuptools<70) plus the mmcv-2.1.0 sdist, all fetched on a machine with a registry by
#   bash tools/fetch_offline_wheels.sh .whl 3.12      (3.12: the CUDA machine's Python)
# Installs them into /tmp/site, builds mmcv's CUDA ops in place (~4 min on 16 cores) and puts
# both and this project on PYTHONPATH.
WHEELS=${WHEELS:-.whl}
ARCH=${TORCH_CUDA_ARCH_LIST:-9.0}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site "$WHEELS"/*.whl || return 1
if [ ! -d /tmp/mmcv-2.1.0/mmcv ] || ! ls /tmp/mmcv-2.1.0/mmcv/_ext*.so >/dev/null 2>&1; then
  tar xzf "$WHEELS"/mmcv-2.1.0.tar.gz -C /tmp || return 1
  (cd /tmp/mmcv-2.1.0 && PYTHONPATH=/tmp/site MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$ARCH \
    MAX_JOBS=$(nproc) python3 setup.py build_ext --inplace > /tmp/mmcv_build.log 2>&1) \
    || { tail -30 /tmp/mmcv_build.log; return 1; }
fi
export PYTHONPATH=$PWD:/tmp/mmcv-2.1.0:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import mmcv.ops, mmdet, mmseg; print('offline stack ok', mmcv.__version__, mmdet.__version__, mmseg.__version__)"
