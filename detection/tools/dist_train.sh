#!/usr/bin/env sh
# Train on GPUS processes per node with torchrun (the argument order of mmdet/mmseg's script; tools/mm_dist_run.sh
# runs it, with tools/launch.sh):
#   dist_train.sh CONFIG GPUS [train.py flags]
# Several nodes: run it on every node with NNODES, NODE_RANK, MASTER_ADDR (and PORT or MASTER_PORT) set.
set -eu
HERE="$(cd -P "$(dirname "$(readlink -f "$0" 2>/dev/null || echo "$0")")" && pwd)"  # this folder, links followed
exec sh "$HERE/../../tools/mm_dist_run.sh" "$HERE/dist_train.sh" train "$@"
