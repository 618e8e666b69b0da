"""What the job runner and main's process tell each other.

The runner starts ``python -m dask_batch.runtime.child`` and writes a
:class:`MainLaunch` to its stdin as JSON (credentials never go on the command
line or in the environment); main's process writes an :class:`Outcome` to a
file in the runner's private directory when it is done. Both are frozen:
neither side changes what it was handed.

Scheduler side: imports nothing from the client or CLI modules.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from dask_batch.core.records import ErrorInfo, JobState
from dask_batch.core.tasks import task_path

#: The runner's pid, in main's environment: main's process exits with it.
ENV_RUNNER_PID = "DASK_BATCH_RUNNER_PID"
#: The file, in the runner's private folder, where main's process reports back
#: (the log is not parsed).
OUTCOME_FILE = "outcome.json"
#: The folder, in the runner's private one, whose files are the job's artifacts.
ARTIFACTS_DIR = "artifacts"


@dataclass(frozen=True)
class MainLaunch:
    """Everything main's process needs to run one attempt of a job."""

    job_id: str
    user: str
    name: str
    storage_url: str
    storage_options: dict[str, Any]
    storage_retry_for: float
    payload_signature: str
    scheduler_address: str
    tls_ca_file: str | None
    tls_cert: str | None
    tls_key: str | None
    outcome_path: str
    workdir: str
    artifacts_dir: str = ""
    mlflow_run_id: str = ""
    has_files: bool = False
    files_digest: str = ""
    memory_limit: int | None = None
    env_key: str = field(default="", repr=False)
    # A task of a pipeline or array job (see dask_batch.core.tasks): its name,
    # its index in an array, its parameters, whether main takes the upstream
    # results as `upstream=`, the digest and signature of each upstream
    # result, and the local folder of the files each upstream task kept.
    task: str = ""
    array_index: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    pass_upstream: bool = False
    upstream: dict[str, dict[str, str]] = field(default_factory=dict)
    upstream_dirs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_job(
        cls, scheduler: Any, spec: dict[str, Any], *, workdir: str, **fields: Any
    ) -> MainLaunch:
        """The launch of a job's main beside ``scheduler``, with its TLS files.

        ``workdir`` is the runner's private folder (outcome, artifacts, main's
        working directory below it); ``fields`` are the job's.
        """
        security = scheduler.security
        ca, cert, key = (
            os.path.abspath(p) if p and os.path.exists(p) else p
            for p in (
                security.tls_ca_file,
                security.tls_scheduler_cert,
                security.tls_scheduler_key,
            )
        )
        return cls(
            name=str(spec.get("name", "")),
            scheduler_address=scheduler.address,
            tls_ca_file=ca,
            tls_cert=cert,
            tls_key=key,
            outcome_path=os.path.join(workdir, OUTCOME_FILE),
            workdir=os.path.join(workdir, "work"),
            artifacts_dir=os.path.join(workdir, ARTIFACTS_DIR),
            has_files=bool(spec.get("files_bytes")),
            files_digest=str(spec.get("files_digest") or ""),
            memory_limit=spec.get("memory_limit"),
            **fields,
        )

    def own(self, name: str) -> str:
        """Where this launch keeps ``name`` (a result, an error) in the job's folder."""
        return task_path(self.task, name) if self.task else name

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_json(cls, data: bytes) -> MainLaunch:
        return cls(**json.loads(data))


@dataclass(frozen=True)
class Outcome:
    """How one run of main ended: a stored result, or an error."""

    succeeded: bool
    result_digest: str = ""
    result_hmac: str = ""
    result_type: str = ""
    result_bytes: int = 0
    error: ErrorInfo | None = None

    @classmethod
    def failure(cls, type: str, message: str, **more: Any) -> Outcome:
        return cls(False, error=ErrorInfo(type=type, message=message, **more))

    def final_record(
        self, stopped_from_outside: bool
    ) -> tuple[JobState, dict[str, Any]]:
        """The job's final state and record fields for this outcome."""
        if self.succeeded:
            return JobState.SUCCEEDED, {
                "result_digest": self.result_digest,
                "result_hmac": self.result_hmac,
                "result_type": self.result_type,
                "result_bytes": self.result_bytes,
            }
        error = self.error or ErrorInfo("RunnerError", "no outcome recorded")
        message = f"{error.type}: {error.message}"
        if stopped_from_outside:
            message = (
                "the cluster was stopped while main was running (cancelled, "
                "stopped by an admin, or by the gateway)"
            )
            error = ErrorInfo("ClusterStopped", message)
        return JobState.FAILED, {"error": error.to_dict(), "message": message}

    def write(self, path: str) -> None:
        """Write atomically: the runner never reads half an outcome."""
        doc = dataclasses.asdict(self)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: str) -> Outcome:
        """Raises OSError or ValueError if main's process left none."""
        with open(path) as f:
            doc = json.load(f)
        error = doc.get("error")
        return cls(
            succeeded=bool(doc["succeeded"]),
            result_digest=str(doc.get("result_digest", "")),
            result_hmac=str(doc.get("result_hmac", "")),
            result_type=str(doc.get("result_type", "")),
            result_bytes=int(doc.get("result_bytes") or 0),
            error=ErrorInfo.from_dict(error) if error else None,
        )


def retry_wanted(
    spec: dict[str, Any], error: ErrorInfo, attempt: int, stopped_from_outside: bool
) -> bool:
    """Whether to run main again in this cluster: only for the errors the
    user named (``retry_on``), while retries are left and the cluster is not
    being stopped."""
    if stopped_from_outside or attempt > int(spec.get("retries") or 0):
        return False
    return named_in(spec.get("retry_on") or [], error.type)


def named_in(retry_on: list[str], error_type: str) -> bool:
    """Whether ``retry_on`` names an error of ``error_type`` (its qualified
    name, or the class name alone)."""
    short = error_type.rsplit(".", 1)[-1]
    return any(name in (error_type, short) for name in retry_on)
