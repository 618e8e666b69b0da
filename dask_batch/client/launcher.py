"""Launch a job's cluster: the one place that uses dask-gateway's private API.

Requests a cluster with the batch options (server-side mode) or installs the
runner on it (client-side mode), stops clusters and reads the gateway's
reports. Submission and retries both launch through :class:`ClusterLauncher`.
The private coroutines used (``_cluster_options``, ``_submit``,
``_wait_for_start``, ``_stop_cluster``, ``_cluster_report``, ``_clusters``)
are the async halves of dask-gateway's public methods; the tested version
range is pinned in the package metadata.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from dask_gateway import Gateway
from dask_gateway.client import ClusterReport, ClusterStatus, GatewayClusterError
from dask_gateway.options import Options

from dask_batch.core import secrets as _secrets
from dask_batch.core import signing as _signing
from dask_batch.core.exceptions import (
    DaskBatchError,
    JobError,
    StorageError,
    SubmitError,
    not_submitted_message,
)
from dask_batch.core.records import ErrorInfo, JobRecord, JobState, to_iso, utcnow
from dask_batch.core.runner_key import RUNNER_KEY_OPTION, is_sealed
from dask_batch.core.runner_key import seal_env_key as seal_for_runner
from dask_batch.storage.store import (
    CLUSTER,
    FILES,
    PAYLOAD,
    SECRETS,
    SPEC,
    STATE,
    JobStore,
)
from dask_batch.storage.upstream import AFTER_DIR, seal_env_key

if TYPE_CHECKING:
    from dask_batch.client.submission import Submission

logger = logging.getLogger("dask_batch")

ALIVE = frozenset(
    {ClusterStatus.PENDING, ClusterStatus.RUNNING, ClusterStatus.STOPPING}
)
_ALL_STATUSES = ["pending", "running", "stopping", "stopped", "failed"]


class ClusterLauncher:
    """Start, stop and look up the clusters of one user's jobs.

    Parameters
    ----------
    gateway : dask_gateway.Gateway
    store : JobStore
    user : str
    mode : {"auto", "server", "client"}
        How the runner reaches the scheduler; "auto" asks the gateway once.
    """

    def __init__(self, gateway: Gateway, store: JobStore, user: str, mode: str):
        self.gateway = gateway
        self.store = store
        self.user = user
        self._mode: str | None = None if mode == "auto" else mode
        self._options: Options | None = None

    async def server_options(self) -> Options:
        """The gateway's cluster options (fetched once)."""
        if self._options is None:
            self._options = await self.gateway._cluster_options(
                use_local_defaults=False
            )
        return self._options

    async def mode(self) -> str:
        """ "server" if the gateway offers the batch options, else "client"."""
        if self._mode is None:
            options = await self.server_options()
            self._mode = "server" if "batch_job_id" in options else "client"
        return self._mode

    async def check_cluster_options(
        self, job_id: str, requested: dict[str, Any]
    ) -> None:
        """Refuse unknown options and bad values before anything is created."""
        options = await self.server_options()
        for key, value in requested.items():
            if key.startswith("batch_"):
                raise SubmitError.not_submitted(
                    job_id, f"cluster option {key!r} is set by dask-batch itself."
                )
            try:
                # validate() checks without changing the cached options.
                options._fields[key].validate(value)
            except (KeyError, TypeError, ValueError) as exc:
                if isinstance(exc, KeyError):
                    exc = KeyError(f"no option {key!r} available")
                message = exc.args[0] if exc.args else exc
                raise SubmitError.not_submitted(
                    job_id,
                    f"bad cluster option: {message}. This gateway offers "
                    f"{sorted(options)}.",
                ) from None

    async def start_job(
        self, submission: Submission, keys: _signing.JobKeys | None = None
    ) -> str:
        """Store a new job's records and launch its cluster; return the job's id.

        With an idempotency key that an earlier job claimed, nothing is
        launched and that job's id is returned. ``keys``: the job's keys when
        the caller holds no secret (a service submitting a delegated
        schedule's run); by default they derive from the user's secret.
        """
        job_id, spec = submission.job_id, dict(submission.spec)
        mode = await self.mode()
        await self.check_cluster_options(job_id, spec["cluster_options"])
        spec.update(
            submitted=to_iso(utcnow()), gateway_address=self.gateway.address, mode=mode
        )
        after = list(spec.get("after") or [])
        # An earlier run whose work a resubmit takes over: its key is sealed
        # with this job's secrets, as those of the jobs it waits for are.
        reuses = [spec["reuses"]] if spec.get("reuses") else []
        keys, upstream = await self._keys(job_id, keys, after + reuses)
        spec["payload_signature"] = _signing.sign(keys.job_key, submission.payload)
        spec["has_secrets"] = True
        spec = _signing.sign_spec(keys.job_key, spec)
        secrets = _secrets.JobSecrets(
            submission.env_values,
            keys.job_key,
            {
                u: upstream[u].job_key
                for u in [*(spec.get("upstream_values") or []), *reuses]
            },
        )
        token = submission.sealed_secrets or _secrets.seal(secrets, keys.env_key)
        # A service that holds no secret starts a waiting job with the env
        # key the gateway reports for an upstream job's cluster.
        unlocks = {
            u: seal_env_key(keys.env_key, job_id, k.env_key)
            for u, k in upstream.items()
            if u in after
        }
        try:
            await asyncio.to_thread(
                self._write_records, submission, spec, token, unlocks
            )
        except StorageError as exc:
            reason = (
                f"no cluster was requested, as its records cannot be written: {exc}"
            )
            raise StorageError(
                not_submitted_message(job_id, reason), job_id=job_id
            ) from exc
        key = spec.get("idempotency_key")
        if key:
            owner = await asyncio.to_thread(
                self.store.claim_idempotency_key, self.user, key, job_id
            )
            if owner != job_id:
                return str(owner)
        if not after:
            await self.launch(job_id, spec, keys.env_key)
        return job_id

    async def _keys(
        self, job_id: str, keys: _signing.JobKeys | None, after: list[str]
    ) -> tuple[_signing.JobKeys, dict[str, _signing.JobKeys]]:
        """The job's keys, and those of the jobs it waits for, by id."""
        if keys is not None:
            if after:
                raise SubmitError.not_submitted(
                    job_id, "a job submitted without the secret cannot wait for others."
                )
            return keys, {}
        secret = await asyncio.to_thread(
            _signing.user_secret, create=True, job_id=job_id
        )
        found = await asyncio.to_thread(self.store.read_records, self.user, after)
        upstream = {}
        for upstream_id in after:
            record = found.get(upstream_id)
            keys_from = record.keys_from if isinstance(record, JobRecord) else ""
            upstream[upstream_id] = _signing.keys_for(secret, upstream_id, keys_from)
        return _signing.job_keys(secret, job_id), upstream

    def _write_records(
        self,
        submission: Submission,
        spec: dict[str, Any],
        token: bytes,
        unlocks: dict[str, bytes],
    ) -> None:
        # The payload goes first: if storage is unusable, this fails with
        # nothing written and no cluster requested.
        job_id, store = submission.job_id, self.store
        store.put(self.user, job_id, PAYLOAD, submission.payload)
        if submission.archive:
            store.put(self.user, job_id, FILES, submission.archive)
        if token:
            store.put(self.user, job_id, SECRETS, token)
        for upstream, sealed in unlocks.items():
            store.put(self.user, job_id, f"{AFTER_DIR}/{upstream}.bin", sealed)
        store.put_json(self.user, job_id, SPEC, spec)
        pending = {"state": JobState.PENDING.value, "updated": spec["submitted"]}
        if unlocks:
            pending["message"] = f"waiting for {', '.join(unlocks)}"
        store.put_json(self.user, job_id, STATE, pending)
        # After the spec: a marker always names a job that has a record.
        store.mark_live(self.user, job_id)

    async def launch(
        self, job_id: str, spec: dict[str, Any], env_key: str, attempt: int = 1
    ) -> str:
        """Request the job's cluster and see that its runner starts.

        Records the cluster in ``cluster.json``. If the gateway refuses, or
        the runner cannot be installed, the job is recorded FAILED (with no
        cluster left behind) and SubmitError or DaskBatchError is raised.
        """
        options = dict(spec.get("cluster_options") or {})
        if spec.get("mode") == "server":
            env_key = await self._sealed_for_gateway(env_key)
            options.update(
                batch_job_id=job_id,
                batch_storage=self.store.url,
                # The option's name predates signatures: it carries the
                # payload's signature, which main's process checks.
                batch_payload_digest=spec["payload_signature"],
                batch_secret_key=env_key,
            )
        try:
            cluster_name = await self.gateway._submit(**options)
        except Exception as exc:
            message = f"the gateway refused the cluster request: {exc}"
            await self._fail(job_id, ErrorInfo("ClusterRequestError", message))
            raise SubmitError(
                job_id,
                f"Job {job_id!r} failed: {message}. Check cluster_options against "
                "`gateway.cluster_options()`; the job is recorded as FAILED.",
            ) from exc
        cluster = {"cluster_name": cluster_name}
        if attempt > 1:
            cluster["attempt"] = attempt
        await asyncio.to_thread(
            self.store.put_json, self.user, job_id, CLUSTER, cluster
        )
        if spec.get("mode") == "client":
            await self._install_runner(job_id, cluster_name, spec, env_key)
        return str(cluster_name)

    async def _sealed_for_gateway(self, env_key: str) -> str:
        """``env_key`` sealed to the gateway's runner key, where it offers one:
        its database, API and logs then never hold the key itself."""
        if is_sealed(env_key):
            return env_key  # as the gateway reported it (a retry)
        offered = await self.server_options()
        runner_key = offered.get(RUNNER_KEY_OPTION)
        if not runner_key:
            return env_key
        return seal_for_runner(str(runner_key), env_key)

    async def _fail(self, job_id: str, error: ErrorInfo) -> None:
        await asyncio.to_thread(
            self.store.transition,
            self.user,
            job_id,
            JobState.FAILED,
            message=error.message,
            error=error.to_dict(),
        )

    async def _install_runner(
        self, job_id: str, cluster_name: str, spec: dict[str, Any], env_key: str
    ) -> None:
        # Client mode only: listings and the command line need not import them.
        from distributed.core import rpc
        from distributed.protocol.pickle import dumps

        from dask_batch.runtime.plugin import JobRunnerPlugin

        try:
            report = await self.gateway._wait_for_start(cluster_name)
            plugin = JobRunnerPlugin(
                job_id=job_id,
                user=self.user,
                storage_url=self.store.url,
                storage_options=self.store.storage_options,
                payload_signature=spec["payload_signature"],
                env_key=env_key,
            )
            # One RPC, as Client.register_plugin sends it, without a full
            # Client's handshake and streams.
            async with rpc(
                report.scheduler_address,
                connection_args=report.security.get_connection_args("client"),
            ) as scheduler:
                await scheduler.register_scheduler_plugin(
                    plugin=dumps(plugin), name=plugin.name, idempotent=False
                )
        except BaseException as exc:
            # Never leave a cluster behind for a job that cannot start.
            message = (
                f"could not start the job runner on cluster {cluster_name!r}: {exc}"
            )
            try:
                await self.gateway._stop_cluster(cluster_name)
            finally:
                await self._fail(job_id, ErrorInfo("RunnerError", message))
            raise DaskBatchError(
                f"Job {job_id!r} failed: {message}. Client-side mode needs "
                "dask_batch importable on the cluster's scheduler.",
                job_id=job_id,
            ) from exc

    async def stop(self, job_id: str, cluster_name: str) -> None:
        """Stop a job's cluster; one that is gone already is left alone."""
        try:
            await self.gateway._stop_cluster(cluster_name)
        except (ValueError, GatewayClusterError) as exc:
            logger.debug("cluster of job %s already gone: %s", job_id, exc)

    async def wait_stopped(
        self, job_id: str, cluster_name: str, timeout: float
    ) -> None:
        """Return once the gateway reports the cluster gone (stopped, failed
        or forgotten); JobError naming the job past ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            report = (await self.reports([cluster_name]))[cluster_name]
            if report is None or report.status.name in ("STOPPED", "FAILED"):
                return
            if time.monotonic() > deadline:
                raise JobError(
                    job_id,
                    f"the cluster of job {job_id} ({cluster_name}) was still "
                    f"{report.status.name} {timeout:.0f} s after it was asked to "
                    "stop; try again, or stop it with `dask-gateway stop`.",
                )
            await asyncio.sleep(0.5)  # polling the gateway: it sends no event

    async def reports(self, names: list[str]) -> dict[str, ClusterReport | None]:
        """The gateway's report of each cluster; None when it does not know it."""
        if not names:
            return {}
        if len(names) == 1:
            try:
                report = await self.gateway._cluster_report(names[0])
            except ValueError:  # 404: unknown, purged, or forgotten on restart
                return {names[0]: None}
            return {names[0]: report}
        reports = await self.gateway._clusters(status=_ALL_STATUSES)
        known = {r.name: r for r in reports}
        return {n: known.get(n) for n in names}
