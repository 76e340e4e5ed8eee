#!/usr/bin/env bash
# Issue 22: the ball :cpu_recipe run on an accelerator, capped in wall time, then the collapse probe per checkpoint
# (experiments/symmetry/recipe_probe.py: mu std, per-axis linear-projection MSE) and symmetry.evaluate.
#
#   experiments/symmetry/recipe_gpu.sh [SECONDS=420] [SEEDS=10] [OUTDIR=${OUT:-/tmp/sps_recipe_gpu}]
#
# Env: PY (python with the project's dependencies; default .venv/bin/python), VARIANT (default cpu_recipe; tiny for a
# smoke test), WD (run directory; default /tmp/sps_recipe_gpu_run, resumed if it exists). A SIGTERM at SECONDS saves
# the last step; checkpoints every 150 steps (the ramp's 150 / 300 / 450 included) are all kept for the probe.
# Data: data/sps/sps_ball is rendered on first use (~1-2 min of CPU) unless carried along.
set -uo pipefail
SECS=${1:-420}; SEEDS=${2:-10}; OUTDIR=${3:-${OUT:-/tmp/sps_recipe_gpu}}
PY=${PY:-.venv/bin/python}; VARIANT=${VARIANT:-cpu_recipe}; WD=${WD:-/tmp/sps_recipe_gpu_run}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
"$PY" -c "import jax; print('devices:', jax.devices())" 2>&1 | tee "$OUTDIR/train.log"
timeout -s TERM "$SECS" "$PY" -m symmetry.train --config="experiments/symmetry/sps_video.py:$VARIANT" \
  --config.num_seeds="$SEEDS" --config.train.log_every=50 --config.train.ckpt_every=150 --config.train.ckpt_keep=100 \
  --workdir="$WD" 2>&1 | tr '\r' '\n' | grep -v -E "Generating|Shuffling|WARNING" | tee -a "$OUTDIR/train.log"
"$PY" -m experiments.symmetry.recipe_probe "$WD" --sequences=128 2>&1 | grep -v WARNING | tee "$OUTDIR/probe.txt"
"$PY" -m symmetry.evaluate --workdir="$WD" 2>&1 | grep -v WARNING | tail -3 | tee -a "$OUTDIR/probe.txt"
cp "$WD/metrics.jsonl" "$WD/eval.json" "$OUTDIR/" 2>/dev/null
exit 0
