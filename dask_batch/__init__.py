"""dask-batch: batch jobs on Dask Gateway.

Submit a function from a notebook, walk away, and fetch its result later from
anywhere::

    from dask_batch import BatchClient

    batch = BatchClient()
    job = batch.submit(main, 10, lr=0.1, name="train", workers=4)
    ...
    BatchClient().result(job.id)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dask_batch import config as _config  # noqa: F401  (loads batch.* defaults)
from dask_batch._version import __version__
from dask_batch.core.exceptions import (
    AuthenticationError,
    CorruptRecordError,
    DaskBatchError,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobLostError,
    JobNotFoundError,
    MissingSecretError,
    ResultIntegrityError,
    StorageError,
    SubmitError,
    TasksFailedError,
)
from dask_batch.core.options import SubmitOptions
from dask_batch.core.records import ErrorInfo, JobRecord, JobState

if TYPE_CHECKING:
    from dask_batch.batch_client import BatchClient, Job
    from dask_batch.core.tasks import TaskRecord
    from dask_batch.job_service import JobService
    from dask_batch.runtime.context import (
        CurrentJob,
        artifacts_dir,
        artifacts_path,
        current_job,
        report,
    )
    from dask_batch.workflows.pipelines import Pipeline, Step

# Imported on first use: ``dask`` loads this package's CLI entry point for every
# ``dask`` command (``dask worker``, ``dask scheduler``), and the scheduler-side
# runner imports this package too; neither should pay for dask_gateway and
# aiohttp or fsspec, whose imports are a large share of their start-up.
_LAZY = {
    "BatchClient": "dask_batch.batch_client",
    "Job": "dask_batch.batch_client",
    "JobService": "dask_batch.job_service",
    "CurrentJob": "dask_batch.runtime.context",
    "artifacts_dir": "dask_batch.runtime.context",
    "artifacts_path": "dask_batch.runtime.context",
    "current_job": "dask_batch.runtime.context",
    "report": "dask_batch.runtime.context",
    "Step": "dask_batch.workflows.pipelines",
    "Pipeline": "dask_batch.workflows.pipelines",
    "TaskRecord": "dask_batch.core.tasks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AuthenticationError",
    "BatchClient",
    "CorruptRecordError",
    "CurrentJob",
    "DaskBatchError",
    "ErrorInfo",
    "Job",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobLostError",
    "JobNotFoundError",
    "JobRecord",
    "JobService",
    "JobState",
    "MissingSecretError",
    "Pipeline",
    "ResultIntegrityError",
    "Step",
    "StorageError",
    "SubmitError",
    "SubmitOptions",
    "TaskRecord",
    "TasksFailedError",
    "__version__",
    "artifacts_dir",
    "artifacts_path",
    "current_job",
    "report",
]
