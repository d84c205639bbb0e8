#!/usr/bin/env bash
# Fetch, on a machine with a package registry, what tools/setup_offline_gpu.sh installs on a CUDA machine
# without one: the OpenMMLab stack's wheels (no torch: the CUDA machine has its own) and the mmcv-2.1.0 sdist.
#   bash tools/fetch_offline_wheels.sh [DEST=.whl] [PYTHON_VERSION=3.12]
# Then copy DEST to the CUDA machine and `source tools/setup_offline_gpu.sh` there (WHEELS=DEST).
# pip cannot download mmcv's sdist without building it (its setup.py imports torch), so it is taken from PyPI's
# simple index and checked against the sha256 that the index gives.
set -euo pipefail
DEST=${1:-.whl}
PYV=${2:-3.12}
PACKAGES=(setuptools==69.5.1 mmengine==0.10.7 mmdet==3.3.0 mmsegmentation==1.2.2 addict yapf termcolor
          terminaltables pycocotools shapely prettytable wcwidth platformdirs ftfy)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64 any; do PLATFORMS+=(--platform "$p"); done
mkdir -p "$DEST"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${PACKAGES[@]}"
INDEX=${PIP_SIMPLE_INDEX:-https://pypi.org/simple}
LINK=$(curl -fsSL "$INDEX/mmcv/" | grep -o 'href="[^"]*mmcv-2\.1\.0\.tar\.gz#sha256=[0-9a-f]*"' | head -1 |
       sed 's/^href="//; s/"$//') || true
if [ -z "$LINK" ]; then
  echo "error: no mmcv-2.1.0.tar.gz link in $INDEX/mmcv/ (set PIP_SIMPLE_INDEX to a PyPI mirror)" >&2
  exit 1
fi
case "$LINK" in http*) ;; *) LINK="$INDEX/mmcv/$LINK" ;; esac
curl -fsSL -o "$DEST/mmcv-2.1.0.tar.gz.part" "${LINK%%#*}"
echo "${LINK##*sha256=}  $DEST/mmcv-2.1.0.tar.gz.part" | sha256sum -c --quiet -
mv "$DEST/mmcv-2.1.0.tar.gz.part" "$DEST/mmcv-2.1.0.tar.gz"
echo "$(ls "$DEST" | wc -l) files in $DEST ($(du -sh "$DEST" | cut -f1)); on the CUDA machine: WHEELS=$DEST source tools/setup_offline_gpu.sh"
