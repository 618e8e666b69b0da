"""What a job is, with no I/O: ids, names, records, task specs, options,
exceptions, signing keys and pickling. Imported everywhere, it imports nothing
else of dask-batch.

Internal to dask-batch: nothing here is public API; the public names are
the package's own (``dask_batch.__all__``).
"""

__all__: list[str] = []
