"""The options every submission takes, declared once.

``BatchClient.submit``, ``submit_script``, ``submit_notebook`` and ``dask batch
submit`` all take these; :class:`SubmitOptions` is where they are declared,
defaulted and documented. Client side; imports no client code.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["SubmitOptions"]

EnvSpec = Mapping[str, str] | Sequence[str] | str
FilesSpec = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


@dataclass(frozen=True)
class SubmitOptions:
    """How a batch job runs: the keyword options of every ``submit`` method.

    Pass them as keywords (``batch.submit(main, workers=4, timeout="2h")``)
    or as one object (``batch.submit(main, options=SubmitOptions(...))``);
    the command line takes the same as ``--workers``, ``--timeout``, ....

    Parameters
    ----------
    name : str, optional
        A display name. Default: the function's, script's or notebook's name.
    workers : int, optional
        Workers to start. Default ``batch.workers``. 0 runs main with a
        scheduler and no workers.
    adapt : (int, int), optional
        Adaptive scaling between ``minimum`` and ``maximum`` workers, instead
        of ``workers``.
    cluster_options : dict, optional
        Options for the gateway (``gateway.cluster_options()`` lists them);
        checked before anything is created.
    env : dict or list of str, optional
        Environment variables for main: ``{"KEY": "value"}``, ``"KEY=value"``
        items, or names to copy from this process (``["AWS_PROFILE"]``).
        Values are stored encrypted; records and listings hold only names.
    files : path or list of paths, optional
        Files to upload as main's working directory (a directory's contents,
        or single files), up to ``batch.upload-limit``.
    timeout : float or str, optional
        Run-time limit of main (seconds, or ``"2h"``). At the limit main is
        stopped, the job FAILS with a ``JobTimeout`` error ("timed out") and
        its cluster is stopped.
    idempotency_key : str, optional
        Submitting again with the same key (say, after a network error)
        returns the job that key already started instead of a second one.
        Keys are per user and kept with the job records.
    retries : int
        How many more times main may run: after a failure of its cluster (the
        scheduler died, the cluster vanished: the job would be LOST) on a new
        cluster, and after an exception listed in ``retry_on`` in the same
        cluster. Attempts are recorded (``status().attempt``). A retry on a
        new cluster starts when someone waits for the job (``wait``,
        ``result``) or reconciles (``BatchClient.reconcile``, ``dask batch
        reconcile``), or with nobody looking by the hub service or the
        local gateway's keeper; never from a read such as ``status`` or
        ``jobs``. For a pipeline or an array, ``retries`` and ``retry_on``
        also apply to each step or element.
    retry_on : list of exception classes or names
        Exceptions of main that are retried (default: none; a user error is
        not retried unless named here).
    memory_limit : int or str, optional
        Address-space limit of main's process (``"4 GiB"``, at least 256 MiB):
        past it, allocations fail (``MemoryError``) and the job FAILS, instead
        of the scheduler's host running out of memory.
    mlflow : bool or str, optional
        Make the job an MLflow run (``pip install 'dask-batch[mlflow]'``):
        True, or the name of its experiment (default
        ``batch.mlflow.experiment``, one per user). The run is created at
        submit with main's keyword arguments as params; main's process gets
        ``MLFLOW_RUN_ID`` and the tracking server (``MLFLOW_TRACKING_URI``,
        credentials as encrypted env values), ``dask_batch.report`` progress
        is logged as the ``progress`` metric, and when the job ends its log
        and artifacts are attached and the run is FINISHED, FAILED or
        KILLED. Default ``batch.mlflow.enabled``.
    after : list of Job or job ids
        Jobs this one waits for: it stays PENDING ("waiting for ...") with
        no cluster until every one of them SUCCEEDED, and is CANCELLED with
        the reason if one of them fails, is cancelled or is lost. A
        :class:`~dask_batch.Job` passed among main's arguments is waited for
        too, and replaced by the value its main returned.
    labels : dict, optional
        Short text filed with the job and shown in its record
        (``status().labels``), in listings and on the jobs page; a
        schedule's runs carry the schedule's. For tools that file their own
        details with a job (JupyterLab's Notebook Jobs does). Keys are up to
        63 letters, digits and ``._/-``; values up to 4,096 characters, 16 KiB
        in all. Not secret: use ``env`` for secrets.

    Examples
    --------
    >>> from dask_batch import SubmitOptions
    >>> SubmitOptions(workers=4, timeout="2h").replace(name="train").name
    'train'
    """

    name: str | None = None
    workers: int | None = None
    adapt: tuple[int, int] | None = None
    cluster_options: Mapping[str, Any] | None = None
    env: EnvSpec | None = None
    files: FilesSpec | None = None
    timeout: float | str | None = None
    idempotency_key: str | None = None
    retries: int = 0
    retry_on: Sequence[type[BaseException] | str] = ()
    memory_limit: int | str | None = None
    mlflow: bool | str | None = None
    after: Sequence[Any] = ()
    labels: Mapping[str, str] | None = None

    @classmethod
    def names(cls) -> frozenset[str]:
        """The option names."""
        return frozenset(f.name for f in dataclasses.fields(cls))

    @classmethod
    def merge(
        cls, options: SubmitOptions | None, keywords: Mapping[str, Any]
    ) -> SubmitOptions:
        """``options`` with ``keywords`` on top; unknown keywords are a TypeError."""
        unknown = sorted(set(keywords) - cls.names())
        if unknown:
            raise TypeError(
                f"unexpected submit option(s) {', '.join(unknown)}; the options "
                f"are {', '.join(sorted(cls.names()))}"
            )
        return dataclasses.replace(options or cls(), **keywords)

    @classmethod
    def split(
        cls, options: SubmitOptions | None, keywords: Mapping[str, Any]
    ) -> tuple[SubmitOptions, dict[str, Any]]:
        """Options from ``keywords``, and the rest (main's keyword arguments)."""
        names = cls.names()
        ours = {k: v for k, v in keywords.items() if k in names}
        rest = {k: v for k, v in keywords.items() if k not in names}
        return cls.merge(options, ours), rest

    def replace(self, **changes: Any) -> SubmitOptions:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)
