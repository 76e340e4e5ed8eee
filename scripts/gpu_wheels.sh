#!/usr/bin/env bash
# The wheels an accelerator machine lacks for a training on prepared data (m4mjax.train, m4mjax.analysis_eval,
# m4mjax.export), pinned to the versions in .venv, for its Python 3.12 on x86-64: downloaded into .whl/ (git-ignored)
# and carried along with the run (experiments/m4m/analysis_gpu.sh installs them when its python lacks ml_collections).
#
#   scripts/gpu_wheels.sh [DEST=.whl]
#
# Its image already holds jax (CUDA), flax, optax, orbax-checkpoint, chex, numpy, scipy, etils, absl-py, protobuf,
# pyarrow, psutil, requests, tqdm, wrapt, tensorstore, msgpack, pyyaml, rich, attrs, cloudpickle, six, simplejson,
# humanize, uvloop, prometheus-client, pillow and torch (the device tool's package list), so only these travel:
# what the commands import beyond it (found by tracing their imports) and those packages' own missing needs.
# Not music21, chorder, miditoolkit, librosa or pyfluidsynth: training and evaluation do not import them.
# promise has no wheel on PyPI: it is built here from its source (pure Python).
set -euo pipefail
DEST=${1:-.whl}
cd "$(dirname "$0")/.."
WHEELS=(
  ml-collections==1.1.0          # the configs
  tensorflow-datasets==4.9.10    # the embedded corpus (m4m_default) and its needs:
  tensorflow-metadata==1.21.0
  dm-tree==0.1.10
  googleapis-common-protos==1.76.0
  promise==2.3
  immutabledict==4.3.1
  simple-parsing==0.1.9
  docstring-parser==0.18.0
  termcolor==3.3.0
  toml==0.10.2
  importlib-resources==7.1.0     # TFDS reads a builder module's resources through it (not in .venv: the latest)
  array-record==0.8.6            # the shards
  grain==0.2.18                  # the data pipeline, and its need:
  portpicker==1.6.0
  symusic==0.6.0                 # MIDI (m4mjax.tokenizer), and its needs:
  pysmartdl==1.3.4
  platformdirs==4.14.9
  mir-eval==0.8.2                # chord scores (m4mjax.chord_eval), and its need:
  decorator==5.3.2
  tensorboardX==2.6.5            # metrics (m4mjax.run.metrics)
)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
mkdir -p "$DEST"
for w in "${WHEELS[@]}"; do
  name=${w%%==*}; glob=$(echo "$name" | tr '-' '_')
  if ls "$DEST" | grep -qi "^${glob}-${w##*==}-"; then continue; fi  # already here
  if [ "$name" = promise ]; then
    python3 -m pip wheel -q --no-deps --no-binary=:all: -w "$DEST" "$w"
  else
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${PLATFORMS[@]}" -d "$DEST" "$w"
  fi
done
n=$(ls "$DEST"/*.whl | wc -l)
if [ "$n" -ne "${#WHEELS[@]}" ]; then
  echo "gpu_wheels: $DEST holds $n wheels, expected ${#WHEELS[@]} (remove the extra ones: one version each)" >&2
  exit 1
fi
echo "gpu_wheels: $n wheels in $DEST, $(du -sh "$DEST" | cut -f1) ($(du -sb "$DEST" | cut -f1) bytes)"
