#!/usr/bin/env sh
# Evaluate a checkpoint on GPUS processes per node with torchrun (the argument order of mmdet/mmseg's script;
# tools/launch.sh runs it):
#   dist_test.sh CONFIG CHECKPOINT GPUS [test.py flags]
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR and PORT (or MASTER_PORT) as for dist_train.sh.
set -eu
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT GPUS [test.py flags]" >&2
    exit 2
fi
HERE="$(dirname "$0")"
CONFIG=$1 CHECKPOINT=$2 GPUS=$3
shift 3
export MASTER_PORT="${PORT:-${MASTER_PORT:-}}"  # mmdet/mmseg's PORT, else MASTER_PORT
exec sh "$HERE/../../tools/launch.sh" torchrun "$GPUS" "$HERE/test.py" "$CONFIG" \
    "$CHECKPOINT" --launcher pytorch "$@"
