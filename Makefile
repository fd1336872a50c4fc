# Everything a fresh machine needs, in two commands:
#   make demo   # set up .venv, then run TULIP end to end on the embedded synthetic long-caption problem
#   make test   # set up .venv, then run the test suite
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu   # .venv with CPU-only torch (about 2 GB, not 6)
#   make gpu-check   # on a machine with a CUDA GPU: GPU tests + speed runs, one table (see scripts/gpu_check.py)
# PYTHON picks the interpreter that creates the virtual environment (3.9+; CI uses 3.11).
PYTHON ?= python3
VENV ?= .venv
# gpu-check runs in an existing interpreter: GPU machines ship their own torch and may reach no package index, so
# it never builds .venv. `PY=python3 make gpu-check` (or `make gpu-check PY=python3`) names the interpreter;
# without PY, .venv's where it exists, else python3. Taken before the next line replaces an environment PY.
GPU_PY := $(if $(filter environment command line,$(origin PY)),$(PY),$(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3))
PY := $(VENV)/bin/python
DEMO_ARGS ?=
GPU_CHECK_ARGS ?=

.PHONY: demo test venv clean-venv gpu-check

venv: $(VENV)/.installed

# CI pins torch 2.14.1 / torchvision 0.29.1 / open_clip_torch 3.3.0 (constraints-ci.txt); the package itself
# only states ranges (setup.cfg).
# pip prints each package as it goes (no -q): the first set-up downloads several GB and takes minutes.
# TORCH_INDEX: a wheel index to take torch and torchvision from first, e.g. PyTorch's CPU-only builds
# (`make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu`); the versions stay those of constraints-ci.txt
# (2.14.1 matches 2.14.1+cpu) and the install that follows keeps them.
TORCH_INDEX ?=
CPU_INDEX := https://download.pytorch.org/whl/cpu
$(VENV)/.installed: setup.cfg pyproject.toml constraints-ci.txt
	@echo "Setting up $(VENV): torch, torchvision, open_clip and every extra of this package (training, evaluation,"
	@echo "export, tests), at the versions of constraints-ci.txt."
ifeq ($(TORCH_INDEX),)
	@echo "It is large (about 6 GB, 4 GB of it CUDA libraries and triton): PyPI's Linux torch is the CUDA build (it"
	@echo "also runs on CPU). A machine without a GPU that reaches PyTorch's own index can take the CPU-only build"
	@echo "instead (about 2 GB in all): stop now (Ctrl-C), then"
	@echo "  make clean-venv && make $(or $(MAKECMDGOALS),venv) TORCH_INDEX=$(CPU_INDEX)"
else
	@echo "torch and torchvision come from $(TORCH_INDEX)."
endif
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --progress-bar off --upgrade pip
	$(if $(TORCH_INDEX),$(PY) -m pip install --progress-bar off -c constraints-ci.txt \
		--index-url $(TORCH_INDEX) torch torchvision)
	$(PY) -m pip install --progress-bar off -c constraints-ci.txt -e '.[test]'
	@echo "$(VENV) is ready: $$(du -sh $(VENV) | cut -f1)."
	touch $@

test: venv
	$(PY) -m pytest -q tests

demo: venv
	$(PY) -m training_ext.demo $(DEMO_ARGS)

# No dependency on venv (see GPU_PY). PYTHONPATH: the checkout imports without being installed.
gpu-check:
	PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

clean-venv:
	rm -rf $(VENV)
