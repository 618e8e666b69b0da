"""dask-batch: batch jobs on Dask Gateway.

Submit a function from a notebook, walk away, and fetch its result later from
anywhere::

    from dask_batch import BatchClient

    batch = BatchClient()
    job = batch.submit(main, 10, lr=0.1, name="train", workers=4)
    ...
    BatchClient().result(job.id)
"""

from . import config as _config  # noqa: F401  (loads batch.* defaults)
from ._client import BatchClient, Job
from ._context import CurrentJob, artifacts_path, current_job, report
from ._exceptions import (
    CorruptRecordError,
    DaskBatchError,
    JobCancelledError,
    JobError,
    JobFailedError,
    JobLostError,
    JobNotFoundError,
    StorageError,
    SubmitError,
)
from ._records import JobRecord, JobState
from ._version import __version__

__all__ = [
    "BatchClient",
    "CorruptRecordError",
    "CurrentJob",
    "DaskBatchError",
    "Job",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobLostError",
    "JobNotFoundError",
    "JobRecord",
    "JobState",
    "StorageError",
    "SubmitError",
    "__version__",
    "artifacts_path",
    "current_job",
    "report",
]
