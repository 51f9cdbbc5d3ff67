"""Run a dask-gmm sweep on an HPC allocation through dask-jobqueue (SLURM or PBS).

    pip install dask-gmm[io] dask-jobqueue
    python deploy/hpc/jobqueue_sweep.py /scratch/me/pixels.zarr --system slurm --jobs 8

Each batch job starts one dask worker process with the cores and memory below;
the scheduler runs here, on the login node (or in your own batch job). Set
--queue / --account for your site. The checkpoint folder lets a sweep cut off by
the wall time resume: run the same command again.
"""

import argparse

from dask.distributed import Client

from dask_gmm import GaussianMixtureSweep, open_array


def make_cluster(system, cores, memory, walltime, queue, account):
    if system == "slurm":
        from dask_jobqueue import SLURMCluster

        return SLURMCluster(cores=cores, processes=1, memory=memory, walltime=walltime,
                            queue=queue, account=account,
                            job_extra_directives=["--exclusive"])
    from dask_jobqueue import PBSCluster

    return PBSCluster(cores=cores, processes=1, memory=memory, walltime=walltime,
                      queue=queue, account=account,
                      resource_spec=f"select=1:ncpus={cores}:mem={memory}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="zarr store, HDF5 file or .npy file")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--system", choices=["slurm", "pbs"], default="slurm")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--cores", type=int, default=16)
    parser.add_argument("--memory", default="64GB")
    parser.add_argument("--walltime", default="02:00:00")
    parser.add_argument("--queue", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--checkpoint", default="sweep-checkpoint")
    args = parser.parse_args()

    with make_cluster(args.system, args.cores, args.memory, args.walltime, args.queue,
                      args.account) as cluster, Client(cluster) as client:
        cluster.scale(jobs=args.jobs)
        client.wait_for_workers(1)
        X = open_array(args.data, dataset=args.dataset)
        sweep = GaussianMixtureSweep(range(1, 17), ("full", "diag"), random_state=0,
                                     progress=True)
        sweep.fit(X, checkpoint=args.checkpoint)
        sweep.save("sweep.npz", overwrite=True)
        sweep.plot("bic.png")
        print(sweep.best_params_)


if __name__ == "__main__":
    main()
