"""The client side: :class:`BatchClient` and :class:`Job`."""

from __future__ import annotations

import asyncio
import datetime
import getpass
import hashlib
import hmac
import html
import io
import json
import logging
import os
import tarfile
import time
import warnings
from collections.abc import (
    AsyncIterator,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any

import dask.config
from dask.utils import format_bytes, parse_bytes, parse_timedelta
from dask_gateway import Gateway
from dask_gateway.client import ClusterReport, ClusterStatus, GatewayClusterError
from dask_gateway.options import Options

from . import config as _config  # noqa: F401  (loads batch.* defaults)
from . import local as _local
from ._context import artifacts_url
from ._display import JobList, ProgressDisplay, html_table
from ._exceptions import (
    DaskBatchError,
    JobCancelledError,
    JobFailedError,
    JobLostError,
    JobNotFoundError,
    StorageError,
    SubmitError,
)
from ._gateway import BatchGateway
from ._pickling import dumps_payload, loads_result
from ._records import JobRecord, JobState, new_job_id, to_iso, utcnow
from ._runner import JobRunnerPlugin
from ._store import (
    ARTIFACTS,
    CLUSTER,
    FILES,
    PAYLOAD,
    SECRETS,
    SPEC,
    STATE,
    JobStore,
    digest,
    dumps_json,
    index_entry,
)

logger = logging.getLogger("dask_batch")

_ALIVE = {ClusterStatus.PENDING, ClusterStatus.RUNNING, ClusterStatus.STOPPING}
_ALL_STATUSES = ["pending", "running", "stopping", "stopped", "failed"]
_LOG_TAIL_LINES = 20
_FOLLOW_POLL = 0.2  # seconds between storage polls while following a log
_LIST_PAGE = 200  # records read per storage round when listing
_MAX_INDEX_PACKS = 8  # listing index packs before they are merged into one
_KEYS = ".idempotency"  # per-user prefix of idempotency keys (not a job id)


def _gateway_user(gateway: Gateway) -> str:
    """The gateway user that job records are filed under."""
    configured = dask.config.get("batch.user", None)
    if configured:
        return str(configured)
    auth = gateway.auth
    username = getattr(auth, "username", None)
    if username:
        return str(username)
    if type(auth).__name__ == "JupyterHubAuth" and os.environ.get("JUPYTERHUB_USER"):
        return os.environ["JUPYTERHUB_USER"]
    return getpass.getuser()


def _check_scaling(job_id: str, workers: Any, adapt: Any) -> tuple[Any, Any]:
    if workers is not None and adapt is not None:
        raise SubmitError(
            f"Job {job_id!r} not submitted: give workers or adapt, not both."
        )
    if adapt is not None:
        try:
            minimum, maximum = (int(a) for a in adapt)
        except (TypeError, ValueError):
            raise SubmitError(
                f"Job {job_id!r} not submitted: adapt must be (minimum, maximum), "
                f"got {adapt!r}."
            ) from None
        if not 0 <= minimum <= maximum:
            raise SubmitError(
                f"Job {job_id!r} not submitted: adapt needs 0 <= minimum <= maximum, "
                f"got {adapt!r}."
            )
        return None, (minimum, maximum)
    if workers is None:
        workers = dask.config.get("batch.workers")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise SubmitError(
            f"Job {job_id!r} not submitted: workers must be a whole number >= 0, "
            f"got {workers!r}."
        )
    return workers, None


@dataclass
class _Submission:
    job_id: str
    spec: dict[str, Any]
    payload: bytes
    env_values: dict[str, str]
    archive: bytes


def _resolve_env(job_id: str, env: Any) -> dict[str, str]:
    if env is None:
        return {}
    if isinstance(env, str):
        env = [env]
    if isinstance(env, Mapping):
        items = dict(env)
    else:
        items = {}
        for entry in env:
            key, sep, value = str(entry).partition("=")
            if sep:
                items[key] = value
            elif key in os.environ:
                items[key] = os.environ[key]
            else:
                raise SubmitError(
                    f"Job {job_id!r} not submitted: env variable {key!r} is not "
                    "set in this process; set it, or pass KEY=VALUE."
                )
    for key, value in items.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise SubmitError(
                f"Job {job_id!r} not submitted: env needs string names and "
                f"values, got {key!r}."
            )
    return items


def _check_retries(job_id: str, retries: Any, retry_on: Any) -> list[str]:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise SubmitError(
            f"Job {job_id!r} not submitted: retries must be a whole number >= 0, "
            f"got {retries!r}."
        )
    if isinstance(retry_on, (str, type)):
        retry_on = [retry_on]
    names = []
    for entry in retry_on:
        if isinstance(entry, type) and issubclass(entry, BaseException):
            names.append(f"{entry.__module__}.{entry.__qualname__}")
        elif isinstance(entry, str) and entry:
            names.append(entry)
        else:
            raise SubmitError(
                f"Job {job_id!r} not submitted: retry_on takes exception classes "
                f"or names, got {entry!r}."
            )
    return names


def _check_timeout(job_id: str, timeout: float | str | None) -> float | None:
    if timeout is None:
        return None
    try:
        seconds = float(parse_timedelta(timeout))
    except (TypeError, ValueError, KeyError):
        seconds = float("nan")
    if not seconds > 0:  # also rejects NaN
        raise SubmitError(
            f"Job {job_id!r} not submitted: timeout must be a positive duration "
            f"such as 3600 or '2h', got {timeout!r}."
        )
    return seconds


def _read_source(job_id: str, path: str, what: str) -> tuple[str, bytes]:
    try:
        with open(path, "rb") as f:
            return os.path.basename(path), f.read()
    except OSError as exc:
        raise SubmitError(
            f"Job {job_id!r} not submitted: cannot read {what} {path!r}: {exc}"
        ) from exc


def _pack_files(job_id: str, files: Any) -> bytes:
    """A tar.gz of ``files`` (a directory's contents go to the top level)."""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    limit = parse_bytes(dask.config.get("batch.upload-limit"))
    buffer = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for entry in files:
            path = os.fspath(entry)
            if not os.path.exists(path):
                raise SubmitError(
                    f"Job {job_id!r} not submitted: file {path!r} does not exist."
                )
            if os.path.isdir(path):
                members = [
                    (
                        os.path.join(root, f),
                        os.path.relpath(os.path.join(root, f), path),
                    )
                    for root, _, names in os.walk(path)
                    for f in names
                ]
            else:
                members = [(path, os.path.basename(path))]
            for source, arcname in members:
                total += os.path.getsize(source)
                if total > limit:
                    raise SubmitError(
                        f"Job {job_id!r} not submitted: the uploaded files exceed "
                        f"batch.upload-limit ({format_bytes(limit)}). Put large "
                        "inputs in object storage and read them from main."
                    )
                tar.add(source, arcname=arcname)
    return buffer.getvalue()


class Job:
    """A handle on one batch job; cheap to create from an id.

    Methods mirror :class:`BatchClient`'s with the job id filled in.

    Examples
    --------
    >>> job = batch.submit(main)      # doctest: +SKIP
    >>> job.status().state            # doctest: +SKIP
    <JobState.RUNNING: 'RUNNING'>
    >>> job.result()                  # doctest: +SKIP
    42
    """

    def __init__(self, client: BatchClient, job_id: str) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    def _repr_html_(self) -> str:
        if self.client.asynchronous:
            return f"<code>Job {html.escape(self.id)}</code>"
        return html_table([self.client.status(self.id)])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def status(self) -> Any:
        """The job's record; see :meth:`BatchClient.status`."""
        return self.client.status(self.id)

    def result(self, timeout: float | str | None = None, progress: bool = False) -> Any:
        """The value main returned; see :meth:`BatchClient.result`."""
        return self.client.result(self.id, timeout=timeout, progress=progress)

    def wait(self, timeout: float | str | None = None, progress: bool = False) -> Any:
        """Wait for the job to end; see :meth:`BatchClient.wait`."""
        return self.client.wait(self.id, timeout=timeout, progress=progress)

    def logs(self, *, follow: bool = False) -> Any:
        """Captured output of main; see :meth:`BatchClient.logs`."""
        return self.client.logs(self.id, follow=follow)

    def artifacts(self) -> Any:
        """Files main stored as artifacts; see :meth:`BatchClient.artifacts`."""
        return self.client.artifacts(self.id)

    def download_artifacts(self, destination: str | os.PathLike[str]) -> Any:
        """Download the artifacts; see :meth:`BatchClient.download_artifacts`."""
        return self.client.download_artifacts(self.id, destination)

    def cancel(self) -> Any:
        """Stop the job and its cluster; see :meth:`BatchClient.cancel`."""
        return self.client.cancel(self.id)


class BatchClient:
    """Submit batch jobs to Dask Gateway and follow them from anywhere.

    Parameters
    ----------
    gateway : dask_gateway.Gateway, optional
        The gateway to run jobs on. Default: ``Gateway()`` from the
        ``gateway.*`` config if ``gateway.address`` is set, else the embedded
        local gateway (:mod:`dask_batch.local`), started on first use.
    storage : str, optional
        fsspec URL of the job storage. Default ``batch.storage``; with the local
        gateway and no storage configured, its ``jobs/`` directory.
    storage_options : dict, optional
        fsspec options (credentials, endpoint). Default ``batch.storage-options``.
    mode : {"auto", "server", "client"}, optional
        How the runner reaches the scheduler. Default ``batch.mode``.
    user : str, optional
        The user whose jobs to file and list. Default: the gateway user.
    asynchronous : bool
        Return awaitables, as ``dask_gateway.Gateway(asynchronous=True)``.
        Ignored when ``gateway`` is given: its own mode is used.

    Examples
    --------
    >>> from dask_batch import BatchClient
    >>> batch = BatchClient()                     # doctest: +SKIP
    >>> job = batch.submit(sum, [1, 2, 3])        # doctest: +SKIP
    >>> BatchClient().result(job.id)              # doctest: +SKIP
    6
    """

    def __init__(
        self,
        gateway: Gateway | None = None,
        storage: str | None = None,
        storage_options: dict[str, Any] | None = None,
        *,
        mode: str | None = None,
        user: str | None = None,
        asynchronous: bool = False,
    ) -> None:
        self._owns_gateway = gateway is None
        local_info = None
        if gateway is None:
            if dask.config.get("gateway.address", None):
                gateway = BatchGateway(asynchronous=asynchronous)
            else:
                local_info = _local.start()
                gateway = local_info.gateway(asynchronous=asynchronous)
        self.gateway = gateway
        if storage is None:
            storage = dask.config.get("batch.storage", None)
        if storage is None:
            if local_info is None:
                self.close()
                raise StorageError(
                    "No job storage configured: pass storage='s3://bucket/jobs' "
                    "or set `batch.storage` (env DASK_BATCH__STORAGE)."
                )
            storage = local_info.storage
        if storage_options is None:
            storage_options = dask.config.get("batch.storage-options", None) or {}
        try:
            self.store = JobStore(storage, storage_options)
        except BaseException:
            self.close()
            raise
        self.mode = mode or dask.config.get("batch.mode")
        if self.mode not in ("auto", "server", "client"):
            self.close()
            raise ValueError(
                f"mode must be 'auto', 'server' or 'client', got {self.mode!r}"
            )
        self.user = user or _gateway_user(gateway)
        self._resolved_mode: str | None = None if self.mode == "auto" else self.mode
        self._options: Options | None = None

    # -- plumbing ----------------------------------------------------------------
    @property
    def asynchronous(self) -> bool:
        return bool(self.gateway.asynchronous)

    def sync(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.asynchronous:
            return func(*args, **kwargs)
        future = asyncio.run_coroutine_threadsafe(
            func(*args, **kwargs), self.gateway.loop.asyncio_loop
        )
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        """Close the gateway client if this BatchClient created it."""
        if self._owns_gateway and getattr(self, "gateway", None) is not None:
            self.gateway.close()

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    async def __aenter__(self) -> BatchClient:
        return self

    async def __aexit__(self, *args: Any) -> None:
        if self._owns_gateway:
            await self.gateway._cleanup()

    def __repr__(self) -> str:
        return f"BatchClient<gateway={self.gateway.address}, storage={self.store.url}>"

    async def _io(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(func, *args, **kwargs)

    async def _server_options(self) -> Options:
        """The gateway's cluster options (fetched once)."""
        if self._options is None:
            self._options = await self.gateway._cluster_options(
                use_local_defaults=False
            )
        return self._options

    async def _mode(self) -> str:
        if self._resolved_mode is None:
            options = await self._server_options()
            self._resolved_mode = "server" if "batch_job_id" in options else "client"
        return self._resolved_mode

    async def _check_cluster_options(
        self, job_id: str, requested: dict[str, Any]
    ) -> None:
        """Refuse unknown options and bad values before anything is created."""
        options = await self._server_options()
        for key, value in requested.items():
            if key.startswith("batch_"):
                raise SubmitError(
                    f"Job {job_id!r} not submitted: cluster option {key!r} is set by "
                    "dask-batch itself."
                )
            try:
                # validate() checks without changing the cached options.
                options._fields[key].validate(value)
            except (KeyError, TypeError, ValueError) as exc:
                if isinstance(exc, KeyError):
                    exc = KeyError(f"no option {key!r} available")
                message = exc.args[0] if exc.args else exc
                raise SubmitError(
                    f"Job {job_id!r} not submitted: bad cluster option: {message}. "
                    f"This gateway offers {sorted(options)}."
                ) from None

    # -- submit ------------------------------------------------------------------
    def submit(
        self,
        func: Callable[..., Any],
        /,
        *args: Any,
        name: str | None = None,
        workers: int | None = None,
        adapt: tuple[int, int] | None = None,
        cluster_options: dict[str, Any] | None = None,
        env: dict[str, str] | Sequence[str] | None = None,
        files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        timeout: float | str | None = None,
        idempotency_key: str | None = None,
        retries: int = 0,
        retry_on: Sequence[type[BaseException] | str] = (),
        memory_limit: int | str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``func(*args, **kwargs)`` as a batch job on its own cluster.

        Returns as soon as the job is safely on its way: the submitting
        process may exit right after. Main runs in a process beside the job's
        scheduler, with the cluster as its default Dask client; when it
        returns, the result, the log and the final state are stored and the
        cluster is stopped.

        Parameters
        ----------
        func : callable
            Main. Functions from ``__main__``, notebooks and local (not
            installed) modules are pickled by value.
        *args, **kwargs
            Passed to ``func``.
        name : str, optional
            A display name. Default: ``func.__name__``.
        workers : int, optional
            Workers to start. Default ``batch.workers``.
        adapt : (int, int), optional
            Adaptive scaling between ``minimum`` and ``maximum`` workers.
        cluster_options : dict, optional
            Options for the gateway (``gateway.cluster_options()`` lists them).
        env : dict or list of str, optional
            Environment variables for main: ``{"KEY": "value"}``, or names to
            copy from this process (``["AWS_PROFILE"]``). Values are stored
            encrypted; records and listings hold only the names.
        files : path or list of paths, optional
            Files to upload as main's working directory (a directory's
            contents, or single files), up to ``batch.upload-limit``.
        timeout : float or str, optional
            Run-time limit of main (seconds, or ``"2h"``). At the limit main
            is stopped, the job FAILS with a ``JobTimeout`` error ("timed
            out") and its cluster is stopped.
        idempotency_key : str, optional
            Submitting again with the same key (say, after a network error)
            returns the job that key already started instead of a second
            one. Keys are per user and kept with the job records.
        retries : int
            How many more times main may run: after a failure of its cluster
            (the scheduler died, the cluster vanished: the job would be LOST)
            on a new cluster, and after an exception listed in ``retry_on`` in
            the same cluster. Attempts are recorded (``status().attempt``).
        retry_on : list of exception classes or names
            Exceptions of main that are retried (default: none; a user error
            is not retried unless named here).
        memory_limit : int or str, optional
            Address-space limit of main's process (``"4 GiB"``): past it,
            allocations fail (``MemoryError``) and the job FAILS, instead of
            the scheduler's host running out of memory.

        Returns
        -------
        Job

        Raises
        ------
        SubmitError
            Bad input: nothing was created (no record, no cluster). Also
            raised when the gateway refuses the cluster; the record is then
            FAILED with the gateway's message.
        StorageError
            The storage cannot be written; no cluster was requested.

        Examples
        --------
        >>> job = batch.submit(train, 10, lr=0.1, name="train", workers=4)
        >>> job.id
        '20261126-081530-123-3f9a1c2b'
        """
        job_id = new_job_id()
        if not callable(func):
            raise SubmitError(
                f"Job {job_id!r} not submitted: {func!r} is not callable."
            )
        target = (
            f"{getattr(func, '__module__', '?')}."
            f"{getattr(func, '__qualname__', repr(func))}"
        )
        return self._submit_job(
            job_id,
            "function",
            target,
            func,
            args,
            main_kwargs=kwargs,
            name=name or str(getattr(func, "__name__", "job")),
            workers=workers,
            adapt=adapt,
            cluster_options=cluster_options,
            env=env,
            files=files,
            timeout=timeout,
            idempotency_key=idempotency_key,
            retries=retries,
            retry_on=retry_on,
            memory_limit=memory_limit,
        )

    def submit_script(
        self,
        target: str | os.PathLike[str],
        args: Sequence[str] = (),
        *,
        name: str | None = None,
        workers: int | None = None,
        adapt: tuple[int, int] | None = None,
        cluster_options: dict[str, Any] | None = None,
        env: dict[str, str] | Sequence[str] | None = None,
        files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        timeout: float | str | None = None,
        idempotency_key: str | None = None,
        retries: int = 0,
        retry_on: Sequence[type[BaseException] | str] = (),
        memory_limit: int | str | None = None,
    ) -> Any:
        """Run a Python script, or a ``package.module:function``, as a batch job.

        Parameters
        ----------
        target : str or path
            ``train.py`` (uploaded, run as ``__main__`` with ``sys.argv =
            ["train.py", *args]``; ``sys.exit(n)`` with n != 0 fails the job),
            or ``package.module:function`` (imported on the cluster, called
            with ``*args``; uploaded ``files`` are importable).
        args : list of str
            Command-line arguments of the script, or positional arguments of
            the function.
        name, workers, adapt, cluster_options, env, files, timeout
            As for :meth:`submit`.
        idempotency_key, retries, retry_on, memory_limit
            As for :meth:`submit`.

        Returns
        -------
        Job

        Examples
        --------
        >>> batch.submit_script("train.py", ["--epochs", "10"], files=["data/"])
        >>> batch.submit_script("mypkg.jobs:nightly", ["2026-11-26"])
        """
        from . import _targets

        job_id = new_job_id()
        text = os.fspath(target)
        options: dict[str, Any] = dict(
            workers=workers,
            adapt=adapt,
            cluster_options=cluster_options,
            env=env,
            files=files,
            timeout=timeout,
            idempotency_key=idempotency_key,
            retries=retries,
            retry_on=retry_on,
            memory_limit=memory_limit,
        )
        if text.endswith(".py") or os.path.isfile(text):
            filename, source = _read_source(job_id, text, "script")
            run_args = (filename, source, [str(a) for a in args])
            return self._submit_job(
                job_id,
                "script",
                filename,
                _targets.run_script,
                run_args,
                name=name or filename,
                **options,
            )
        module, sep, function = text.partition(":")
        if not sep or not module or not function:
            raise SubmitError(
                f"Job {job_id!r} not submitted: {text!r} is neither a script "
                "(path ending in .py) nor a 'package.module:function' target."
            )
        return self._submit_job(
            job_id,
            "module",
            text,
            _targets.run_function,
            (text, list(args), {}),
            name=name or function,
            **options,
        )

    def submit_notebook(
        self,
        path: str | os.PathLike[str],
        parameters: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        workers: int | None = None,
        adapt: tuple[int, int] | None = None,
        cluster_options: dict[str, Any] | None = None,
        env: dict[str, str] | Sequence[str] | None = None,
        files: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
        timeout: float | str | None = None,
        idempotency_key: str | None = None,
        retries: int = 0,
        retry_on: Sequence[type[BaseException] | str] = (),
        memory_limit: int | str | None = None,
    ) -> Any:
        """Execute a notebook with papermill as a batch job.

        The executed notebook is kept as the artifact
        ``<name>.output.ipynb`` (also when a cell fails, which fails the job
        with that cell's error). The cluster's image needs ``papermill`` and
        an ``ipykernel`` named ``python3``.

        Parameters
        ----------
        path : str or path
            The notebook (``analysis.ipynb``).
        parameters : dict, optional
            papermill parameters, injected after the cell tagged ``parameters``.
        name, workers, adapt, cluster_options, env, files, timeout
            As for :meth:`submit`.
        idempotency_key, retries, retry_on, memory_limit
            As for :meth:`submit`.

        Returns
        -------
        Job

        Examples
        --------
        >>> job = batch.submit_notebook("analysis.ipynb", {"year": 2025})
        >>> job.result()            # the executed notebook's artifact URL
        """
        from . import _targets

        job_id = new_job_id()
        filename, source = _read_source(job_id, os.fspath(path), "notebook")
        return self._submit_job(
            job_id,
            "notebook",
            filename,
            _targets.run_notebook,
            (filename, source, dict(parameters or {})),
            name=name or filename,
            workers=workers,
            adapt=adapt,
            cluster_options=cluster_options,
            env=env,
            files=files,
            timeout=timeout,
            idempotency_key=idempotency_key,
            retries=retries,
            retry_on=retry_on,
            memory_limit=memory_limit,
        )

    def _submit_job(
        self,
        job_id: str,
        kind: str,
        target: str,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        *,
        main_kwargs: dict[str, Any] | None = None,
        name: str,
        workers: int | None,
        adapt: tuple[int, int] | None,
        cluster_options: dict[str, Any] | None,
        env: dict[str, str] | Sequence[str] | None,
        files: Any,
        timeout: float | str | None = None,
        idempotency_key: str | None = None,
        retries: int = 0,
        retry_on: Sequence[type[BaseException] | str] = (),
        memory_limit: int | str | None = None,
    ) -> Any:
        # Everything that can fail on bad input happens here, before any
        # record or cluster exists.
        workers, adapt = _check_scaling(job_id, workers, adapt)
        timeout_s = _check_timeout(job_id, timeout)
        retry_names = _check_retries(job_id, retries, retry_on)
        try:
            memory_bytes = None if memory_limit is None else parse_bytes(memory_limit)
        except (TypeError, ValueError):
            memory_bytes = -1
        if memory_bytes is not None and memory_bytes < 256 * 2**20:
            raise SubmitError(
                f"Job {job_id!r} not submitted: memory_limit must be a size of at "
                f"least 256 MiB such as '4 GiB', got {memory_limit!r}."
            )
        try:
            payload = dumps_payload(func, args, main_kwargs or {})
        except Exception as exc:
            raise SubmitError(
                f"Job {job_id!r} not submitted: main or its arguments cannot be "
                f"pickled ({type(exc).__name__}: {exc}). Pass data that cloudpickle "
                "can serialise, or load it inside main."
            ) from exc
        limit = parse_bytes(dask.config.get("batch.payload-limit"))
        if len(payload) > limit:
            raise SubmitError(
                f"Job {job_id!r} not submitted: main with its arguments pickles to "
                f"{format_bytes(len(payload))}, over batch.payload-limit "
                f"({format_bytes(limit)}). Put large data in storage and pass its "
                "path."
            )
        env_values = _resolve_env(job_id, env)
        archive = _pack_files(job_id, files) if files else b""
        submission = _Submission(
            job_id=job_id,
            spec={
                "id": job_id,
                "user": self.user,
                "name": name,
                "kind": kind,
                "function": target,
                "workers": workers,
                "adapt": list(adapt) if adapt else None,
                "cluster_options": dict(cluster_options or {}),
                "payload_digest": digest(payload),
                "payload_bytes": len(payload),
                "env_names": sorted(env_values),
                "files_bytes": len(archive),
                "artifacts_url": artifacts_url(self.store, self.user, job_id),
                "timeout": timeout_s,
                "idempotency_key": idempotency_key,
                "retries": retries,
                "retry_on": retry_names,
                "memory_limit": memory_bytes,
            },
            payload=payload,
            env_values=env_values,
            archive=archive,
        )
        return self.sync(self._submit, submission)

    async def _submit(self, sub: _Submission) -> Job:
        job_id, spec = sub.job_id, sub.spec
        options = dict(spec["cluster_options"])
        mode = await self._mode()
        await self._check_cluster_options(job_id, options)
        spec.update(
            submitted=to_iso(utcnow()), gateway_address=self.gateway.address, mode=mode
        )
        secret_key = ""
        result_key = dask.config.get("batch.result-key", None)
        if sub.env_values or result_key:
            from cryptography.fernet import Fernet

            secret_key = Fernet.generate_key().decode()
            secrets_blob = Fernet(secret_key).encrypt(
                json.dumps({"env": sub.env_values, "result_key": result_key}).encode()
            )
            spec["has_secrets"] = True

        def write_records() -> None:
            # The payload goes first: if storage is unusable, this fails with
            # nothing written and no cluster requested.
            self.store.put(self.user, job_id, PAYLOAD, sub.payload)
            if sub.archive:
                self.store.put(self.user, job_id, FILES, sub.archive)
            if secret_key:
                self.store.put(self.user, job_id, SECRETS, secrets_blob)
            self.store.put_json(self.user, job_id, SPEC, spec)
            self.store.put_json(
                self.user,
                job_id,
                STATE,
                {"state": "PENDING", "updated": spec["submitted"]},
            )

        try:
            await self._io(write_records)
        except StorageError as exc:
            raise StorageError(
                f"Job {job_id!r} not submitted, no cluster was requested: {exc}"
            ) from exc
        key = spec.get("idempotency_key")
        if key:
            winner = await self._io(self._claim_idempotency_key, job_id, key)
            if winner != job_id:
                return Job(self, winner)

        if mode == "server":
            options.update(
                batch_job_id=job_id,
                batch_storage=self.store.url,
                batch_payload_digest=spec["payload_digest"],
            )
            if secret_key:
                options["batch_secret_key"] = secret_key
        try:
            cluster_name = await self.gateway._submit(**options)
        except Exception as exc:
            message = f"the gateway refused the cluster request: {exc}"
            await self._io(
                self.store.transition,
                self.user,
                job_id,
                JobState.FAILED,
                message=message,
                error={
                    "type": "ClusterRequestError",
                    "message": message,
                    "traceback": "",
                },
            )
            raise SubmitError(
                f"Job {job_id!r} failed: {message}. Check cluster_options against "
                "`gateway.cluster_options()`; the job is recorded as FAILED."
            ) from exc
        await self._io(
            self.store.put_json,
            self.user,
            job_id,
            CLUSTER,
            {"cluster_name": cluster_name},
        )
        if mode == "client":
            await self._install_runner(job_id, cluster_name, spec, secret_key)
        return Job(self, job_id)

    def _claim_idempotency_key(self, job_id: str, key: str) -> str:
        """The job that owns ``key``: this one, or the one that claimed it first.

        Records are written first and the key claimed after, with a
        create-only write, so two racing submissions never both get a
        cluster: the loser removes its records (no cluster was requested yet).
        """
        name = hashlib.sha256(key.encode()).hexdigest() + ".json"
        claim = dumps_json({"key": key, "job_id": job_id})
        if self.store.put_create(self.user, _KEYS, name, claim):
            return job_id
        owner = str(self.store.get_json(self.user, _KEYS, name)["job_id"])
        self.store.fs.rm(self.store.job_path(self.user, job_id), recursive=True)
        return owner

    async def _install_runner(
        self, job_id: str, cluster_name: str, spec: dict[str, Any], secret_key: str
    ) -> None:
        from distributed.core import rpc
        from distributed.protocol.pickle import dumps

        try:
            report = await self.gateway._wait_for_start(cluster_name)
            plugin = JobRunnerPlugin(
                job_id=job_id,
                user=self.user,
                storage_url=self.store.url,
                storage_options=self.store.storage_options,
                payload_digest=spec["payload_digest"],
                secret_key=secret_key,
            )
            # One RPC, as Client.register_plugin sends it, without a full
            # Client's handshake and streams: ~50 ms less per submission.
            async with rpc(
                report.scheduler_address,
                connection_args=report.security.get_connection_args("client"),
            ) as scheduler:
                await scheduler.register_scheduler_plugin(
                    plugin=dumps(plugin), name=plugin.name, idempotent=False
                )
        except BaseException as exc:
            # Never leave a cluster behind for a job that cannot start.
            message = (
                f"could not start the job runner on cluster {cluster_name!r}: {exc}"
            )
            try:
                await self.gateway._stop_cluster(cluster_name)
            finally:
                await self._io(
                    self.store.transition,
                    self.user,
                    job_id,
                    JobState.FAILED,
                    message=message,
                    error={"type": "RunnerError", "message": message, "traceback": ""},
                )
            raise DaskBatchError(
                f"Job {job_id!r} failed: {message}. Client-side mode needs "
                "dask_batch importable on the cluster's scheduler."
            ) from exc

    # -- status and listing --------------------------------------------------------
    def status(self, job_id: str) -> Any:
        """The job's record, with LOST detected and written back.

        Parameters
        ----------
        job_id : str

        Returns
        -------
        JobRecord

        Raises
        ------
        JobNotFoundError
            No such job for this user and storage.

        Examples
        --------
        >>> batch.status(job.id).state     # doctest: +SKIP
        <JobState.SUCCEEDED: 'SUCCEEDED'>
        """
        return self.sync(self._status, job_id)

    async def _status(self, job_id: str) -> JobRecord:
        record = await self._io(self.store.read_record, self.user, job_id)
        if record.state.is_terminal:
            return record
        reports = await self._cluster_reports(
            [record.cluster_name] if record.cluster_name else []
        )
        return await self._detect_lost(record, reports)

    async def _cluster_reports(
        self, names: list[str]
    ) -> dict[str, ClusterReport | None]:
        """The gateway's report of each cluster; None when it does not know it."""
        if not names:
            return {}
        if len(names) == 1:
            try:
                report = await self.gateway._cluster_report(names[0])
            except ValueError:  # 404: unknown, purged, or forgotten on restart
                return {names[0]: None}
            return {names[0]: report}
        reports = await self.gateway._clusters(status=_ALL_STATUSES)
        known = {r.name: r for r in reports}
        return {n: known.get(n) for n in names}

    async def _detect_lost(
        self, record: JobRecord, reports: dict[str, ClusterReport | None]
    ) -> JobRecord:
        if record.gateway_address and record.gateway_address != self.gateway.address:
            # Another gateway's job: this gateway cannot vouch for its cluster,
            # so only a heartbeat silent for too long makes it LOST.
            silence = parse_timedelta(dask.config.get("batch.heartbeat-timeout"))
            if record.last_seen is None or (
                (utcnow() - record.last_seen).total_seconds() < silence
            ):
                return record
            why = (
                f"its runner has not been heard from for over {silence:g} s and "
                f"its gateway {record.gateway_address} is not this one"
            )
        elif record.cluster_name:
            report = reports.get(record.cluster_name)
            status = report.status if report is not None else None
            if report is not None and status in _ALIVE:
                record.dashboard_link = report.dashboard_link
                return record
            why = (
                f"its cluster {record.cluster_name!r} is "
                f"{status.name if status else 'unknown to the gateway'} but the job "
                "never recorded an outcome (the scheduler died, or the cluster "
                "was stopped before main reported)"
            )
        else:
            lost_after = parse_timedelta(dask.config.get("batch.lost-after"))
            # A retry on a new cluster is being requested since record.updated.
            since = record.updated if record.attempt > 1 else record.submitted
            if (utcnow() - (since or record.submitted)).total_seconds() < lost_after:
                return record
            why = (
                "no cluster was recorded for it: the submitting process stopped "
                "before the gateway accepted the cluster request"
            )
        if record.last_seen is not None:
            why += f"; last seen {record.last_seen.isoformat(timespec='seconds')}"
        if record.cluster_name and record.attempt <= record.retries:
            retried = await self._retry_on_new_cluster(record, reports, why)
            if retried is not None:
                return retried
            why += " (no retry possible: the env values' key went with the cluster)"
        # The runner writes the final state before it stops the cluster, so a
        # fresh read now sees any outcome that raced with the gateway query.
        fresh = await self._io(self.store.read_record, self.user, record.id)
        if fresh.state.is_terminal:
            return fresh
        await self._io(
            self.store.transition, self.user, record.id, JobState.LOST, message=why
        )
        return await self._io(self.store.read_record, self.user, record.id)

    async def _retry_on_new_cluster(
        self,
        record: JobRecord,
        reports: dict[str, ClusterReport | None],
        why: str,
    ) -> JobRecord | None:
        """Run a job whose cluster failed again, on a new cluster.

        Whoever notices the failure first (any client's status, result or
        jobs) claims the next attempt with a create-only write, so exactly one
        new cluster is requested. None if the job cannot be retried.
        """
        attempt = record.attempt + 1
        assert record.cluster_name is not None
        old = reports.get(record.cluster_name)
        spec = await self._io(self.store.get_json, self.user, record.id, SPEC)
        secret_key = ""
        if spec.get("has_secrets"):
            secret_key = str((old.options if old else {}).get("batch_secret_key", ""))
            if not secret_key:
                return None
        claim = dumps_json({"attempt": attempt, "after": why, "time": to_iso(utcnow())})
        name = f"attempts/{attempt:04d}.json"
        if await self._io(self.store.put_create, self.user, record.id, name, claim):
            history = [*record.attempts, {"attempt": record.attempt, "error": why}]
            # Forget the dead cluster first, so that nobody judges the job by
            # it again; then the state, before the new cluster exists, so that
            # its runner reads this attempt number.
            await self._io(
                self.store.put_json,
                self.user,
                record.id,
                CLUSTER,
                {"cluster_name": None, "attempt": attempt},
            )
            await self._io(
                self.store.transition,
                self.user,
                record.id,
                JobState.PENDING,
                attempt=attempt,
                attempts=history,
                cluster_name=None,
                message=f"attempt {attempt}: {why}",
            )
            options = dict(spec.get("cluster_options") or {})
            if spec.get("mode") == "server":
                options.update(
                    batch_job_id=record.id,
                    batch_storage=self.store.url,
                    batch_payload_digest=spec["payload_digest"],
                )
                if secret_key:
                    options["batch_secret_key"] = secret_key
            cluster_name = await self.gateway._submit(**options)
            await self._io(
                self.store.put_json,
                self.user,
                record.id,
                CLUSTER,
                {"cluster_name": cluster_name, "attempt": attempt},
            )
            if spec.get("mode") == "client":
                await self._install_runner(record.id, cluster_name, spec, secret_key)
        return await self._io(self.store.read_record, self.user, record.id)

    def jobs(
        self,
        *,
        state: str | JobState | Iterable[str | JobState] | None = None,
        name: str | None = None,
        since: datetime.datetime | str | None = None,
        until: datetime.datetime | str | None = None,
        limit: int | None = None,
    ) -> Any:
        """The user's jobs, newest first.

        Parameters
        ----------
        state : str or JobState or list of them, optional
            Keep jobs in these states.
        name : str, optional
            Keep jobs with this name.
        since, until : datetime or str, optional
            Submission time bounds (a datetime, an ISO 8601 string, or a
            duration such as ``"2h"`` meaning that long ago).
        limit : int, optional
            At most this many jobs.

        Returns
        -------
        list of JobRecord

        Examples
        --------
        >>> [j.id for j in batch.jobs(state="RUNNING", since="1d")]  # doctest: +SKIP
        """
        return self.sync(
            self._jobs, state=state, name=name, since=since, until=until, limit=limit
        )

    async def _jobs(
        self,
        *,
        state: Any = None,
        name: str | None = None,
        since: Any = None,
        until: Any = None,
        limit: int | None = None,
    ) -> JobList:
        if isinstance(state, (str, JobState)):
            state = [state]
        wanted = {JobState(str(s).upper()) for s in state} if state else None
        since_t, until_t = _as_time(since), _as_time(until)
        every_id = await self._io(self.store.job_ids, self.user)
        index, packs = await self._io(self.store.read_index, self.user)
        ids = every_id
        # Ids start with their UTC submission time: filter before reading.
        if since_t is not None:
            ids = [i for i in ids if i >= new_job_id(since_t)[:19]]
        if until_t is not None:
            ids = [i for i in ids if i[:19] <= new_job_id(until_t)[:19]]
        # Read newest first, a page at a time, until the limit is met: a
        # listing of the last 50 jobs reads 50 records, not thousands.
        page = max(limit or 0, _LIST_PAGE)
        out: list[JobRecord] = []
        newly_final: list[dict[str, Any]] = []
        for first in range(0, len(ids), page):
            records = await self._records_page(ids[first : first + page], index)
            newly_final += [
                index_entry(r)
                for r in records
                if r.state.is_terminal and r.id not in index
            ]
            out += [
                r
                for r in records
                if (name is None or r.name == name)
                and (wanted is None or r.state in wanted)
            ]
            if limit is not None and len(out) >= limit:
                break
        await self._update_index(every_id, index, packs, newly_final)
        return JobList(out[:limit] if limit is not None else out)

    async def _records_page(
        self, ids: list[str], index: dict[str, dict[str, Any]]
    ) -> list[JobRecord]:
        """Records of ``ids``: terminal ones from the index, the rest read."""
        unknown = [i for i in ids if i not in index]
        records = await self._io(self.store.read_records, self.user, unknown)
        out: list[JobRecord] = []
        for job_id in ids:
            entry = index.get(job_id)
            record = JobRecord.from_dict(entry) if entry else records[job_id]
            if isinstance(record, Exception):
                warnings.warn(f"Skipping job {job_id!r}: {record}", stacklevel=4)
                continue
            out.append(record)
        live = [r for r in out if not r.state.is_terminal]
        if live:
            reports = await self._cluster_reports(
                [r.cluster_name for r in live if r.cluster_name]
            )
            checked = {r.id: await self._detect_lost(r, reports) for r in live}
            out = [checked.get(r.id, r) for r in out]
        return out

    async def _update_index(
        self,
        every_id: list[str],
        index: dict[str, dict[str, Any]],
        packs: list[str],
        newly_final: list[dict[str, Any]],
    ) -> None:
        """Fold records that became terminal into the listing index.

        A small pack per listing that found some; past ``_MAX_INDEX_PACKS``
        all packs are merged into one, dropping jobs whose prefix is gone.
        Runners add a pack per 256 jobs that end, so packs are merged once
        they pile up even when this listing found nothing new.
        """
        if len(packs) + bool(newly_final) > _MAX_INDEX_PACKS:
            existing = set(every_id)
            pack = [e for i, e in index.items() if i in existing] + newly_final
            replaces = packs
        elif newly_final:
            pack, replaces = newly_final, []
        else:
            return
        try:
            await self._io(self.store.write_index, self.user, pack, replaces)
        except StorageError as exc:
            # The index only saves reads; a read-only user still gets a listing.
            logger.warning("Not updating the job index: %s", exc)

    # -- results, logs, cancel -----------------------------------------------------
    def wait(
        self, job_id: str, timeout: float | str | None = None, progress: bool = False
    ) -> Any:
        """Wait until the job has ended and return its final record.

        Parameters
        ----------
        job_id : str
        timeout : float or str, optional
            Seconds (or ``"10m"``) to wait; None waits for ever.
        progress : bool
            Show a progress bar (in place, in notebooks and terminals) with
            the state, run time and main's latest ``dask_batch.report``.

        Returns
        -------
        JobRecord

        Raises
        ------
        TimeoutError
            The job did not end in time (it keeps running).

        Examples
        --------
        >>> batch.wait(job.id, progress=True).state      # doctest: +SKIP
        """
        return self.sync(self._wait, job_id, timeout, progress)

    def result(
        self, job_id: str, timeout: float | str | None = None, progress: bool = False
    ) -> Any:
        """Wait for the job and return the value main returned.

        Parameters
        ----------
        job_id : str
        timeout : float or str, optional
            Seconds (or ``"10m"``) to wait; None waits for ever.
        progress : bool
            Show a progress bar while waiting (see :meth:`wait`).

        Raises
        ------
        JobFailedError
            Main raised or its process died: carries the remote type,
            message, traceback and the end of the log.
        JobCancelledError, JobLostError
        JobNotFoundError
        TimeoutError
            The job did not finish in time (it keeps running).

        Examples
        --------
        >>> BatchClient().result("20261126-081530-123-3f9a1c2b")  # doctest: +SKIP
        """
        return self.sync(self._result, job_id, timeout=timeout, progress=progress)

    async def _result(
        self, job_id: str, timeout: float | str | None = None, progress: bool = False
    ) -> Any:
        record = await self._wait(job_id, timeout, progress)
        if record.state is JobState.SUCCEEDED:
            # The record just read holds the digest: no second state read.
            result_key = dask.config.get("batch.result-key", None)
            stream, buffers, found, signature = await self._io(
                self.store.get_result, self.user, job_id, result_key
            )
            expected = record.result_digest
            if expected and found != expected:
                raise DaskBatchError(
                    f"The stored result of job {job_id!r} does not match the digest "
                    "its runner recorded: it was changed in storage. Not loading it."
                )
            if result_key and not hmac.compare_digest(record.result_hmac, signature):
                raise DaskBatchError(
                    f"The stored result of job {job_id!r} is not signed with "
                    "batch.result-key: it was changed in storage, or the job ran "
                    "without the key. Not loading it."
                )
            return loads_result(stream, buffers)
        if record.state is JobState.FAILED:
            tail = await self._log_tail(job_id)
            error = record.error or {"type": "JobFailed", "message": record.message}
            raise JobFailedError.from_error_record(job_id, error, tail)
        if record.state is JobState.CANCELLED:
            raise JobCancelledError(
                job_id,
                f"Job {job_id!r} was cancelled: {record.message or 'by request'}.",
            )
        raise JobLostError(
            job_id,
            f"Job {job_id!r} is LOST: {record.message}. Its result was never "
            "stored; submit it again.",
        )

    async def _wait(
        self, job_id: str, timeout: float | str | None, progress: bool = False
    ) -> JobRecord:
        deadline = (
            None if timeout is None else time.monotonic() + parse_timedelta(timeout)
        )
        display = ProgressDisplay(job_id) if progress else None
        delay = 0.05
        while True:
            record = await self._status(job_id)
            if display is not None:
                display.update(record)
            if record.state.is_terminal:
                return record
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(
                    f"Job {job_id!r} is still {record.state.value} after {timeout}; "
                    "it keeps running. Call result() again later."
                )
            wait = (
                delay
                if deadline is None
                else min(delay, max(0, deadline - time.monotonic()))
            )
            await asyncio.sleep(wait)
            delay = min(delay * 1.5, 2.0)

    async def _log_tail(self, job_id: str) -> str:
        return str(
            await self._io(self.store.log_tail, self.user, job_id, _LOG_TAIL_LINES)
        )

    def logs(self, job_id: str, *, follow: bool = False) -> Any:
        """The captured stdout, stderr and logging output of main.

        Available while the job runs (appended to storage every
        ``batch.runner.log-upload-interval``) and after its cluster is gone.
        Includes Python ``logging`` output at INFO and above.

        Parameters
        ----------
        job_id : str
        follow : bool
            Instead of the log so far, return an iterator over new log text
            as it arrives, ending when the job has ended (an async iterator
            with ``asynchronous=True``).

        Returns
        -------
        str, or iterator of str with ``follow=True``

        Examples
        --------
        >>> print(batch.logs(job.id))              # doctest: +SKIP
        >>> for text in batch.logs(job.id, follow=True):   # doctest: +SKIP
        ...     print(text, end="")
        """
        if follow:
            return (
                self._follow(job_id) if self.asynchronous else self._follow_sync(job_id)
            )
        return self.sync(self._logs, job_id)

    async def _logs(self, job_id: str) -> str:
        text, _ = await self._logs_from(job_id, 0)
        return text

    async def _logs_from(self, job_id: str, index: int) -> tuple[str, int]:
        def read() -> tuple[str, int]:
            data, next_index = self.store.read_logs(self.user, job_id, index)
            if next_index == 0 and not self.store.exists(self.user, job_id, SPEC):
                raise JobNotFoundError(job_id, self.store.url)
            return data.decode(errors="replace"), next_index

        return await self._io(read)

    async def _follow_step(self, job_id: str, index: int) -> tuple[str, int, bool]:
        """New log text, the next chunk index, and whether the job has ended."""
        ended = (await self._status(job_id)).state.is_terminal
        # Read after the state: the runner stores the last log before the
        # final state, so nothing printed is missed once ended is seen.
        text, index = await self._logs_from(job_id, index)
        return text, index, ended

    def _follow_sync(self, job_id: str) -> Iterator[str]:
        index, ended = 0, False
        while not ended:
            text, index, ended = self.sync(self._follow_step, job_id, index)
            if text:
                yield text
            elif not ended:
                time.sleep(_FOLLOW_POLL)

    async def _follow(self, job_id: str) -> AsyncIterator[str]:
        index, ended = 0, False
        while not ended:
            text, index, ended = await self._follow_step(job_id, index)
            if text:
                yield text
            elif not ended:
                await asyncio.sleep(_FOLLOW_POLL)

    def artifacts(self, job_id: str) -> Any:
        """Files main wrote under ``dask_batch.artifacts_path()``.

        Parameters
        ----------
        job_id : str

        Returns
        -------
        dict
            Path relative to the job's artifacts prefix -> size in bytes.

        Examples
        --------
        >>> batch.artifacts(job.id)          # doctest: +SKIP
        {'model.pkl': 1048576, 'analysis.output.ipynb': 20480}
        """
        return self.sync(self._artifacts, job_id)

    async def _artifacts(self, job_id: str) -> dict[str, int]:
        await self._io(self.store.read_record, self.user, job_id)  # JobNotFoundError
        return dict(await self._io(self.store.artifacts, self.user, job_id))

    def download_artifacts(
        self, job_id: str, destination: str | os.PathLike[str]
    ) -> Any:
        """Copy the job's artifacts into a local directory.

        Parameters
        ----------
        job_id : str
        destination : str or path
            Created if missing; artifacts keep their relative paths.

        Returns
        -------
        list of str
            The local paths written.

        Examples
        --------
        >>> batch.download_artifacts(job.id, "results/")   # doctest: +SKIP
        """
        return self.sync(self._download_artifacts, job_id, os.fspath(destination))

    async def _download_artifacts(self, job_id: str, destination: str) -> list[str]:
        names = await self._artifacts(job_id)

        def download() -> list[str]:
            written = []
            for name in names:
                local = os.path.join(destination, *name.split("/"))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                remote = self.store.job_path(self.user, job_id, f"{ARTIFACTS}/{name}")
                self.store.fs.get_file(remote, local)
                written.append(local)
            return written

        return list(await self._io(download))

    def cancel(self, job_id: str) -> Any:
        """Cancel a pending or running job and stop its cluster.

        The state becomes CANCELLED (unless the job already ended) before the
        cluster is stopped; main's process is terminated by the runner.

        Parameters
        ----------
        job_id : str

        Returns
        -------
        JobRecord
            The record after cancelling.

        Examples
        --------
        >>> batch.cancel(job.id).state   # doctest: +SKIP
        <JobState.CANCELLED: 'CANCELLED'>
        """
        return self.sync(self._cancel, job_id)

    async def _cancel(self, job_id: str) -> JobRecord:
        record = await self._io(self.store.read_record, self.user, job_id)
        if not record.state.is_terminal:
            await self._io(
                self.store.transition,
                self.user,
                job_id,
                JobState.CANCELLED,
                message=f"cancelled by {self.user}",
            )
        record = await self._io(self.store.read_record, self.user, job_id)
        if record.cluster_name:
            try:
                await self.gateway._stop_cluster(record.cluster_name)
            except (ValueError, GatewayClusterError) as exc:
                # Unknown or already stopped: nothing is left to stop.
                logger.debug("cluster of job %s already gone: %s", job_id, exc)
        return record


def _as_time(value: Any) -> datetime.datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    if isinstance(value, (int, float)):
        return utcnow() - datetime.timedelta(seconds=value)
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return utcnow() - datetime.timedelta(seconds=parse_timedelta(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)
