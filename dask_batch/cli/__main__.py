"""``python -m dask_batch.cli``: the ``dask batch`` command line."""

from dask_batch.cli import main

main()
