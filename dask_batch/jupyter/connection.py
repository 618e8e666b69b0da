"""The Jupyter server's one asynchronous connection to dask-batch.

Opened on first use, on the server's event loop, from the same dask config
as the command line (``gateway.*``, ``batch.*``, ``DASK_BATCH__*``); where the
Jupyter server's own config names a storage or gateway, that wins.
"""

from __future__ import annotations

import asyncio
from typing import Any

import dask.config

from dask_batch.batch_client import BatchClient
from dask_batch.job_service import JobService


class Connection:
    """A :class:`~dask_batch.JobService` opened once, its user identified.

    Parameters
    ----------
    storage : str, optional
        The job storage; default ``batch.storage``.
    storage_options : dict, optional
        fsspec options; default ``batch.storage-options``.
    gateway_address : str, optional
        The gateway; default ``gateway.address``, else the embedded local
        gateway.
    """

    def __init__(
        self,
        storage: str | None = None,
        storage_options: dict[str, Any] | None = None,
        gateway_address: str | None = None,
    ) -> None:
        self.storage = storage or None
        self.storage_options = storage_options or None
        self.gateway_address = gateway_address or None
        self._client: BatchClient | None = None
        self._lock = asyncio.Lock()

    async def service(self) -> JobService:
        """The job service, opened and identified on first call."""
        async with self._lock:
            if self._client is None:
                self._client = await self._open()
        return self._client.service

    async def gateway(self) -> Any:
        """The asynchronous gateway client."""
        await self.service()
        assert self._client is not None
        return self._client.gateway

    async def _open(self) -> BatchClient:
        overrides = {}
        if self.gateway_address:
            overrides["gateway.address"] = self.gateway_address
        with dask.config.set(overrides):
            if dask.config.get("gateway.address", None):
                batch = BatchClient(
                    storage=self.storage,
                    storage_options=self.storage_options,
                    asynchronous=True,
                )
            else:
                # Starting the local gateway blocks: not on the server's loop.
                import dask_batch.local

                info = await asyncio.to_thread(dask_batch.local.start)
                batch = BatchClient(
                    gateway=info.gateway(asynchronous=True),
                    storage=self.storage
                    or dask.config.get("batch.storage", None)
                    or info.storage,
                    storage_options=self.storage_options,
                )
        await batch.service.identify()
        return batch

    async def close(self) -> None:
        if self._client is not None:
            await self._client.gateway.close()
            self._client = None
