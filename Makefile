# Two commands matter: `make reproduce` and `make test`. Both bootstrap .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: reproduce test figures bench build-base clean-runs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))

# Every notebook: jupytext source -> notebooks/NN_*.ipynb, executed in place by papermill; figures/ gets
# each figure's PNG and CSV. $(1) prefixes papermill (e.g. an environment setting).
define run_notebooks
	mkdir -p figures
	for nb in $(NOTEBOOKS); do \
		$(BIN)/jupytext -q --to ipynb --output $${nb%.py}.ipynb $$nb && \
		$(1) $(BIN)/papermill -k python3 --cwd notebooks $${nb%.py}.ipynb $${nb%.py}.ipynb || exit 1; \
	done
endef

reproduce: $(STAMP)
	$(call run_notebooks,)

# Re-render every figure from the run store; fails (naming the stage) rather than train anything.
figures: $(STAMP)
	$(call run_notebooks,PANACEA_CACHE_ONLY=1)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_generation.py
	$(BIN)/python benchmarks/bench_step_time.py

build-base: $(STAMP)
	$(BIN)/panacea-lab build-base

clean-runs:
	rm -rf runs
