"""The job service: everything dask-batch does for one user, asynchronously.

Every front stands on it: :class:`~dask_batch.BatchClient` (its friendly,
synchronous face for notebooks and scripts), the command line, the jobs page,
the hub service, the local gateway's keeper and the MLflow backend. It joins
the rooms that each own one stage of a job's life:
:mod:`~dask_batch.client.submission` checks and packs input,
:mod:`~dask_batch.client.launcher` starts clusters,
:mod:`~dask_batch.client.reconcile` keeps records honest,
:mod:`~dask_batch.client.listing` lists, :mod:`~dask_batch.client.outputs`
fetches results, logs and artifacts, and
:mod:`~dask_batch.workflows.schedules` keeps schedules.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import dask.config
from dask_gateway import Gateway

from dask_batch import config as _config  # noqa: F401  (loads batch.* defaults)
from dask_batch.client import submission as _submission
from dask_batch.client import tracking as _tracking
from dask_batch.client.connection import gateway_user
from dask_batch.client.launcher import ClusterLauncher
from dask_batch.client.listing import JobLister
from dask_batch.client.outputs import JobOutputs
from dask_batch.client.reconcile import Reconciler
from dask_batch.core.exceptions import DaskBatchError
from dask_batch.core.names import check_job_id, check_user
from dask_batch.core.options import SubmitOptions
from dask_batch.core.records import JobRecord, JobState
from dask_batch.core.runner_key import RUNNER_KEY_OPTION
from dask_batch.core.tasks import TASK_KINDS, TaskRecord, check_task_name
from dask_batch.storage.store import JobStore
from dask_batch.workflows import schedules as _schedules
from dask_batch.workflows.schedules import (
    Delegation,
    Schedule,
    ScheduleRun,
    Schedules,
)
from dask_batch.workflows.service_handover import hand_to_service, hand_waiting_job

__all__ = ["JobService"]

logger = logging.getLogger("dask_batch")


class JobService:
    """Submit, follow and manage one user's jobs and schedules.

    Every method is a coroutine; it acts for :attr:`user`, learned once from
    the gateway by :meth:`identify` (call it first).

    Parameters
    ----------
    gateway : dask_gateway.Gateway
        An asynchronous gateway client, or a synchronous one whose loop runs
        these coroutines (``gateway.sync``).
    store : JobStore
        The job storage.
    mode : {"server", "client", "auto"}
        How the runner reaches the scheduler (``batch.mode``).
    user : str, optional
        The user asked for; it must agree with the one authenticated.
    retry_from_gateway : bool
        Start retries and waiting jobs with the env keys the gateway reports
        (the hub service, which holds no user's secret).
    delegation : Delegation, optional
        The hub service's key for the schedules users hand to it.

    Examples
    --------
    >>> service = JobService(gateway, JobStore("s3://bucket/jobs"), "auto")
    >>> await service.identify()                       # doctest: +SKIP
    'alice'
    >>> [r.id for r in await service.jobs(limit=5)]    # doctest: +SKIP
    """

    def __init__(
        self,
        gateway: Gateway,
        store: JobStore,
        mode: str,
        *,
        user: str | None = None,
        retry_from_gateway: bool = False,
        delegation: Delegation | None = None,
    ) -> None:
        self.gateway = gateway
        self.store = store
        self.mode = mode
        self.requested_user = check_user(user) if user else None
        #: The authenticated user, once :meth:`identify` ran.
        self.user: str | None = None
        self.delegation = delegation
        self._launcher = ClusterLauncher(gateway, store, "", mode)
        self._reconciler = Reconciler(store, self._launcher, "")
        self._reconciler.retry_from_gateway = retry_from_gateway
        self._lister = JobLister(store, "", self._reconciler)
        self._outputs = JobOutputs(store, "", self._reconciler)
        self._schedules = Schedules(store, self._launcher, "")
        self._schedules.delegation = delegation
        if delegation is not None:
            self._reconciler.waiting.delegation = delegation.jobs

    def __repr__(self) -> str:
        return f"JobService<user={self.user}, storage={self.store.url}>"

    @property
    def clock(self) -> Callable[[], datetime.datetime]:
        """What time it is for schedules (a test may turn it by hand)."""
        return self._schedules.clock

    @clock.setter
    def clock(self, clock: Callable[[], datetime.datetime]) -> None:
        self._schedules.clock = clock

    async def identify(self) -> str:
        """Learn, once, which user's jobs this service acts for.

        Returns
        -------
        str

        Raises
        ------
        AuthenticationError
            The gateway or hub refused the credentials, or the user asked
            for is not the one authenticated.
        """
        if self.user is None:
            user = await gateway_user(
                self.gateway, self._launcher.server_options, self.requested_user
            )
            user = check_user(user)
            for part in (self._launcher, self._reconciler, self._lister):
                part.user = user
            self._outputs.user = self._schedules.user = user
            self.user = user
        return self.user

    def _identified(self) -> str:
        if self.user is None:
            raise DaskBatchError(
                "The job service does not know its user yet: await identify() first."
            )
        return self.user

    # -- submitting ------------------------------------------------------------------
    def submission(
        self, job_id: str, target: _submission.Target, options: SubmitOptions
    ) -> _submission.Submission:
        """Check and pack a job for :meth:`submit`; bad input fails here.

        Nothing is stored and no cluster is asked for.
        """
        user = self._identified()
        artifacts = self.store.artifacts_url(user, job_id)
        return _submission.build(job_id, user, artifacts, target, options)

    async def submit(
        self,
        submission: _submission.Submission,
        tracking: _tracking.Tracking | None = None,
    ) -> str:
        """Store the job and start its cluster; returns the job's id.

        The id is an earlier job's where ``idempotency_key`` matched one.
        ``tracking`` makes the job an MLflow run (created here, ended by the
        job's runner).
        """
        if tracking is None:
            job_id = await self._launcher.start_job(submission)
            if submission.spec.get("after") and job_id == submission.job_id:
                await hand_waiting_job(self.gateway, job_id)
                # Its upstream jobs may have ended already.
                await self._reconciler.status(job_id, retry=True)
            return job_id
        submission = await asyncio.to_thread(
            _tracking.begin,
            submission,
            self._identified(),
            tracking,
            self.gateway.address,
        )
        try:
            job_id = await self._launcher.start_job(submission)
        except DaskBatchError as exc:
            # The run exists already: it says why the job never ran.
            await asyncio.to_thread(_tracking.end_unsubmitted, submission, str(exc))
            raise
        if job_id != submission.job_id:  # an earlier submit with this key
            await asyncio.to_thread(_tracking.discard, submission)
        return job_id

    async def resubmit(self, job_id: str, *, failed_only: bool = True) -> str:
        """Run an ended job again, as it was submitted; the new job's id.

        With ``failed_only``, only what did not succeed runs again: an
        array's failed (and never run) elements, a pipeline's steps that did
        not succeed and those below them. The new job's result then holds
        every value, in order, the earlier ones taken over.
        """
        from dask_batch.client import resubmit as _resubmit
        from dask_batch.core.records import new_job_id
        from dask_batch.core.tasks import task_specs

        user = await self.identify()
        record = await self._reconciler.status(check_job_id(job_id))
        new_id = new_job_id()
        submission = await asyncio.to_thread(
            _resubmit.resubmission,
            self.store,
            user,
            record,
            new_id,
            failed_only=failed_only,
        )
        if failed_only and submission.spec.get("tasks"):
            tasks = await asyncio.to_thread(
                self._outputs.reusable,
                record.id,
                task_specs(submission.spec, record.id),
            )
            submission.spec["tasks"] = [t.to_dict() for t in tasks]
        return await self.submit(submission)

    async def submit_target(
        self,
        job_id: str,
        target: _submission.Target,
        options: SubmitOptions,
        tracking: _tracking.Tracking | None = None,
        *,
        resume: str | None = None,
    ) -> str:
        """Check, pack and submit ``target``; returns the job's id.

        ``resume`` names an earlier pipeline job whose unchanged, succeeded
        steps this one takes over instead of running them again.
        """
        await self.identify()
        if resume is not None:
            tasks = await asyncio.to_thread(
                self._outputs.reusable, check_job_id(resume), target.tasks
            )
            target = dataclasses.replace(target, tasks=tasks)
        if tracking is None:
            tracking = _tracking.requested(job_id, options.mlflow, target.params)
        return await self.submit(self.submission(job_id, target, options), tracking)

    # -- following -------------------------------------------------------------------
    async def status(self, job_id: str) -> JobRecord:
        """The job's record checked against the gateway, with its tasks."""
        record = await self._reconciler.status(job_id)
        # An array's elements can be 100,000: its counts say how they go, and
        # tasks() pages through them.
        if record.kind in TASK_KINDS and not record.elements:
            record.tasks = await asyncio.to_thread(self._outputs.tasks, job_id, record)
        return record

    async def jobs(
        self,
        *,
        state: str | JobState | Iterable[str | JobState] | None = None,
        name: str | None = None,
        since: datetime.datetime | str | None = None,
        until: datetime.datetime | str | None = None,
        limit: int | None = None,
        kind: str | None = None,
        schedule: str | None = None,
        before: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> Any:
        """The user's jobs, newest first, as a ``JobList`` (a list that displays).

        ``kind`` keeps one kind of job (``"notebook"``), ``schedule`` the
        runs of one schedule, ``labels`` the jobs with these labels, and
        ``before`` the jobs older than that job id (the next page after a
        page that ended with it).
        """
        if before is not None:
            check_job_id(before)
        return await self._lister.jobs(
            state=state,
            name=name,
            since=since,
            until=until,
            limit=limit,
            kind=kind,
            schedule=schedule,
            before=before,
            labels=labels,
        )

    async def tasks(
        self,
        job_id: str,
        *,
        offset: int = 0,
        limit: int | None = None,
        state: str | JobState | None = None,
    ) -> list[TaskRecord]:
        """The steps of a pipeline job or the elements of an array job.

        ``offset``, ``limit`` and ``state`` page through an array's elements
        (those in ``state`` only, if given), reading only the shards needed.
        """
        wanted = JobState(state) if state is not None else None
        return await asyncio.to_thread(
            self._outputs.tasks, job_id, None, offset=offset, limit=limit, state=wanted
        )

    async def wait(
        self, job_id: str, timeout: float | str | None = None, progress: bool = False
    ) -> JobRecord:
        """Wait until the job has ended; returns its final record."""
        return await self._reconciler.wait(job_id, timeout, progress)

    async def result(
        self,
        job_id: str,
        timeout: float | str | None = None,
        progress: bool = False,
        partial: bool = False,
    ) -> Any:
        """Wait for the job and load the value main returned, checked first."""
        return await self._outputs.result(job_id, timeout, progress, partial)

    async def logs(self, job_id: str, task: str = "") -> str:
        """Main's log so far (or a task's), bounded by ``batch.logs-limit``."""
        return await self._outputs.logs(job_id, self._task(job_id, task))

    def follow_logs(self, job_id: str, task: str = "") -> AsyncIterator[str]:
        """Log text as it arrives, until the job ends."""
        return self._outputs.follow(job_id, self._task(job_id, task))

    def follow_logs_sync(
        self, job_id: str, sync: Callable[..., Any], task: str = ""
    ) -> Iterator[str]:
        """:meth:`follow_logs` for synchronous callers (``sync`` runs a coroutine)."""
        return self._outputs.follow_sync(job_id, sync, self._task(job_id, task))

    @staticmethod
    def _task(job_id: str, task: str) -> str:
        return check_task_name(str(task), job_id=job_id) if task != "" else ""

    async def artifacts(self, job_id: str) -> dict[str, int]:
        """The job's artifacts: relative path -> size in bytes."""
        return await self._outputs.artifacts(job_id)

    async def download_artifacts(
        self,
        job_id: str,
        destination: str | os.PathLike[str],
        names: Iterable[str] | None = None,
    ) -> list[str]:
        """Copy the job's artifacts (those in ``names``, if given) into a
        local directory; returns the paths."""
        dest = os.fspath(destination)
        return await self._outputs.download_artifacts(job_id, dest, names)

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a pending or running job and stop its cluster."""
        return await self._reconciler.cancel(job_id)

    async def delete(self, job_id: str, *, timeout: float = 60) -> None:
        """Remove a job: cancelled first if it has not ended, then, once its
        cluster is gone, everything stored for it (record, result, logs,
        artifacts) and its listing entry."""
        user = await self.identify()
        record = await self.cancel(check_job_id(job_id))
        if record.cluster_name:
            await self._launcher.wait_stopped(job_id, record.cluster_name, timeout)
        await asyncio.to_thread(self.store.delete_job, user, job_id)
        await asyncio.to_thread(self.store.drop_from_index, user, job_id)

    async def reconcile(self, records: list[JobRecord] | None = None) -> Any:
        """Act on live jobs whose cluster is gone: retry, start, or mark LOST.

        ``records`` are live records just read (the hub service's sweep);
        default: every live job of the user.
        """
        if records is None:
            return await self._reconciler.reconcile()
        return await self._reconciler.reconcile(records)

    # -- schedules -------------------------------------------------------------------
    async def add_schedule(
        self,
        schedule_id: str,
        target: _submission.Target,
        options: SubmitOptions,
        *,
        cron: str,
        timezone: str = "UTC",
        concurrency: str | None = None,
        overlap: str = "skip",
        starting_deadline: float | str | None = None,
        paused: bool = False,
    ) -> Schedule:
        """Keep ``target`` as a schedule; hand it to the hub service if one is set.

        Adding it again under the same id edits it in place (its runs so far
        stay its runs); ``paused`` keeps it from firing until resumed.

        With ``batch.service.url`` set, the schedule's env key goes to the
        service with the user's hub token, so that it fires with nobody here.
        """
        _schedules.check_cron(schedule_id, cron, timezone)
        if concurrency is not None:  # Kubernetes' names win over the older ones
            overlap = _schedules.CONCURRENCY.get(concurrency, concurrency)
        deadline = _schedules.check_policy(schedule_id, overlap, starting_deadline)
        await self.identify()
        await self._launcher.check_cluster_options(
            schedule_id, dict(options.cluster_options or {})
        )
        submission = self.submission(schedule_id, target, options)
        added = await asyncio.to_thread(
            self._schedules.add,
            submission,
            cron,
            timezone=timezone,
            overlap=overlap,
            starting_deadline=deadline,
            paused=paused,
        )
        if dask.config.get("batch.service.url", None):
            offered = await self._launcher.server_options()
            handover = _schedules.handover(
                self._schedules.keys(schedule_id), offered.get(RUNNER_KEY_OPTION)
            )
            await hand_to_service(self.gateway, "schedules", schedule_id, handover)
        return added

    async def schedules(self) -> list[Schedule]:
        """The user's schedules, newest first; unsigned ones are left out."""
        found = []
        for schedule_id in await asyncio.to_thread(self._schedules.ids):
            try:
                found.append(
                    await asyncio.to_thread(self._schedules.describe, schedule_id)
                )
            except DaskBatchError as exc:
                logger.warning("%s", exc)
        return found

    async def schedule(self, schedule_id: str) -> Schedule:
        """One schedule, checked, with its history and next run."""
        return await asyncio.to_thread(self._schedules.describe, schedule_id)

    async def schedule_ids(self) -> list[str]:
        """The ids of the user's stored schedules (a listing; nothing is checked)."""
        return await asyncio.to_thread(self._schedules.ids)

    async def pause_schedule(self, schedule_id: str) -> Schedule:
        """Stop submitting runs until :meth:`resume_schedule`."""
        return await asyncio.to_thread(self._schedules.set_paused, schedule_id, True)

    async def resume_schedule(self, schedule_id: str) -> Schedule:
        """Submit runs again from the next due time."""
        return await asyncio.to_thread(self._schedules.set_paused, schedule_id, False)

    async def delete_schedule(self, schedule_id: str) -> None:
        """Remove a schedule; the jobs it submitted stay."""
        await asyncio.to_thread(self._schedules.delete, schedule_id)

    async def fire_schedules(self, *, by: str = "") -> list[ScheduleRun]:
        """Submit the runs of the user's schedules that are due now.

        ``by`` names a service firing them for the user: each run is then
        an audit line in its log.
        """
        return await self._schedules.fire_due(by)

    async def accept_job(self, job_id: str, env_key: str) -> None:
        """Take a waiting job its owner hands over (a service with a delegation).

        Raises
        ------
        DaskBatchError
            This service starts no jobs for others, or the env key is not
            the job's.
        """
        if self.delegation is None:
            raise DaskBatchError(
                f"Job {job_id!r} not taken: this server does not start jobs for "
                "others (it has no delegation key).",
                job_id=job_id,
            )
        await asyncio.to_thread(
            self.delegation.jobs.accept,
            self.store,
            self._identified(),
            check_job_id(job_id),
            env_key,
        )

    async def accept_schedule(
        self, schedule_id: str, env_key: str, job_key: str | None = None
    ) -> None:
        """Take a schedule its owner hands over (a service with a delegation).

        ``env_key`` is the schedule's env key, or, with ``job_key``, the env
        key sealed to the gateway's runner key (see
        :meth:`~dask_batch.workflows.schedules.Delegation.accept`).

        Raises
        ------
        DaskBatchError
            This service fires no schedules for others, or the env key does
            not open the schedule.
        """
        if self.delegation is None:
            raise DaskBatchError(
                f"Schedule {schedule_id!r} not taken: this server does not fire "
                "schedules for others (it has no delegation key)."
            )
        await asyncio.to_thread(
            self.delegation.accept, self._schedules, schedule_id, env_key, job_key
        )
