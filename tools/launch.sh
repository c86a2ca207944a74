#!/usr/bin/env sh
# The one launcher behind every dist_*.sh / slurm_*.sh script: runs an entry script with its arguments as given.
#   tools/launch.sh torchrun GPUS ENTRY [ARGS...]            GPUS processes per node (torchrun)
#   tools/launch.sh srun PARTITION GPUS ENTRY [ARGS...]      GPUS Slurm tasks, at most 8 per node
# torchrun, one node: its own master (MASTER_ADDR is not read) on a free port unless MASTER_PORT is set. Several
# nodes: run it on every node with NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT, default 29500) set. srun: ranks
# come from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID, the master is the job's first node, its port MASTER_PORT
# if set, else the entry's --dist-port, else one from 20000-29999 picked by SLURM_JOB_ID; each task gets
# CPUS_PER_TASK cores (default 5, as mmdet's and mmseg's launchers give: Slurm's default of 1 would run a rank's
# loader workers on a single core).
# ENTRY is a path from the current directory or from the repository root; the root goes on PYTHONPATH. The
# interpreter is python from PATH, or the one PYTHON names. LAUNCH_CONFIG (set by the dist_*.sh / slurm_*.sh
# scripts) names the config file the entry reads: one that is not there is said once, before any process starts.
# torchrun runs as tools/torchrun.py (classification.engine.torchrun): a failed launch ends in one line with the
# failed worker's exit status, not in torchrun's ChildFailedError traceback with status 1; a Ctrl-C while it imports
# ends it quietly.
# Interruptions: tools/train.py stops on SIGINT, SIGTERM, SIGUSR1 or SIGHUP after its current step, saving last.pth.tar.
# For it srun asks Slurm for SIGUSR1 120 s before the time limit (--signal=USR1@120; other entries keep the full
# time). torchrun forwards SIGINT, SIGTERM and (PET_SIGNALS_TO_HANDLE below: torch >= 2.10 reads it, our torchrun
# wrapper does on older torch) SIGUSR1 to its workers, and kills those still running 30 s later
# (TORCH_ELASTIC_SHUTDOWN_TIMEOUT).
set -eu
usage() {
    echo "usage: $0 torchrun GPUS ENTRY [ARGS...] | $0 srun PARTITION GPUS ENTRY [ARGS...]" >&2
    exit 2
}
show_command() {
    # The command about to run, on stderr after "+ ", each argument quoted so that a shell reads it back as given.
    line=+
    for arg in "$@"; do
        case "$arg" in
            ''|*[!A-Za-z0-9_./:=,@%+-]*) arg="'$(printf '%s' "$arg" | sed "s/'/'\\\\''/g")'" ;;
        esac
        line="$line $arg"
    done
    printf '%s\n' "$line" >&2
}
[ $# -ge 1 ] || usage
MODE=$1
shift
ROOT="$(cd -P "$(dirname "$(readlink -f "$0" 2>/dev/null || echo "$0")")/.." && pwd)"  # links followed
case "$MODE" in
    torchrun) [ $# -ge 2 ] || usage; PARTITION=; GPUS=$1; ENTRY=$2; shift 2 ;;
    srun) [ $# -ge 3 ] || usage; PARTITION=$1; GPUS=$2; ENTRY=$3; shift 3 ;;
    *) usage ;;
esac
case "$GPUS" in
    ''|*[!0-9]*|0*)
        echo "error: the number of processes (GPUS) must be a whole number from 1, got '$GPUS': check the order of" \
             "the arguments (tools/dist_train.sh GPUS CONFIG MODEL; tools/slurm_train.sh PARTITION GPUS CONFIG" \
             "MODEL; the det/seg dist_train.sh CONFIG GPUS)" >&2
        exit 2 ;;
esac
if [ ! -f "$ENTRY" ] && [ -f "$ROOT/$ENTRY" ]; then
    ENTRY="$ROOT/$ENTRY"
fi
if [ ! -f "$ENTRY" ]; then
    case "$ENTRY" in
        /*) echo "error: entry script $ENTRY not found" >&2 ;;
        *) echo "error: entry script $ENTRY not found, neither from the current directory $(pwd) nor from the" \
                "repository root $ROOT" >&2 ;;
    esac
    exit 2
fi
if [ -n "${LAUNCH_CONFIG:-}" ] && [ ! -f "$LAUNCH_CONFIG" ]; then
    case "$LAUNCH_CONFIG" in
        /*) echo "error: config file not found: $LAUNCH_CONFIG" >&2 ;;
        *) echo "error: config file not found: $LAUNCH_CONFIG (relative to the current directory $(pwd))" >&2 ;;
    esac
    exit 2
fi
unset LAUNCH_CONFIG
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python}"   # the interpreter: python on PATH, or the one PYTHON names (e.g. python3)
case "${MASTER_PORT:-1}" in
    *[!0-9]*|??????*) PORT_OK=false ;;
    *) PORT_OK=true; { [ "${MASTER_PORT:-1}" -ge 1 ] && [ "${MASTER_PORT:-1}" -le 65535 ]; } || PORT_OK=false ;;
esac
if [ "$PORT_OK" = false ]; then
    echo "error: MASTER_PORT (the det/seg scripts: PORT) must be a port number from 1 to 65535, got '$MASTER_PORT'" >&2
    exit 2
fi

if [ "$MODE" = torchrun ]; then
    case "${NNODES:-1}" in
        *[!0-9]*|0*)
            echo "error: NNODES (the number of nodes) must be a whole number from 1, got '$NNODES'" >&2
            exit 2 ;;
    esac
    if [ "${NNODES:-1}" != 1 ] && { [ -z "${MASTER_ADDR:-}" ] || [ -z "${NODE_RANK:-}" ]; }; then
        echo "$0: NNODES=$NNODES needs MASTER_ADDR (the address of the node with NODE_RANK=0) and NODE_RANK" \
             "(this node's, from 0) set on every node" >&2
        exit 2
    fi
    case "${NODE_RANK:-0}" in
        *[!0-9]*|0?*) RANK_OK=false ;;
        *) if [ "${NODE_RANK:-0}" -lt "${NNODES:-1}" ]; then RANK_OK=true; else RANK_OK=false; fi ;;
    esac
    if [ "$RANK_OK" = false ]; then
        echo "error: NODE_RANK (this node's, from 0) must be a whole number below NNODES (${NNODES:-1}: set it to the" \
             "number of nodes on every node), got '$NODE_RANK'" >&2
        exit 2
    fi
    # One node: its own master (not a MASTER_ADDR left in the environment), on a free port unless MASTER_PORT names
    # one (two jobs on a node no longer meet at 29500).
    if [ "${NNODES:-1}" = 1 ]; then MASTER_ADDR=127.0.0.1; fi
    if [ -z "${MASTER_PORT:-}" ]; then
        if [ "${NNODES:-1}" = 1 ]; then MASTER_PORT=auto; else MASTER_PORT=29500; fi
    fi
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        echo "error: $PYTHON not found on PATH: activate the environment that has torch, or name its interpreter in" \
             "PYTHON (e.g. PYTHON=python3)" >&2
        exit 127
    fi
    export PET_SIGNALS_TO_HANDLE="${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}"
    set -- "$PYTHON" "$ROOT/tools/torchrun.py" \
        --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --nproc_per_node="$GPUS" \
        --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="$MASTER_PORT" \
        "$ENTRY" "$@"
    show_command "$@"
    exec "$@"
fi
if ! command -v srun >/dev/null 2>&1; then
    echo "error: srun not found: the slurm_*.sh scripts submit to Slurm; on a machine without it use" \
         "tools/dist_train.sh / tools/dist_run.sh (torchrun)" >&2
    exit 127
fi
PER_NODE=$(( GPUS < 8 ? GPUS : 8 ))
WARN=  # tools/train.py only: det/seg's train.py saves on its own schedule, the warning would end it 2 min early
ENTRY_DIR="$(cd "$(dirname "$ENTRY")" 2>/dev/null && pwd -P || true)"
if [ "$ENTRY_DIR/$(basename "$ENTRY")" = "$(cd "$ROOT" && pwd -P)/tools/train.py" ]; then
    WARN=--signal=USR1@120
fi
# SRUN_ARGS: more srun flags, split on spaces (e.g. "--mpi=pmi2 --time=2-00:00:00")
set -- srun --job-name train --partition="$PARTITION" -n"$GPUS" --gres=gpu:"$PER_NODE" --ntasks-per-node="$PER_NODE" \
    --cpus-per-task="${CPUS_PER_TASK:-5}" $WARN ${SRUN_ARGS:-} "$PYTHON" -u "$ENTRY" "$@"
show_command "$@"
exec "$@"
