# Two commands do everything: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
# CPU build from this machine's disk. GPU users: make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

.PHONY: setup demo test bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# torch first and alone, so the project's open "torch>=2.4" is already satisfied and never
	# resolves to a CUDA wheel on a CPU-only machine.
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: setup
	$(BIN)/aepipe demo --out runs/demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python bench/quality.py

clean:
	rm -rf $(VENV) runs .pytest_cache
