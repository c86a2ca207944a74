#!/usr/bin/env sh
# Train on GPUS processes per node with torchrun (the argument order of mmdet/mmseg's script; tools/launch.sh runs it):
#   dist_train.sh CONFIG GPUS [train.py flags]
# Several nodes: run it on every node with NNODES, NODE_RANK, MASTER_ADDR (and PORT or MASTER_PORT) set.
set -eu
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG GPUS [train.py flags]" >&2
    exit 2
fi
HERE="$(dirname "$0")"
CONFIG=$1 GPUS=$2
shift 2
export MASTER_PORT="${PORT:-${MASTER_PORT:-}}"  # mmdet/mmseg's PORT, else MASTER_PORT
exec sh "$HERE/../../tools/launch.sh" torchrun "$GPUS" "$HERE/train.py" "$CONFIG" \
    --launcher pytorch "$@"
