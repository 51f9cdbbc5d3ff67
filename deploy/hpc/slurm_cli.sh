#!/bin/bash
# The same with the command line inside one SLURM allocation: one scheduler and
# one worker per node, then the sweep. Submit with: sbatch deploy/hpc/slurm_cli.sh
#SBATCH --job-name=dask-gmm
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --mem=64G
#SBATCH --time=02:00:00
set -euo pipefail
SCHED_FILE="$PWD/scheduler-$SLURM_JOB_ID.json"
dask scheduler --scheduler-file "$SCHED_FILE" --no-dashboard &
srun dask worker --scheduler-file "$SCHED_FILE" --nthreads "$SLURM_CPUS_PER_TASK" \
    --memory-limit 60GiB --no-dashboard &
sleep 20
ADDRESS=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['address'])" "$SCHED_FILE")
dask-gmm sweep "/scratch/$USER/pixels.zarr" -k 1:16 --covariance-type full,diag \
    --scheduler "$ADDRESS" --results bic.csv --plot bic.png --out sweep.npz \
    --checkpoint sweep-checkpoint --no-progress
