"""The user's side of one job: gateway and hub connections, submission checks,
the cluster launcher, listings, outputs (result, logs, artifacts), reconcile,
MLflow tracking and display.

Internal to dask-batch: nothing here is public API; the public names are
the package's own (``dask_batch.__all__``).
"""

__all__: list[str] = []
