#!/usr/bin/env bash
# The wheels (for its Python 3.12) that a lent GPU machine lacks (see the device tool's README: it has torch,
# torchvision, transformers, accelerate, timm, but no diffusers or open_clip), downloaded here into
# .whl/ (git-ignored) for `benchmarks/gpu_checks.sh`, which installs them there. Versions are the
# ones CI tests with; transformers too, so the GPU runs the same transformers as the CPU tests,
# and regex, which transformers checks on import (the GPU's own may be older than it asks).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    diffusers==0.42.1 importlib_metadata==8.7.0 transformers==5.24.0 regex==2026.5.9 \
    open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.7.0 \
    webdataset==1.0.2 braceexpand==0.1.7 compel==2.5.1
ls .whl
