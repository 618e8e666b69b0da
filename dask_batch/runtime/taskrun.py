"""Run the steps of a pipeline job beside the scheduler.

(Arrays of earlier releases, which declared each element as a task, run
here too; an array's elements now run on the workers: see
``dask_batch.runtime.arrays``.)


The job runner hands a job whose spec declares tasks to a :class:`TaskGraph`:
it starts each task's main process once its upstream tasks SUCCEEDED, at
most ``max_parallel`` at once, hands it the digests of its upstream results
and the folders of their files, applies the job's time limit, memory limit
and ``retry_on`` retries to each task, and keeps ``tasks.json`` and the
job's progress (counts per state) up to date in storage. A failing task
cancels the tasks below it and lets independent ones finish, unless the job
asked to fail fast.

Scheduler side: imports nothing from the client or CLI modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import threading
from collections.abc import Callable
from typing import Any

from dask.utils import parse_timedelta

from dask_batch.core.records import ErrorInfo, JobState, utcnow
from dask_batch.core.tasks import (
    TaskRecord,
    TaskSpec,
    count_states,
    task_path,
)
from dask_batch.runtime.handoff import OUTCOME_FILE, MainLaunch, Outcome, named_in
from dask_batch.runtime.prewarm import LOG_FILE, MainProcess, spawn_main
from dask_batch.runtime.taskstates import TaskStatePublisher
from dask_batch.runtime.zygote import Zygote
from dask_batch.storage.store import RESULT, JobStore

logger = logging.getLogger("distributed.scheduler.dask_batch")


class LogUpload:
    """Appends what a log file gained since the last call, as new chunks.

    Never rewrites what is stored and never holds more than one chunk in
    memory, however much main prints.
    """

    def __init__(
        self,
        store: JobStore,
        user: str,
        job_id: str,
        path: str,
        chunk_bytes: int,
        task: str = "",
    ) -> None:
        self.store, self.user, self.job_id, self.task = store, user, job_id, task
        self.path = path
        self.chunk_bytes = chunk_bytes
        self.offset = 0
        self.index = 0
        self.attempt = 1  # chunk names start with it: attempts never clash
        self.lock = threading.Lock()

    def upload(self) -> None:
        if not os.path.exists(self.path):
            return
        with self.lock, open(self.path, "rb") as f:
            f.seek(self.offset)
            while data := f.read(self.chunk_bytes):
                self.store.put_log_chunk(
                    self.user,
                    self.job_id,
                    self.attempt,
                    self.index,
                    data,
                    task=self.task,
                )
                self.index += 1
                self.offset += len(data)


def note_in_log(log_path: str, *lines: str) -> None:
    """Add the runner's own lines to a log (uploaded with main's output)."""
    if lines:
        with open(log_path, "ab") as log:
            log.write("".join(f"{line}\n" for line in lines).encode())


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"main's process was killed by {name}"
    return f"main's process exited with code {returncode} before reporting a result"


async def terminate(proc: Any, grace: float) -> None:
    """SIGTERM main's process group, then SIGKILL after ``grace`` seconds."""
    if proc.returncode is not None:
        return
    proc.signal_group(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), timeout=grace)
    except asyncio.TimeoutError:
        proc.signal_group(signal.SIGKILL)
        await proc.wait()


async def await_outcome(
    proc: Any,
    outcome_path: str,
    timeout: float | None,
    grace: float,
    timed_out: str,
    helpers: list[asyncio.Task[None]],
) -> Outcome:
    """How one main process ended: its reported outcome, its exit, or its
    time limit (then it is stopped, and ``timed_out`` says why).

    ``helpers`` (log uploads, heartbeats) stop with it; whatever it started
    and left running is killed with its process group.
    """
    try:
        returncode = await asyncio.wait_for(proc.wait(), timeout=timeout)
    except asyncio.TimeoutError:
        await terminate(proc, grace)
        return Outcome.failure("JobTimeout", timed_out)
    finally:
        for helper in helpers:
            helper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await helper
        proc.signal_group(signal.SIGKILL)
    try:
        return await asyncio.to_thread(Outcome.read, outcome_path)
    except (OSError, ValueError, KeyError, TypeError):
        return Outcome.failure(
            "ProcessExit", describe_exit(returncode), returncode=returncode
        )


@dataclasses.dataclass
class GraphSettings:
    """What the runner's configuration and the job's spec say for every task."""

    max_parallel: int
    fail_fast: bool
    timeout: float | None
    retries: int
    retry_on: list[str]
    log_chunk_bytes: int
    log_upload_interval: float
    terminate_grace: float


class TaskGraph:
    """The tasks of one job, run in dependency order.

    Parameters
    ----------
    store : JobStore
    user, job_id : str
    tasks : list of TaskSpec
        From the signed spec, upstream tasks first.
    settings : GraphSettings
    base_launch : MainLaunch
        The job's launch; each task's is this with its own folder and task.
    workdir : str
        The runner's private folder; each task gets ``tasks/{name}`` in it.
    job_log : str
        The job's own log, where the runner notes each task's end.
    reuse : callable, optional
        Takes over a task's outputs from the earlier job its spec names.
    zygote : Zygote, optional
        Forks each task's main process; without it (or once it is gone),
        each is a new interpreter.
    """

    def __init__(
        self,
        store: JobStore,
        user: str,
        job_id: str,
        tasks: list[TaskSpec],
        settings: GraphSettings,
        base_launch: MainLaunch,
        workdir: str,
        job_log: str,
        reuse: Callable[[TaskSpec, str], dict[str, Any]] | None = None,
        zygote: Zygote | None = None,
    ) -> None:
        self.store, self.user, self.job_id = store, user, job_id
        self.tasks = {t.name: t for t in tasks}
        self.settings = settings
        self.base_launch = base_launch
        self.workdir = workdir
        self.job_log = job_log
        self.reuse = reuse
        self.zygote = zygote
        self.records = {t.name: TaskRecord.declared(t) for t in tasks}
        self.procs: dict[str, Any] = {}  # MainProcess or ZygoteChild
        self.stopping = ""  # why every task is being stopped ("" if not)
        self.states = TaskStatePublisher(store, user, job_id, self.records)

    # -- folders ---------------------------------------------------------------
    def folder(self, name: str) -> str:
        return os.path.join(self.workdir, "tasks", name)

    def artifacts_dir(self, name: str) -> str:
        return os.path.join(self.base_launch.artifacts_dir, name)

    # -- the graph ---------------------------------------------------------------
    async def run(self) -> Outcome:
        """Run every task that can run; the job's outcome."""
        publisher = asyncio.create_task(self.states.publish_periodically())
        running: dict[str, asyncio.Task[None]] = {}
        try:
            await self._take_over_reused()
            while True:
                self._cancel_blocked()
                if not self.stopping:
                    for name in self._ready(running):
                        running[name] = asyncio.create_task(self._run_task(name))
                if not running:
                    break
                done, _ = await asyncio.wait(
                    running.values(), return_when=asyncio.FIRST_COMPLETED
                )
                for name, task in list(running.items()):
                    if task in done:
                        del running[name]
                        task.result()  # a bug in the runner is not hidden
                if self.settings.fail_fast and not self.stopping:
                    failed = self._first_failed()
                    if failed:
                        await self.stop(
                            f"stopped: step {failed!r} failed and the job fails fast"
                        )
        finally:
            for task in running.values():
                task.cancel()
            for task in running.values():
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.states.close(publisher)
        return self._outcome()

    def _ready(self, running: dict[str, Any]) -> list[str]:
        free = self.settings.max_parallel - len(running)
        ready = []
        for name, task in self.tasks.items():
            if free <= 0:
                break
            record = self.records[name]
            if record.state is not JobState.PENDING or name in running:
                continue
            if all(self.records[u].state is JobState.SUCCEEDED for u in task.upstream):
                ready.append(name)
                free -= 1
        return ready

    def _cancel_blocked(self) -> None:
        """Tasks below a task that did not succeed will never run."""
        for name, task in self.tasks.items():  # upstream tasks come first
            record = self.records[name]
            if record.state is not JobState.PENDING:
                continue
            if self.stopping:
                self._end(name, JobState.CANCELLED, f"not run: {self.stopping}")
                continue
            for up in task.upstream:
                state = self.records[up].state
                if state.is_terminal and state is not JobState.SUCCEEDED:
                    self._end(
                        name,
                        JobState.CANCELLED,
                        f"not run: upstream step {up!r} {state.value}",
                    )
                    break

    def _first_failed(self) -> str:
        for name, record in self.records.items():
            if record.state is JobState.FAILED:
                return name
        return ""

    async def stop(self, why: str) -> None:
        """Stop every running task and run no more (a cancel, fail-fast)."""
        if not self.stopping:
            self.stopping = why
        await asyncio.gather(
            *(terminate(p, self.settings.terminate_grace) for p in self.procs.values())
        )

    def _outcome(self) -> Outcome:
        counts = count_states(self.records.values())
        if counts.get("SUCCEEDED", 0) == len(self.records):
            return Outcome(True)
        failed = [r for r in self.records.values() if r.state is JobState.FAILED]
        if failed:
            first = failed[0]
            error = first.error or {}
            detail = f"{error.get('type', 'Error')}: {error.get('message', '')}"
            names = ", ".join(repr(r.name) for r in failed[:10])
            more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
            message = (
                f"{len(failed)} of {len(self.records)} steps of job {self.job_id} "
                f"failed ({names}{more}); step {first.name!r}: {detail}. See its "
                f"log: dask batch logs {self.job_id} --task {first.name}"
            )
            return Outcome.failure("TasksFailed", message)
        return Outcome.failure(
            "TasksCancelled", self.stopping or f"not every step ran: {counts}"
        )

    # -- one task ------------------------------------------------------------------
    def _end(
        self, name: str, state: JobState, message: str = "", **fields: Any
    ) -> None:
        record = self.records[name]
        record.state = state
        record.message = message
        record.finished = utcnow()
        for key, value in fields.items():
            setattr(record, key, value)
        self.states.changed()

    def _launch(self, name: str, outcome_path: str) -> MainLaunch:
        task = self.tasks[name]
        upstream = {
            u: {
                "digest": self.records[u].result_digest,
                "hmac": self.records[u].result_hmac,
            }
            for u in task.upstream
        }
        return dataclasses.replace(
            self.base_launch,
            name=f"{self.base_launch.name}/{name}",
            outcome_path=outcome_path,
            workdir=os.path.join(self.folder(name), "work"),
            artifacts_dir=self.artifacts_dir(name),
            task=name,
            array_index=task.index,
            params=dict(task.params),
            pass_upstream=task.pass_upstream,
            upstream=upstream,
            upstream_dirs={u: self.artifacts_dir(u) for u in task.upstream},
        )

    async def _run_task(self, name: str) -> None:
        folder = self.folder(name)
        await asyncio.to_thread(os.makedirs, folder, 0o700, True)
        await asyncio.to_thread(os.makedirs, self.artifacts_dir(name), 0o700, True)
        log_path = os.path.join(folder, LOG_FILE)
        upload = LogUpload(
            self.store,
            self.user,
            self.job_id,
            log_path,
            self.settings.log_chunk_bytes,
            task=name,
        )
        record = self.records[name]
        record.state, record.started = JobState.RUNNING, utcnow()
        self.states.changed()
        try:
            outcome = await self._attempts(name, log_path, upload)
        finally:
            try:
                await asyncio.to_thread(upload.upload)
            except Exception:
                logger.warning(
                    "dask-batch: log of step %s not stored", name, exc_info=True
                )
        await self.states.read_progress(record)  # its last report
        if outcome.succeeded:
            self._end(
                name,
                JobState.SUCCEEDED,
                result_digest=outcome.result_digest,
                result_hmac=outcome.result_hmac,
                result_type=outcome.result_type,
                result_bytes=outcome.result_bytes,
            )
        else:
            error = outcome.error or ErrorInfo("RunnerError", "no outcome recorded")
            state = JobState.CANCELLED if self.stopping else JobState.FAILED
            message = self.stopping or f"{error.type}: {error.message}"
            self._end(name, state, message, error=error.to_dict())
        took = record.duration.total_seconds() if record.duration else 0.0
        note_in_log(
            self.job_log,
            f"dask-batch: step {name!r} {record.state.value} after {took:.1f} s"
            + (f": {record.message}" if record.message else ""),
        )

    async def _attempts(self, name: str, log_path: str, upload: LogUpload) -> Outcome:
        settings = self.settings
        attempt = 1
        while True:
            self.records[name].attempt = upload.attempt = attempt
            self.states.changed()
            outcome = await self._run_once(name, log_path, upload)
            error = outcome.error
            if (
                error is None
                or self.stopping
                or attempt > settings.retries
                or not named_in(settings.retry_on, error.type)
            ):
                return outcome
            attempt += 1
            note_in_log(
                log_path,
                f"dask-batch: attempt {attempt} of step {name!r} after "
                f"{error.type}: {error.message}",
            )

    async def _run_once(self, name: str, log_path: str, upload: LogUpload) -> Outcome:
        outcome_path = os.path.join(self.folder(name), OUTCOME_FILE)
        with contextlib.suppress(FileNotFoundError):
            os.remove(outcome_path)
        launch = self._launch(name, outcome_path)
        proc = await self._start_process(log_path, launch)
        self.procs[name] = proc
        uploader = asyncio.create_task(self._upload_periodically(upload))
        timeout = self.settings.timeout
        try:
            return await await_outcome(
                proc,
                outcome_path,
                timeout,
                self.settings.terminate_grace,
                f"timed out: step {name!r} ran longer than the job's timeout of "
                f"{timeout or 0:g} s and was stopped",
                [uploader],
            )
        finally:
            self.procs.pop(name, None)
            await asyncio.to_thread(shutil.rmtree, launch.workdir, ignore_errors=True)

    async def _start_process(self, log_path: str, launch: MainLaunch) -> Any:
        """The task's main process: forked by the zygote, else a new one."""
        if self.zygote is not None:
            try:
                return await self.zygote.fork(log_path, launch)
            except RuntimeError as exc:
                note_in_log(
                    self.job_log,
                    f"dask-batch: {exc}; the next tasks start as new processes",
                )
                self.zygote = None
        proc = MainProcess(await asyncio.to_thread(spawn_main, log_path))
        proc.launch(launch.to_json())
        return proc

    async def _upload_periodically(self, upload: LogUpload) -> None:
        while True:
            await asyncio.sleep(self.settings.log_upload_interval)
            try:
                await asyncio.to_thread(upload.upload)
            except Exception:
                logger.warning("dask-batch: log upload failed", exc_info=True)

    async def _take_over_reused(self) -> None:
        """Tasks the spec takes over from an earlier job: their outputs, copied."""
        for name, task in self.tasks.items():
            if task.reuse is None or self.reuse is None:
                continue
            try:
                fields = await asyncio.to_thread(
                    self.reuse, task, self.artifacts_dir(name)
                )
            except Exception as exc:
                # Run it instead: the earlier outputs are gone or changed.
                note_in_log(
                    self.job_log,
                    f"dask-batch: step {name!r} runs again: the outputs of job "
                    f"{task.reuse.get('job')} cannot be taken over ({exc})",
                )
                continue
            self._end(
                name,
                JobState.SUCCEEDED,
                f"unchanged: outputs of job {task.reuse.get('job')} reused",
                reused_from=str(task.reuse.get("job")),
                **fields,
            )
            self.records[name].started = self.records[name].finished


def result_name(task: str) -> str:
    """A task's result in the job's folder."""
    return task_path(task, RESULT)


def graph_settings(spec: dict[str, Any], config: Callable[[str], Any]) -> GraphSettings:
    """The settings every task of the job runs with."""
    from dask.utils import parse_bytes

    limit = spec.get("max_parallel")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        limit = int(config("batch.tasks.max-parallel"))
    # Each step is a process beside the scheduler: bounded whatever was asked.
    ceiling = max(1, int(config("batch.tasks.max-processes")))
    return GraphSettings(
        max_parallel=min(limit, ceiling),
        fail_fast=spec.get("fail_fast") is True,
        timeout=spec.get("timeout"),
        retries=int(spec.get("retries") or 0),
        retry_on=list(spec.get("retry_on") or []),
        log_chunk_bytes=parse_bytes(config("batch.runner.log-chunk-size")),
        log_upload_interval=parse_timedelta(config("batch.runner.log-upload-interval")),
        terminate_grace=parse_timedelta(config("batch.runner.terminate-grace")),
    )
