# Two commands for a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kolm-installed
DEMO_DIR ?= demo-out

.PHONY: install demo test lint bench-verify bench-compile clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU build from local disk; any other spec pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/kolm-audit demo --workdir $(DEMO_DIR) --force

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 -p no:cacheprovider

lint: $(STAMP)
	$(PY) -m ruff check .

bench-verify: $(STAMP)
	$(PY) bench/bench_verify.py

bench-compile: $(STAMP)
	$(PY) bench/bench_compile.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) build dist *.egg-info
