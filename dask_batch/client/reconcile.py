"""Keep job records honest: LOST detection, retries on a new cluster, cancel.

Reads are reads: :meth:`Reconciler.check` with ``retry=False`` (what
``status``, ``jobs``, ``logs`` and the displays use) never asks the gateway for
a cluster. It only corrects a record that can no longer change on its own,
writing LOST when the cluster is gone and no retry is left. A job whose
cluster died with a retry left is shown as awaiting that retry; the retry
itself starts only when someone asked to see the job finish (``wait``,
``result``) or to reconcile (``BatchClient.reconcile``, ``dask batch
reconcile``), which call ``check`` with ``retry=True``. The same holds for a
job that waits for other jobs (``after=``, see
:mod:`~dask_batch.client.waiting`): a read says it is ready; a waiter, a
reconcile or a service starts it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import time
from typing import Any

import dask.config
from dask.utils import parse_timedelta
from dask_gateway.client import ClusterReport

from dask_batch.client import tracking as _tracking
from dask_batch.client.display import JobList, ProgressDisplay
from dask_batch.client.launcher import ALIVE, ClusterLauncher
from dask_batch.client.waiting import WaitingJobs, is_waiting, signed_spec
from dask_batch.core.exceptions import MissingSecretError
from dask_batch.core.names import safe_link
from dask_batch.core.records import JobRecord, JobState, to_iso, utcnow
from dask_batch.storage.backends import LocalBackend
from dask_batch.storage.store import JobStore, dumps_json

logger = logging.getLogger("dask_batch")

Reports = dict[str, ClusterReport | None]


def local_write_denied(folder: str, user: str) -> str | None:
    """Why Unix user ``user`` cannot write ``folder`` (None if it can, or if
    that cannot be told from the mode bits)."""
    import grp
    import pwd
    import stat

    try:
        account = pwd.getpwnam(user)
        info = os.stat(folder)
    except (KeyError, OSError):
        return None
    groups = {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    groups.add(account.pw_gid)
    mode = info.st_mode
    if account.pw_uid == 0:
        return None
    if info.st_uid == account.pw_uid:
        allowed = bool(mode & stat.S_IWUSR)
    elif info.st_gid in groups:
        allowed = bool(mode & stat.S_IWGRP)
    else:
        allowed = bool(mode & stat.S_IWOTH)
    if allowed:
        return None
    owner = pwd.getpwuid(info.st_uid).pw_name if info.st_uid >= 0 else info.st_uid
    return (
        f"Its scheduler, running as Unix user {user!r}, cannot write {folder}: "
        f"permission denied (owned by {owner}, mode {stat.S_IMODE(mode):o}). "
        "Make the job storage writable by the job's user, or submit as the "
        "account that owns it"
    )


async def live_records(store: JobStore, user: str) -> list[JobRecord]:
    """The user's jobs that have not ended, as stored (no gateway request).

    With a complete job catalog only the jobs marked live are read; in a
    store from before it, every job that is not in the listing index.
    """
    catalog = await asyncio.to_thread(store.catalog, user)
    if catalog.complete:
        ids = sorted(catalog.live, reverse=True)
    else:
        every_id = await asyncio.to_thread(store.job_ids, user)
        index = await asyncio.to_thread(store.read_index, user, catalog.packs)
        ids = [i for i in every_id if i not in index]
    records = await asyncio.to_thread(store.read_records, user, ids)
    return [
        r
        for r in records.values()
        if isinstance(r, JobRecord) and not r.state.is_terminal
    ]


class Reconciler:
    """Judge a user's live jobs against the gateway, and act on the verdict.

    Parameters
    ----------
    store : JobStore
    launcher : ClusterLauncher
    user : str

    Attributes
    ----------
    retry_from_gateway : bool
        Retry with the options the gateway kept for the job's failed cluster
        instead of the spec signed with the user's secret: for a service that
        acts for users without holding their secrets (server-side mode only).
        The new scheduler still checks the signed spec before main runs.
        False unless that service sets it.
    """

    def __init__(self, store: JobStore, launcher: ClusterLauncher, user: str) -> None:
        self.store = store
        self.launcher = launcher
        # The user and retry_from_gateway live there (properties below).
        self.waiting = WaitingJobs(store, launcher, user)

    @property
    def user(self) -> str:
        return self.waiting.user

    @user.setter
    def user(self, user: str) -> None:
        self.waiting.user = user

    @property
    def retry_from_gateway(self) -> bool:
        return self.waiting.retry_from_gateway

    @retry_from_gateway.setter
    def retry_from_gateway(self, value: bool) -> None:
        self.waiting.retry_from_gateway = value

    async def status(self, job_id: str, *, retry: bool = False) -> JobRecord:
        """The job's record, checked against the gateway if it is live."""
        record = await asyncio.to_thread(self.store.read_record, self.user, job_id)
        if record.state.is_terminal:
            return record
        names = [record.cluster_name] if record.cluster_name else []
        return await self.check(record, await self.launcher.reports(names), retry=retry)

    async def check(
        self, record: JobRecord, reports: Reports, *, retry: bool = False
    ) -> JobRecord:
        """``record`` as it really is: alive, awaiting a retry, retried, or LOST."""
        if is_waiting(record):
            return await self.waiting.check(record, retry)
        why = self._why_lost(record, reports)
        if why is None:
            return record
        if record.last_seen is not None:
            why += f"; last seen {record.last_seen.isoformat(timespec='seconds')}"
        if record.cluster_name and record.attempt <= record.retries:
            if not retry:
                return self._awaiting_retry(record, why)
            if self.retry_from_gateway:
                spec, env_key = self._spec_the_gateway_kept(record, reports)
                if spec is None:
                    # Not this service's to retry (a client-side job, or one
                    # the gateway forgot): the owner's client can.
                    return self._awaiting_retry(record, why)
            else:
                spec, keys = await signed_spec(self.store, self.user, record.id)
                env_key = keys.env_key
            if spec is not None:
                return await self._retry_on_new_cluster(record, spec, env_key, why)
            why += (
                " (no retry possible: its stored spec is not signed with your key; "
                "it was changed in storage)"
            )
        # The runner writes the final state before it stops the cluster, so a
        # fresh read now sees any outcome that raced with the gateway query.
        fresh = await asyncio.to_thread(self.store.read_record, self.user, record.id)
        if fresh.state.is_terminal:
            return fresh
        await asyncio.to_thread(
            self.store.transition, self.user, record.id, JobState.LOST, message=why
        )
        lost = await asyncio.to_thread(self.store.read_record, self.user, record.id)
        if lost.state is JobState.LOST and lost.mlflow_run_id:
            await self._end_tracked_run(record.id, "FAILED", why)
        return lost

    async def _end_tracked_run(self, job_id: str, status: str, message: str) -> None:
        """End the MLflow run of a job that no runner will end.

        Only from the job's spec as the user signed it (the run and its
        server are never taken from storage unchecked), so not by the hub
        service, which holds no user's secret: the user's next client does.
        """
        if self.retry_from_gateway:
            return
        try:
            spec, _ = await signed_spec(self.store, self.user, job_id)
        except MissingSecretError:
            spec = None
        if spec is None:
            logger.warning(
                "The MLflow run of job %s is left as it is: its spec is not signed "
                "with your key here.",
                job_id,
            )
            return
        await asyncio.to_thread(_tracking.end_run, spec, status, message)

    def _why_lost(self, record: JobRecord, reports: Reports) -> str | None:
        """Why the live ``record`` can no longer end on its own; None if it can."""
        address = self.launcher.gateway.address
        if record.gateway_address and record.gateway_address != address:
            # Another gateway's job: this gateway cannot vouch for its cluster,
            # so only a heartbeat silent for too long makes it LOST.
            silence = parse_timedelta(dask.config.get("batch.heartbeat-timeout"))
            if record.last_seen is None or (
                (utcnow() - record.last_seen).total_seconds() < silence
            ):
                return None
            return (
                f"its runner has not been heard from for over {silence:g} s and "
                f"its gateway {record.gateway_address} is not this one"
            )
        if record.cluster_name:
            report = reports.get(record.cluster_name)
            status = report.status if report is not None else None
            if report is not None and status in ALIVE:
                record.dashboard_link = safe_link(report.dashboard_link)
                return None
            why = (
                f"its cluster {record.cluster_name!r} is "
                f"{status.name if status else 'unknown to the gateway'} but the job "
                "never recorded an outcome (the scheduler died, or the cluster "
                "was stopped before main reported)"
            )
            if record.started is None and record.last_seen is None:
                why += self._never_started_hint(record)
            return why
        lost_after = parse_timedelta(dask.config.get("batch.lost-after"))
        # A retry on a new cluster, or a waiting job's first cluster, is
        # being requested since record.updated.
        requested = record.attempt > 1 or record.released is not None
        since = record.updated if requested else record.submitted
        if (utcnow() - (since or record.submitted)).total_seconds() < lost_after:
            return None
        return (
            "no cluster was recorded for it: the submitting process stopped "
            "before the gateway accepted the cluster request"
        )

    def _never_started_hint(self, record: JobRecord) -> str:
        """Why a scheduler may have stopped before recording anything: it
        could not write the job's folder (on a shared filesystem it runs as
        the job user's own Unix account)."""
        folder = self.store.job_path(self.user, record.id, "")
        hint = (
            f". Its scheduler never recorded the job as started: check that the "
            f"job's side, running as user {self.user!r}, can write {folder}"
        )
        if isinstance(self.store.backend, LocalBackend):
            denied = local_write_denied(folder, self.user)
            if denied:
                hint = f". {denied}"
        return hint

    def _spec_the_gateway_kept(
        self, record: JobRecord, reports: Reports
    ) -> tuple[dict[str, Any] | None, str]:
        """What a retry needs, from the options of the job's last cluster as
        the gateway (not storage) reports them; (None, "") if it has none."""
        report = reports.get(record.cluster_name or "")
        options = dict(report.options or {}) if report is not None else {}
        if (
            options.get("batch_job_id") != record.id
            or options.get("batch_storage") != self.store.url
            or not options.get("batch_secret_key")
        ):
            return None, ""
        spec = {
            "mode": "server",
            "cluster_options": {
                k: v for k, v in options.items() if not k.startswith("batch_")
            },
            "payload_signature": options["batch_payload_digest"],
        }
        return spec, str(options["batch_secret_key"])

    @staticmethod
    def _awaiting_retry(record: JobRecord, why: str) -> JobRecord:
        return dataclasses.replace(
            record,
            dashboard_link=None,
            message=(
                f"awaiting retry: {why}. Attempt {record.attempt + 1} of "
                f"{record.retries + 1} starts on a new cluster when the job is "
                "waited for (result(), wait()) or reconciled (BatchClient()."
                "reconcile(), `dask batch reconcile`)"
            ),
        )

    async def _retry_on_new_cluster(
        self,
        record: JobRecord,
        spec: dict[str, Any],
        env_key: str,
        why: str,
    ) -> JobRecord:
        """Run a job whose cluster failed again, on a new cluster.

        Whoever acts on the failure first claims the next attempt with a
        create-only write, so exactly one new cluster is requested.
        """
        attempt = record.attempt + 1
        claim = dumps_json({"attempt": attempt, "after": why, "time": to_iso(utcnow())})
        name = f"attempts/{attempt:04d}.json"
        if await asyncio.to_thread(
            self.store.put_create, self.user, record.id, name, claim
        ):
            history = [*record.attempts, {"attempt": record.attempt, "error": why}]
            # The state before the new cluster exists, so that its runner
            # reads this attempt number.
            begin = functools.partial(self.store.begin_attempt, self.user, record.id)
            message = f"attempt {attempt}: {why}"
            await asyncio.to_thread(begin, attempt, history, message, new_cluster=True)
            await self.launcher.launch(record.id, spec, env_key, attempt)
        return await asyncio.to_thread(self.store.read_record, self.user, record.id)

    async def wait(
        self, job_id: str, timeout: float | str | None, progress: bool = False
    ) -> JobRecord:
        """Poll until the job has ended (retrying it on a new cluster if due)."""
        deadline = (
            None if timeout is None else time.monotonic() + parse_timedelta(timeout)
        )
        display = ProgressDisplay(job_id) if progress else None
        delay = 0.05
        while True:
            record = await self.status(job_id, retry=True)
            if display is not None:
                display.update(record)
            if record.state.is_terminal:
                return record
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"Job {job_id!r} is still {record.state.value} after {timeout}; "
                    "it keeps running. Call result() again later."
                )
            wait = (
                delay if deadline is None else min(delay, deadline - time.monotonic())
            )
            await asyncio.sleep(max(0.0, wait))
            delay = min(delay * 1.5, 2.0)

    async def reconcile(self, live: list[JobRecord] | None = None) -> JobList:
        """Check every live job of the user (or those of ``live``), retrying
        or marking LOST as due."""
        if live is None:
            live = await live_records(self.store, self.user)
        reports = await self.launcher.reports(
            [r.cluster_name for r in live if r.cluster_name]
        )
        return JobList([await self.check(r, reports, retry=True) for r in live])

    async def cancel(self, job_id: str) -> JobRecord:
        """Record CANCELLED (unless the job ended), then stop its cluster."""
        record = await asyncio.to_thread(self.store.read_record, self.user, job_id)
        never_ran = record.state is JobState.PENDING
        message = f"cancelled by {self.user}"
        if not record.state.is_terminal:
            await asyncio.to_thread(
                self.store.transition,
                self.user,
                job_id,
                JobState.CANCELLED,
                message=message,
            )
        record = await asyncio.to_thread(self.store.read_record, self.user, job_id)
        if record.cluster_name:
            await self.launcher.stop(job_id, record.cluster_name)
        if never_ran and record.state is JobState.CANCELLED and record.mlflow_run_id:
            # No runner ends this run: its cluster may never have started.
            await self._end_tracked_run(job_id, "KILLED", message)
        return record
