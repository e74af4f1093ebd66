# ember: `make demo` runs the main job (ember serve + E2B's SDK), `make test` the whole test suite;
# both set up first.
VENV := .venv
PY := $(VENV)/bin/python
STORAGE ?= .local-build

.PHONY: setup demo demo-tools demo-formats test test-fast lint bench clean

setup:
	bash scripts/setup.sh

lint: setup
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

test-fast: lint
	$(VENV)/bin/pytest -m "not vm and not emulator"

demo: setup
	bash scripts/demo.sh $(STORAGE)

demo-tools: setup
	bash scripts/demo-tools.sh $(STORAGE)

demo-formats: setup
	bash scripts/demo-formats.sh $(STORAGE)

bench: setup
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
