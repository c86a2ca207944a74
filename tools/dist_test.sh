#!/usr/bin/env bash
# Evaluate a checkpoint on GPUS processes per node with torchrun:
#   tools/dist_test.sh GPUS CONFIG MODEL --resume CKPT [test.py flags]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT as for tools/dist_train.sh.
set -eu
if [ $# -lt 3 ]; then
    echo "usage: $0 GPUS CONFIG MODEL --resume CKPT [test.py flags]" >&2
    exit 2
fi
GPUS=$1
CONFIG=$2
MODEL=$3
shift 3
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

set -x
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" python -m torch.distributed.run \
    --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$GPUS" \
    --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
    "$ROOT/tools/test.py" -c "$CONFIG" --model "$MODEL" "$@"
