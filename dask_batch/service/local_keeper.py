"""The embedded local gateway's background duty: keep its jobs with nobody looking.

The local gateway's own process (:mod:`dask_batch.service.local_server`) runs a
:class:`LocalKeeper` over its default job storage: what the JupyterHub
service does for a hub's users, for the one user of a laptop. Each sweep
starts the jobs whose upstream jobs SUCCEEDED (or cancels them), retries or
records LOST the jobs whose cluster died, and submits the runs of due
schedules. It runs as the user who started the gateway, with that user's
secret, so it acts as any of their clients would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from dask_batch.client.connection import check_mode, open_store
from dask_batch.job_service import JobService


class LocalKeeper:
    """Sweep one storage's jobs and schedules every ``interval`` seconds.

    Parameters
    ----------
    make_gateway : callable
        Returns an asynchronous ``dask_gateway.Gateway`` for the local gateway.
    storage : str
        The job storage to keep (the local gateway's ``jobs/``).
    interval : float
    log : logging.Logger
    """

    def __init__(
        self,
        make_gateway: Callable[[], Any],
        storage: str,
        interval: float,
        log: logging.Logger,
    ) -> None:
        self.make_gateway = make_gateway
        self.storage = storage
        self.interval = interval
        self.log = log
        self.sweeps = 0

    async def sweep(self, client: JobService) -> None:
        """One pass over the jobs and schedules."""
        for record in await client.reconcile():
            if record.state.is_terminal:
                self.log.info(
                    "dask-batch: job %s is %s: %s",
                    record.id,
                    record.state.value,
                    record.message,
                )
        await client.fire_schedules()
        self.sweeps += 1

    async def run(self) -> None:
        """Sweep until cancelled; a failing sweep is logged and the next follows."""
        gateway = self.make_gateway()
        client = JobService(
            gateway, open_store(self.storage, {}, None), check_mode(None)
        )
        try:
            while True:
                try:
                    await client.identify()
                    await self.sweep(client)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.log.exception("dask-batch: the job keeper's sweep failed")
                await asyncio.sleep(self.interval)
        finally:
            await client.gateway.close()
