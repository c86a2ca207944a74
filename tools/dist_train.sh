#!/usr/bin/env sh
# Train on GPUS processes per node with torchrun (tools/dist_run.sh with tools/train.py):
#   tools/dist_train.sh GPUS CONFIG MODEL [train.py flags]
# Several nodes: run it on every node with NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT) set, e.g.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 tools/dist_train.sh 8 configs/strategies/local_mamba/config.yaml local_vim_tiny -b 128
# Without CUDA the processes use the gloo backend on CPU.
set -eu
TOOLS="$(cd -P "$(dirname "$(readlink -f "$0" 2>/dev/null || echo "$0")")" && pwd)"  # this folder, links followed
if [ $# -lt 3 ]; then
    echo "usage: $0 GPUS CONFIG MODEL [train.py flags]" >&2
    exit 2
fi
exec sh "$TOOLS/dist_run.sh" "$TOOLS/train.py" "$@"
