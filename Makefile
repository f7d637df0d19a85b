# segexport developer tasks. `make demo` sets up a fresh machine and runs the main job;
# `make test` is what CI runs.
#
# Everything runs in a project virtual environment (.venv, ignored by git), created from
# BASE_PYTHON: that works the same on a distribution's externally managed python3 (PEP 668:
# Debian 12, Ubuntu 24.04), a pyenv/conda Python, and inside an already active venv.
# `make PYTHON=/path/to/python ...` uses that interpreter as it is instead (no venv).
BASE_PYTHON ?= python3
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
PIP = $(PYTHON) -m pip
SEGEXPORT = $(PYTHON) -m segexport
# The CPU build of torch, installed before the project so that the project's
# `torch>=2.4` range never pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_WORKERS ?= 2
# torch is named again with the project: timm (dev extra) pulls torchvision, whose newest
# release would otherwise upgrade torch to a CUDA build.
# Rebuilt when the project's requirements change; `make install` forces it. Kept inside the
# venv, so that deleting the venv also forgets that it was installed.
ifeq ($(PYTHON),$(VENV)/bin/python)
INSTALLED = $(VENV)/.segexport-installed
else
INSTALLED = .cache/installed$(subst /,_,$(PYTHON))
endif

.PHONY: install demo test test-fast test-triton lint typecheck typecheck-trt bench demo-checkpoints clean distclean

install:
	rm -f $(INSTALLED)
	$(MAKE) $(INSTALLED)

$(INSTALLED): pyproject.toml
	@if [ "$(PYTHON)" = "$(VENV)/bin/python" ] && [ ! -x "$(PYTHON)" ]; then \
		$(BASE_PYTHON) -m venv $(VENV) || { \
			echo "segexport: error: '$(BASE_PYTHON) -m venv' failed; on Debian/Ubuntu: sudo apt install python3-venv" >&2; \
			exit 1; }; \
	fi
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev]" "$(TORCH_SPEC)"
	@mkdir -p $(dir $(INSTALLED)) && touch $(INSTALLED)

# The main job on the embedded default: the shipped SegFormer-B0 demo checkpoint, exported
# to a verified ONNX artifact, then its held-out mIoU with PyTorch on the CPU.
demo: $(INSTALLED)
	$(SEGEXPORT) onnx --model segformer --weights demo --force
	$(SEGEXPORT) eval --model segformer --weights demo --data synthetic

# The recipes of the shipped checkpoints (models/*/demo.safetensors). CPU: ~15-25 min each.
demo-checkpoints: $(INSTALLED)
	$(SEGEXPORT) train --model unet-small --epochs 25 --steps 100 --lr 3e-3 --limit 32 \
		--out models/unet-small/demo.safetensors --force
	$(SEGEXPORT) train --model segformer-b0 --epochs 25 --steps 100 --lr 2e-3 --limit 32 \
		--out models/segformer-b0/demo.safetensors --force
	$(SEGEXPORT) train --model deeplabv3plus-mobilenetv2 --epochs 25 --steps 100 --lr 2e-3 --limit 32 \
		--out models/deeplabv3plus-mobilenetv2/demo.safetensors --force

test: $(INSTALLED)
	$(PYTHON) -m pytest -n $(PYTEST_WORKERS) --durations=10

test-fast: $(INSTALLED)
	$(PYTHON) -m pytest -n $(PYTEST_WORKERS) -m "not slow"

# A real Triton server (2.51, the one PyTriton's wheel bundles: Python backend only, CPU) serving
# a generated ensemble on loopback. Its Python-backend stub needs numpy < 2, hence its own venv;
# the network runs as a Python-backend stand-in with ONNX Runtime (no onnxruntime backend there).
PYTRITON_VENV ?= .venv-pytriton

$(PYTRITON_VENV)/.installed:
	$(BASE_PYTHON) -m venv $(PYTRITON_VENV)
	$(PYTRITON_VENV)/bin/pip install --quiet "nvidia-pytriton==0.7.0" "numpy<2" pillow onnxruntime
	@touch $@

test-triton: $(INSTALLED) $(PYTRITON_VENV)/.installed
	SEGEXPORT_PYTRITON_VENV=$(abspath $(PYTRITON_VENV)) $(PYTHON) -m pytest -n 0 -m triton tests/test_triton_server.py

lint: $(INSTALLED)
	$(PYTHON) -m ruff check segexport tests tools
	$(PYTHON) -m ruff format --check segexport tests tools
	$(PYTHON) -m mypy

typecheck: $(INSTALLED)
	$(PYTHON) -m mypy

# The TensorRT modules against the real bindings of TensorRT 10.3 (JetPack 6), 10.16 and 11.4
# (downloaded from PyPI once, cached in .cache/trt-stubs). TensorRT itself cannot be installed here.
typecheck-trt: $(INSTALLED)
	$(PYTHON) tools/trt_typecheck.py

bench: $(INSTALLED)
	mkdir -p artifacts/bench
	for model in segformer-b0 unet-small deeplabv3plus-mobilenetv2; do \
		$(SEGEXPORT) bench --model $$model --weights demo --force \
			--report artifacts/bench/$$model.md --plot artifacts/bench/$$model.png || exit 1; \
	done

clean:
	rm -rf artifacts .pytest_cache .mypy_cache .ruff_cache build dist *.egg-info

# `make clean` keeps the virtual environment (slow to rebuild); this removes it too.
distclean: clean
	rm -rf $(VENV)
