"""The embedded local gateway: a real dask-gateway-server on 127.0.0.1.

``BatchClient()`` with no ``gateway.address`` configured starts it on first use
(in the background, detached, so that it outlives the notebook or script that
started it) and reuses it afterwards. Jobs are stored in ``<directory>/jobs``.

Examples
--------
>>> import dask_batch.local
>>> info = dask_batch.local.start()          # doctest: +SKIP
>>> info.address                             # doctest: +SKIP
'http://127.0.0.1:40123'
>>> dask_batch.local.status()                # doctest: +SKIP
LocalGateway(directory='/home/me/.local/share/dask-batch', ...)
>>> dask_batch.local.stop()                  # doctest: +SKIP
True
"""

from dask_batch.client.local_gateway import (
    LocalGateway,
    default_directory,
    start,
    status,
    stop,
)

__all__ = ["LocalGateway", "default_directory", "start", "status", "stop"]
