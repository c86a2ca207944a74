#!/usr/bin/env sh
# Run any entry script of ours on GPUS processes per node with torchrun (the original's launcher):
#   tools/dist_run.sh ENTRY GPUS CONFIG MODEL [flags]      e.g. tools/dist_run.sh tools/test.py 8 CONFIG MODEL --resume CKPT
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT as tools/launch.sh says.
set -eu
TOOLS="$(cd -P "$(dirname "$(readlink -f "$0" 2>/dev/null || echo "$0")")" && pwd)"  # this folder, links followed
if [ $# -lt 4 ]; then
    echo "usage: $0 ENTRY GPUS CONFIG MODEL [flags]" >&2
    exit 2
fi
ENTRY=$1 GPUS=$2 CONFIG=$3 MODEL=$4
shift 4
LAUNCH_CONFIG=$CONFIG exec sh "$TOOLS/launch.sh" torchrun "$GPUS" "$ENTRY" -c "$CONFIG" --model "$MODEL" "$@"
