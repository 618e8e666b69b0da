"""Jobs that wait for other jobs: started when their upstream jobs succeeded,
cancelled when one did not.

A read says a waiting job is ready; only an actor (a waiter, a reconcile, the
hub service, the local keeper) starts its cluster. An upstream job that did
not succeed cancels it at once, whoever looks, as a lost cluster is recorded
LOST.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

from dask_batch.client.job_delegation import JobDelegation
from dask_batch.client.launcher import ClusterLauncher
from dask_batch.core import signing as _signing
from dask_batch.core.exceptions import DaskBatchError
from dask_batch.core.records import JobRecord, JobState, to_iso, utcnow
from dask_batch.runtime.spec import unsealed
from dask_batch.storage.store import SPEC, JobStore, dumps_json
from dask_batch.storage.upstream import AFTER_DIR, open_env_key

READY = "its upstream jobs SUCCEEDED"


def is_waiting(record: JobRecord) -> bool:
    """A job that waits for its upstream jobs, with no cluster asked for."""
    return (
        bool(record.after)
        and record.state is JobState.PENDING
        and record.released is None
        and not record.cluster_name
    )


async def signed_spec(
    store: JobStore, user: str, job_id: str
) -> tuple[dict[str, Any] | None, _signing.JobKeys]:
    """The job's spec if its signature holds (else None), and its keys.

    A retry or a start takes nothing security-relevant from storage
    unchecked: the cluster options and the payload's signature come from a
    spec that the user's own key signed. Raises MissingSecretError on a
    machine without the user's secret.
    """
    secret = await asyncio.to_thread(_signing.user_secret, job_id=job_id)
    spec = await asyncio.to_thread(store.get_json, user, job_id, SPEC)
    keys_from = str(spec.get("keys_from") or "") if isinstance(spec, dict) else ""
    keys = _signing.keys_for(secret, job_id, keys_from)
    if isinstance(spec, dict) and _signing.spec_is_signed(keys.job_key, spec):
        return spec, keys
    return None, keys


def _server_launch(spec: Any) -> dict[str, Any] | None:
    """The launch of a server-side job from its stored spec (None otherwise);
    the new scheduler checks the spec's signature before main runs."""
    if not isinstance(spec, dict) or spec.get("mode") != "server":
        return None
    return {
        "mode": "server",
        "cluster_options": dict(spec.get("cluster_options") or {}),
        "payload_signature": str(spec.get("payload_signature") or ""),
    }


class WaitingJobs:
    """Judge, start or cancel one user's waiting jobs.

    Parameters
    ----------
    store : JobStore
    launcher : ClusterLauncher
    user : str

    Attributes
    ----------
    retry_from_gateway : bool
        Start with the env key the gateway reports for an upstream job's
        cluster instead of the user's secret (the hub service).
    """

    def __init__(self, store: JobStore, launcher: ClusterLauncher, user: str) -> None:
        self.store = store
        self.launcher = launcher
        self.user = user
        self.retry_from_gateway = False
        #: Env keys of waiting jobs handed to this service (None: none).
        self.delegation: JobDelegation | None = None

    async def check(
        self, record: JobRecord, act: bool, seen: frozenset[str] = frozenset()
    ) -> JobRecord:
        """Whether a waiting job can start, must be cancelled, or still waits.

        With ``act``, a job that can start is started, and so is each waiting
        link of a chain above it (each once: a cycle planted in storage ends).
        """
        upstream = await asyncio.to_thread(
            self.store.read_records, self.user, record.after
        )
        waiting = []
        for job_id in record.after:
            found = upstream.get(job_id)
            why = self._blocking(job_id, found)
            if why:
                return await self.cancel(record, why)
            assert isinstance(found, JobRecord)
            if not found.state.is_terminal:
                if act and is_waiting(found) and job_id not in seen:
                    found = await self.check(found, act, seen | {record.id, job_id})
                waiting.append(f"{job_id} ({found.state.value})")
        if waiting:
            message = f"waiting for {', '.join(waiting)}"
        elif not act:
            message = (
                f"{READY}: it starts when waited for (result(), wait()) "
                "or reconciled, or at the service's next sweep"
            )
        else:
            return await self._start(record, upstream)
        return dataclasses.replace(record, message=message)

    @staticmethod
    def _blocking(job_id: str, found: Any) -> str:
        """Why an upstream job means the waiting one never runs ("" if not)."""
        if isinstance(found, Exception) or found is None:
            return f"not run: upstream job {job_id} cannot be read ({found})"
        if found.state.is_terminal and found.state is not JobState.SUCCEEDED:
            why = f": {found.message}" if found.message else ""
            return f"not run: upstream job {job_id} {found.state.value}{why}"
        return ""

    async def _start(self, record: JobRecord, upstream: dict[str, Any]) -> JobRecord:
        """Ask for the cluster of a job whose upstream jobs all SUCCEEDED."""
        if self.retry_from_gateway:
            spec, env_key = await self._spec_from_delegation(record)
            if spec is None:
                spec, env_key = await self._spec_from_upstream(record, upstream)
        else:
            spec, keys = await signed_spec(self.store, self.user, record.id)
            env_key = keys.env_key
        if spec is None:
            return dataclasses.replace(
                record,
                message=f"{READY}; it starts when its owner's client waits for it "
                "or reconciles (no upstream cluster's options to start it with)",
            )
        claim = dumps_json({"attempt": 1, "after": READY, "time": to_iso(utcnow())})
        if await asyncio.to_thread(
            self.store.put_create, self.user, record.id, "attempts/0001.json", claim
        ):
            # Recorded before the cluster is asked for: a launcher that dies
            # in between leaves a job that is judged LOST, not one that waits.
            await asyncio.to_thread(
                self.store.transition,
                self.user,
                record.id,
                JobState.PENDING,
                released=to_iso(utcnow()),
                message=f"{READY}: starting",
            )
            with contextlib.suppress(DaskBatchError):  # recorded FAILED
                await self.launcher.launch(record.id, spec, env_key)
        return await asyncio.to_thread(self.store.read_record, self.user, record.id)

    async def cancel(self, record: JobRecord, why: str) -> JobRecord:
        await asyncio.to_thread(
            self.store.transition, self.user, record.id, JobState.CANCELLED, message=why
        )
        return await asyncio.to_thread(self.store.read_record, self.user, record.id)

    async def _spec_from_delegation(
        self, record: JobRecord
    ) -> tuple[dict[str, Any] | None, str]:
        """What starting a waiting job needs, from the env key its owner handed
        to this service at submit (see :mod:`~dask_batch.client.job_delegation`)."""
        if self.delegation is None:
            return None, ""
        env_key = await asyncio.to_thread(
            self.delegation.env_key, self.store, self.user, record.id
        )
        if env_key is None:
            return None, ""
        spec = await asyncio.to_thread(self.store.get_json, self.user, record.id, SPEC)
        return _server_launch(spec), env_key

    async def _spec_from_upstream(
        self, record: JobRecord, upstream: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, str]:
        """What starting a waiting job needs, for a service without the secret.

        Its env key was sealed at submit with each upstream job's env key;
        the gateway (never storage) reports that key among the options of the
        upstream job's cluster. The new scheduler checks the job's signed
        spec before main runs, so what storage says here is checked there.
        """
        spec = await asyncio.to_thread(self.store.get_json, self.user, record.id, SPEC)
        launch = _server_launch(spec)
        if launch is None:
            return None, ""
        names = {
            r.cluster_name: r.id
            for r in upstream.values()
            if isinstance(r, JobRecord) and r.cluster_name
        }
        reports = await self.launcher.reports(list(names))
        for name, upstream_id in names.items():
            report = reports.get(name)
            options = dict(report.options or {}) if report is not None else {}
            if options.get("batch_job_id") != upstream_id:
                continue
            env_key = await self._open_env_key(record.id, upstream_id, options)
            if env_key is None:
                continue  # not sealed with this key: try another upstream job
            return launch, env_key
        return None, ""

    async def _open_env_key(
        self, job_id: str, upstream_id: str, options: dict[str, Any]
    ) -> str | None:
        from cryptography.fernet import InvalidToken  # only a service gets here

        try:
            token = await asyncio.to_thread(
                self.store.get, self.user, job_id, f"{AFTER_DIR}/{upstream_id}.bin"
            )
            upstream_key = unsealed(str(options.get("batch_secret_key")))
            return open_env_key(token, job_id, upstream_key)
        except (
            FileNotFoundError,
            DaskBatchError,
            InvalidToken,
            OSError,
            ValueError,
            KeyError,
        ):
            return None
