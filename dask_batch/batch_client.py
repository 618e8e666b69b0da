"""The friendly face for notebooks and scripts: :class:`BatchClient` and :class:`Job`.

:class:`BatchClient` turns what a user writes (a function and its
arguments, a script, a notebook, steps, a cron line) into targets for the
:class:`~dask_batch.JobService`, which does the work. Sync and async from one
code path, as dask-gateway does: each public method runs the service's
coroutine through the gateway's own ``sync``.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dask_gateway import Gateway

from dask_batch import config as _config  # noqa: F401  (loads batch.* defaults)
from dask_batch.batch_schedules import ScheduleMethods
from dask_batch.client import connection as _connection
from dask_batch.client import submission as _submission
from dask_batch.client import tracking as _tracking
from dask_batch.client.display import html_table
from dask_batch.core.options import SubmitOptions
from dask_batch.core.records import JobState, new_job_id
from dask_batch.job_service import JobService
from dask_batch.storage.upstream import upstream_placeholders
from dask_batch.workflows import pipelines as _pipeline
from dask_batch.workflows.pipelines import Step

__all__ = ["BatchClient", "Job"]


class BatchClient(ScheduleMethods):
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
        self.gateway, local_info = _connection.open_gateway(gateway, asynchronous)
        try:
            self.store = _connection.open_store(storage, storage_options, local_info)
            self.mode = _connection.check_mode(mode)
            #: The job service that does this client's work (public: the way
            #: in for code that wants coroutines and nothing else).
            self.service = JobService(self.gateway, self.store, self.mode, user=user)
        except BaseException:
            if self._owns_gateway and not self.asynchronous:
                self.gateway.close()  # async: no request was made, nothing open
            raise
        if not self.asynchronous:
            try:
                self.gateway.sync(self.identify)
            except BaseException:
                self.close()
                raise

    @property
    def asynchronous(self) -> bool:
        return bool(self.gateway.asynchronous)

    @property
    def user(self) -> str | None:
        """The authenticated user; an asynchronous client learns it on its
        first call (or ``await batch.identify()``)."""
        return self.service.user

    def sync(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``func``'s coroutine on the gateway's loop (or return it if async)."""
        if self.user is None:
            return self._identified(func, *args, **kwargs)
        return self.gateway.sync(func, *args, **kwargs)

    async def _identified(self, func: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        await self.service.identify()
        return await func(*args, **kw)

    async def _job(self, func: Callable[..., Any], *args: Any, **kw: Any) -> Job:
        return Job(self, await func(*args, **kw))

    async def identify(self) -> str:
        """Learn, once, which user's jobs this client works with.

        From authentication: the gateway names the user (a gateway set up with
        ``batch_cluster_options``), or JupyterHub does for a JupyterHub token;
        ``user=`` and ``batch.user`` must agree with it. Where nobody
        authenticates a user, ``user=``, ``batch.user``, the basic auth user
        name or the local login name. A synchronous client does this when
        created.

        Returns
        -------
        str

        Raises
        ------
        AuthenticationError
            The gateway or hub refused the credentials, or the user asked
            for is not the one authenticated.
        """
        return await self.service.identify()

    def close(self) -> Any:
        """Close the gateway client if this BatchClient created it.

        With ``asynchronous=True`` this returns an awaitable.
        """
        if self.asynchronous:
            return self._aclose()
        if self._owns_gateway:
            self.gateway.close()
        return None

    async def _aclose(self) -> None:
        if self._owns_gateway:
            closing = self.gateway.close()
            if closing is not None:
                await closing

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    async def __aenter__(self) -> BatchClient:
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self._aclose()

    def __repr__(self) -> str:
        return f"BatchClient<gateway={self.gateway.address}, storage={self.store.url}>"

    def submit(
        self,
        func: Callable[..., Any],
        /,
        *args: Any,
        submit_options: SubmitOptions | None = None,
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
            Passed to ``func``, except the keywords that name a
            :class:`~dask_batch.SubmitOptions` field (``name``, ``workers``,
            ``adapt``, ``cluster_options``, ``env``, ``files``, ``timeout``,
            ``idempotency_key``, ``retries``, ``retry_on``, ``memory_limit``,
            ``mlflow``, ``after``), which say how the job runs. A
            :class:`Job` among them (also inside lists, tuples and dicts) is
            replaced by the value its main returned: this job waits for it.
        submit_options : SubmitOptions, optional
            The same options as one object; keywords override it.

        Returns
        -------
        Job

        Raises
        ------
        SubmitError
            Bad input: nothing was created. Also when the gateway refuses the
            cluster; the record is then FAILED with the gateway's message.
        StorageError
            The storage cannot be written; no cluster was requested.

        Examples
        --------
        >>> job = batch.submit(train, 10, lr=0.1, name="train", workers=4)
        >>> job.id
        '20261126-081530-123-3f9a1c2b'
        >>> report = batch.submit(summarise, job)    # runs after train, on its value
        >>> tidy = batch.submit(cleanup, after=[job, report])
        """
        options, main_kwargs = SubmitOptions.split(submit_options, kwargs)
        job_id = new_job_id()
        args, main_kwargs, upstream = upstream_placeholders(args, main_kwargs, Job)
        target = _submission.function_target(job_id, func, args, main_kwargs)
        if upstream:
            target = dataclasses.replace(target, upstream_values=upstream)
        return self._submit(job_id, target, options)

    def submit_script(
        self,
        target: str | os.PathLike[str],
        args: Sequence[str] = (),
        *,
        array: str | None = None,
        submit_options: SubmitOptions | None = None,
        **options: Any,
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
        array : str, optional
            Run the script once per index, as an array job, in Slurm's
            syntax: ``"0-99%10"`` is indices 0 to 99, at most 10 at once
            (default: as many as the workers have threads); also
            ``"1,3,5"`` and ``"0-10:2"``. Each run is a process on a worker
            and reads its index from ``DASK_BATCH_ARRAY_INDEX`` (or
            ``dask_batch.current_job().array_index``).
        submit_options : SubmitOptions, optional
            How the job runs; ``**options`` (its fields as keywords) win.

        Returns
        -------
        Job

        Examples
        --------
        >>> batch.submit_script("train.py", ["--epochs", "10"], files=["data/"])
        >>> batch.submit_script("mypkg.jobs:nightly", ["2026-11-26"])
        >>> batch.submit_script("fold.py", array="0-9%4")
        """
        merged = SubmitOptions.merge(submit_options, options)
        job_id = new_job_id()
        what = _submission.script_target(job_id, os.fspath(target), list(args))
        if array is not None:
            what = _pipeline.script_array_target(job_id, what, array)
        return self._submit(job_id, what, merged)

    def map(
        self,
        func: Callable[..., Any],
        items: Iterable[Any],
        /,
        *,
        max_parallel: int | None = None,
        submit_options: SubmitOptions | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run ``func(item, **kwargs)`` for every item, as one array job.

        Up to 100,000 elements, run on the job's workers as Dask tasks
        (``func`` in a worker's thread), as many at once as the workers have
        threads; main's process beside the scheduler only hands them out and
        keeps their states. ``result()`` returns their values in order.
        Retries (``retry_on``) apply to each element, the timeout to the
        whole array; cancelling the job cancels every element. The job needs
        at least one worker.

        Parameters
        ----------
        func : callable
        items : iterable
            One element per item; ``current_job().array_index`` is its index.
        max_parallel : int, optional
            At most this many elements at once (default: as many as the
            workers have threads; this can only lower it).
        submit_options, **kwargs
            Submit options (``name``, ``workers``, ``timeout``, ...) as for
            :meth:`submit`; other keywords go to ``func``.

        Returns
        -------
        Job

        Examples
        --------
        >>> job = batch.map(score, range(100), max_parallel=10, workers=4)
        >>> job.result()[:3]                                  # doctest: +SKIP
        [0.91, 0.88, 0.93]
        """
        options, func_kwargs = SubmitOptions.split(submit_options, kwargs)
        job_id = new_job_id()
        what = _pipeline.function_array_target(
            job_id, func, items, func_kwargs, max_parallel
        )
        return self._submit(job_id, what, options)

    def submit_pipeline(
        self,
        steps: Iterable[Step] | str | os.PathLike[str],
        *,
        max_parallel: int | None = None,
        fail_fast: bool | None = None,
        resume: str | Job | None = None,
        ploomber_args: Iterable[str] = (),
        submit_options: SubmitOptions | None = None,
        **options: Any,
    ) -> Any:
        """Run a pipeline: a DAG of steps, on one cluster, as one job.

        Steps run in dependency order, independent ones at the same time
        (each in its own process beside the scheduler, sharing the cluster's
        workers). A function step that takes an ``upstream`` argument gets
        the values its upstream steps returned, by name; every step finds
        the files its upstream steps kept in ``current_job().upstream``. A
        failing step cancels the steps below it; independent branches
        finish, unless ``fail_fast``.

        Parameters
        ----------
        steps : list of Step, or path
            The steps, or a pipeline YAML file (see the docs for its format;
            its ``options`` are submit options, which arguments override).
        max_parallel : int, optional
            Steps that run at once. Default: the file's, else
            ``batch.tasks.max-parallel``.
        fail_fast : bool, optional
            Stop every step at the first failure. Default: the file's, else
            False.
        resume : str or Job, optional
            An earlier run of this pipeline: steps whose code, parameters and
            upstream steps are unchanged (same content digest) and that
            SUCCEEDED there are not run again; their results and files are
            taken over.
        ploomber_args : list of str, optional
            For a Ploomber spec (a YAML file with top-level ``tasks:``):
            ``ploomber build``'s options, parsed as it parses them
            (``["--env--sample", "true", "--force"]``). The project's folder
            is uploaded and built with each task on the workers; see
            "Ploomber projects" in the docs.
        submit_options, **options
            As for :meth:`submit_script`.

        Returns
        -------
        Job
            ``result()`` is a dict of each step's value by name.

        Examples
        --------
        >>> from dask_batch import Step
        >>> job = batch.submit_pipeline(
        ...     [Step(load), Step("clean.py", upstream=["load"])], workers=2
        ... )
        >>> job = batch.submit_pipeline("pipeline.yaml", resume=job)
        """
        job_id = new_job_id()
        what, submit_options = _pipeline.pipeline_target(
            job_id, steps, max_parallel, fail_fast, submit_options, ploomber_args
        )
        merged = SubmitOptions.merge(submit_options, options)
        if resume is not None:
            earlier = resume.id if isinstance(resume, Job) else str(resume)
            submit = self.service.submit_target
            return self.sync(self._job, submit, job_id, what, merged, resume=earlier)
        return self._submit(job_id, what, merged)

    def tasks(
        self,
        job_id: str,
        *,
        offset: int = 0,
        limit: int | None = None,
        state: str | JobState | None = None,
    ) -> Any:
        """The steps of a pipeline job, or the elements of an array job.

        Parameters
        ----------
        job_id : str
        offset, limit : int, optional
            A page of them: an array's 100,000 elements are read only as far
            as the page needs.
        state : str or JobState, optional
            Only those in this state (``"FAILED"``), counted for the page.

        Returns
        -------
        list of TaskRecord
            Each with its state, times, attempt, message, error and latest
            progress report; ``[]`` for a plain job.

        Examples
        --------
        >>> [(t.name, t.state.value) for t in batch.tasks(job.id)]  # doctest: +SKIP
        [('load', 'SUCCEEDED'), ('clean', 'RUNNING')]
        """

        return self.sync(
            self.service.tasks, job_id, offset=offset, limit=limit, state=state
        )

    def submit_notebook(
        self,
        path: str | os.PathLike[str],
        parameters: dict[str, Any] | None = None,
        *,
        submit_options: SubmitOptions | None = None,
        **options: Any,
    ) -> Any:
        """Execute a notebook with papermill as a batch job.

        The executed notebook is kept as the artifact
        ``<name>.output.ipynb``, beside the notebook as it ran
        (``<name>.input.ipynb``), also when a cell fails (which fails the
        job with that cell's error). The cluster's image needs ``papermill`` and
        an ``ipykernel`` named ``python3``.

        Parameters
        ----------
        path : str or path
            The notebook (``analysis.ipynb``).
        parameters : dict, optional
            papermill parameters, injected after the cell tagged ``parameters``.
        submit_options, **options
            As for :meth:`submit_script`.

        Examples
        --------
        >>> job = batch.submit_notebook("analysis.ipynb", {"year": 2025})
        >>> job.result()            # the executed notebook's artifact URL
        """
        merged = SubmitOptions.merge(submit_options, options)
        job_id = new_job_id()
        what = _submission.notebook_target(job_id, os.fspath(path), parameters or {})
        return self._submit(job_id, what, merged)

    def _submit(
        self,
        job_id: str,
        target: _submission.Target,
        options: SubmitOptions,
        tracking: _tracking.Tracking | None = None,
    ) -> Any:
        if tracking is None:
            tracking = _tracking.requested(job_id, options.mlflow, target.params)
        if self.user is None:
            submit = self.service.submit_target
            return self.sync(self._job, submit, job_id, target, options, tracking)
        # Bad input fails here, in the caller's thread, before any record or
        # cluster exists (and a large payload is not pickled on the loop).
        submission = self.service.submission(job_id, target, options)
        return self.sync(self._job, self.service.submit, submission, tracking)

    def status(self, job_id: str) -> Any:
        """The job's record, checked against the gateway.

        A read: it never starts a cluster. A job whose cluster is gone is
        written back as LOST when no retry is left; with a retry left its
        record says it awaits that retry (see :meth:`reconcile`).

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
        return self.sync(self.service.status, job_id)

    def jobs(
        self,
        *,
        state: str | JobState | Iterable[str | JobState] | None = None,
        name: str | None = None,
        since: datetime.datetime | str | None = None,
        until: datetime.datetime | str | None = None,
        limit: int | None = None,
        kind: str | None = None,
        schedule: str | None = None,
        before: str | None = None,
    ) -> Any:
        """The user's jobs, newest first (a read: it never starts a cluster).

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
        kind : str, optional
            Keep one kind of job: ``"function"``, ``"notebook"``,
            ``"pipeline"``, ``"array"``, ...
        schedule : str, optional
            Keep the runs of this schedule.
        before : str, optional
            Keep jobs older than this job id: the next page after a page
            that ended with it.

        Returns
        -------
        list of JobRecord

        Examples
        --------
        >>> [j.id for j in batch.jobs(state="RUNNING", since="1d")]  # doctest: +SKIP
        """
        return self.sync(
            self.service.jobs,
            state=state,
            name=name,
            since=since,
            until=until,
            limit=limit,
            kind=kind,
            schedule=schedule,
            before=before,
        )

    def reconcile(self) -> Any:
        """Act on every live job whose cluster is gone: retry it, or mark it LOST.

        Reads (``status``, ``jobs``, the displays) only report a job that
        awaits a retry on a new cluster; this starts that retry, as
        ``wait()``/``result()`` do for one job.

        Returns
        -------
        list of JobRecord
            The jobs that were live, as they are now.

        Examples
        --------
        >>> [r.state for r in batch.reconcile()]   # doctest: +SKIP
        """
        return self.sync(self.service.reconcile)

    def wait(
        self, job_id: str, timeout: float | str | None = None, progress: bool = False
    ) -> Any:
        """Wait until the job has ended and return its final record.

        A job whose cluster died with a retry left is retried on a new
        cluster while waiting.

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
        return self.sync(self.service.wait, job_id, timeout, progress)

    def result(
        self,
        job_id: str,
        timeout: float | str | None = None,
        progress: bool = False,
        *,
        partial: bool = False,
    ) -> Any:
        """Wait for the job (as :meth:`wait`) and return the value main returned.

        For an array job, the elements' values in order; for a pipeline, a
        dict of each step's value by name.

        Parameters
        ----------
        job_id, timeout, progress
            As for :meth:`wait`.
        partial : bool
            For an array or pipeline job: return what there is, with a
            :class:`JobFailedError` in place of each value that is missing,
            instead of raising.

        Raises
        ------
        JobFailedError
            Main raised or its process died: carries the remote type,
            message, traceback and the end of the log.
        TasksFailedError
            Steps or elements did not succeed: ``.failed`` says which and
            why, ``.partial`` holds the others' values.
        JobCancelledError, JobLostError, JobNotFoundError
        ResultIntegrityError
            The stored result was changed after its runner recorded it.
        TimeoutError
            The job did not finish in time (it keeps running).

        Examples
        --------
        >>> BatchClient().result("20261126-081530-123-3f9a1c2b")  # doctest: +SKIP
        """
        return self.sync(self.service.result, job_id, timeout, progress, partial)

    def logs(self, job_id: str, *, follow: bool = False, task: str = "") -> Any:
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
        task : str, optional
            The log of one step of a pipeline (its name) or one element of
            an array (its index); default: the job's own log, where the
            runner notes how each step ended.

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
            if self.asynchronous:
                return self.service.follow_logs(job_id, task)
            return self.service.follow_logs_sync(job_id, self.sync, task)
        return self.sync(self.service.logs, job_id, task)

    def artifacts(self, job_id: str) -> Any:
        """Files main wrote under ``dask_batch.artifacts_path()``.

        Returns
        -------
        dict
            Path relative to the job's artifacts prefix -> size in bytes.

        Examples
        --------
        >>> batch.artifacts(job.id)          # doctest: +SKIP
        {'model.pkl': 1048576, 'analysis.output.ipynb': 20480}
        """
        return self.sync(self.service.artifacts, job_id)

    def download_artifacts(
        self, job_id: str, destination: str | os.PathLike[str]
    ) -> Any:
        """Copy the job's artifacts into a local directory (created if missing).

        Returns
        -------
        list of str
            The local paths written; artifacts keep their relative paths.

        Examples
        --------
        >>> batch.download_artifacts(job.id, "results/")   # doctest: +SKIP
        """
        return self.sync(self.service.download_artifacts, job_id, destination)

    def resubmit(self, job_id: str, *, failed_only: bool = True) -> Any:
        """Run an ended job again, as it was submitted, as a new job.

        Parameters
        ----------
        job_id : str
        failed_only : bool
            Run only what did not succeed: an array's failed elements (the
            new job takes the others' values over), a pipeline's failed steps
            and those below them. False runs everything again.

        Returns
        -------
        Job
            The new job; its ``result()`` holds every value, in order.

        Examples
        --------
        >>> job = batch.resubmit(sweep.id)       # doctest: +SKIP
        >>> len(job.result())                     # doctest: +SKIP
        100000
        """
        return self.sync(
            self._job, self.service.resubmit, job_id, failed_only=failed_only
        )

    def cancel(self, job_id: str) -> Any:
        """Cancel a pending or running job and stop its cluster.

        The state becomes CANCELLED (unless the job already ended) before the
        cluster is stopped; main's process is terminated by the runner.

        Returns
        -------
        JobRecord
            The record after cancelling.

        Examples
        --------
        >>> batch.cancel(job.id).state   # doctest: +SKIP
        <JobState.CANCELLED: 'CANCELLED'>
        """
        return self.sync(self.service.cancel, job_id)


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
