"""What runs for users with nobody looking: the JupyterHub service, the
embedded local gateway's process and its keeper, and the gateway-side
cluster options that admins' configurations load.

Internal to dask-batch: nothing here is public API; the public names are
the package's own (``dask_batch.__all__``).
"""

__all__: list[str] = []
