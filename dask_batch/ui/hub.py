"""The jobs page as a JupyterHub service: HubOAuth login, one user's jobs each.

``python -m dask_batch.ui --hub`` serves the page under the service's prefix
(``/services/dask-batch/``), logs users in through the hub (OAuth), and runs
the job keeper beside it. A user sees, reads and cancels only their own jobs:
another user's job id is answered 404, as an unknown one is. A user whose
token for the page carries the admin scope (``batch.service.admin-scope``)
also sees every other user's jobs, read-only.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any
from urllib.parse import urlparse

import dask.config
import tornado.web
from jupyterhub.services.auth import (
    HubOAuth,
    HubOAuthCallbackHandler,
    HubOAuthenticated,
    UserNotAllowed,
)

from dask_batch.core.exceptions import AuthenticationError, JobNotFoundError
from dask_batch.service.hub import UserClients
from dask_batch.storage.store import SPEC
from dask_batch.ui.app import application

logger = logging.getLogger("dask_batch.service")

API_REFUSAL = (
    "log in to JupyterHub first, or send a hub token with access to this "
    "service (Authorization: token ...)"
)


class HubAccess(HubOAuthenticated):
    """Hub login for every handler of the app (placed before ``Handler``)."""

    settings: dict[str, Any]
    request: Any

    @property
    def user_label(self) -> str:
        return self.requester

    @property
    def requester(self) -> str:
        return str(self.current_user["name"])

    @property
    def is_admin(self) -> bool:
        scope = self.settings["admin_scope"]
        return bool(scope) and scope in self.current_user.get("scopes", ())

    async def prepare(self) -> None:
        model = await self.hub_auth.get_user(self, sync=False)
        if model is not None:
            model = self.check_hub_user(model)  # None without this service's scope
        self._hub_auth_user_cache = model
        if model is not None:
            return
        if self.request.path.startswith(self.base + "api/"):
            raise tornado.web.HTTPError(403, API_REFUSAL)
        self.redirect(self.get_login_url())

    def check_xsrf_cookie(self) -> None:
        # tornado checks XSRF before prepare() authenticates. A request with a
        # token in its Authorization header is not at risk (another site's
        # page cannot set that header), and a bad token fails in prepare().
        scheme = self.request.headers.get("Authorization", "").partition(" ")[0]
        if scheme.lower() not in ("token", "bearer"):
            self.hub_auth.check_xsrf_cookie(self)

    def check_hub_user(self, model: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return super().check_hub_user(model)
        except UserNotAllowed:  # the token lacks access to this service
            return None

    async def client(self, job_id: str | None = None) -> Any:
        clients: UserClients = self.settings["clients"]
        own = await clients.client_for(self.requester)
        if job_id is None or not self.is_admin:
            return own
        # An admin reading another user's job: its owner is the user whose
        # folder holds it.
        store = own.store
        if await asyncio.to_thread(store.exists, self.requester, job_id, SPEC):
            return own
        for user in await asyncio.to_thread(store.user_names):
            if await asyncio.to_thread(store.exists, user, job_id, SPEC):
                if self.request.method != "GET":
                    raise tornado.web.HTTPError(
                        403, f"job {job_id} is {user}'s: only its owner may change it"
                    )
                return await clients.client_for(user)
        raise JobNotFoundError(job_id, "any user's folder")

    async def listing_clients(self) -> list[Any]:
        clients: UserClients = self.settings["clients"]
        if not self.is_admin:
            return [await self.client()]
        store = (await self.client()).store
        listed = []
        for user in await asyncio.to_thread(store.user_names):
            try:
                listed.append(await clients.client_for(user))
            except AuthenticationError as exc:
                # A folder of someone the service may not act for: say so in
                # the log rather than failing everyone's listing.
                logger.warning("Not listing the jobs of %r: %s", user, exc)
        return listed


def make_hub_app(clients: UserClients) -> tornado.web.Application:
    """The jobs page under the hub service's prefix, with hub login.

    The hub's settings come from the environment a hub gives its services
    (``JUPYTERHUB_SERVICE_PREFIX``, ``JUPYTERHUB_OAUTH_CALLBACK_URL``, ...).
    """
    hub_auth = HubOAuth.instance()
    base = hub_auth.base_url
    callback = urlparse(hub_auth.oauth_redirect_uri).path
    return application(
        base,
        access=HubAccess,
        clients=clients,
        admin_scope=dask.config.get("batch.service.admin-scope"),
        cookie_secret=os.urandom(32),
        extra_handlers=[(callback, HubOAuthCallbackHandler)],
    )
