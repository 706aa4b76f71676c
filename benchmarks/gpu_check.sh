#!/usr/bin/env bash
# Run benchmarks/gpu_check.py on a lent GPU machine (see benchmarks/gpu_check.py).
#
# The GPU machine has its own Python 3.12 with PyTorch (CUDA) and most scientific packages, but not pathgen's
# slide, array and diffusion libraries, and it reaches no package index. Fetch their wheels here once, into the
# git-ignored folder .whl/ (about 43 MB):
#
#     benchmarks/gpu_check.sh --fetch-wheels
#
# then run on the GPU machine, carrying .whl (the device tool's `carry`):
#
#     benchmarks/gpu_check.sh
#
# The working tree and the wheels travel together and must stay under the tool's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(openslide-python openslide-bin imagecodecs zarr numcodecs donfig crc32c dask distributed partd locket
        tblib zict tornado diffusers shapely)
if [[ "${1:-}" == "--fetch-wheels" ]]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  mkdir -p .whl
  for p in "${WHEELS[@]}"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
      -d .whl "$p"
  done
  du -sh .whl
  exit 0
fi
if [[ -d .whl ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu_check.py "$@"
