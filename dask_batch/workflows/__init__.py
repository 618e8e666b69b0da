"""Work made of several runs: pipelines and arrays (declared on the client,
run by the runtime's task graph) and cron schedules, fired by any firer.

Internal to dask-batch: nothing here is public API; the public names are
the package's own (``dask_batch.__all__``).
"""

__all__: list[str] = []
