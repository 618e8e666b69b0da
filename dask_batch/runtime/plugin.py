"""The scheduler-side job runner.

A :class:`JobRunnerPlugin` on the job's scheduler starts main in a child process
(``python -m dask_batch.runtime.child``), so that neither the scheduler's event loop nor
its threads run user code and no worker slot is taken. It keeps the gateway's
idle culler from stopping a cluster whose main is still running, copies main's
log to storage, writes the final record, and then asks the gateway to stop the
cluster.

Runs on the scheduler: imports nothing from the client or CLI modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
from typing import Any

import dask.config
from dask.utils import parse_bytes, parse_timedelta
from distributed.diagnostics.plugin import SchedulerPlugin

from dask_batch import config as _config  # noqa: F401  (loads batch.* defaults)
from dask_batch.core import secrets as _secrets
from dask_batch.core import signing as _signing
from dask_batch.core.exceptions import ResultIntegrityError
from dask_batch.core.names import check_job_id
from dask_batch.core.records import ErrorInfo, JobState, to_iso, utcnow
from dask_batch.core.tasks import TaskSpec, task_specs
from dask_batch.runtime.artifacts import ArtifactSync
from dask_batch.runtime.handoff import OUTCOME_FILE, MainLaunch, Outcome
from dask_batch.runtime.mlflow_finish import RUN_STATUS, FinishRun
from dask_batch.runtime.prewarm import (
    ARTIFACTS_DIR,
    LOG_FILE,
    MainProcess,
    child_env,
    make_workdir,
    spawn_main,
)
from dask_batch.runtime.prewarm import take as take_prewarmed
from dask_batch.runtime.taskrun import (
    LogUpload,
    TaskGraph,
    await_outcome,
    graph_settings,
    note_in_log,
    result_name,
    terminate,
)
from dask_batch.runtime.zygote import Zygote
from dask_batch.storage.store import ARTIFACTS, HEARTBEAT, SECRETS, SPEC, JobStore

logger = logging.getLogger("distributed.scheduler.dask_batch")


class JobRunnerPlugin(SchedulerPlugin):
    """Run one batch job's main beside the scheduler and stop the cluster after.

    Parameters
    ----------
    job_id, user : str
        The job, and the user whose storage prefix holds it.
    storage_url : str
        Root of the job storage.
    storage_options : dict, optional
        fsspec options for the storage. In server-side mode they come from the
        scheduler's own configuration (``batch.storage-options``).
    payload_signature : str, optional
        The payload's signature with the job key; main's process refuses a
        payload that does not carry it.
    env_key : str, optional
        Key of the job's encrypted ``secrets.bin`` (env values, job key).
    """

    name = "dask-batch-runner"
    idempotent = True

    def __init__(
        self,
        job_id: str,
        user: str,
        storage_url: str,
        storage_options: dict[str, Any] | None = None,
        payload_signature: str = "",
        env_key: str = "",
    ) -> None:
        self.job_id = job_id
        self.env_key = env_key
        self.user = user
        self.storage_url = storage_url
        self.storage_options = storage_options or {}
        self.payload_signature = payload_signature
        self._task: asyncio.Task[None] | None = None
        self._proc: MainProcess | None = None
        self._waiting_main: MainProcess | None = None  # started early, not launched
        self._stopped_from_outside = False
        self._retry_left = False
        self._finishing = False
        self._log: LogUpload | None = None  # main's log, to storage
        self._graph: TaskGraph | None = None  # the tasks of a pipeline or array
        self._workdir: str | None = None
        self._spec: dict[str, Any] = {}
        self._job_env: dict[str, str] = {}  # main's env values, decrypted
        self._job_key = ""  # from secrets.bin: signs results
        self._artifact_sync: ArtifactSync | None = None

    # pickled to reach the scheduler in client-side mode: drop runtime state
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(
            _task=None,
            _proc=None,
            _waiting_main=None,
            _workdir=None,
            _job_key="",
            _log=None,
            _graph=None,
            _artifact_sync=None,
        )
        return state

    async def start(self, scheduler: Any) -> None:
        # Client.register_plugin waits for start(): return at once.
        self.scheduler = scheduler
        self._cluster_name = os.environ.get("DASK_GATEWAY_CLUSTER_NAME")
        self._store = JobStore(
            self.storage_url,
            self.storage_options,
            retry_for=parse_timedelta(
                dask.config.get("batch.runner.storage-retry-for")
            ),
        )
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        task = self._task
        if task is None or task.done() or self._finishing:
            return  # our own shutdown, or nothing running
        # The cluster is going away under a running job (cancel, an admin,
        # the gateway): end main, keep its log, record why.
        self._stopped_from_outside = True
        logger.info("dask-batch: cluster closing while job %s runs", self.job_id)
        await self._terminate_main()
        grace = parse_timedelta(dask.config.get("batch.runner.terminate-grace"))
        # Tracked runs get the time to tell MLflow the job was killed.
        wait = grace + (30 if self._mlflow_run_id else 5)
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=wait)
        except (asyncio.TimeoutError, Exception):
            logger.exception("dask-batch: job %s did not finish cleanly", self.job_id)
            task.cancel()

    # -- the job -----------------------------------------------------------------
    async def _io(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(func, *args, **kwargs)

    @property
    def _mlflow_run_id(self) -> str:
        """The job's MLflow run, from its signed spec ("" if not tracked)."""
        return str((self._spec.get("mlflow") or {}).get("run_id") or "")

    def _gateway_service(self) -> Any:
        return self.scheduler.services.get("gateway")

    async def _run(self) -> None:
        prewarmed = take_prewarmed(self.job_id)
        if prewarmed is not None:
            # Started when the scheduler imported the preload: its imports
            # are done or under way.
            self._workdir, self._waiting_main = prewarmed.workdir, prewarmed.main
        else:
            self._workdir = await self._io(make_workdir, self.job_id)
        log_path = os.path.join(self._workdir, LOG_FILE)
        self._log = LogUpload(
            self._store,
            self.user,
            self.job_id,
            log_path,
            parse_bytes(dask.config.get("batch.runner.log-chunk-size")),
        )
        artifacts = os.path.join(self._workdir, ARTIFACTS_DIR)
        self._artifact_sync = ArtifactSync(
            self._store,
            self.user,
            self.job_id,
            artifacts,
            parse_bytes(dask.config.get("batch.artifacts.limit")),
        )
        try:
            await self._run_job(log_path)
        finally:
            if self._waiting_main is not None:  # main must not run after all
                waiting, self._waiting_main = self._waiting_main, None
                await self._io(waiting.discard)
            shutil.rmtree(self._workdir, ignore_errors=True)

    async def _run_job(self, log_path: str) -> None:
        try:
            self._pause_idle_culler()
            spec = self._spec = await self._io(self._signed_spec)
            doc = await self._io(
                self._store.transition,
                self.user,
                self.job_id,
                JobState.RUNNING,
                started=to_iso(utcnow()),
                cluster_name=self._cluster_name,
            )
            if doc["state"] != JobState.RUNNING.value:
                # Cancelled before its cluster came up: do not run main.
                logger.info("dask-batch: job %s is %s", self.job_id, doc["state"])
                why = str(doc.get("message", ""))
                await self._end_tracked_run(doc["state"], "", why)
                await self._shutdown_cluster()
                return
            await self._scale(spec)
            if spec.get("tasks"):
                outcome = await self._run_graph(log_path, spec, doc)
            else:
                outcome = await self._run_attempts(log_path, spec, doc)
        except Exception as exc:
            logger.exception("dask-batch: job %s could not start", self.job_id)
            outcome = Outcome.failure(
                "RunnerError", f"dask-batch could not start main: {exc}"
            )
        await self._finish(outcome, log_path)

    async def _run_attempts(
        self, log_path: str, spec: dict[str, Any], doc: dict[str, Any]
    ) -> Outcome:
        """Run main, again in this cluster for the errors listed in retry_on."""
        attempt = int(doc.get("attempt", 1))
        assert self._log is not None
        self._log.attempt = attempt
        history = list(doc.get("attempts") or [])
        while True:
            # A cluster stopped from outside (scancel, a wall-time limit, a
            # node lost) with a retry left leaves the job to that retry.
            self._retry_left = attempt <= int(spec.get("retries") or 0)
            outcome = await self._run_main(log_path, spec)
            if outcome.error is None or not self._should_retry(
                spec, outcome.error, attempt
            ):
                return outcome
            error = outcome.error
            history.append({"attempt": attempt, "error": error.type})
            attempt += 1
            note_in_log(
                log_path,
                f"dask-batch: attempt {attempt} of job {self.job_id} after "
                f"{error.type}: {error.message}",
            )
            message = f"attempt {attempt} after {error.type}"
            await self._io(
                self._store.begin_attempt,
                self.user,
                self.job_id,
                attempt,
                history,
                message,
                new_cluster=False,
            )

    async def _run_graph(
        self, log_path: str, spec: dict[str, Any], doc: dict[str, Any]
    ) -> Outcome:
        """Run the tasks of a pipeline or array job, each in its own process."""
        attempt = int(doc.get("attempt", 1))
        assert self._log is not None and self._workdir is not None
        self._log.attempt = attempt
        self._retry_left = attempt <= int(spec.get("retries") or 0)
        zygote = None
        if dask.config.get("batch.runner.fork-main"):
            # One main process, the early one if there is one, forks every
            # task's: their imports are done once.
            process, self._waiting_main = self._waiting_main, None
            if process is None:
                process = MainProcess(await self._io(spawn_main, log_path))
            zygote = Zygote(process, self._workdir)
            try:
                await zygote.start()
            except OSError as exc:
                note_in_log(
                    log_path,
                    f"dask-batch: job {self.job_id}: no process to fork tasks "
                    f"from ({exc}); each task starts as a new process",
                )
                await zygote.close()
                zygote = None
        elif self._waiting_main is not None:  # each task starts its own
            waiting, self._waiting_main = self._waiting_main, None
            await self._io(waiting.discard)
        graph = self._graph = TaskGraph(
            self._store,
            self.user,
            self.job_id,
            task_specs(spec, self.job_id),
            graph_settings(spec, dask.config.get),
            self._launch(spec),
            self._workdir,
            log_path,
            reuse=self._take_over,
            zygote=zygote,
        )
        helpers = [
            asyncio.create_task(self._upload_logs_periodically(log_path)),
            asyncio.create_task(self._heartbeat_periodically()),
            asyncio.create_task(self._sync_artifacts_periodically(log_path)),
        ]
        try:
            return await graph.run()
        finally:
            for helper in helpers:
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
            if zygote is not None:
                await zygote.close()

    def _take_over(self, task: TaskSpec, local_dir: str) -> dict[str, Any]:
        """Copy the outputs of ``task`` from the earlier job the spec names.

        The submitter checked the earlier result's signature and put its
        digest in this job's signed spec; the copy is read back and must
        match it, and is signed with this job's key.
        """
        assert task.reuse is not None
        earlier = check_job_id(task.reuse.get("job"))
        name = result_name(task.name)
        store = self._store
        store.fs.copy(
            store.job_path(self.user, earlier, name),
            store.job_path(self.user, self.job_id, name),
        )
        _, _, found, signature = store.get_result(
            self.user, self.job_id, self._job_key, name=name
        )
        if found != task.reuse.get("result_digest"):
            raise ResultIntegrityError(
                f"the result of step {task.name!r} of job {earlier} changed "
                "after it was checked",
                job_id=self.job_id,
            )
        source = store.job_path(self.user, earlier, f"{ARTIFACTS}/{task.name}")
        if store.fs.exists(source):
            target = store.job_path(self.user, self.job_id, f"{ARTIFACTS}/{task.name}")
            store.fs.copy(source, target, recursive=True)
            store.fs.get(source + "/", local_dir + "/", recursive=True)
            # The files in the folder that downstream steps read are stored.
            if self._artifact_sync is not None:
                self._artifact_sync.adopt()
        return {
            "result_digest": found,
            "result_hmac": signature,
            "result_type": str(task.reuse.get("result_type") or ""),
            "result_bytes": task.reuse.get("result_bytes"),
        }

    def _signed_spec(self) -> dict[str, Any]:
        """The job's spec, refused unless the submitter's job key signed it.

        The job key comes from ``secrets.bin``, opened with the env key the
        submitter sent; so scaling, the time limit and the memory limit are
        the submitter's, whoever can write the storage.
        """
        spec = self._store.get_json(self.user, self.job_id, SPEC)
        token = self._store.get(self.user, self.job_id, SECRETS)
        secrets = _secrets.unseal(self.env_key, token)
        job_key, self._job_env = secrets.job_key, secrets.env
        self._job_key = job_key
        if not isinstance(spec, dict) or not _signing.spec_is_signed(job_key, spec):
            raise ResultIntegrityError(
                f"the spec of job {self.job_id!r} is not signed with its key: it "
                "was changed in storage. Submit the job again.",
                job_id=self.job_id,
            )
        return spec

    def _should_retry(
        self, spec: dict[str, Any], error: ErrorInfo, attempt: int
    ) -> bool:
        """Retry main in this cluster only for the errors the user named."""
        if self._stopped_from_outside or attempt > int(spec.get("retries") or 0):
            return False
        wanted = spec.get("retry_on") or []
        short = error.type.rsplit(".", 1)[-1]
        return any(name in (error.type, short) for name in wanted)

    async def _scale(self, spec: dict[str, Any]) -> None:
        service = self._gateway_service()
        if service is None:
            return
        if spec.get("adapt"):
            minimum, maximum = spec["adapt"]
            await service.adapt(minimum=minimum, maximum=maximum, active=True)
        elif spec.get("workers"):
            await service.scale(int(spec["workers"]))

    def _pause_idle_culler(self) -> None:
        # The gateway's culler sees no worker task while main computes on its
        # own or waits, and would stop the cluster under it. dask-batch stops
        # the cluster itself when main ends, so the culler is not needed.
        service = self._gateway_service()
        task = getattr(service, "check_idle_task", None)
        if task is not None:
            task.cancel()
            service.check_idle_task = None
            logger.info("dask-batch: idle culler paused while job %s runs", self.job_id)

    def _resume_idle_culler(self) -> None:
        service = self._gateway_service()
        if service is not None and getattr(service, "idle_timeout", 0) > 0:
            service.check_idle_task = asyncio.ensure_future(service.check_idle())

    def _launch(self, spec: dict[str, Any]) -> MainLaunch:
        security = self.scheduler.security
        ca, cert, key = (
            os.path.abspath(p) if p and os.path.exists(p) else p
            for p in (
                security.tls_ca_file,
                security.tls_scheduler_cert,
                security.tls_scheduler_key,
            )
        )
        workdir = self._workdir or "."
        return MainLaunch(
            job_id=self.job_id,
            user=self.user,
            name=str(spec.get("name", "")),
            storage_url=self.storage_url,
            storage_options=self.storage_options,
            storage_retry_for=self._store.retry_for,
            payload_signature=self.payload_signature,
            scheduler_address=self.scheduler.address,
            tls_ca_file=ca,
            tls_cert=cert,
            tls_key=key,
            outcome_path=os.path.join(workdir, OUTCOME_FILE),
            workdir=os.path.join(workdir, "work"),
            artifacts_dir=os.path.join(workdir, ARTIFACTS_DIR),
            mlflow_run_id=self._mlflow_run_id,
            has_files=bool(spec.get("files_bytes")),
            memory_limit=spec.get("memory_limit"),
            env_key=self.env_key,
        )

    async def _start_main(self, launch: MainLaunch, log_path: str) -> None:
        main, self._waiting_main = self._waiting_main, None
        if main is None:
            main = MainProcess(spawn_main(log_path))
        self._proc = main
        # Credentials go through a pipe, never the command line or environment.
        main.launch(launch.to_json())
        logger.info("dask-batch: job %s main started, pid %d", self.job_id, main.pid)

    async def _run_main(self, log_path: str, spec: dict[str, Any]) -> Outcome:
        launch = self._launch(spec)
        with contextlib.suppress(FileNotFoundError):  # a previous attempt's
            os.remove(launch.outcome_path)
        await self._start_main(launch, log_path)
        assert self._proc is not None
        helpers = [
            asyncio.create_task(self._upload_logs_periodically(log_path)),
            asyncio.create_task(self._heartbeat_periodically()),
            asyncio.create_task(self._sync_artifacts_periodically(log_path)),
        ]
        timeout = spec.get("timeout")
        outcome = await await_outcome(
            self._proc,
            launch.outcome_path,
            timeout,
            parse_timedelta(dask.config.get("batch.runner.terminate-grace")),
            f"timed out: main ran longer than its timeout of {timeout or 0:g} s "
            "and was stopped",
            helpers,
        )
        if outcome.error is not None and outcome.error.type == "JobTimeout":
            logger.warning("dask-batch: job %s ran past its timeout", self.job_id)
        return outcome

    async def _heartbeat_periodically(self) -> None:
        interval = parse_timedelta(dask.config.get("batch.runner.heartbeat-interval"))
        while True:
            try:
                await self._io(
                    self._store.put_json,
                    self.user,
                    self.job_id,
                    HEARTBEAT,
                    {"time": to_iso(utcnow()), "cluster_name": self._cluster_name},
                )
            except Exception:
                logger.warning("dask-batch: heartbeat not stored", exc_info=True)
            await asyncio.sleep(interval)

    async def _sync_artifacts_periodically(self, log_path: str) -> None:
        interval = parse_timedelta(dask.config.get("batch.artifacts.sync-interval"))
        while True:
            await asyncio.sleep(interval)
            await self._sync_artifacts(log_path)

    async def _sync_artifacts(self, log_path: str) -> None:
        """Copy artifacts_dir() to storage; what was refused goes to the log."""
        if self._artifact_sync is None:
            return
        try:
            notes = await self._io(self._artifact_sync.sync)
        except Exception as exc:
            logger.warning("dask-batch: artifacts not synced", exc_info=True)
            notes = [f"dask-batch: job {self.job_id}: artifacts not stored: {exc}"]
        note_in_log(log_path, *notes)

    async def _upload_logs_periodically(self, log_path: str) -> None:
        interval = parse_timedelta(dask.config.get("batch.runner.log-upload-interval"))
        while True:
            await asyncio.sleep(interval)
            try:
                await self._io(self._upload_log, log_path)
            except Exception:
                logger.warning("dask-batch: log upload failed", exc_info=True)

    def _upload_log(self, log_path: str) -> None:
        """Append what the job's log gained since the last call."""
        if self._log is not None:
            self._log.upload()

    async def _terminate_main(self) -> None:
        if self._graph is not None:
            await self._graph.stop("the job was cancelled, or its cluster stopped")
        proc = self._proc
        if proc is None:
            return
        await terminate(
            proc, parse_timedelta(dask.config.get("batch.runner.terminate-grace"))
        )

    async def _finish(self, outcome: Outcome, log_path: str) -> None:
        """Artifacts and logs, then the final state, then stop the cluster."""
        await self._sync_artifacts(log_path)
        if os.path.exists(log_path):
            try:
                await self._io(self._upload_log, log_path)
            except Exception:
                logger.exception(
                    "dask-batch: final log upload of %s failed", self.job_id
                )
        if self._stopped_from_outside and self._retry_left and not outcome.succeeded:
            logger.info(
                "dask-batch: cluster stopped under job %s: left for a retry on a "
                "new cluster",
                self.job_id,
            )
            return
        fields: dict[str, Any]
        if outcome.succeeded:
            state = JobState.SUCCEEDED
            fields = {
                "result_digest": outcome.result_digest,
                "result_hmac": outcome.result_hmac,
                "result_type": outcome.result_type,
                "result_bytes": outcome.result_bytes,
            }
        else:
            state = JobState.FAILED
            error = outcome.error or ErrorInfo("RunnerError", "no outcome recorded")
            message = f"{error.type}: {error.message}"
            if self._stopped_from_outside:
                message = (
                    "the cluster was stopped while main was running (cancelled, "
                    "stopped by an admin, or by the gateway)"
                )
                error = ErrorInfo("ClusterStopped", message)
            fields = {"error": error.to_dict(), "message": message}
        if self._mlflow_run_id:
            # The MLflow run ends before the job's record does: whoever sees
            # the job ended finds its run ended too.
            expected, why = state.value, str(fields.get("message") or "")
            if self._stopped_from_outside:
                current = await self._io(self._store.read_state, self.user, self.job_id)
                expected = str(current.get("state") or expected)
                why = str(current.get("message") or why)
            await self._end_tracked_run(expected, log_path, why)
        try:
            await self._io(
                self._store.transition, self.user, self.job_id, state, **fields
            )
        except Exception:
            logger.exception("dask-batch: final state of %s not written", self.job_id)

        if not self._stopped_from_outside:
            await self._shutdown_cluster()

    async def _end_tracked_run(self, state: str, log_path: str, message: str) -> None:
        """Give the job's MLflow run its final status, log and artifacts."""
        run_id = self._mlflow_run_id
        if not run_id:
            return
        finish = FinishRun(
            run_id=run_id,
            job_id=self.job_id,
            user=self.user,
            status=RUN_STATUS.get(state, "FAILED"),
            log_path=log_path,
            storage_url=self.storage_url,
            storage_options=self.storage_options,
            message="" if state == JobState.SUCCEEDED.value else message,
        )
        timeout = parse_timedelta(dask.config.get("batch.mlflow.finish-timeout"))
        # The same environment as main's: the job's env values carry the
        # tracking server's address and credentials.
        env = dict(child_env(), **self._job_env)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dask_batch.runtime.mlflow_finish",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        try:
            output, _ = await asyncio.wait_for(
                proc.communicate(finish.to_json()), timeout=timeout
            )
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            output = f"no answer from MLflow in {timeout:g} s".encode()
        said = output.decode(errors="replace")[-2000:].strip()
        if proc.returncode == 0:
            logger.info("dask-batch: job %s: %s", self.job_id, said)
            return
        logger.warning("dask-batch: MLflow run %s not ended: %s", run_id, said)
        if log_path and os.path.exists(log_path):
            note_in_log(
                log_path,
                f"dask-batch: the MLflow run {run_id} of job {self.job_id} "
                f"could not be given its final status {finish.status}: {said}",
            )
            try:
                await self._io(self._upload_log, log_path)
            except Exception:
                logger.exception("dask-batch: log upload of %s failed", self.job_id)

    async def _shutdown_cluster(self) -> None:
        self._finishing = True  # the close() that follows is ours
        service = self._gateway_service()
        if service is None:
            await self.scheduler.close(reason="dask-batch job finished")
            return
        for attempt in range(5):
            try:
                # DELETE with the cluster's token: the gateway records STOPPED.
                await service.gateway.shutdown()
                return
            except Exception:
                logger.warning(
                    "dask-batch: shutdown request %d for %s failed",
                    attempt + 1,
                    self.job_id,
                    exc_info=True,
                )
                await asyncio.sleep(0.5 * 2**attempt)
        logger.error(
            "dask-batch: could not stop the cluster of job %s; "
            "the gateway's idle culler is back on as a safety net",
            self.job_id,
        )
        self._resume_idle_culler()
