"""Keys handed to the hub service, so that it acts with nobody here.

Where ``batch.service.url`` names a hub service, a client hands it a
schedule's keys (:func:`~dask_batch.workflows.schedules.handover`) and a
waiting job's env key, over the service's API with the user's hub token.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import dask.config

from dask_batch.core.exceptions import DaskBatchError
from dask_batch.workflows.schedules import delegate_to_service

logger = logging.getLogger("dask_batch")


async def hand_to_service(
    gateway: Any, what: str, item_id: str, handover: dict[str, str]
) -> None:
    """Hand a schedule's or a waiting job's keys to the hub service, where
    ``batch.service.url`` names one, with the user's hub token."""
    service = dask.config.get("batch.service.url", None)
    if not service:
        return
    token = getattr(gateway.auth, "api_token", None) or os.environ.get(
        "JUPYTERHUB_API_TOKEN", ""
    )
    args = (str(service), str(token), item_id, handover, what)
    await asyncio.to_thread(delegate_to_service, *args)


async def hand_waiting_job(gateway: Any, job_id: str) -> None:
    """So that the service starts the job with nobody here, whether or not
    the gateway still remembers the upstream jobs' clusters. A service that
    cannot be reached is logged: the job still starts when someone waits."""
    if not dask.config.get("batch.service.url", None):
        return  # no secret read for nothing
    from dask_batch.core import signing as _signing

    secret = await asyncio.to_thread(_signing.user_secret, job_id=job_id)
    env_key = _signing.job_keys(secret, job_id).env_key
    try:
        await hand_to_service(gateway, "jobs", job_id, {"env_key": env_key})
    except DaskBatchError as exc:
        logger.warning("%s", exc)
