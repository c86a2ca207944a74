#!/usr/bin/env bash
# Train on GPUS processes per node with torchrun:
#   tools/dist_train.sh GPUS CONFIG MODEL [train.py flags]
# Several nodes: run it on every node with NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT) set, e.g.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 tools/dist_train.sh 8 configs/strategies/local_mamba/config.yaml local_vim_tiny -b 128
# Without CUDA the processes use the gloo backend on CPU.
set -eu
if [ $# -lt 3 ]; then
    echo "usage: $0 GPUS CONFIG MODEL [train.py flags]" >&2
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
    "$ROOT/tools/train.py" -c "$CONFIG" --model "$MODEL" "$@"
