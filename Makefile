# Everything a fresh machine needs, in two commands:
#   make demo   # set up .venv, then run TULIP end to end on the embedded synthetic long-caption problem
#   make test   # set up .venv, then run the test suite
# PYTHON picks the interpreter that creates the virtual environment (3.9+; CI uses 3.11).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_ARGS ?=

.PHONY: demo test venv clean-venv

venv: $(VENV)/.installed

# CI pins torch 2.14.1 / torchvision 0.29.1 / open_clip_torch 3.3.0 (constraints-ci.txt); the package itself
# only states ranges (setup.cfg).
$(VENV)/.installed: setup.cfg pyproject.toml constraints-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-ci.txt -e '.[test]'
	touch $@

test: venv
	$(PY) -m pytest -q tests

demo: venv
	$(PY) -m training_ext.demo $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)
