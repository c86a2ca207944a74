#!/usr/bin/env bash
# Evaluate a checkpoint on GPUS processes per node with torchrun (the argument order of mmdet/mmseg's script):
#   dist_test.sh CONFIG CHECKPOINT GPUS [test.py flags]
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR and PORT as for dist_train.sh.
set -eu
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [test.py flags]" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
set -x
python -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --nproc_per_node="$GPUS" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}" \
    "$(dirname "$0")/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
