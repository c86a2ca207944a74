#!/usr/bin/env bash
# Train with Slurm: one task per GPU, at most 8 GPUs per node:
#   tools/slurm_train.sh PARTITION GPUS CONFIG MODEL [train.py flags]
# Ranks come from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID; the master is the first node of the job and
# MASTER_PORT (default 29500) its port.
set -eu
if [ $# -lt 4 ]; then
    echo "usage: $0 PARTITION GPUS CONFIG MODEL [train.py flags]" >&2
    exit 2
fi
PARTITION=$1
GPUS=$2
CONFIG=$3
MODEL=$4
shift 4
PER_NODE=$(( GPUS < 8 ? GPUS : 8 ))
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

set -x
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" MASTER_PORT=${MASTER_PORT:-29500} \
    srun --job-name train --partition="$PARTITION" -n"$GPUS" --gres=gpu:"$PER_NODE" \
        --ntasks-per-node="$PER_NODE" \
        python -u "$ROOT/tools/train.py" -c "$CONFIG" --model "$MODEL" --slurm "$@"
