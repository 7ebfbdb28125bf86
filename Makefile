# The README's two commands are `make demo` and `make test`; both create .venv and install into it when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo base reproduce reproduce-quick bench quality clean

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) examples/demo.py --output-dir outputs/demo

# Rebuilds the shipped pretrained tiny base (mirage_tiny/pretrained) from the stage-0 recipe: one CPU thread, seeded.
base: $(STAMP)
	$(PY) examples/pretrain_tiny_base.py --config examples/recipes/tiny/stage0.yaml

# The reproduction study (Direct / CoT / Mirage / Mirage without stage 1, seeds, ablations); writes docs/results.md.
reproduce: $(STAMP)
	$(PY) examples/reproduce.py --output-dir outputs/reproduce

reproduce-quick: $(STAMP)
	$(PY) examples/reproduce.py --quick --output-dir outputs/reproduce-quick

bench: $(STAMP)
	$(PY) benchmarks/bench_generate.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_grpo.py
	$(PY) benchmarks/bench_data.py

quality: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) outputs *.egg-info
