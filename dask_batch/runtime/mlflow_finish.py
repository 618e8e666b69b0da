"""End a job's MLflow run: ``python -m dask_batch.runtime.mlflow_finish``.

Started by the job runner once main has ended, however it ended (a result,
an error, a timeout, a killed process, a cancel), so that the run's final
status never depends on main's own code. It attaches the job's log
(``dask-batch/job.log``) and the job's artifacts (at the run's artifact
root), then sets the status. For a cancelled job the status goes first: the
cluster is on its way down.

A process of its own: MLflow is imported here, never in the scheduler, and
the tracking server's credentials (from the job's encrypted env values) are
in this process's environment only. Reads a :class:`FinishRun` as JSON on
stdin.

Scheduler side: imports nothing from the client or CLI modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dask.config
from dask.utils import parse_timedelta

from dask_batch.storage.store import JobStore

logger = logging.getLogger("distributed.scheduler.dask_batch")

#: Where the job's log goes among the run's artifacts.
LOG_ARTIFACT = "dask-batch/job.log"

#: MLflow's status for each final job state.
RUN_STATUS = {
    "SUCCEEDED": "FINISHED",
    "FAILED": "FAILED",
    "LOST": "FAILED",
    "CANCELLED": "KILLED",
}


@dataclass(frozen=True)
class FinishRun:
    """What the runner hands over: the run, its status, and where the files are."""

    run_id: str
    job_id: str
    user: str
    status: str
    log_path: str
    storage_url: str
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)
    message: str = ""  # why a job that did not succeed ended

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> FinishRun:
        return cls(**json.loads(data))


async def end_run(
    finish: FinishRun, env: dict[str, str], timeout: float
) -> tuple[bool, str]:
    """In the runner: end the run in a process of this module's; (ended, output)."""
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
    return proc.returncode == 0, said


async def end_tracked_run(
    finish: FinishRun,
    env: dict[str, str],
    upload_log: Callable[[], None] | None,
) -> None:
    """In the runner: end the job's run; say in the job's log if it failed.

    ``upload_log`` stores the log's new lines (the note) at once.
    """
    timeout = parse_timedelta(dask.config.get("batch.mlflow.finish-timeout"))
    ended, said = await end_run(finish, env, timeout)
    if ended:
        logger.info("dask-batch: job %s: %s", finish.job_id, said)
        return
    logger.warning("dask-batch: MLflow run %s not ended: %s", finish.run_id, said)
    if finish.log_path and os.path.exists(finish.log_path) and upload_log:
        note = (
            f"dask-batch: the MLflow run {finish.run_id} of job {finish.job_id} "
            f"could not be given its final status {finish.status}: {said}\n"
        )
        with open(finish.log_path, "ab") as log:
            log.write(note.encode())
        try:
            await asyncio.to_thread(upload_log)
        except Exception:
            logger.exception("dask-batch: log upload of %s failed", finish.job_id)


def _log_artifacts(client: Any, finish: FinishRun) -> None:
    if finish.log_path and os.path.exists(finish.log_path):
        with tempfile.TemporaryDirectory() as tmp:
            log = os.path.join(tmp, os.path.basename(LOG_ARTIFACT))
            with open(finish.log_path, "rb") as src, open(log, "wb") as dst:
                dst.write(src.read())
            client.log_artifact(finish.run_id, log, os.path.dirname(LOG_ARTIFACT))
    store = JobStore(finish.storage_url, finish.storage_options)
    names = store.artifacts(finish.user, finish.job_id)  # names checked there
    if not names:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            local = os.path.join(tmp, *name.split("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            store.get_artifact(finish.user, finish.job_id, name, local)
        client.log_artifacts(finish.run_id, tmp)


def main() -> None:
    finish = FinishRun.from_json(sys.stdin.buffer.read())
    from mlflow.tracking import MlflowClient

    client = MlflowClient()  # MLFLOW_TRACKING_URI and credentials: environment
    if finish.message:
        client.set_tag(finish.run_id, "dask_batch.error", finish.message[:5000])
    if finish.status == "KILLED":
        client.set_terminated(finish.run_id, finish.status)
    try:
        _log_artifacts(client, finish)
    finally:
        if finish.status != "KILLED":
            client.set_terminated(finish.run_id, finish.status)
    print(
        f"dask-batch: MLflow run {finish.run_id} of job {finish.job_id} ended "
        f"{finish.status}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
