#!/usr/bin/env bash
# Issue 23 item 7: on one accelerator, in about SECONDS of wall time, train the foundation further
# (lm_pretrain.py:$VARIANT_LM, from the shipped pretrained/lm_$VARIANT_LM when there is one), export it, train the
# analysis rows of analysis.py:$VARIANT on it at equal steps (finetune.ROWS: fa_self, fa_cross, full; scratch and seq2seq
# from no foundation), evaluate each (m4mjax.analysis_eval, N held-out songs per set), export each, and leave in
# OUTDIR one tar per model (a shipped model folder: config.json, params.npz, source.json, + eval.json,
# metrics.jsonl, train.log) and summary.json (every model's step, losses and scores). Then
# `tar xzf OUTDIR/lm_cpu.tar.gz -C pretrained/` ships the foundation under the name analysis.py:cpu starts from.
#
#   experiments/m4m/analysis_gpu.sh [SECONDS=540] [OUTDIR=${OUT:-/tmp/analysis_gpu}]
#
# Env: PY (python with the project's dependencies; default .venv/bin/python; python3 on the accelerator machine),
# VARIANT_LM / VARIANT (default cpu / cpu; tiny / tiny for a smoke test), WD (run directory, default
# /tmp/analysis_gpu_run: re-running the same command resumes every run in it), N (held-out songs per set, default
# 64), ROWS (default "fa_self fa_cross full scratch seq2seq"), PARALLEL (rows trained / evaluated at once on the one device,
# default 5: these models leave an H100 mostly idle), LM_STEPS / ROW_STEPS (step caps, default 100000: the wall
# clock stops the runs; the configs' warm-up steps are kept), INIT_LM (default pretrained/lm_$VARIANT_LM if it has a
# config.json; empty = from scratch), LM_ARGS / ROW_ARGS (extra --config.* flags), DATA_LM (the foundation's data:
# data.name, e.g. a prepared folder; default the config's, data/tfds/m4m_default), DATA_ANALYSIS (the chord-data
# folder; default the config's, data/analysis), DATA_TAR (default .gpu_data/data.tar.gz, made by
# scripts/gpu_data.sh: unpacked here when the data folders are missing), WHEELS (default .whl, made by
# scripts/gpu_wheels.sh: installed into SITE, default /tmp/site, when PY lacks ml_collections).
#
# Time shares of SECONDS (deadlines from the start, so time a stage leaves unused goes to the next): foundation
# until 25 %, rows until 60 %, catch-up until 65 % (rows behind the furthest one resume to its step: equal steps),
# evaluation until 95 %, then the exports and tars. Each stage is `timeout -s TERM`: m4mjax.train saves and exits.
set -uo pipefail
SECS=${1:-540}
OUTDIR=$(realpath -m "${2:-${OUT:-/tmp/analysis_gpu}}")
T0=$(date +%s)
WD=$(realpath -m "${WD:-/tmp/analysis_gpu_run}")
for v in DATA_LM DATA_ANALYSIS; do  # folders as absolute paths, before the cd
  if [ -n "${!v:-}" ] && [ -e "${!v}" ]; then printf -v "$v" '%s' "$(realpath "${!v}")"; fi
done
cd "$(dirname "$0")/../.." || exit 1
PY=${PY:-.venv/bin/python}; VARIANT_LM=${VARIANT_LM:-cpu}; VARIANT=${VARIANT:-cpu}; N=${N:-64}
ROWS=${ROWS:-fa_self fa_cross full scratch seq2seq}; PARALLEL=${PARALLEL:-5}
LM_STEPS=${LM_STEPS:-100000}; ROW_STEPS=${ROW_STEPS:-100000}; LM_ARGS=${LM_ARGS:-}; ROW_ARGS=${ROW_ARGS:-}
DATA_LM=${DATA_LM:-}; DATA_ANALYSIS=${DATA_ANALYSIS:-}; DATA_TAR=${DATA_TAR:-.gpu_data/data.tar.gz}
WHEELS=${WHEELS:-.whl}; SITE=${SITE:-/tmp/site}; CKPT_EVERY=${CKPT_EVERY:-500}  # = the cpu variants' train.ckpt_keep_every: those steps stay for --step
if [ -z "${INIT_LM+x}" ]; then
  INIT_LM=""; [ -f "pretrained/lm_$VARIANT_LM/config.json" ] && INIT_LM="pretrained/lm_$VARIANT_LM"
fi
mkdir -p "$OUTDIR" "$WD/logs"
LOG="$OUTDIR/run.log"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$WD/jax_cache}  # the rows share their programs
say() { echo "analysis_gpu: $*" | tee -a "$LOG"; }
die() { echo "analysis_gpu: $*" | tee -a "$LOG" >&2; exit 1; }
left() { local s=$(( T0 + SECS * $1 / 100 - $(date +%s) )); echo $(( s < 5 ? 5 : s )); }  # seconds to $1 %
quiet() { tr '\r' '\n' | grep --line-buffered -v -E "Generating|Shuffling|WARNING|^\s*$"; }
latest() {  # the newest checkpointed step of run directory $1 (0 when none)
  ls "$1/checkpoints" 2>/dev/null | grep -E '^[0-9]+$' | sort -n | tail -1 | grep . || echo 0
}

# --- the machine: wheels, data ------------------------------------------------------------------------------------
if ! "$PY" -c "import ml_collections" 2>/dev/null; then
  [ -d "$WHEELS" ] || die "$PY lacks the project's packages and there is no $WHEELS (scripts/gpu_wheels.sh)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS"/*.whl || die "installing $WHEELS failed"
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi
need_lm=""; [ -z "$DATA_LM" ] && [ ! -f data/tfds/m4m_default/full/1.0.0/dataset_info.json ] && need_lm=1
need_an=""; [ -z "$DATA_ANALYSIS" ] && [ ! -f data/analysis/labels.json ] && need_an=1
if [ -n "$need_lm$need_an" ] && [ -f "$DATA_TAR" ]; then
  say "unpacking $DATA_TAR"; tar xzf "$DATA_TAR" || die "cannot unpack $DATA_TAR"
fi
[ -z "$DATA_LM" ] && [ ! -f data/tfds/m4m_default/full/1.0.0/dataset_info.json ] && \
  die "no data/tfds/m4m_default (the foundation's corpus): carry .gpu_data (scripts/gpu_data.sh) or data/tfds/m4m_default"
DA=${DATA_ANALYSIS:-data/analysis}
for f in labels.json plan.json shards; do
  [ -e "$DA/$f" ] || die "no $DA/$f (the chord data): carry .gpu_data (scripts/gpu_data.sh) or data/analysis"
done
"$PY" -c "import jax; print('analysis_gpu: devices', jax.devices())" 2>&1 | grep -v WARNING | tee -a "$LOG"

# --- the plan: each row's overrides (finetune.ROWS), the configs' warm-up in steps ---------------------------------
PLAN=$("$PY" - "$VARIANT" "$VARIANT_LM" "$WD/lm_export" $ROWS <<'EOF' 2>>"$LOG"
import sys
from experiments.m4m import analysis, finetune, lm_pretrain
variant, variant_lm, init, *rows = sys.argv[1:]
warm = lambda c: max(int(round(c.optim.warmup_frac * c.train.steps)), 1)
print("WARM", warm(lm_pretrain.get_config(variant_lm)), warm(analysis.get_config(variant)))
for r in rows:
    if r not in finetune.ROWS:
        sys.exit(f"analysis_gpu: unknown row {r!r} (ROWS: {' '.join(finetune.ROWS)})")
    over = {"init_from": init, **finetune.ROWS[r]}  # scratch's init_from='' stays empty
    print(r, " ".join(f"--config.{k}={v}" for k, v in over.items()))
EOF
) || die "cannot read the configs (see $LOG)"
read -r _ LM_WARM ROW_WARM <<< "$(grep '^WARM ' <<< "$PLAN")"
frac() { awk -v w="$1" -v s="$2" 'BEGIN { printf "%.10g", w / s }'; }  # warm-up $1 steps of $2
DATA_ROW=(); [ -n "$DATA_ANALYSIS" ] && DATA_ROW=(--config.data.dir="$DATA_ANALYSIS")

# --- (a) the foundation, (b) its export ----------------------------------------------------------------------------
lm=(-m m4mjax.train --config="experiments/m4m/lm_pretrain.py:$VARIANT_LM" --workdir="$WD/lm"
    --config.train.steps="$LM_STEPS" --config.optim.warmup_frac="$(frac "$LM_WARM" "$LM_STEPS")"
    --config.train.ckpt_every="$CKPT_EVERY")
[ -n "$DATA_LM" ] && lm+=(--config.data.name="$DATA_LM")
[ -n "$INIT_LM" ] && lm+=(--config.init_from="$INIT_LM")  # read only when WD/lm has no checkpoint yet
say "foundation lm_pretrain.py:$VARIANT_LM from ${INIT_LM:-scratch}, $(left 25) s"
t=$(date +%s)
timeout -k 60 -s TERM "$(left 25)" "$PY" "${lm[@]}" $LM_ARGS 2>&1 | quiet | tee "$WD/logs/lm.log" >>"$LOG"
tail -n 2 "$WD/logs/lm.log"; LM_S=$(( $(date +%s) - t ))
[ "$(latest "$WD/lm")" != 0 ] || die "the foundation saved no checkpoint (see $WD/logs/lm.log)"
"$PY" -m m4mjax.export --workdir="$WD/lm" --out="$WD/lm_export" 2>&1 | grep -v WARNING | tee -a "$LOG"
[ -f "$WD/lm_export/params.npz" ] || die "exporting the foundation failed"

# --- (c) the rows, PARALLEL at a time, then the ones behind to the furthest step -----------------------------------
row_args() { grep "^$1 " <<< "$PLAN" | cut -d' ' -f2-; }
train_rows() {  # train_rows END_PCT STEPS ROW...: each row to STEPS or the deadline
  local end=$1 steps=$2 r; shift 2
  local n=0
  for r in "$@"; do
    # shellcheck disable=SC2046  # row_args: flags without spaces
    timeout -k 60 -s TERM "$(left "$end")" "$PY" -m m4mjax.train --config="experiments/m4m/analysis.py:$VARIANT" \
      --workdir="$WD/$r" $(row_args "$r") --config.train.steps="$steps" \
      --config.optim.warmup_frac="$(frac "$ROW_WARM" "$steps")" --config.train.ckpt_every="$CKPT_EVERY" \
      "${DATA_ROW[@]}" $ROW_ARGS 2>&1 | quiet >>"$WD/logs/$r.log" &
    n=$((n + 1)); if [ "$n" -ge "$PARALLEL" ]; then wait -n; n=$((n - 1)); fi
  done
  wait
}
mem=$(awk -v p="$PARALLEL" 'BEGIN { printf "%.3f", 0.9 / (p < 1 ? 1 : p) }')
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-$mem}  # PARALLEL processes share the device
say "rows ($ROWS) of analysis.py:$VARIANT, $PARALLEL at a time, $(left 60) s"
t=$(date +%s)
# shellcheck disable=SC2086
train_rows 60 "$ROW_STEPS" $ROWS
S=0; for r in $ROWS; do s=$(latest "$WD/$r"); [ "$s" -gt "$S" ] && S=$s; done
behind=""; for r in $ROWS; do [ "$(latest "$WD/$r")" -lt "$S" ] && behind="$behind $r"; done
if [ -n "$behind" ]; then
  say "catch-up to step $S:$behind, $(left 65) s"
  # shellcheck disable=SC2086
  train_rows 65 "$S" $behind
fi
ROWS_S=$(( $(date +%s) - t ))
for r in $ROWS; do say "$r: step $(latest "$WD/$r"); $(grep -E '^step [0-9]+/' "$WD/logs/$r.log" | tail -1)"; done

# --- (d) evaluation, (e) exports ------------------------------------------------------------------------------------
say "evaluation, $N songs per set, $(left 95) s"
t=$(date +%s); n=0
for r in $ROWS; do
  [ "$(latest "$WD/$r")" != 0 ] || continue
  rm -f "$WD/$r/eval.json"
  timeout -k 30 -s TERM "$(left 95)" "$PY" -m m4mjax.analysis_eval --workdir="$WD/$r" --max_songs="$N" 2>&1 \
    | quiet >"$WD/logs/$r.eval.log" &
  n=$((n + 1)); if [ "$n" -ge "$PARALLEL" ]; then wait -n; n=$((n - 1)); fi
done
wait; EVAL_S=$(( $(date +%s) - t ))
for r in $ROWS; do say "$r: $(grep -E '^(synth_test|romantext): root' "$WD/logs/$r.eval.log" 2>/dev/null | tr '\n' ' ')"; done
unset XLA_PYTHON_CLIENT_MEM_FRACTION
pack() {  # pack NAME RUNDIR EXPORTED LOG: OUTDIR/NAME.tar.gz = NAME/{config.json,params.npz,source.json,eval.json,...}
  local name=$1 run=$2 exported=$3 dir="$WD/out/$1"
  rm -rf "$dir"; mkdir -p "$dir"
  cp "$exported"/* "$dir"/
  for f in eval.json metrics.jsonl; do [ -f "$run/$f" ] && cp "$run/$f" "$dir/"; done
  cat "$WD/logs/$4.log" "$WD/logs/$4.eval.log" 2>/dev/null > "$dir/train.log"
  tar czf "$OUTDIR/$name.tar.gz" -C "$WD/out" "$name"
}
pack "lm_$VARIANT_LM" "$WD/lm" "$WD/lm_export" lm
for r in $ROWS; do
  [ "$(latest "$WD/$r")" != 0 ] || { say "$r saved no checkpoint: not exported"; continue; }
  ( "$PY" -m m4mjax.export --workdir="$WD/$r" --out="$WD/export/$r" 2>&1 | grep -v WARNING >>"$LOG" &&
    pack "analysis_${VARIANT}_$r" "$WD/$r" "$WD/export/$r" "$r" ) &
done
wait

# --- summary --------------------------------------------------------------------------------------------------------
"$PY" - "$WD" "$OUTDIR" "$VARIANT_LM" "$VARIANT" "$SECS" "$(( $(date +%s) - T0 ))" "$LM_S" "$ROWS_S" "$EVAL_S" \
  "${INIT_LM:-}" $ROWS <<'EOF' 2>&1 | tee -a "$LOG"
import json, os, sys
wd, outdir, vlm, v, secs, total, lm_s, rows_s, eval_s, init, *rows = sys.argv[1:]

def run(path, name):
    out = {"tar": f"{name}.tar.gz" if os.path.isfile(os.path.join(outdir, f"{name}.tar.gz")) else None}
    src = os.path.join(wd, "out", name, "source.json")
    if os.path.isfile(src):
        out["step"] = json.load(open(src))["step"]
    rows_ = [json.loads(x) for x in open(os.path.join(path, "metrics.jsonl"))] if os.path.isfile(
        os.path.join(path, "metrics.jsonl")) else []
    for key in ("train/loss", "valid/loss", "train/steps_per_s"):
        last = [r for r in rows_ if key in r]
        if last:
            out[key] = {"step": last[-1]["step"], "value": last[-1][key]}
    ev = os.path.join(path, "eval.json")
    if os.path.isfile(ev):
        out["eval"] = json.load(open(ev))["sets"]
    return out

import jax
summary = {"device": str(jax.devices()[0].device_kind), "seconds": int(secs), "wall_s": int(total),
           "stage_s": {"lm": int(lm_s), "rows": int(rows_s), "eval": int(eval_s)},
           "lm": {"config": f"lm_pretrain.py:{vlm}", "init_from": init or None, **run(os.path.join(wd, "lm"), f"lm_{vlm}")},
           "rows": {r: {"config": f"analysis.py:{v}", **run(os.path.join(wd, r), f"analysis_{v}_{r}")} for r in rows}}
steps = {r: x.get("step") for r, x in summary["rows"].items()}
summary["equal_steps"] = len(set(steps.values())) == 1 and None not in steps.values()
with open(os.path.join(outdir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print("analysis_gpu: steps", json.dumps(steps), "equal" if summary["equal_steps"] else "NOT equal")
for r, x in summary["rows"].items():
    print(f"analysis_gpu: {r}: " + "  ".join(f"{s} majmin {e.get('majmin', float('nan')):.3f}"
                                          for s, e in x.get("eval", {}).items()))
EOF
say "wrote $OUTDIR: $(ls "$OUTDIR" | tr '\n' ' ')($(du -sh "$OUTDIR" | cut -f1)) in $(( $(date +%s) - T0 )) s"
exit 0
