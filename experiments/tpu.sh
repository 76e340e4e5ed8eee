#!/usr/bin/env bash
# Run one command on every worker of a TPU VM slice (multi-host): experiments/tpu.sh TPU_NAME ZONE "COMMAND"
# The repo must be checked out at the same path on every worker (e.g. via a startup script).
# M4MJAX_DISTRIBUTED=1 makes the entry point call jax.distributed.initialize().
set -euo pipefail
if [ $# -lt 3 ]; then echo "usage: $0 TPU_NAME ZONE \"COMMAND\"" >&2; exit 2; fi
NAME=$1; ZONE=$2; shift 2
gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all \
  --command="cd \$HOME/m4mjax && M4MJAX_DISTRIBUTED=1 $*"
