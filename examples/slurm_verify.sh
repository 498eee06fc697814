#!/usr/bin/env bash
# examples/slurm_verify.sh — epk's exact path kernel of one trace on a Slurm allocation.
#
#   sbatch examples/slurm_verify.sh TRACE OUTDIR
#
# One rank per node with all its cores as threads (the test side of a rank's units is threaded
# over its test points); the results are the same bits whatever --nodes and --cpus-per-task are
# (README "Many machines (MPI)").  Rank 0 writes OUTDIR once, at the end; a failed or killed rank
# ends the job with a non-zero exit and nothing written.  Build first on the cluster (same binary
# on every node): cmake -S . -B build-mpi -DEPK_MPI=ON && cmake --build build-mpi --target epk
#SBATCH --job-name=epk-kernel
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=32
#SBATCH --time=04:00:00
#SBATCH --output=epk-%j.log
set -euo pipefail
trace=${1:?usage: sbatch examples/slurm_verify.sh TRACE OUTDIR}
out=${2:?usage: sbatch examples/slurm_verify.sh TRACE OUTDIR}
epk=${EPK:-build-mpi/epk}
threads=${SLURM_CPUS_PER_TASK:-1}
# epk's own memory guard is per rank (EPK_MEMORY_LIMIT_GIB, default 1 GiB): raise it to the node's share.
export EPK_MEMORY_LIMIT_GIB=${EPK_MEMORY_LIMIT_GIB:-64}
# The audit and the residual check first (exit 1 if the trace does not describe its training) ...
srun --mpi=pmix "$epk" verify "$trace" --threads "$threads" --json > "$out.verify.json"
# ... then the kernel: bias, contributions [M, N, C], coefficients, remainder, audit.json.
srun --mpi=pmix "$epk" kernel "$trace" --out "$out" --threads "$threads"
# Without srun's PMIx support: mpirun -n "$SLURM_NTASKS" --map-by ppr:1:node:PE=$threads "$epk" ...
