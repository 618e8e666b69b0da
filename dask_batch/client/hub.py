"""Acting for JupyterHub users: the hub's API as a dask-batch service uses it.

A hub service (the jobs page, the job keeper) reads every user's records with
the storage credentials the deployment gives it, and acts on the gateway for a
user with a short-lived token that it asks the hub to issue for that user,
scoped to the gateway alone (``access:services!service=<gateway>``). The
service's own role needs the ``tokens`` scope for those users: the hub admin
decides, per user or group, whom the service may act for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import dask.config

from dask_batch.core.exceptions import AuthenticationError
from dask_batch.core.names import check_user

#: Seconds a minted token lives; it is replaced this long before it expires.
TOKEN_LIFETIME = 3600
TOKEN_MARGIN = 300


@dataclasses.dataclass
class HubAPI:
    """JupyterHub's REST API, with the token of the service calling it.

    Parameters
    ----------
    url : str
        ``JUPYTERHUB_API_URL``, such as ``http://hub:8081/hub/api``.
    token : str
        The service's API token (``JUPYTERHUB_API_TOKEN``).
    """

    url: str
    token: str = dataclasses.field(repr=False)

    @classmethod
    def from_environment(cls) -> HubAPI:
        """The hub that started this service (or that its admin configured)."""
        url = os.environ.get("JUPYTERHUB_API_URL") or dask.config.get(
            "batch.hub-api-url", None
        )
        token = os.environ.get("JUPYTERHUB_API_TOKEN")
        if not url or not token:
            raise AuthenticationError(
                "Not running as a JupyterHub service: JUPYTERHUB_API_URL and "
                "JUPYTERHUB_API_TOKEN must be set (the hub sets them for a "
                "managed service; give them to an external one)."
            )
        return cls(url.rstrip("/"), token)

    async def request(
        self, method: str, path: str, json: Any = None, token: str | None = None
    ) -> Any:
        """One API call; a refusal is an AuthenticationError naming the call."""
        headers = {"Authorization": f"token {token or self.token}"}
        url = f"{self.url}{path}"
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.request(
                    method,
                    url,
                    json=json,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=30),
                ) as response,
            ):
                if response.status in (401, 403):
                    text = (await response.text())[:300]
                    raise AuthenticationError(
                        f"JupyterHub refused {method} {path} (HTTP "
                        f"{response.status}): {text}. Check the token and the "
                        "scopes of its role."
                    )
                response.raise_for_status()
                return await response.json()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise AuthenticationError(
                f"Could not reach JupyterHub at {self.url} ({method} {path}): {exc}."
            ) from exc

    async def user_name(self, token: str) -> str:
        """Who ``token`` belongs to, named as dask-gateway's
        ``JupyterHubAuthenticator`` names it (``kind:name`` for services)."""
        model = await self.request("GET", "/user", token=token)
        name, kind = str(model.get("name", "")), str(model.get("kind", "user"))
        return name if kind == "user" and ":" not in name else f"{kind}:{name}"

    async def mint_token(self, user: str, scopes: list[str], lifetime: int) -> str:
        """A new token of ``user``'s, limited to ``scopes``, for ``lifetime`` s."""
        body = {
            "scopes": scopes,
            "expires_in": lifetime,
            "note": "dask-batch service: acting for the user on the gateway",
        }
        path = f"/users/{quote(check_user(user), safe='')}/tokens"
        return str((await self.request("POST", path, json=body))["token"])


class GatewayTokens:
    """Short-lived gateway tokens of each user, minted on demand and reused.

    Parameters
    ----------
    hub : HubAPI
    gateway_service : str
        The gateway's name as a hub service (``access:services!service=...``).
    """

    def __init__(self, hub: HubAPI, gateway_service: str) -> None:
        self.hub = hub
        self.scopes = [f"access:services!service={gateway_service}"]
        self._tokens: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def cached(self, user: str) -> str:
        """The token ``token_for`` last issued for ``user`` ("" if none)."""
        return self._tokens.get(user, ("", 0.0))[0]

    async def token_for(self, user: str) -> str:
        """A token for ``user`` valid for at least another TOKEN_MARGIN seconds."""
        lock = self._locks.setdefault(user, asyncio.Lock())
        async with lock:
            token, expires = self._tokens.get(user, ("", 0.0))
            if time.monotonic() < expires - TOKEN_MARGIN:
                return token
            token = await self.hub.mint_token(user, self.scopes, TOKEN_LIFETIME)
            self._tokens[user] = (token, time.monotonic() + TOKEN_LIFETIME)
            return token
