# fiber-det: everything runs from the project's own environment in .venv/ (see dev/install_env.sh).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install test demo demo-two-stage lint format benchmark clean

install:  ## build .venv (torch, detectron2, transformers, ...) and install fiber_det (editable)
	dev/install_env.sh

test:  ## the test suite (CPU, tiny models, parity fixtures from ../shared/parity)
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo:  ## synthetic grounding demo: generate data, train the tiny model on CPU, evaluate
	$(PY) tools/demo_synthetic.py --output output/demo $(DEMO_ARGS)

demo-two-stage:  ## stage 1 (ITC, ITM, MLM) then stage 2 on synthetic data, vs stage 2 alone (CPU)
	$(PY) tools/demo_two_stage.py --output output/two_stage $(DEMO_ARGS)

lint:
	$(PY) -m ruff check fiber_det tools tests datasets dev
	$(PY) -m ruff format --check fiber_det tools tests datasets dev

format:
	$(PY) -m ruff format fiber_det tools tests datasets dev
	$(PY) -m ruff check --fix fiber_det tools tests datasets dev

benchmark:  ## speed / memory / FLOPs table (tools/benchmark.py --help for options)
	$(PY) tools/benchmark.py

clean:
	rm -rf output/tests .pytest_cache .ruff_cache
