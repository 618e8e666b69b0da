"""jupyter-scheduler's scheduler, with dask-batch as the service behind it.

Every method is a coroutine on the Jupyter server's event loop (the handlers
await them); storage and file work runs in threads. Nothing is kept in the
server: jobs and definitions live in the job storage, so the Jobs panel shows
what ran while the server was down, and the server leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

from jupyter_scheduler.exceptions import InputUriError, SchedulerError
from jupyter_scheduler.executors import ExecutionManager
from jupyter_scheduler.models import (
    CountJobsQuery,
    CreateJob,
    CreateJobDefinition,
    CreateJobFromDefinition,
    DescribeJob,
    DescribeJobDefinition,
    JobFeature,
    ListJobDefinitionsQuery,
    ListJobDefinitionsResponse,
    ListJobsQuery,
    ListJobsResponse,
    SortDirection,
    Status,
    UpdateJob,
    UpdateJobDefinition,
)
from jupyter_scheduler.scheduler import BaseScheduler
from traitlets import Dict, Unicode
from traitlets import Type as TType

from dask_batch.client.submission import notebook_target
from dask_batch.core.exceptions import DaskBatchError
from dask_batch.core.names import JOB_ID
from dask_batch.core.options import SubmitOptions
from dask_batch.core.records import new_job_id
from dask_batch.job_service import JobService
from dask_batch.jupyter import models
from dask_batch.jupyter.connection import Connection
from dask_batch.jupyter.environments import GatewayEnvironments, workers_of
from dask_batch.jupyter.outputs import download_outputs

_FIVE_FIELDS = re.compile(r"^\s*\S+(\s+\S+){4}\s*$")
_TOKEN = re.compile(r"^(\d{1,9})\.(\S+)$")


class BatchFeatures(ExecutionManager):
    """What the Notebook Jobs UI offers with dask-batch behind it. Nothing
    here executes: jobs run on the gateway."""

    def execute(self) -> None:  # pragma: no cover - never called
        raise NotImplementedError("dask-batch runs Notebook Jobs on the gateway")

    def supported_features(cls) -> dict[JobFeature, bool]:
        # Called as ``supported_features(cls)`` by jupyter-scheduler's
        # handlers, as its own DefaultExecutionManager defines it.
        return {
            JobFeature.job_name: True,
            JobFeature.parameters: True,
            JobFeature.output_formats: True,
            JobFeature.job_definition: True,
            JobFeature.idempotency_token: True,
            JobFeature.tags: True,
            JobFeature.email_notifications: False,
            JobFeature.timeout_seconds: False,
            JobFeature.retry_on_timeout: False,
            JobFeature.max_retries: False,
            JobFeature.min_retry_interval_millis: False,
            JobFeature.output_filename_template: False,
            JobFeature.stop_job: True,
            JobFeature.delete_job: True,
        }

    def validate(cls, input_path: str) -> bool:
        return input_path.endswith(".ipynb")


@contextlib.contextmanager
def _as_scheduler_errors() -> Iterator[None]:
    """dask-batch's errors as jupyter-scheduler's: its handlers show a
    ``SchedulerError``'s message, and hide any other error's."""
    try:
        yield
    except DaskBatchError as exc:
        raise SchedulerError(str(exc)) from exc


class DaskBatchScheduler(BaseScheduler):
    """Notebook Jobs as dask-batch notebook jobs, job definitions as schedules.

    Configured like the command line, through dask config (``gateway.*``,
    ``batch.*``, ``DASK_BATCH__*``); these traits, given in the Jupyter
    server's config or on its command line, win over it.
    """

    task_runner = None  # definitions are fired by the hub service or keeper

    execution_manager_class = TType(
        default_value=BatchFeatures,
        klass=ExecutionManager,
        config=True,
        help="What the UI offers (nothing executes in the server).",
    )
    storage = Unicode("", config=True, help="The job storage (default: batch.storage).")
    storage_options = Dict(
        config=True, help="fsspec options (default: batch.storage-options)."
    )
    gateway_address = Unicode(
        "", config=True, help="The gateway (default: gateway.address)."
    )

    def __init__(
        self,
        root_dir: str,
        environments_manager: Any,
        db_url: str | None = None,
        config: Any = None,
        **kwargs: Any,
    ) -> None:
        # db_url is accepted and unused: nothing of a job lives in a database.
        super().__init__(
            root_dir=root_dir,
            environments_manager=environments_manager,
            config=config,
            **kwargs,
        )
        connection = getattr(environments_manager, "connection", None)
        if not isinstance(connection, Connection):
            connection = Connection()
        connection.storage = self.storage or connection.storage
        connection.storage_options = self.storage_options or connection.storage_options
        connection.gateway_address = self.gateway_address or connection.gateway_address
        self.connection = connection

    async def _service(self) -> JobService:
        with _as_scheduler_errors():
            return await self.connection.service()

    # -- jobs ------------------------------------------------------------------------
    async def create_job(self, model: CreateJob) -> str:
        job_id = new_job_id()
        path = await self._input(model.input_uri)
        labels = models.labels_for(model, model.input_uri, model.job_definition_id)
        return await self._submit(job_id, model, path, labels)

    async def _submit(
        self, job_id: str, model: Any, path: str, labels: dict[str, str]
    ) -> str:
        service = await self._service()
        options = await self._options(model, job_id, path, labels)
        values = models.parameter_values(model.parameters)
        with _as_scheduler_errors():
            # Reading the notebook and packing its folder: not on the loop.
            submission = await asyncio.to_thread(
                lambda: service.submission(
                    job_id, notebook_target(job_id, path, values), options
                )
            )
            return await service.submit(submission)

    async def _options(
        self, model: Any, job_id: str, path: str, labels: dict[str, str]
    ) -> SubmitOptions:
        """How a job (or a definition's runs) runs, from the form's model.
        A definition has no idempotency token."""
        return SubmitOptions(
            name=model.name,
            workers=workers_of(model.compute_type, job_id),
            cluster_options=await self._cluster_options(model, job_id),
            files=os.path.dirname(path) if model.package_input_folder else None,
            idempotency_key=getattr(model, "idempotency_token", None) or None,
            labels=labels,
        )

    async def _cluster_options(self, model: Any, job_id: str) -> dict[str, Any]:
        environments = self.environments_manager
        if not isinstance(environments, GatewayEnvironments):
            return {}
        with _as_scheduler_errors():
            return await environments.cluster_options(
                model.runtime_environment_name, job_id
            )

    async def _input(self, input_uri: str) -> str:
        """The notebook ``input_uri`` names, inside the server's root."""

        def find() -> str:
            root = os.path.realpath(self.root_dir)
            path = os.path.realpath(os.path.join(root, input_uri))
            if not path.startswith(root + os.sep) or not os.path.isfile(path):
                raise InputUriError(input_uri)
            if not path.endswith(".ipynb"):
                raise SchedulerError(
                    f"{input_uri} is not a notebook: Notebook Jobs run .ipynb files."
                )
            return path

        return await asyncio.to_thread(find)

    async def list_jobs(self, query: ListJobsQuery) -> ListJobsResponse:
        size = int(query.max_items if query.max_items is not None else 1000)
        offset, before = _page(query.next_token)
        states = models.STATES[query.status] if query.status else None
        if size <= 0 or states == []:
            return ListJobsResponse(jobs=[], total_count=0)
        service = await self._service()
        since = None
        if query.start_time:
            since = models.from_millis(query.start_time)
        with _as_scheduler_errors():
            records = await service.jobs(
                kind="notebook",
                state=states,
                name=query.name or None,
                since=since,
                before=before,
                labels=_definition_filter(query.job_definition_id),
                limit=size + 1,
            )
        jobs = [models.describe_job(r) for r in records[:size]]
        if query.tags:
            jobs = [j for j in jobs if set(query.tags) <= set(j.tags or [])]
        _sort(jobs, query.sort_by)
        for job in jobs:
            self.add_job_files(job)
        if len(records) > size:
            token = f"{offset + size}.{records[size - 1].id}"
            # -1: "more than" in the UI's pager; counting every job would
            # cost a listing of the whole history.
            return ListJobsResponse(jobs=jobs, total_count=-1, next_token=token)
        return ListJobsResponse(jobs=jobs, total_count=offset + len(jobs))

    async def count_jobs(self, query: CountJobsQuery) -> int:
        service = await self._service()
        states = models.STATES[query.status]
        if not states:
            return 0
        with _as_scheduler_errors():
            found = await service.jobs(kind="notebook", state=states)
        return len(found)

    async def get_job(self, job_id: str, job_files: bool | None = True) -> DescribeJob:
        service = await self._service()
        with _as_scheduler_errors():
            record = await service.status(job_id)
        job = models.describe_job(record)
        if job_files:
            self.add_job_files(job)
        return job

    async def update_job(self, job_id: str, model: UpdateJob) -> None:
        if model.status == Status.STOPPED:
            await self.stop_job(job_id)
            return
        changed = {k for k in model.__fields_set__ if getattr(model, k) is not None}
        if changed - {"status"}:
            raise SchedulerError(
                f"job {job_id}: a dask-batch job cannot be changed once "
                f"submitted ({', '.join(sorted(changed))}); only stopped."
            )

    async def stop_job(self, job_id: str) -> None:
        service = await self._service()
        with _as_scheduler_errors():
            await service.cancel(job_id)

    async def delete_job(self, job_id: str) -> None:
        service = await self._service()
        with _as_scheduler_errors():
            await service.delete(job_id)

    # -- job definitions: dask-batch schedules ----------------------------------
    async def create_job_definition(self, model: CreateJobDefinition) -> str:
        schedule_id = new_job_id()
        path = await self._input(model.input_uri)
        cron = _cron(model.schedule, schedule_id)
        await self._keep_schedule(
            schedule_id, model, model.input_uri, path, cron, model.timezone, True
        )
        return schedule_id

    async def _keep_schedule(
        self,
        schedule_id: str,
        model: Any,
        input_uri: str,
        path: str,
        cron: str,
        timezone: str | None,
        active: bool,
    ) -> None:
        service = await self._service()
        labels = models.labels_for(model, input_uri, schedule_id)
        options = await self._options(model, schedule_id, path, labels)
        values = models.parameter_values(model.parameters)
        with _as_scheduler_errors():
            target = await asyncio.to_thread(notebook_target, schedule_id, path, values)
            await service.add_schedule(
                schedule_id,
                target,
                options,
                cron=cron,
                timezone=timezone or "UTC",
                paused=not active,
            )

    async def update_job_definition(
        self, job_definition_id: str, model: UpdateJobDefinition
    ) -> None:
        service = await self._service()
        sent = {k for k in model.__fields_set__ if getattr(model, k) is not None}
        sent.discard("output_filename_template")  # a default the UI always sends
        if sent == {"active"}:
            with _as_scheduler_errors():
                if model.active:
                    await service.resume_schedule(job_definition_id)
                else:
                    await service.pause_schedule(job_definition_id)
            return
        current, input_uri = await self._definition(job_definition_id)
        merged = current.copy(update={k: getattr(model, k) for k in sent})
        if "input_uri" in sent:
            input_uri = str(model.input_uri)
        path = await self._input(input_uri)
        cron = _cron(merged.schedule, job_definition_id)
        await self._keep_schedule(
            job_definition_id,
            merged,
            input_uri,
            path,
            cron,
            merged.timezone,
            merged.active,
        )

    async def delete_job_definition(self, job_definition_id: str) -> None:
        service = await self._service()
        with _as_scheduler_errors():
            await service.delete_schedule(job_definition_id)

    async def get_job_definition(self, job_definition_id: str) -> DescribeJobDefinition:
        return (await self._definition(job_definition_id))[0]

    async def _definition(
        self, job_definition_id: str
    ) -> tuple[DescribeJobDefinition, str]:
        """A definition, and the notebook it runs as the Jupyter root names it."""
        service = await self._service()
        with _as_scheduler_errors():
            schedule = await service.schedule(job_definition_id)
        return models.describe_definition(schedule), models.input_of(schedule)

    async def list_job_definitions(
        self, query: ListJobDefinitionsQuery
    ) -> ListJobDefinitionsResponse:
        service = await self._service()
        with _as_scheduler_errors():
            schedules = await service.schedules()
        definitions = [
            models.describe_definition(s)
            for s in schedules
            if s.spec.get("kind") == "notebook"
            and (not query.name or s.name == query.name)
        ]
        _sort(definitions, query.sort_by)
        size = int(query.max_items if query.max_items is not None else 1000)
        offset = _page(query.next_token)[0]
        page = definitions[offset : offset + size] if size > 0 else []
        more = offset + size < len(definitions)
        return ListJobDefinitionsResponse(
            job_definitions=page,
            total_count=len(definitions),
            next_token=f"{offset + size}.{page[-1].job_definition_id}"
            if more and page
            else None,
        )

    async def create_job_from_definition(
        self, job_definition_id: str, model: CreateJobFromDefinition
    ) -> str:
        definition, input_uri = await self._definition(job_definition_id)
        try:
            path = await self._input(input_uri)
        except InputUriError as exc:
            raise SchedulerError(
                f"job definition {job_definition_id}: {exc}; edit the "
                "definition to name a notebook that exists."
            ) from None
        if model.parameters:
            parameters = {**(definition.parameters or {}), **model.parameters}
            definition = definition.copy(update={"parameters": parameters})
        job_id = new_job_id()
        labels = models.labels_for(definition, input_uri, job_definition_id)
        return await self._submit(job_id, definition, path, labels)

    # -- outputs ----------------------------------------------------------------
    def get_staging_paths(self, model: Any) -> dict[str, str]:
        """Nothing is staged: :class:`ArtifactFiles` downloads the job's
        artifacts from the job storage."""
        return {}

    async def download(self, job_id: str, redownload: bool) -> None:
        """Put the job's outputs under the Jupyter root, as the stock
        backend does (``jobs/<notebook>-<job id>/``)."""
        job = await self.get_job(job_id, False)
        if job.status not in (Status.COMPLETED, Status.FAILED, Status.STOPPED):
            raise SchedulerError(
                f"job {job_id} is {job.status.value}: its outputs can be "
                "downloaded once it has ended."
            )
        folder = os.path.join(
            self.root_dir, self.get_local_output_path(job, root_dir_relative=True)
        )
        service = await self._service()
        with _as_scheduler_errors():
            await download_outputs(
                service, job, folder, self.get_job_filenames(job), redownload
            )


def _definition_filter(definition_id: str | None) -> dict[str, str] | None:
    return {models.DEFINITION: definition_id} if definition_id else None


def _page(token: str | None) -> tuple[int, str | None]:
    """A listing token: how many came before, and the last job id shown."""
    if not token:
        return 0, None
    match = _TOKEN.match(token)
    if match is None or not JOB_ID.match(match.group(2)):
        raise SchedulerError(f"{token!r} is not a page token of this listing.")
    return int(match.group(1)), match.group(2)


def _cron(cron: str | None, schedule_id: str) -> str:
    """Five cron fields, as the Notebook Jobs UI writes them (it would read a
    sixth as leading seconds; dask-batch reads it as trailing)."""
    if not cron or not _FIVE_FIELDS.match(cron):
        raise SchedulerError(
            f"job definition {schedule_id}: {cron!r} is not a five-field cron "
            "expression (minute hour day month weekday, such as '0 2 * * *')."
        )
    return cron.strip()


def _sort(items: list[Any], sort_by: list[Any]) -> None:
    """Sort a page as asked; the listing itself is always newest first."""
    for field in reversed(sort_by or []):
        name = field.name
        if items and hasattr(items[0], name):
            items.sort(
                key=lambda item: (getattr(item, name) is None, getattr(item, name)),
                reverse=field.direction == SortDirection.desc,
            )
