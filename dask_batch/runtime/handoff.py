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

from dask_batch.core.records import ErrorInfo
from dask_batch.core.tasks import task_path

#: The runner's pid, in main's environment: main's process exits with it.
ENV_RUNNER_PID = "DASK_BATCH_RUNNER_PID"
#: The file, in the runner's private folder, where main's process reports back
#: (the log is not parsed).
OUTCOME_FILE = "outcome.json"


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
