#!/usr/bin/env bash
# Train on GPUS processes per node with torchrun (the argument order of mmdet/mmseg's script):
#   dist_train.sh CONFIG GPUS [train.py flags]
# Several nodes: run it on every node with NNODES, NODE_RANK, MASTER_ADDR (and PORT) set.
set -eu
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG GPUS [train.py flags]" >&2
    exit 2
fi
CONFIG=$1
GPUS=$2
shift 2
set -x
python -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --nproc_per_node="$GPUS" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
    "$(dirname "$0")/train.py" "$CONFIG" --launcher pytorch "$@"
