#!/usr/bin/env sh
# Evaluate a checkpoint on GPUS processes per node with torchrun (tools/dist_run.sh with tools/test.py):
#   tools/dist_test.sh GPUS CONFIG MODEL --resume CKPT [test.py flags]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT as for tools/dist_train.sh.
set -eu
TOOLS="$(cd -P "$(dirname "$(readlink -f "$0" 2>/dev/null || echo "$0")")" && pwd)"  # this folder, links followed
if [ $# -lt 3 ]; then
    echo "usage: $0 GPUS CONFIG MODEL --resume CKPT [test.py flags]" >&2
    exit 2
fi
exec sh "$TOOLS/dist_run.sh" "$TOOLS/test.py" "$@"
