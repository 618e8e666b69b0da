"""The scheduler-side job runner.

A :class:`JobRunnerPlugin` on the job's scheduler starts main in a child
process (``python -m dask_batch.runtime.child``), so that neither the
scheduler's event loop nor its threads run user code and no worker slot is
taken. It wires the scheduler to the parts that each own one thing: the
gateway (:mod:`~dask_batch.runtime.gateway_link`: scaling, the idle culler,
the last stop), the upkeep while main runs (:mod:`~dask_batch.runtime.upkeep`:
heartbeats, log, artifacts), the tasks of a pipeline or array
(:mod:`~dask_batch.runtime.taskrun`) and the job's MLflow run
(:mod:`~dask_batch.runtime.mlflow_finish`). It writes the final record, then
has the gateway stop the cluster.

Runs on the scheduler: imports nothing from the client or CLI modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
from typing import Any

import dask.config
from dask.utils import parse_timedelta
from distributed.diagnostics.plugin import SchedulerPlugin

from dask_batch import config as _config  # noqa: F401  (loads batch.* defaults)
from dask_batch.core.records import JobState, to_iso, utcnow
from dask_batch.core.tasks import task_specs
from dask_batch.runtime.gateway_link import GatewayLink
from dask_batch.runtime.handoff import ARTIFACTS_DIR, MainLaunch, Outcome, retry_wanted
from dask_batch.runtime.mlflow_finish import RUN_STATUS, FinishRun, end_tracked_run
from dask_batch.runtime.prewarm import (
    LOG_FILE,
    MainProcess,
    child_env,
    make_workdir,
    spawn_main,
)
from dask_batch.runtime.prewarm import take as take_prewarmed
from dask_batch.runtime.spec import read_signed_spec
from dask_batch.runtime.takeover import take_over
from dask_batch.runtime.taskrun import (
    TaskGraph,
    await_outcome,
    graph_settings,
    note_in_log,
    terminate,
)
from dask_batch.runtime.upkeep import JobUpkeep
from dask_batch.runtime.zygote import Zygote
from dask_batch.storage.store import JobStore

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
        self._upkeep: JobUpkeep | None = None  # log, heartbeats, artifacts
        self._graph: TaskGraph | None = None  # the tasks of a pipeline or array
        self._workdir: str | None = None
        self._spec: dict[str, Any] = {}
        self._job_env: dict[str, str] = {}  # main's env values, decrypted
        self._job_key = ""  # from secrets.bin: signs results

    def __getstate__(self) -> dict[str, Any]:
        # Pickled to reach the scheduler in client-side mode: the job, never
        # this process's runtime state.
        names = ("job_id", "user", "storage_url", "storage_options")
        return {n: getattr(self, n) for n in (*names, "payload_signature", "env_key")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        JobRunnerPlugin.__init__(self, **state)

    async def start(self, scheduler: Any) -> None:
        # Client.register_plugin waits for start(): return at once.
        self.scheduler = scheduler
        self._cluster_name = os.environ.get("DASK_GATEWAY_CLUSTER_NAME")
        self._gateway = GatewayLink(scheduler, self.job_id)
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

    async def _run(self) -> None:
        prewarmed = take_prewarmed(self.job_id)
        if prewarmed is not None:
            # Started when the scheduler imported the preload: its imports
            # are done or under way.
            self._workdir, self._waiting_main = prewarmed.workdir, prewarmed.main
        else:
            self._workdir = await self._io(make_workdir, self.job_id)
        log_path = os.path.join(self._workdir, LOG_FILE)
        self._upkeep = JobUpkeep(
            self._store,
            self.user,
            self.job_id,
            self._cluster_name,
            log_path,
            os.path.join(self._workdir, ARTIFACTS_DIR),
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
            self._gateway.pause_idle_culler()
            spec, secrets = await self._io(
                read_signed_spec, self._store, self.user, self.job_id, self.env_key
            )
            self._spec, self._job_env = spec, secrets.env
            self._job_key = secrets.job_key
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
            await self._gateway.scale(spec)
            # A Ploomber project's main drives its own tasks.
            if spec.get("tasks") and spec.get("kind") != "ploomber":
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
        assert self._upkeep is not None
        self._upkeep.log.attempt = attempt
        history = list(doc.get("attempts") or [])
        while True:
            # A cluster stopped from outside (scancel, a wall-time limit, a
            # node lost) with a retry left leaves the job to that retry.
            self._retry_left = attempt <= int(spec.get("retries") or 0)
            outcome = await self._run_main(log_path, spec)
            if outcome.error is None or not retry_wanted(
                spec, outcome.error, attempt, self._stopped_from_outside
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
        assert self._upkeep is not None and self._workdir is not None
        self._upkeep.log.attempt = attempt
        self._retry_left = attempt <= int(spec.get("retries") or 0)
        zygote = await self._zygote(log_path)
        graph = self._graph = TaskGraph(
            self._store,
            self.user,
            self.job_id,
            task_specs(spec, self.job_id),
            graph_settings(spec, dask.config.get),
            self._launch(spec),
            self._workdir,
            log_path,
            reuse=functools.partial(
                take_over,
                self._store,
                self.user,
                self.job_id,
                self._job_key,
                # The files in the folder that downstream steps read are stored.
                adopt_artifacts=self._upkeep.artifacts.adopt,
            ),
            zygote=zygote,
        )
        helpers = self._upkeep.start()
        try:
            return await graph.run()
        finally:
            await JobUpkeep.stop(helpers)
            if zygote is not None:
                await zygote.close()

    async def _zygote(self, log_path: str) -> Zygote | None:
        """The process that forks every task's main (the early one if any)."""
        if not dask.config.get("batch.runner.fork-main"):
            if self._waiting_main is not None:  # each task starts its own
                waiting, self._waiting_main = self._waiting_main, None
                await self._io(waiting.discard)
            return None
        process, self._waiting_main = self._waiting_main, None
        if process is None:
            process = MainProcess(await self._io(spawn_main, log_path))
        assert self._workdir is not None
        zygote, why = await Zygote.open(process, self._workdir)
        if zygote is None:
            note_in_log(
                log_path,
                f"dask-batch: job {self.job_id}: no process to fork tasks "
                f"from ({why}); each task starts as a new process",
            )
        return zygote

    def _launch(self, spec: dict[str, Any]) -> MainLaunch:
        return MainLaunch.for_job(
            self.scheduler,
            spec,
            job_id=self.job_id,
            user=self.user,
            storage_url=self.storage_url,
            storage_options=self.storage_options,
            storage_retry_for=self._store.retry_for,
            payload_signature=self.payload_signature,
            workdir=self._workdir or ".",
            mlflow_run_id=self._mlflow_run_id,
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
        assert self._proc is not None and self._upkeep is not None
        helpers = self._upkeep.start()
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
        if self._upkeep is not None:
            await self._upkeep.flush()
        if self._stopped_from_outside and self._retry_left and not outcome.succeeded:
            logger.info(
                "dask-batch: cluster stopped under job %s: left for a retry on a "
                "new cluster",
                self.job_id,
            )
            return
        state, fields = outcome.final_record(self._stopped_from_outside)
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
        # The same environment as main's: the job's env values carry the
        # tracking server's address and credentials.
        upload = self._upkeep.log.upload if self._upkeep is not None else None
        await end_tracked_run(finish, dict(child_env(), **self._job_env), upload)

    async def _shutdown_cluster(self) -> None:
        self._finishing = True  # the close() that follows is ours
        await self._gateway.stop_cluster()
