"""What main can ask about its own job: ``current_job``, ``report``, artifacts.

Set up by main's process (``dask_batch.runtime.child``) before main runs; outside a
batch job ``current_job()`` is None, ``report`` does nothing and
``artifacts_dir`` and ``artifacts_path`` raise.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import posixpath
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

from dask_batch.core.exceptions import DaskBatchError
from dask_batch.core.names import check_relative_path
from dask_batch.core.records import to_iso, utcnow
from dask_batch.core.tasks import task_path
from dask_batch.storage.store import PROGRESS, JobStore

__all__ = ["CurrentJob", "artifacts_dir", "artifacts_path", "current_job", "report"]

# At most one progress write per interval; the last report is always written.
REPORT_INTERVAL = 1.0


@dataclass(frozen=True)
class CurrentJob:
    """The batch job this process runs.

    Attributes
    ----------
    id, user, name : str
    artifacts_url : str
        fsspec URL of the job's artifacts prefix; ``fsspec.open`` on paths below
        it works inside main (the storage options are set up for you).
    storage_url : str
        Root of the job storage.
    artifacts_dir : str
        Local folder whose files are stored as the job's artifacts
        (:func:`artifacts_dir`).
    mlflow_run_id : str
        The job's MLflow run ("" if the job is not tracked).
    task : str
        In a pipeline, the step's name; in an array, the element's index as
        text ("" in a plain job).
    array_index : int or None
        The element's index in an array job (also ``DASK_BATCH_ARRAY_INDEX``).
    params : dict
        The step's parameters (a pipeline step's ``params``).
    upstream : dict
        Each upstream step's name, mapped to the local folder of the files
        it kept (its ``artifacts_dir()``), for steps of a pipeline.
    """

    id: str
    user: str
    name: str
    artifacts_url: str
    storage_url: str
    artifacts_dir: str = ""
    mlflow_run_id: str = ""
    task: str = ""
    array_index: int | None = None
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    upstream: dict[str, str] = dataclasses.field(default_factory=dict)


class _Reporter:
    def __init__(self, store: JobStore, job: CurrentJob) -> None:
        self.store = store
        self.job = job
        self.lock = threading.Lock()
        self.last_write = 0.0
        self.pending: dict[str, Any] | None = None
        self.metric_step = 0
        self.mlflow_client: Any = None
        self.mlflow_failed = False

    def report(self, progress: float | None, message: str) -> None:
        doc = {"progress": progress, "message": message, "updated": to_iso(utcnow())}
        with self.lock:
            self.pending = doc
            if time.monotonic() - self.last_write >= REPORT_INTERVAL:
                self._write()

    def flush(self) -> None:
        with self.lock:
            if self.pending is not None:
                self._write()

    def _write(self) -> None:
        assert self.pending is not None
        name = task_path(self.job.task, PROGRESS) if self.job.task else PROGRESS
        self.store.put_json(self.job.user, self.job.id, name, self.pending)
        if self.job.mlflow_run_id and self.pending["progress"] is not None:
            self._log_metric(float(self.pending["progress"]))
        self.pending = None
        self.last_write = time.monotonic()

    def _log_metric(self, progress: float) -> None:
        """Log progress as the run's metric; MLflow trouble never stops main."""
        if self.mlflow_failed:
            return
        try:
            if self.mlflow_client is None:
                from mlflow.tracking import MlflowClient

                self.mlflow_client = MlflowClient()  # tracking URI: environment
            self.mlflow_client.log_metric(
                self.job.mlflow_run_id, "progress", progress, step=self.metric_step
            )
            self.metric_step += 1
        except Exception as exc:
            self.mlflow_failed = True
            print(
                f"dask-batch: job {self.job.id}: progress is not logged to MLflow "
                f"run {self.job.mlflow_run_id} any more: {type(exc).__name__}: {exc}",
                file=sys.stderr,
            )


_active: _Reporter | None = None

# Describes the job to main's own subprocesses (a notebook job's kernel, a
# script's workers pool): they get current_job(), report() and artifacts too.
ENV_CURRENT_JOB = "DASK_BATCH_CURRENT_JOB"


def activate(store: JobStore, job: CurrentJob) -> _Reporter:
    global _active
    _active = _Reporter(store, job)
    os.environ[ENV_CURRENT_JOB] = json.dumps(dataclasses.asdict(job))
    return _active


def _from_environment() -> _Reporter | None:
    global _active
    described = os.environ.get(ENV_CURRENT_JOB)
    if _active is None and described:
        job = CurrentJob(**json.loads(described))
        # Storage options arrive through fsspec's FSSPEC_<PROTOCOL> variables.
        _active = _Reporter(JobStore(job.storage_url), job)
        # A subprocess's last report is kept too (writes are rate-limited).
        atexit.register(_active.flush)
    return _active


# An array element running in a worker's thread: its own current_job().
_element = threading.local()


@contextlib.contextmanager
def element_job(job: CurrentJob) -> Iterator[None]:
    """``current_job()`` is ``job`` in this thread while the block runs."""
    before = getattr(_element, "job", None)
    _element.job = job
    try:
        yield
    finally:
        _element.job = before


def current_job() -> CurrentJob | None:
    """The batch job this code runs in, or None outside a batch job.

    Examples
    --------
    >>> import dask_batch
    >>> job = dask_batch.current_job()      # doctest: +SKIP
    >>> job.id, job.artifacts_url           # doctest: +SKIP
    """
    element = getattr(_element, "job", None)
    if element is not None:
        return element
    active = _from_environment()
    return active.job if active is not None else None


def report(progress: float | None = None, message: str = "") -> None:
    """Record main's progress in the job record (shown by status, list and HTML).

    Writes are rate-limited to one per second; the latest report is always
    kept. Outside a batch job this does nothing, so the same code runs locally.

    Parameters
    ----------
    progress : float, optional
        Fraction done, from 0 to 1.
    message : str
        A short note, such as ``"epoch 4/10"``.

    Examples
    --------
    >>> for epoch in range(10):                               # doctest: +SKIP
    ...     train_one(epoch)
    ...     dask_batch.report((epoch + 1) / 10, f"epoch {epoch + 1}/10")
    """
    if progress is not None and not 0 <= progress <= 1:
        raise ValueError(f"progress must be between 0 and 1, got {progress!r}")
    active = _from_environment()
    if active is not None:
        active.report(progress, str(message))


def artifacts_dir(*parts: str) -> str:
    """A local path in the job's artifacts folder, for libraries that want a path.

    Files main (or its subprocesses) writes below this folder are stored as
    the job's artifacts when main ends, however it ends (an error, a
    timeout, a cancel), and every ``batch.artifacts.sync-interval`` while it
    runs, so a long job's checkpoints are safe. Regular files only (links
    are not stored), at most ``batch.artifacts.limit`` in all. Parent
    folders of the returned path are created.

    Parameters
    ----------
    *parts : str
        Path components below the folder; none: the folder itself.

    Returns
    -------
    str
        A local file system path.

    Examples
    --------
    >>> path = dask_batch.artifacts_dir("model.pt")         # doctest: +SKIP
    >>> torch.save(model.state_dict(), path)               # doctest: +SKIP
    >>> fig.savefig(dask_batch.artifacts_dir("plots", "loss.png"))  # doctest: +SKIP
    """
    job, relative = _artifact_parts("artifacts_dir", parts)
    if not job.artifacts_dir:  # no runner keeps this job's local files
        _outside("artifacts_dir")
    if not relative:
        return job.artifacts_dir
    path = os.path.join(job.artifacts_dir, *relative.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


def artifacts_path(*parts: str) -> str:
    """fsspec URL under the job's artifacts prefix (a URL, not a local path).

    For writing with ``fsspec.open``; libraries that want a local path
    (``torch.save``, ``to_netcdf``, ``savefig``, plain ``open``) write to
    :func:`artifacts_dir` instead. Files written here are listed by
    ``job.artifacts()`` and downloadable with ``job.download_artifacts()`` or
    ``dask batch artifacts --download``.

    Parameters
    ----------
    *parts : str
        Path components below the prefix.

    Examples
    --------
    >>> import fsspec                                          # doctest: +SKIP
    >>> with fsspec.open(dask_batch.artifacts_path("model.pkl"), "wb") as f:
    ...     pickle.dump(model, f)
    """
    job, relative = _artifact_parts("artifacts_path", parts)
    if not relative:
        return job.artifacts_url
    return posixpath.join(job.artifacts_url, relative)


def _outside(function: str) -> NoReturn:
    raise DaskBatchError(
        f"{function}() works only inside a batch job's main; use "
        "Job.artifacts() from outside."
    )


def _artifact_parts(function: str, parts: tuple[str, ...]) -> tuple[CurrentJob, str]:
    """The current job, and ``parts`` as a checked relative path ("" if none)."""
    job = current_job()
    if job is None:
        _outside(function)
    if not parts:
        return job, ""
    relative = check_relative_path("/".join(parts), what="artifact path", job_id=job.id)
    return job, relative
