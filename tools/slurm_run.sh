#!/usr/bin/env sh
# Run any entry script of ours as GPUS Slurm tasks (at most 8 per node; the original's launcher):
#   tools/slurm_run.sh ENTRY PARTITION GPUS CONFIG MODEL [flags]
set -eu
TOOLS="$(cd -P "$(dirname "$(readlink -f "$0" 2>/dev/null || echo "$0")")" && pwd)"  # this folder, links followed
if [ $# -lt 5 ]; then
    echo "usage: $0 ENTRY PARTITION GPUS CONFIG MODEL [flags]" >&2
    exit 2
fi
ENTRY=$1 PARTITION=$2 GPUS=$3 CONFIG=$4 MODEL=$5
shift 5
LAUNCH_CONFIG=$CONFIG exec sh "$TOOLS/launch.sh" srun "$PARTITION" "$GPUS" "$ENTRY" -c "$CONFIG" --model "$MODEL" --slurm "$@"
