# Two commands set everything up on a fresh machine:
#   make demo   - builds the environment, then restores the embedded default faces with the shipped model
#                 (runs/demo/index.html); while no model ships, it says so and runs `make smoke` instead
#   make smoke  - the `smoke` pipeline (every stage, minutes) on the default faces, into runs/smoke
#   make test   - builds the environment, then runs ruff and the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.m2u-installed
FACES  ?= $(shell [ -d ../shared/faces/celeba ] && echo ../shared/faces/celeba)
PYTEST_ARGS ?= -m "not slow"

.PHONY: setup demo smoke test test-slow lint bench gpu-check clean

setup: $(STAMP)

# torch is installed first and pinned to the CPU build when no NVIDIA driver is present: an unpinned torch
# pulls a multi-GB CUDA build. With a GPU, pip picks the default (CUDA) build of the same range.
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q "torch>=2.4"; \
	else $(BIN)/pip install -q "torch==2.13.0"; fi
	$(BIN)/pip install -q -e ".[test]"
	# The LPIPS v0.1 heads (the lpips package's weight files; m2u reads them without importing the package,
	# whose torchvision requirement would replace the CPU torch).
	$(BIN)/pip install -q --no-deps "lpips>=0.1.4"
	touch $@

demo: $(STAMP)
	@if $(BIN)/python -m m2u.pipelines.demo --check; then \
		$(BIN)/python -m m2u.pipelines.demo -o runs/demo; \
	else \
		echo "make demo: running the smoke pipeline instead (make smoke), which trains for seconds: expect no real restoration"; \
		$(MAKE) smoke; \
	fi

smoke: $(STAMP)
	$(BIN)/m2u-pipeline run --preset smoke $(if $(FACES),--faces $(FACES),--demo-faces) -o runs/smoke

lint: $(STAMP)
	$(BIN)/ruff check masking datasets training pipelines tests benchmarks

# pytest is called through its own script, not `python -m pytest`: the latter puts the repository root on
# sys.path, where the folder datasets/ would shadow HuggingFace's `datasets`.
test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/pytest -m slow

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# On a CUDA machine: every GPU path of m2u in at most 8 minutes -> benchmarks/results/gpu_check.json (+ .md).
# Without CUDA it says so and stops; `$(BIN)/python benchmarks/gpu_check.py --dry-run` runs it on CPU.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) build *.egg-info runs out
