"""What runs in the job's cluster: the scheduler plugin (the job runner) and
main's process beside the scheduler (child, zygote, pre-warmed process, task
graph, ``current_job()``). Imported by schedulers: never imports the client,
workflows, service, page or CLI.

Internal to dask-batch: nothing here is public API; the public names are
the package's own (``dask_batch.__all__``).
"""

__all__: list[str] = []
