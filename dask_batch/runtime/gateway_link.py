"""The job's scheduler and its gateway: scaling, the idle culler, the last stop.

Everything here goes through the gateway service that dask-gateway's
scheduler preload installs (``scheduler.services["gateway"]``); a scheduler
without it (a cluster not started by a gateway) scales nothing and closes
itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

logger = logging.getLogger("distributed.scheduler.dask_batch")


class GatewayLink:
    """What the job runner asks of the gateway, for one job's cluster."""

    def __init__(self, scheduler: Any, job_id: str) -> None:
        self.scheduler = scheduler
        self.job_id = job_id

    @property
    def service(self) -> Any:
        return self.scheduler.services.get("gateway")

    async def scale(self, spec: dict[str, Any]) -> None:
        """Ask for the workers (or the adaptive range) the job's spec names."""
        service = self.service
        if service is None:
            return
        if spec.get("adapt"):
            minimum, maximum = spec["adapt"]
            await service.adapt(minimum=minimum, maximum=maximum, active=True)
        elif spec.get("workers"):
            await service.scale(int(spec["workers"]))

    def pause_idle_culler(self) -> None:
        """Keep the gateway's idle culler from stopping the cluster under main.

        The culler sees no worker task while main computes on its own or
        waits; dask-batch stops the cluster itself when main ends.
        """
        service = self.service
        task = getattr(service, "check_idle_task", None)
        if task is not None:
            task.cancel()
            service.check_idle_task = None
            logger.info("dask-batch: idle culler paused while job %s runs", self.job_id)

    def resume_idle_culler(self) -> None:
        service = self.service
        if service is not None and getattr(service, "idle_timeout", 0) > 0:
            service.check_idle_task = asyncio.ensure_future(service.check_idle())

    async def stop_cluster(self) -> None:
        """Ask the gateway to stop this cluster, so that it records STOPPED.

        Five tries; if none is heard, the idle culler is back on as a safety
        net.
        """
        service = self.service
        if service is None:
            await self.scheduler.close(reason="dask-batch job finished")
            return
        for attempt in range(5):
            try:
                # DELETE with the cluster's token: the gateway records STOPPED.
                await service.gateway.shutdown()
                return
            except Exception:
                logger.warning(
                    "dask-batch: shutdown request %d for %s failed",
                    attempt + 1,
                    self.job_id,
                    exc_info=True,
                )
                await asyncio.sleep(0.5 * 2**attempt)
        logger.error(
            "dask-batch: could not stop the cluster of job %s; "
            "the gateway's idle culler is back on as a safety net",
            self.job_id,
        )
        self.resume_idle_culler()
