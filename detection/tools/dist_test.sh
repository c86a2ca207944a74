#!/usr/bin/env sh
# Evaluate a checkpoint on GPUS processes per node with torchrun (the argument order of mmdet/mmseg's script;
# tools/mm_dist_run.sh runs it, with tools/launch.sh):
#   dist_test.sh CONFIG CHECKPOINT GPUS [test.py flags]
# Several nodes: NNODES, NODE_RANK, MASTER_ADDR and PORT (or MASTER_PORT) as for dist_train.sh.
set -eu
exec sh "$(dirname "$0")/../../tools/mm_dist_run.sh" "$0" test "$@"
