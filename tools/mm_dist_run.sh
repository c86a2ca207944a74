#!/usr/bin/env sh
# What detection/ and segmentation/'s dist_train.sh / dist_test.sh run (each passes its own path as SCRIPT): their
# train.py / test.py beside SCRIPT on GPUS processes per node with torchrun, in mmdet/mmseg's argument order
# (tools/launch.sh runs it):
#   tools/mm_dist_run.sh SCRIPT train CONFIG GPUS [train.py flags]
#   tools/mm_dist_run.sh SCRIPT test CONFIG CHECKPOINT GPUS [test.py flags]
# Several nodes: run it on every node with NNODES, NODE_RANK, MASTER_ADDR (and PORT or MASTER_PORT) set.
set -eu
TOOLS="$(cd -P "$(dirname "$(readlink -f "$0" 2>/dev/null || echo "$0")")" && pwd)"  # this folder, links followed
if [ $# -lt 2 ]; then
    echo "usage: $0 SCRIPT train|test ARGS..." >&2
    exit 2
fi
SCRIPT=$1 MODE=$2
shift 2
HERE="$(dirname "$SCRIPT")"
case "$MODE" in
    train)
        if [ $# -lt 2 ]; then
            echo "usage: $SCRIPT CONFIG GPUS [train.py flags]" >&2
            exit 2
        fi
        CONFIG=$1 GPUS=$2
        shift 2
        set -- "$CONFIG" --launcher pytorch "$@" ;;
    test)
        if [ $# -lt 3 ]; then
            echo "usage: $SCRIPT CONFIG CHECKPOINT GPUS [test.py flags]" >&2
            exit 2
        fi
        CONFIG=$1 CHECKPOINT=$2 GPUS=$3
        shift 3
        set -- "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@" ;;
    *)
        echo "usage: $0 SCRIPT train|test ARGS..." >&2
        exit 2 ;;
esac
export MASTER_PORT="${PORT:-${MASTER_PORT:-}}"  # mmdet/mmseg's PORT, else MASTER_PORT
LAUNCH_CONFIG=$CONFIG exec sh "$TOOLS/launch.sh" torchrun "$GPUS" "$HERE/$MODE.py" "$@"
