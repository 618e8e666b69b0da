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

from . import config as _config  # noqa: F401  (loads batch.* defaults)
from ._exceptions import (
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
from ._options import SubmitOptions
from ._records import ErrorInfo, JobRecord, JobState
from ._version import __version__

if TYPE_CHECKING:
    from ._client import BatchClient
    from ._context import (
        CurrentJob,
        artifacts_dir,
        artifacts_path,
        current_job,
        report,
    )
    from ._job import Job
    from ._pipeline import Pipeline, Step
    from ._tasks import TaskRecord

# Imported on first use: ``dask`` loads this package's CLI entry point for every
# ``dask`` command (``dask worker``, ``dask scheduler``), and the scheduler-side
# runner imports this package too; neither should pay for dask_gateway and
# aiohttp or fsspec, whose imports are a large share of their start-up.
_LAZY = {
    "BatchClient": "._client",
    "Job": "._job",
    "CurrentJob": "._context",
    "artifacts_dir": "._context",
    "artifacts_path": "._context",
    "current_job": "._context",
    "report": "._context",
    "Step": "._pipeline",
    "Pipeline": "._pipeline",
    "TaskRecord": "._tasks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
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
