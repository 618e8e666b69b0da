"""What main can ask about its own job: ``current_job``, ``report``, ``artifacts_path``.

Set up by main's process (``dask_batch._child``) before main runs; outside a
batch job ``current_job()`` is None, ``report`` does nothing and
``artifacts_path`` raises.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import threading
import time
from dataclasses import dataclass
from typing import Any

from ._exceptions import DaskBatchError
from ._records import to_iso, utcnow
from ._store import PROGRESS, JobStore
from ._validate import check_relative_path

__all__ = ["CurrentJob", "artifacts_path", "current_job", "report"]

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
    """

    id: str
    user: str
    name: str
    artifacts_url: str
    storage_url: str


class _Reporter:
    def __init__(self, store: JobStore, job: CurrentJob) -> None:
        self.store = store
        self.job = job
        self.lock = threading.Lock()
        self.last_write = 0.0
        self.pending: dict[str, Any] | None = None

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
        self.store.put_json(self.job.user, self.job.id, PROGRESS, self.pending)
        self.pending = None
        self.last_write = time.monotonic()


_active: _Reporter | None = None

# Describes the job to main's own subprocesses (a notebook job's kernel, a
# script's workers pool): they get current_job(), report() and artifacts too.
ENV_CURRENT_JOB = "DASK_BATCH_CURRENT_JOB"


def _activate(store: JobStore, job: CurrentJob) -> _Reporter:
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
    return _active


def current_job() -> CurrentJob | None:
    """The batch job this code runs in, or None outside a batch job.

    Examples
    --------
    >>> import dask_batch
    >>> job = dask_batch.current_job()      # doctest: +SKIP
    >>> job.id, job.artifacts_url           # doctest: +SKIP
    """
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


def artifacts_path(*parts: str) -> str:
    """fsspec URL under the job's artifacts prefix.

    Files written there are listed by ``job.artifacts()`` and downloadable
    with ``job.download_artifacts()`` or ``dask batch artifacts --download``.

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
    job = current_job()
    if job is None:
        raise DaskBatchError(
            "artifacts_path() works only inside a batch job's main; use "
            "Job.artifacts() from outside."
        )
    if not parts:
        return job.artifacts_url
    relative = check_relative_path("/".join(parts), what="artifact path", job_id=job.id)
    return posixpath.join(job.artifacts_url, relative)
