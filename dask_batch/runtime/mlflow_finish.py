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

import dataclasses
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

from dask_batch.storage.store import JobStore

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
