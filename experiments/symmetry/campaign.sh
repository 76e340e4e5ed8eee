#!/usr/bin/env bash
# Issue 22 item 3: SPS K=4 and its K=0 ablation at equal steps, SEEDS vmapped seeds each, in resumable stages.
#
#   experiments/symmetry/campaign.sh TARGET_STEP [SEEDS=3]
#
# Each call trains ROOT/k4 and then ROOT/k0 (sps_video.py:$VARIANT with --config.model.K=4 / 0) up to TARGET_STEP
# (a second call with a larger TARGET_STEP resumes both; SIGTERM saves), keeps every 150th checkpoint (the z ramp's
# 150 / 300 / 450 included), then probes every kept checkpoint of both (experiments.symmetry.recipe_probe: the
# latent's spread, per-axis linear-projection MSE and 10-NN MSE per seed) into ROOT/ledger_k4.txt / ledger_k0.txt.
# Niced; one training at a time. Env: ROOT (default workdirs/sps_campaign), PY (default .venv/bin/python),
# VARIANT (default cpu_recipe; tiny for a smoke test), EXTRA (more --config.* flags, e.g. --config.model.z_norm=batch_var
# with another ROOT), INIT (a folder prefix: kK starts from ${INIT}K's weights at their step, e.g.
# INIT=pretrained/sps_ball_k to carry the campaign over to a new machine; a run with a checkpoint resumes it instead).
set -uo pipefail
[ $# -ge 1 ] || { echo "usage: $0 TARGET_STEP [SEEDS=3]" >&2; exit 2; }
TARGET=$1; SEEDS=${2:-3}
ROOT=${ROOT:-workdirs/sps_campaign}; PY=${PY:-.venv/bin/python}; VARIANT=${VARIANT:-cpu_recipe}; EXTRA=${EXTRA:-}
INIT=${INIT:-}
cd "$(dirname "$0")/../.." || exit 1
mkdir -p "$ROOT"
for K in 4 0; do
  echo "campaign: K=$K to step $TARGET ($SEEDS seeds) in $ROOT/k$K"
  # shellcheck disable=SC2086  # EXTRA: flags without spaces
  nice -n 10 "$PY" -m symmetry.train --config="experiments/symmetry/sps_video.py:$VARIANT" --workdir="$ROOT/k$K" \
    --config.model.K="$K" --config.num_seeds="$SEEDS" --config.train.steps="$TARGET" \
    --config.train.ckpt_every=150 --config.train.ckpt_keep_every=150 ${INIT:+--config.init_from="$INIT$K"} $EXTRA 2>&1 \
    | tr '\r' '\n' | grep --line-buffered -v -E "Generating|Shuffling|WARNING|^\s*$" | tail -n 3
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "campaign: K=$K training failed (see above)" >&2; exit 1; }
done
for K in 4 0; do
  nice -n 10 "$PY" -m experiments.symmetry.recipe_probe "$ROOT/k$K" --sequences=128 2>&1 | grep -v WARNING \
    > "$ROOT/ledger_k$K.txt" || { echo "campaign: probing K=$K failed" >&2; exit 1; }
  echo "campaign: K=$K, last kept step:"; tail -n "$SEEDS" "$ROOT/ledger_k$K.txt"
done
