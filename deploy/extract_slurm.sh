#!/usr/bin/env bash
# Distributed gallery feature extraction on SLURM: one torchrun per node, one process per GPU.
#
#   sbatch --nodes 4 deploy/extract_slurm.sh --dataset folder-retrieval --root /data/gallery \
#       --extractor gem_lite2 --sides gallery --out /shared/features/gem_lite2/test
#
# The arguments are those of `asymfuse extract` (the script adds --device cuda, --precision and
# --dist-timeout). Every node must see --root and --out at the same paths (a shared file system):
# each rank writes its own shards under OUT/<side>/.parts/ and rank 0 merges them into the store.
#
# A node or rank that dies makes the others fail at the next barrier within DIST_TIMEOUT seconds;
# torchrun then restarts the job (MAX_RESTARTS times), which resumes: shards that are complete and
# checksummed are skipped. A job started again later (sbatch again, or --requeue after preemption)
# resumes the same way, with any number of nodes.
#
# Settings (environment): GPUS_PER_NODE (default: SLURM's count, else 8), MAX_RESTARTS (3),
# DIST_TIMEOUT (1800 s), PRECISION (bf16), RDZV_PORT (29500), ASYMFUSE (the asymfuse script),
# DRY_RUN=1 prints the srun command instead of running it.
#
#SBATCH --job-name=asymfuse-extract
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
#SBATCH --requeue

set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: sbatch $0 --root DATASET --extractor NAME --out FOLDER [asymfuse extract options]" >&2
    exit 2
fi

: "${SLURM_JOB_NODELIST:?run this script with sbatch (or set the SLURM_* variables)}"
gpus_per_node="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}"
max_restarts="${MAX_RESTARTS:-3}"
dist_timeout="${DIST_TIMEOUT:-1800}"
precision="${PRECISION:-bf16}"
rdzv_port="${RDZV_PORT:-29500}"
asymfuse="${ASYMFUSE:-$(command -v asymfuse)}"
nnodes="${SLURM_JOB_NUM_NODES:-1}"
head_node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"

cmd=(srun --kill-on-bad-exit=1 --ntasks-per-node=1
     torchrun --nnodes "$nnodes" --nproc_per_node "$gpus_per_node"
     --rdzv_backend c10d --rdzv_endpoint "$head_node:$rdzv_port" --rdzv_id "${SLURM_JOB_ID:-asymfuse}"
     --max-restarts "$max_restarts"
     "$asymfuse" extract --device cuda --precision "$precision" --dist-timeout "$dist_timeout" "$@")

if [ "${DRY_RUN:-0}" = "1" ]; then
    printf '%q ' "${cmd[@]}"
    echo
    exit 0
fi
exec "${cmd[@]}"
