#!/usr/bin/env bash
# Issue 22 item 5: the SPS ball study on one accelerator, one command: the paper's SPS_VAE K=4 against VAE K=0 (10
# vmapped seeds each), and/or the data-size x K sweep (16 points), each run capped in wall time, then
# symmetry.evaluate per run and symmetry.summary's tables (linear-projection MSE per axis, mean +- std over seeds).
#
#   experiments/symmetry/study_gpu.sh [SECONDS=480] [STUDY=main] [OUTDIR=${OUT:-/tmp/sps_study_gpu}]
#
# STUDY: main (groups/sps_vae_k4 and groups/vae_k0) | data_size_k | groups (all five groups) | all (main + data_size_k).
# SECONDS is the training budget of the whole call, split equally over its runs (a SIGTERM at a run's share saves it).
# Every run lives under WD and resumes there, so a study longer than one lease is the same command called again with
# the same WD (carry WD along, or copy it back from OUTDIR/runs.tar). The run commands are experiments.sweep's for
# experiments/symmetry/sps_video.py:$VARIANT, so the points are the paper's (spec 7.4).
# Env: PY (default .venv/bin/python), VARIANT (default paper; tiny for a smoke test), WD (default /tmp/sps_study_gpu),
# EXTRA (more --config.* flags; default: issue 22's recipe, the decoder offset and the z-loss ramp, without which the
# latent did not open on the CPU; EXTRA=" " runs the paper exactly).
# OUTDIR gets summary.md (+ box plots), evals.tar (every run's eval.json, config.json, metrics.jsonl) and train.log.
set -uo pipefail
SECS=${1:-480}; STUDY=${2:-main}; OUTDIR=${3:-${OUT:-/tmp/sps_study_gpu}}
PY=${PY:-.venv/bin/python}; VARIANT=${VARIANT:-paper}; WD=${WD:-/tmp/sps_study_gpu}
EXTRA=${EXTRA:---config.model.dec_offset=fixed --config.model.z_ramp_start=150 --config.model.z_ramp_end=450}
case "$STUDY" in
  main) ONLY=("groups/sps_vae_k4" "groups/vae_k0") ;;
  data_size_k) ONLY=("data_size_k/") ;;
  groups) ONLY=("groups/") ;;
  all) ONLY=("groups/sps_vae_k4" "groups/vae_k0" "data_size_k/") ;;
  *) echo "study_gpu.sh: error: STUDY must be main, data_size_k, groups or all (got '$STUDY')" >&2; exit 2 ;;
esac
[[ "$SECS" =~ ^[0-9]+$ ]] && [ "$SECS" -gt 0 ] || { echo "study_gpu.sh: error: SECONDS must be a positive integer (got '$SECS')" >&2; exit 2; }
cd "$(dirname "$0")/../.." || exit 1
mkdir -p "$OUTDIR" "$WD"
export PYTHONUNBUFFERED=1
LOG="$OUTDIR/train.log"
"$PY" -c "import jax; print('devices:', jax.devices())" 2>&1 | grep -v WARNING | tee "$LOG"
CMDS=()
for only in "${ONLY[@]}"; do
  while IFS= read -r line; do CMDS+=("$line"); done < <("$PY" -m experiments.sweep \
    "experiments/symmetry/sps_video.py:$VARIANT" --root="$WD" --only="$only" 2>/dev/null | grep -- "--workdir=")
done
[ "${#CMDS[@]}" -gt 0 ] || { echo "study_gpu.sh: error: no sweep point for STUDY=$STUDY VARIANT=$VARIANT" >&2; exit 1; }
PER=$(( SECS / ${#CMDS[@]} )); [ "$PER" -ge 1 ] || PER=1
echo "study: ${#CMDS[@]} runs, ${PER}s of training each, under $WD" | tee -a "$LOG"
RUNS=()
for cmd in "${CMDS[@]}"; do
  wd=$(sed -E 's/.*--workdir=([^ ]+).*/\1/' <<< "$cmd"); RUNS+=("$wd")
  echo "== $wd" | tee -a "$LOG"
  # shellcheck disable=SC2086  # the sweep's command line and EXTRA are word lists without quoted spaces
  timeout -s TERM "$PER" $cmd --config.train.log_every=50 $EXTRA 2>&1 | tr '\r' '\n' \
    | grep --line-buffered -v -E "Generating|Shuffling|WARNING|^\s*$" | tail -n 3 | tee -a "$LOG"
done
for wd in "${RUNS[@]}"; do
  "$PY" -m symmetry.evaluate --workdir="$wd" 2>&1 | grep -v WARNING | tail -n 2 | tee -a "$LOG"
done
"$PY" -m symmetry.summary "$WD/sps_video_$VARIANT" --out="$OUTDIR" 2>&1 | grep -v WARNING | tee -a "$LOG"
( cd "$WD" && find . \( -name eval.json -o -name config.json -o -name metrics.jsonl \) -print0 \
    | tar --null -cf "$OUTDIR/evals.tar" -T - )
exit 0
