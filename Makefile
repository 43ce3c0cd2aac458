# Two commands on a fresh machine:
#   make demo   - the main job (creates the venv on first use)
#   make test   - ruff and the whole test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps -e . --config-settings editable_mode=compat
	touch $(STAMP)

demo: venv
	$(BIN)/scale-field demo --out out/demo

lint: venv
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q test

bench: venv
	$(BIN)/scale-field bench --json out/bench.json

clean:
	rm -rf $(VENV) out
