"""The hub service's two duties: act for users, and keep their jobs honest.

:class:`UserClients` gives one :class:`~dask_batch.JobService` per hub user,
acting on the gateway with a short-lived token the hub issues for that user
(see :mod:`dask_batch.client.hub`). :class:`JobKeeper` sweeps every user's
live jobs on a fixed period, with nobody looking: a job whose cluster died
is retried on a new cluster when its ``retries=`` allows, else recorded
LOST. Less often it makes a full listing of each user's jobs, which keeps the
job catalog true (jobs deleted from storage leave it, stores from before it
are migrated).

It also fires the schedules their owners handed to it (see
:class:`~dask_batch.workflows.schedules.Delegation`), and starts jobs that
waited for others with the env key the gateway reports for an upstream job's
cluster.

What the service can never do: unpickle results, or open the env values of
jobs. It holds no user's secret, so it cannot open the sealed env values nor
check a result's signature, and nothing here loads a result. The one
exception is a schedule its owner handed to it: to submit its runs it opens
that schedule's sealed env values and job key (the schedule's authority,
nothing more). A retry passes on the options the gateway kept for the failed
cluster; the new scheduler checks the job's spec against the user's
signature before main runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import dask.config
from dask.utils import parse_timedelta
from dask_gateway.auth import JupyterHubAuth

from dask_batch.client.connection import check_mode, open_store
from dask_batch.client.gateway import BatchGateway
from dask_batch.client.hub import GatewayTokens
from dask_batch.client.reconcile import live_records
from dask_batch.core.audit import audit, audit_job_changes
from dask_batch.job_service import JobService
from dask_batch.storage.store import JobStore
from dask_batch.workflows.schedules import Delegation, Schedules

logger = logging.getLogger("dask_batch.service")


class UserClients:
    """One JobService per user, acting with that user's minted gateway token.

    Parameters
    ----------
    tokens : GatewayTokens
    storage : str
        The shared job storage, which the service reads with its own
        credentials (``storage_options``).
    storage_options : dict, optional
    """

    def __init__(
        self,
        tokens: GatewayTokens,
        storage: str,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.tokens = tokens
        self.storage = storage
        self.storage_options = storage_options
        self._clients: dict[str, JobService] = {}
        #: The service's key for the schedules users hand to it.
        self.delegation = Delegation.from_config()

    async def client_for(self, user: str) -> JobService:
        """The client acting for ``user`` (the gateway confirms who it is)."""
        before = self.tokens.cached(user)
        token = await self.tokens.token_for(user)
        if token != before:
            # The token itself is never logged: only that one was issued.
            audit(user, "issue-gateway-token", user, "service", scope="gateway")
        client = self._clients.get(user)
        if client is not None:
            client.gateway.auth.api_token = token
            return client
        gateway = BatchGateway(auth=JupyterHubAuth(token), asynchronous=True)
        try:
            client = JobService(
                gateway,
                open_store(self.storage, self.storage_options, None),
                check_mode(None),
                user=user,
                retry_from_gateway=True,
                delegation=self.delegation,
            )
            await client.identify()
        except BaseException:
            await gateway.close()
            raise
        self._clients[user] = client
        return client

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.gateway.close()


class JobKeeper:
    """Sweep every user's live jobs every ``interval`` (``batch.service.interval``).

    Parameters
    ----------
    store : JobStore
    clients : UserClients
    interval : float or str, optional
    """

    def __init__(
        self,
        store: JobStore,
        clients: UserClients,
        interval: float | str | None = None,
        catalog_interval: float | str | None = None,
    ) -> None:
        self.store = store
        self.clients = clients
        if interval is None:
            interval = dask.config.get("batch.service.interval")
        self.interval = parse_timedelta(interval)
        if catalog_interval is None:
            catalog_interval = dask.config.get("batch.service.catalog-interval")
        self.catalog_interval = parse_timedelta(catalog_interval)
        self._catalog_checked: dict[str, float] = {}  # user -> time.monotonic()
        #: Sweeps done, and the time the last one ended (for health checks).
        self.sweeps = 0
        self.last_sweep: float | None = None
        self._failing: dict[str, str] = {}

    async def sweep(self) -> dict[str, list[Any]]:
        """Check every live job once; returns each user's checked records."""
        checked: dict[str, list[Any]] = {}
        for user in await asyncio.to_thread(self.store.user_names):
            acted_on: list[Any] = []  # live jobs handed to a check that may act
            try:
                live = await live_records(self.store, user)
                last = self._catalog_checked.get(user)
                due = last is None or time.monotonic() - last >= self.catalog_interval
                schedules = await asyncio.to_thread(
                    Schedules(self.store, None, user).ids
                )
                if not live and not due and not schedules:
                    continue  # no token minted, no gateway asked
                client = await self.clients.client_for(user)
                if schedules:
                    await client.fire_schedules(by="service")
                # The records just read: the reconciler reads each again
                # before it writes.
                acted_on = live
                checked[user] = list(await client.reconcile(live)) if live else []
                audit_job_changes(user, {r.id: r for r in live}, checked[user])
                if due:
                    # A full listing reads every job prefix: the catalog
                    # forgets jobs deleted from storage with nobody looking.
                    # It checks the live jobs with the gateway too, so a job
                    # whose cluster the gateway saw die since the reconcile
                    # above is judged LOST here: audited as the reconcile's
                    # acts are.
                    listed = await client.jobs()
                    audit_job_changes(user, {r.id: r for r in checked[user]}, listed)
                    self._catalog_checked[user] = time.monotonic()
            except Exception as exc:
                # One user's broken records or refused token must not stop
                # the others' jobs from being kept. Said once per new reason,
                # not at every sweep.
                level = (
                    logging.DEBUG
                    if self._failing.get(user) == str(exc)
                    else logging.WARNING
                )
                logger.log(level, "Could not check the jobs of user %r: %s", user, exc)
                self._failing[user] = str(exc)
                if user not in checked and acted_on:
                    await self._audit_unfinished_check(user, acted_on)
                continue
            self._failing.pop(user, None)
        self.sweeps += 1
        self.last_sweep = time.time()
        return checked

    async def _audit_unfinished_check(self, user: str, live: list[Any]) -> None:
        """Audit what a check that failed part way did before it failed.

        A retry's new cluster may have been asked for, or a job judged LOST,
        before a later call timed out. The next sweep starts from the
        changed records and would see nothing to audit, so the acts are read
        back from storage now.
        """
        try:
            now = await asyncio.to_thread(
                self.store.read_records, user, [r.id for r in live]
            )
        except Exception as exc:
            logger.warning(
                "Could not read back the jobs of user %r to audit a failed check: %s",
                user,
                exc,
            )
            return
        after = [r for r in now.values() if not isinstance(r, Exception)]
        audit_job_changes(user, {r.id: r for r in live}, after)

    async def run(self) -> None:
        """Sweep until cancelled, one sweep per interval."""
        while True:
            started = time.monotonic()
            try:
                await self.sweep()
            except Exception:
                logger.exception("Job keeper sweep failed; the next one follows")
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self.interval - elapsed))
