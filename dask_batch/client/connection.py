"""Which gateway, storage and user a BatchClient works with.

Arguments win over ``batch.*`` and ``gateway.*`` configuration; with neither a
gateway address nor a storage configured, the embedded local gateway and its
``jobs/`` directory are used.
"""

from __future__ import annotations

import asyncio
import getpass
import os
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import dask.config
from dask_gateway import Gateway
from dask_gateway.auth import JupyterHubAuth
from dask_gateway.client import GatewayServerError
from dask_gateway.options import Options

from dask_batch.client import local_gateway as _local
from dask_batch.client.gateway import BatchGateway
from dask_batch.client.hub import HubAPI
from dask_batch.core.cluster_env import USER_OPTION
from dask_batch.core.exceptions import AuthenticationError, StorageError
from dask_batch.storage.store import JobStore

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


async def gateway_user(
    gateway: Gateway,
    server_options: Callable[[], Awaitable[Options]],
    requested: str | None = None,
) -> str:
    """The user whose job records this client files and reads.

    Authentication decides where it can: the gateway's ``batch_user`` option
    (a gateway set up with ``batch_cluster_options`` names the user it
    authenticated, whatever the auth type), else, with JupyterHub auth, the
    hub that the token belongs to. ``requested`` (``user=``, ``batch.user``)
    must then agree; it names the user only where nobody authenticates one
    (a plain gateway with basic or Kerberos auth), as the auth's user name
    or the local login name would.
    """
    requested = requested or dask.config.get("batch.user", None)
    try:
        options: Options | None = await server_options()
    except aiohttp.ClientResponseError as exc:
        if exc.status not in (401, 403):
            raise
        raise AuthenticationError(
            f"The gateway at {gateway.address} refused the credentials (HTTP "
            f"{exc.status}). With JupyterHub auth the token needs the scope "
            "access:services!service=<the gateway's service name>: ask the hub "
            "admin, or make a new token with it on the hub's token page."
        ) from None
    except GatewayServerError as exc:
        if "token" not in str(exc):
            raise
        # JupyterHubAuthenticator: the hub refused to say whose token it is.
        raise AuthenticationError(
            f"The gateway at {gateway.address} could not verify the credentials "
            f"({exc}): the token may lack the scopes to identify its user; use a "
            "token with the user's own scopes (the hub's token page)."
        ) from None
    except (OSError, asyncio.TimeoutError):
        # Unreachable: stored records can still be read, under the name the
        # hub or the configuration gives; requests that need the gateway
        # fail on their own.
        options = None
    authenticated = await _authenticated_name(gateway, options)
    if authenticated is not None:
        if requested and requested != authenticated:
            raise AuthenticationError(
                f"batch.user (or user=) names {requested!r}, but the gateway "
                f"authenticates this client as {authenticated!r}: records are "
                "filed under the authenticated user. Unset batch.user."
            )
        return authenticated
    if requested:
        return str(requested)
    username = getattr(gateway.auth, "username", None)
    return str(username) if username else getpass.getuser()


async def _authenticated_name(
    gateway: Gateway, server_options: Options | None
) -> str | None:
    if server_options is not None and USER_OPTION in server_options:
        return str(server_options[USER_OPTION])
    if isinstance(gateway.auth, JupyterHubAuth):
        token = gateway.auth.api_token
        url, guessed = _hub_api_url(gateway)
        try:
            return await HubAPI(url, token).user_name(token)
        except AuthenticationError as exc:
            if not guessed:
                raise
            raise AuthenticationError(
                f"{exc} That address of the hub's API was guessed from the "
                "gateway's: set JUPYTERHUB_API_URL (or batch.hub-api-url) to it."
            ) from None
    return None


def _hub_api_url(gateway: Gateway) -> tuple[str, bool]:
    """The hub's API URL, and whether it was guessed from the gateway's."""
    configured = dask.config.get("batch.hub-api-url", None) or os.environ.get(
        "JUPYTERHUB_API_URL"
    )
    if configured:
        return str(configured).rstrip("/"), False
    # A gateway reached through the hub's proxy lives under /services/.
    hub, found, _ = gateway.address.partition("/services/")
    if found:
        return f"{hub}/hub/api", True
    raise AuthenticationError(
        "The gateway uses JupyterHub auth, and dask-batch cannot tell which hub "
        "user the token belongs to: set JUPYTERHUB_API_URL (or batch.hub-api-url) "
        "to the hub's API, such as https://hub.example.org/hub/api, or reach the "
        "gateway through the hub (https://hub.example.org/services/dask-gateway)."
    )
