# Set-up and the two everyday commands. `make demo` and `make test` each create the virtual
# environment on first use, so on a fresh machine either one is all the set-up there is.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# Extra pip arguments for torch alone. From PyPI, torch 2.13.0 on Linux x86_64 is the CUDA build
# (several GB); `TORCH_PIP_ARGS=--index-url=https://download.pytorch.org/whl/cpu` takes the CPU one.
TORCH_PIP_ARGS ?=
BIN := $(VENV)/bin
DEMO_OUT ?= xdp-demo

.PHONY: install demo test bench clean-venv

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned, so the -e install below keeps it (see README, "Set-up").
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/xdp demo --output $(DEMO_OUT)

test: install
	$(BIN)/python -m pytest -q

clean-venv:
	rm -rf $(VENV)
