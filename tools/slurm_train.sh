#!/usr/bin/env sh
# Train with Slurm, one task per GPU, at most 8 GPUs per node (tools/slurm_run.sh with tools/train.py):
#   tools/slurm_train.sh PARTITION GPUS CONFIG MODEL [train.py flags]
# Ranks come from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID; the master is the first node of the job and
# MASTER_PORT its port (default: one from 20000-29999 picked by SLURM_JOB_ID, so jobs sharing a node do not meet).
set -eu
TOOLS="$(cd -P "$(dirname "$(readlink -f "$0" 2>/dev/null || echo "$0")")" && pwd)"  # this folder, links followed
if [ $# -lt 4 ]; then
    echo "usage: $0 PARTITION GPUS CONFIG MODEL [train.py flags]" >&2
    exit 2
fi
exec sh "$TOOLS/slurm_run.sh" "$TOOLS/train.py" "$@"
