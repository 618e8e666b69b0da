"""``mlflow run -b dask-batch``: MLflow projects as batch jobs.

An MLflow project backend plugin (entry point group
``mlflow.project_backend``, name ``dask-batch``). The project's files are
uploaded as the job's working directory, its entry point's command is main,
and the job is tracked in the MLflow run that ``mlflow run`` made (see
``SubmitOptions.mlflow``)::

    mlflow run ./my-project -b dask-batch --backend-config batch.json -P alpha=5.0

The backend config (a JSON file or string) takes the submit options
(``workers``, ``adapt``, ``cluster_options``, ``env``, ``timeout``,
``retries``, ``retry_on``, ``memory_limit``, ``name``, ``idempotency_key``),
the client's ``storage`` and ``mode``, and ``wait`` (default true): wait for
the job and fail like the job did. Ctrl-C while waiting leaves the job
running (it is a batch job) and says how to cancel it.

Client side; imported only by MLflow.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from mlflow.entities import RunStatus
from mlflow.exceptions import ExecutionException
from mlflow.projects.backend.abstract_backend import AbstractBackend
from mlflow.projects.submitted_run import SubmittedRun
from mlflow.projects.utils import (
    MLFLOW_LOCAL_BACKEND_RUN_ID_CONFIG,
    PROJECT_BUILD_IMAGE,
    PROJECT_DOCKER_ARGS,
    PROJECT_DOCKER_AUTH,
    PROJECT_ENV_MANAGER,
    PROJECT_STORAGE_DIR,
    PROJECT_SYNCHRONOUS,
    fetch_and_validate_project,
    get_or_create_run,
    load_project,
)
from mlflow.tracking import MlflowClient

from dask_batch.batch_client import BatchClient
from dask_batch.client.submission import command_target
from dask_batch.client.tracking import Tracking, terminate
from dask_batch.core.exceptions import DaskBatchError
from dask_batch.core.options import SubmitOptions
from dask_batch.core.records import JobState, new_job_id

__all__ = ["DaskBatchBackend", "DaskBatchSubmittedRun"]

# What MLflow itself puts in every backend config.
_MLFLOW_KEYS = frozenset(
    {
        MLFLOW_LOCAL_BACKEND_RUN_ID_CONFIG,
        PROJECT_BUILD_IMAGE,
        PROJECT_DOCKER_ARGS,
        PROJECT_DOCKER_AUTH,
        PROJECT_ENV_MANAGER,
        PROJECT_STORAGE_DIR,
        PROJECT_SYNCHRONOUS,
    }
)
# Submit options that the project decides, not the backend config.
_PROJECT_OPTIONS = frozenset({"files", "mlflow"})
_CLIENT_KEYS = frozenset({"storage", "mode"})

_RUN_STATUS = {
    JobState.PENDING: RunStatus.SCHEDULED,
    JobState.RUNNING: RunStatus.RUNNING,
    JobState.SUCCEEDED: RunStatus.FINISHED,
    JobState.FAILED: RunStatus.FAILED,
    JobState.LOST: RunStatus.FAILED,
    JobState.CANCELLED: RunStatus.KILLED,
}


def _split_config(
    backend_config: Mapping[str, Any] | None,
) -> tuple[SubmitOptions, dict[str, Any], bool]:
    """Submit options, BatchClient arguments and ``wait`` from a backend config."""
    given = dict(backend_config or {})
    config = {k: v for k, v in given.items() if k not in _MLFLOW_KEYS}
    wait = config.pop("wait", True)
    if not isinstance(wait, bool):
        raise ExecutionException(
            f"dask-batch: 'wait' must be true or false, got {wait!r}"
        )
    client = {k: config.pop(k) for k in list(config) if k in _CLIENT_KEYS}
    allowed = (SubmitOptions.names() - _PROJECT_OPTIONS) | _CLIENT_KEYS | {"wait"}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ExecutionException(
            f"dask-batch: unknown backend config key(s) {', '.join(unknown)}; "
            f"the keys are {', '.join(sorted(allowed))}."
        )
    if isinstance(config.get("adapt"), list):
        config["adapt"] = tuple(config["adapt"])
    return SubmitOptions(**config), client, wait


def _runnable_project(
    project_uri: str,
    entry_point: str,
    params: dict[str, Any],
    version: str | None,
    backend_config: dict[str, Any] | None,
) -> tuple[str, Any]:
    """The project's local folder and its MLproject, if dask-batch can run it."""
    env_manager = (backend_config or {}).get(PROJECT_ENV_MANAGER)
    if env_manager not in (None, "local"):
        raise ExecutionException(
            f"dask-batch runs projects in the cluster's Python environment; "
            f"--env-manager {env_manager} is not supported (use local, or omit it)."
        )
    work_dir = fetch_and_validate_project(project_uri, version, entry_point, params)
    project = load_project(work_dir)
    if project.docker_env:
        raise ExecutionException(
            "dask-batch does not run docker_env projects: the job runs in the "
            "cluster's image. Set the image through cluster_options instead."
        )
    return work_dir, project


class DaskBatchSubmittedRun(SubmittedRun):
    """An MLflow project run executing as a dask-batch job.

    Parameters
    ----------
    run_id : str
        The MLflow run.
    job_id : str
        The batch job.
    batch : BatchClient
    """

    def __init__(self, run_id: str, job_id: str, batch: BatchClient) -> None:
        super().__init__()
        self._run_id = run_id
        self.job_id = job_id
        self.batch = batch
        self._left_running = False

    @property
    def run_id(self) -> str:
        return self._run_id

    def wait(self) -> bool:
        """Wait for the job; True if it SUCCEEDED.

        Ctrl-C stops waiting and leaves the job running; a ``cancel()``
        that MLflow sends after it is ignored.
        """
        try:
            record = self.batch.wait(self.job_id)
        except KeyboardInterrupt:
            self._left_running = True
            print(
                f"\ndask-batch: stopped waiting. Job {self.job_id} (MLflow run "
                f"{self._run_id}) keeps running on its cluster. Follow it with "
                f"`dask batch status {self.job_id}`; cancel it with "
                f"`dask batch cancel {self.job_id}`.",
                file=sys.stderr,
                flush=True,
            )
            raise
        return bool(record.state is JobState.SUCCEEDED)

    def get_status(self) -> str:
        """The run's status from the job's state (``RUNNING``, ``FINISHED``, ...)."""
        state = self.batch.status(self.job_id).state
        return str(RunStatus.to_string(_RUN_STATUS[state]))

    def cancel(self) -> None:
        """Cancel the job and wait until it has ended (its run ends KILLED)."""
        if self._left_running:
            return  # the user chose to leave it running (Ctrl-C on wait)
        self.batch.cancel(self.job_id)
        self.batch.wait(self.job_id)

    def describe(self) -> str:
        """Why the job did not succeed, for MLflow's error message."""
        record = self.batch.status(self.job_id)
        job_id = self.job_id
        return (
            f"Job {job_id} (MLflow run {self._run_id}) ended {record.state.value}: "
            f"{record.message or 'no message'}. Its log: `dask batch logs {job_id}`."
        )


class DaskBatchBackend(AbstractBackend):
    """Runs MLflow projects as dask-batch jobs (``mlflow run -b dask-batch``)."""

    def run(
        self,
        project_uri: str,
        entry_point: str,
        params: dict[str, Any],
        version: str | None,
        backend_config: dict[str, Any],
        tracking_uri: str,
        experiment_id: str,
    ) -> DaskBatchSubmittedRun:
        """Submit the project's entry point as a batch job in a new MLflow run.

        Parameters
        ----------
        project_uri : str
            A local folder or a Git URI with an ``MLproject`` file.
        entry_point : str
            The entry point (``main``).
        params : dict
            Its parameters (``-P name=value``).
        version : str or None
            A Git commit or branch, for Git projects.
        backend_config : dict
            Submit options, ``storage``, ``mode`` and ``wait`` (see the
            module's documentation), with MLflow's own keys.
        tracking_uri : str
            The tracking server the run is made on.
        experiment_id : str
            The run's experiment.

        Returns
        -------
        DaskBatchSubmittedRun

        Raises
        ------
        mlflow.exceptions.ExecutionException
            The project cannot run on dask-batch, the job could not be
            submitted, or (when waiting) it did not succeed; the message names
            the job and its state.
        """
        options, client_args, wait = _split_config(backend_config)
        work_dir, project = _runnable_project(
            project_uri, entry_point, params, version, backend_config
        )
        # storage_dir None: path parameters are passed as given, and resolve
        # in the job's working directory (the project's uploaded files).
        command = project.get_entry_point(entry_point).compute_command(params, None)
        run = get_or_create_run(
            None, project_uri, experiment_id, work_dir, version, entry_point, params
        )
        run_id = run.info.run_id
        try:
            batch = BatchClient(**client_args)
            job_id = new_job_id()
            name = options.name or f"{project.name or 'project'}:{entry_point}"
            target = command_target(job_id, command, name, dict(params or {}))
            job_id = batch.sync(
                batch.service.submit_target,
                job_id,
                target,
                options.replace(files=work_dir, name=name),
                Tracking(run_id=run_id, tracking_uri=tracking_uri),
            )
        except DaskBatchError as exc:
            client = MlflowClient(tracking_uri=tracking_uri)
            terminate(client, run_id, "FAILED", str(exc))
            raise ExecutionException(f"dask-batch: {exc}") from exc
        print(
            f"dask-batch: MLflow run {run_id} runs as job {job_id}; "
            f"`dask batch status {job_id}` follows it.",
            file=sys.stderr,
            flush=True,
        )
        submitted = DaskBatchSubmittedRun(run_id, job_id, batch)
        if wait:
            if not submitted.wait():
                raise ExecutionException(submitted.describe())
            print(
                f"dask-batch: job {job_id} SUCCEEDED; MLflow run {run_id} FINISHED.",
                file=sys.stderr,
                flush=True,
            )
        return submitted
