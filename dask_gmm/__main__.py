"""``python -m dask_gmm``: the same as the ``dask-gmm`` command."""

from .cli import main

if __name__ == "__main__":
    main()
