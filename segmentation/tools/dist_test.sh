#!/usr/bin/env sh
# Evaluate a checkpoint on GPUS processes per node with torchrun (the argument order of mmdet/mmseg's script;
# tools/mm_dist_run.sh runs it, with tools/launch.sh):
#   dist_test.sh CONFIG CHECKPOINT GPUS [test.py flags]
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR and PORT (or MASTER_PORT) as for dist_train.sh.
set -eu
HERE="$(cd -P "$(dirname "$(readlink -f "$0" 2>/dev/null || echo "$0")")" && pwd)"  # this folder, links followed
exec sh "$HERE/../../tools/mm_dist_run.sh" "$HERE/dist_test.sh" test "$@"
