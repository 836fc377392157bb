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

reproduce: $(STAMP)
	$(BIN)/panacea-lab attack --task sentiment --ratios 0 0.01 0.05 0.1 0.2 --seeds 0 1 2 \
		--figure figures/attack_vs_ratio.png
	for nb in $(NOTEBOOKS); do \
		$(BIN)/jupytext --to ipynb --output $${nb%.py}.ipynb $$nb && \
		$(BIN)/papermill --cwd notebooks $${nb%.py}.ipynb $${nb%.py}.ipynb || exit 1; \
	done

# Re-render every figure from the run store; fails (naming the stage) rather than train anything.
figures: $(STAMP)
	for nb in $(NOTEBOOKS); do \
		$(BIN)/jupytext --to ipynb --output $${nb%.py}.ipynb $$nb && \
		PANACEA_CACHE_ONLY=1 $(BIN)/papermill --cwd notebooks $${nb%.py}.ipynb $${nb%.py}.ipynb || exit 1; \
	done

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_generation.py
	$(BIN)/python benchmarks/bench_step_time.py

build-base: $(STAMP)
	$(BIN)/panacea-lab build-base

clean-runs:
	rm -rf runs
