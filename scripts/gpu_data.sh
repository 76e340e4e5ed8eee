#!/usr/bin/env bash
# The data experiments/m4m/analysis_gpu.sh reads, packed for an accelerator machine: .gpu_data/data.tar.gz
# (git-ignored; carried with the run, unpacked there into the repository root when the folders are missing).
#
#   scripts/gpu_data.sh [OUT=.gpu_data/data.tar.gz]
#
# Only what training and evaluation open: the embedded corpus data/tfds/m4m_default (the foundation's train and
# valid splits; TFDS opens the test split's file too) and, of data/analysis, the shards with their chunk markers,
# plan.json (the markers' digests) and labels.json (the evaluation's exact labels). Not synth_midi/ or labels/ (the
# builder's inputs) nor splits.json / summary.json / report.json. The array_record shards are mostly padding:
# ~59 MB of files pack into ~15 MB.
set -euo pipefail
OUT=${1:-.gpu_data/data.tar.gz}
cd "$(dirname "$0")/.."
FILES=(data/tfds/m4m_default data/analysis/shards data/analysis/plan.json data/analysis/labels.json)
for f in "${FILES[@]}"; do
  [ -e "$f" ] || { echo "gpu_data: no $f (make data; python -m m4mjax.datasets.chords --out=data/analysis)" >&2; exit 1; }
done
mkdir -p "$(dirname "$OUT")"
tar czf "$OUT.tmp" "${FILES[@]}" && mv "$OUT.tmp" "$OUT"
echo "gpu_data: $OUT, $(du -sh "$OUT" | cut -f1) ($(du -sb "$OUT" | cut -f1) bytes) from $(du -cb "${FILES[@]}" | tail -1 | cut -f1) bytes"
