# qfi: `make demo` and `make test` set everything up on a fresh clone. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
DEMO := demo_out

.DEFAULT_GOAL := help
.PHONY: help install test demo bench zoo clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install qfi with its dev extras (launchers, pytest)

test: $(STAMP) ## Run the test suite (doctests included)
	$(BIN)/python -m pytest src tests -q

demo: $(STAMP) ## Train on digits, inject-eval, sweep 6 BERs (joblib-free: basic launcher), plot
	rm -rf $(DEMO)
	QFI_OUTPUTS=$(DEMO) $(BIN)/qfi train --out $(DEMO)/train
	QFI_OUTPUTS=$(DEMO) $(BIN)/qfi inject-eval --ber 1e-3 --trials 20 --out $(DEMO)/inject
	QFI_OUTPUTS=$(DEMO) $(BIN)/qfi sweep --bers 1e-5,1e-4,3e-4,1e-3,3e-3,1e-2 --trials 20 --out $(DEMO)/sweep
	@echo "demo plot: $(DEMO)/sweep/ber_curve.png"

zoo: $(STAMP) ## The whole torchvision zoo smoke test (make test runs its fast 57; this adds the 23 slow ones)
	QFI_SLOW=1 $(BIN)/python -m pytest tests/test_torchvision_zoo.py -q
	$(BIN)/python scripts/zoo_table.py

# The bench extra (pytorchfi) is optional: if it does not install, its rows say "not installed" and the rest runs.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]' && touch $(BENCH_STAMP) || \
		echo "warning: the bench extra (pytorchfi) did not install: its rows will say 'not installed'"

bench: $(BENCH_STAMP) ## Run the benchmarks (scripts/bench*.py): bench/results.json, bench/results.md, README table
	@mkdir -p bench
	for s in scripts/bench*.py; do $(BIN)/python $$s || exit 1; done
	$(BIN)/python scripts/_bench_common.py --readme
	@cat bench/results.md

clean: ## Remove the venv, outputs and caches
	rm -rf $(VENV) outputs multirun $(DEMO) .pytest_cache .hypothesis build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
