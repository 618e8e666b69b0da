"""The exceptions dask-batch raises.

::

    DaskBatchError
    ├── JobNotFoundError (KeyError)       unknown job id
    ├── JobError                          a job ended without a result
    │   ├── JobFailedError                main raised, or its process died
    │   │   └── TasksFailedError          steps of a pipeline or array elements failed
    │   ├── JobCancelledError             the job was cancelled
    │   └── JobLostError                  the cluster vanished mid-job
    ├── SubmitError (ValueError)          bad input to submit: nothing was created
    ├── StorageError (OSError)            the job store cannot be used
    ├── CorruptRecordError (ValueError)   a stored record cannot be parsed
    ├── ResultIntegrityError              stored bytes fail their signature: not loaded
    ├── MissingSecretError                this machine lacks the user's secret
    └── AuthenticationError               who the user is cannot be established

Every error about a job carries its id as ``.job_id`` (None only where no job
is involved, such as a storage URL that cannot be used at all), and every
message names the job id and says what to do next.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "CorruptRecordError",
    "DaskBatchError",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "JobLostError",
    "JobNotFoundError",
    "MissingSecretError",
    "ResultIntegrityError",
    "StorageError",
    "SubmitError",
    "TasksFailedError",
]


def not_submitted_message(job_id: str, reason: str) -> str:
    """The one wording of "this job was not submitted, because ..."."""
    return f"Job {job_id!r} not submitted: {reason}"


class DaskBatchError(Exception):
    """Base class of every error raised by dask-batch.

    Attributes
    ----------
    job_id : str or None
        The job the error is about, if any.
    """

    def __init__(self, *args: Any, job_id: str | None = None) -> None:
        self.job_id = job_id
        super().__init__(*args)


class JobNotFoundError(DaskBatchError, KeyError):
    """No job with this id exists in the caller's job storage."""

    def __init__(self, job_id: str, where: str = "", reason: str = "") -> None:
        place = f" in {where}" if where else ""
        why = f": {reason}" if reason else ""
        super().__init__(
            f"No job {job_id!r}{place}{why}. Check the id with `BatchClient().jobs()`, "
            "and that storage and user match the ones used to submit it.",
            job_id=job_id,
        )

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class JobError(DaskBatchError):
    """A job ended without a result."""

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message, job_id=job_id)


class JobFailedError(JobError):
    """Main raised an exception, or its process died.

    Attributes
    ----------
    job_id : str
    remote_type : str
        Qualified name of the exception raised in main (for example
        ``"builtins.ValueError"``), or ``"ProcessExit"`` when main's process died.
    remote_message : str
        ``str()`` of the remote exception.
    remote_traceback : str
        The remote traceback, formatted.
    """

    def __init__(
        self,
        job_id: str,
        remote_type: str,
        remote_message: str,
        remote_traceback: str = "",
        log_tail: str = "",
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.log_tail = log_tail
        text = f"Job {job_id!r} failed: {remote_type}: {remote_message}"
        if remote_traceback:
            text += f"\n\nRemote traceback:\n{remote_traceback.rstrip()}"
        if log_tail:
            text += f"\n\nLast lines of the job's log:\n{log_tail.rstrip()}"
        text += f"\n\nSee the full log with `BatchClient().logs({job_id!r})`."
        super().__init__(job_id, text)

    @classmethod
    def from_error_record(
        cls, job_id: str, error: dict[str, Any], log_tail: str = ""
    ) -> JobFailedError:
        return cls(
            job_id,
            error.get("type", "UnknownError"),
            error.get("message", ""),
            error.get("traceback", ""),
            log_tail,
        )


class TasksFailedError(JobFailedError):
    """Steps of a pipeline, or elements of an array, did not succeed.

    Attributes
    ----------
    failed : dict
        Each step name (or element index) that did not succeed, mapped to
        why: ``"FAILED: ValueError: ..."``, or ``"CANCELLED: not run: ..."``.
    partial : dict
        The values of the steps (or elements) that succeeded, by name (or
        index): the partial result.
    """

    def __init__(
        self,
        job_id: str,
        failed: dict[Any, str],
        partial: dict[Any, Any],
        what: str = "steps",
    ) -> None:
        self.failed = failed
        self.partial = partial
        total = len(failed) + len(partial)
        shown = "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:5])
        more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
        message = (
            f"{len(failed)} of {total} {what} did not succeed ({shown}{more}). "
            f"The others' values are in this error's .partial, or "
            f"result({job_id!r}, partial=True)"
        )
        super().__init__(job_id, "TasksFailed", message)


class JobCancelledError(JobError):
    """The job was cancelled before it finished."""


class JobLostError(JobError):
    """The job's cluster is gone but the job never recorded an outcome."""


class SubmitError(DaskBatchError, ValueError):
    """Bad input to ``submit``, or a cluster the gateway refused.

    Raised through :meth:`not_submitted` when nothing was created (no
    record, no cluster).
    """

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message, job_id=job_id)

    @classmethod
    def not_submitted(cls, job_id: str, reason: str) -> SubmitError:
        """The error for input refused before anything was created."""
        return cls(job_id, not_submitted_message(job_id, reason))


class StorageError(DaskBatchError, OSError):
    """The job storage cannot be reached, read or written."""


class CorruptRecordError(DaskBatchError, ValueError):
    """A stored job record is not valid."""


class ResultIntegrityError(DaskBatchError):
    """Stored bytes (a result, a payload) fail their signature; not loaded."""


class MissingSecretError(DaskBatchError):
    """This machine does not have the user's dask-batch secret.

    Bring it from the machine that submitted the job with ``dask batch secret
    export`` there and ``dask batch secret import`` here.
    """


class AuthenticationError(DaskBatchError):
    """The gateway or hub refused the credentials, or cannot say whose they are.

    dask-batch files records under the user that authentication names; it
    does not guess one from the local login where a gateway or hub knows.
    """
