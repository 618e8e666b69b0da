"""Where jobs live: fsspec backends, the job store (records, results, logs,
artifacts), the job catalog that listings read, and upstream values. Runs
wherever a job is read or written; imports only :mod:`dask_batch.core`.

Internal to dask-batch: nothing here is public API; the public names are
the package's own (``dask_batch.__all__``).
"""

__all__: list[str] = []
