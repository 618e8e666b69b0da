"""Which gateway, storage and user a BatchClient works with.

Arguments win over ``batch.*`` and ``gateway.*`` configuration; with neither a
gateway address nor a storage configured, the embedded local gateway and its
``jobs/`` directory are used.
"""

from __future__ import annotations

import getpass
import os
from typing import Any

import dask.config
from dask_gateway import Gateway

from . import local as _local
from ._exceptions import StorageError
from ._gateway import BatchGateway
from ._store import JobStore

MODES = ("auto", "server", "client")


def open_gateway(
    gateway: Gateway | None, asynchronous: bool
) -> tuple[Gateway, _local.LocalGateway | None]:
    """``gateway``, else one from ``gateway.*`` config, else the local gateway.

    Returns the gateway and, when the local default was used, its details.
    """
    if gateway is not None:
        return gateway, None
    if dask.config.get("gateway.address", None):
        return BatchGateway(asynchronous=asynchronous), None
    local_info = _local.start()
    return local_info.gateway(asynchronous=asynchronous), local_info


def open_store(
    storage: str | None,
    storage_options: dict[str, Any] | None,
    local_info: _local.LocalGateway | None,
) -> JobStore:
    """The job store from the arguments, ``batch.storage*``, or the local default."""
    if storage is None:
        storage = dask.config.get("batch.storage", None)
    if storage is None:
        if local_info is None:
            raise StorageError(
                "No job storage configured: pass storage='s3://bucket/jobs' "
                "or set `batch.storage` (env DASK_BATCH__STORAGE)."
            )
        storage = local_info.storage
    if storage_options is None:
        storage_options = dask.config.get("batch.storage-options", None) or {}
    return JobStore(storage, storage_options)


def check_mode(mode: str | None) -> str:
    """``mode``, else ``batch.mode``; one of "auto", "server", "client"."""
    mode = mode or dask.config.get("batch.mode")
    if mode not in MODES:
        raise ValueError(f"mode must be 'auto', 'server' or 'client', got {mode!r}")
    return str(mode)


def gateway_user(gateway: Gateway) -> str:
    """The gateway user that job records are filed under."""
    configured = dask.config.get("batch.user", None)
    if configured:
        return str(configured)
    auth = gateway.auth
    username = getattr(auth, "username", None)
    if username:
        return str(username)
    if type(auth).__name__ == "JupyterHubAuth" and os.environ.get("JUPYTERHUB_USER"):
        return os.environ["JUPYTERHUB_USER"]
    return getpass.getuser()
