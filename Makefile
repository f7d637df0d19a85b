# segexport developer tasks. `make install` sets up a fresh machine; `make test` is what CI runs.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# The CPU build of torch, installed before the project so that the project's
# `torch>=2.4` range never pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_WORKERS ?= 2

.PHONY: install demo test test-fast lint typecheck typecheck-trt bench demo-checkpoints clean

install:
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[dev]"

# The main job on the embedded default: the shipped SegFormer-B0 demo checkpoint, exported
# to a verified ONNX artifact, then its held-out mIoU with PyTorch on the CPU.
demo: install
	segexport onnx --model segformer --weights demo --force
	segexport eval --model segformer --weights demo --data synthetic

# The recipes of the shipped checkpoints (models/*/demo.safetensors). CPU: ~15-25 min each.
demo-checkpoints:
	segexport train --model unet-small --epochs 25 --steps 100 --lr 3e-3 --eval-images 32 \
		--out models/unet-small/demo.safetensors --force
	segexport train --model segformer-b0 --epochs 25 --steps 100 --lr 2e-3 --eval-images 32 \
		--out models/segformer-b0/demo.safetensors --force
	segexport train --model deeplabv3plus-mobilenetv2 --epochs 25 --steps 100 --lr 2e-3 --eval-images 32 \
		--out models/deeplabv3plus-mobilenetv2/demo.safetensors --force

test:
	$(PYTHON) -m pytest -n $(PYTEST_WORKERS) --durations=10

test-fast:
	$(PYTHON) -m pytest -n $(PYTEST_WORKERS) -m "not slow"

lint:
	ruff check segexport tests tools
	ruff format --check segexport tests tools
	mypy

typecheck:
	mypy

# The TensorRT modules against the real bindings of TensorRT 10.3 (JetPack 6), 10.16 and 11.4
# (downloaded from PyPI once, cached in .cache/trt-stubs). TensorRT itself cannot be installed here.
typecheck-trt:
	$(PYTHON) tools/trt_typecheck.py

bench:
	segexport bench export --models segformer-b0,unet,deeplabv3plus --size 512x512 --runs 20 --threads 2

clean:
	rm -rf artifacts .pytest_cache .mypy_cache .ruff_cache build *.egg-info
