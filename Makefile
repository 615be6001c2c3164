# `make demo` shows the flow, `make test` runs the whole suite (what CI runs), `make check` is the
# edit loop's two minutes: lint, every module imported, the tests that start no Ray and no server.
# All create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
# CPU build from this machine's disk. GPU users: make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
# extra requirements beside the project's (check-oldest-ray pins the oldest Ray of the supported range)
EXTRA  ?=
OLDEST_RAY := ray[default,data,train,tune]==2.58.0
BIN    := $(VENV)/bin

.PHONY: setup demo test check check-oldest-ray bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first and alone, so the project's open "torch>=2.4" is already satisfied and never
	# resolves to a CUDA wheel on a CPU-only machine.
	$(BIN)/pip install -q $(TORCH)
	# the project and its test tools through uv: the very versions pip resolves (compared with pip
	# freeze), in about 5 s instead of 70 s here; torch, installed above, already satisfies it
	$(BIN)/pip install -q uv
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[test]' $(EXTRA)
	touch $@

demo: setup
	$(BIN)/aepipe demo --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

check: setup
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/python -m pytest -q -m "not e2e and not slow and not gpu"

# `make check` against the oldest Ray that pyproject.toml allows, in its own venv: a use of a newer
# Ray's API fails here before it lands (CI runs it after `make test`)
check-oldest-ray:
	$(MAKE) check VENV=.venv-oldest-ray EXTRA="'$(OLDEST_RAY)'"

# the quality benches (the others under bench/ take their own arguments); PyOD and aeon are theirs alone
bench: setup
	$(BIN)/uv pip install -q --python $(BIN)/python -e '.[bench]'
	$(BIN)/python bench/heldout.py
	$(BIN)/python bench/anomaly.py
	$(BIN)/python bench/quality.py

clean:
	rm -rf $(VENV) .venv-oldest-ray runs .pytest_cache
