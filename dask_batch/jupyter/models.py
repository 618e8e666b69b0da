"""jupyter-scheduler's models from dask-batch records and schedules, and back.

What a Notebook Job says that a dask-batch job has no field for (its output
formats, tags, parameters as typed, environment and compute type, the
notebook's path in the Jupyter root, its definition) is filed with the job as
labels under ``jupyter/``; a definition's runs carry the definition's. Labels
are read back as untrusted text: they are shown, never used as paths.
"""

from __future__ import annotations

import ast
import datetime
import json
import posixpath
import re
from typing import Any

from jupyter_scheduler.models import (
    DescribeJob,
    DescribeJobDefinition,
    Status,
)

from dask_batch.core.records import JobRecord, JobState
from dask_batch.workflows.schedules import Schedule

INPUT = "jupyter/input_uri"
FORMATS = "jupyter/output_formats"
PARAMETERS = "jupyter/parameters"
TAGS = "jupyter/tags"
ENVIRONMENT = "jupyter/environment"
COMPUTE = "jupyter/compute_type"
PACKAGED = "jupyter/package_input_folder"
DEFINITION = "jupyter/job_definition_id"

#: dask-batch's states as Notebook Jobs show them.
STATUS = {
    JobState.PENDING: Status.QUEUED,
    JobState.RUNNING: Status.IN_PROGRESS,
    JobState.SUCCEEDED: Status.COMPLETED,
    JobState.FAILED: Status.FAILED,
    JobState.LOST: Status.FAILED,
    JobState.CANCELLED: Status.STOPPED,
}
#: A status filter as dask-batch states (CREATED and STOPPING never show).
STATES = {
    status: [state for state, shown in STATUS.items() if shown is status]
    for status in Status
}

DEFAULT_ENVIRONMENT = "dask-gateway"
_NOTEBOOK_NAME = re.compile(r"^[^/\\\x00]{1,200}\.ipynb$")


def parameter_values(parameters: dict[str, str] | None) -> dict[str, Any]:
    """Parameters as the notebook gets them: jupyter-scheduler sends Python
    source text (``"3"``, ``"'hi'"``); a literal is evaluated, anything else
    stays the text it is."""
    values = {}
    for name, text in (parameters or {}).items():
        try:
            values[name] = ast.literal_eval(text) if isinstance(text, str) else text
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            values[name] = text
    return values


def labels_for(
    model: Any, input_uri: str, definition_id: str | None = None
) -> dict[str, str]:
    """What the model says that dask-batch keeps as labels."""
    labels = {
        INPUT: input_uri,
        FORMATS: ",".join(model.output_formats or ["ipynb"]),
        PARAMETERS: json.dumps(dict(model.parameters or {})),
        TAGS: json.dumps(list(model.tags or [])),
        ENVIRONMENT: model.runtime_environment_name or DEFAULT_ENVIRONMENT,
        COMPUTE: model.compute_type or "",
        PACKAGED: "true" if model.package_input_folder else "",
    }
    if definition_id:
        labels[DEFINITION] = definition_id
    return labels


def _json(text: str | None, kind: type) -> Any:
    try:
        value = json.loads(text or "")
    except ValueError:
        return kind()
    return value if isinstance(value, kind) else kind()


def _common(labels: dict[str, str], fallback_input: str) -> dict[str, Any]:
    input_uri = labels.get(INPUT) or fallback_input
    filename = posixpath.basename(input_uri)
    if not _NOTEBOOK_NAME.match(filename):  # names a folder to write into
        filename = "notebook.ipynb"
    formats = [f for f in labels.get(FORMATS, "ipynb").split(",") if f] or ["ipynb"]
    parameters = {
        str(k): str(v) for k, v in _json(labels.get(PARAMETERS), dict).items()
    }
    return {
        "input_filename": filename,
        "runtime_environment_name": labels.get(ENVIRONMENT) or DEFAULT_ENVIRONMENT,
        "runtime_environment_parameters": None,
        "output_formats": [f for f in formats if f in ("ipynb", "html")] or ["ipynb"],
        "parameters": parameters or None,
        "tags": [str(t) for t in _json(labels.get(TAGS), list)] or None,
        "compute_type": labels.get(COMPUTE) or None,
        "package_input_folder": bool(labels.get(PACKAGED)),
        "packaged_files": [],
    }


def millis(when: datetime.datetime | None) -> int | None:
    return None if when is None else int(when.timestamp() * 1000)


def from_millis(value: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(value / 1000, datetime.timezone.utc)


def input_of(schedule: Schedule) -> str:
    """The notebook a definition runs, as the Jupyter root names it."""
    labels = schedule.spec.get("labels") or {}
    value = labels.get(INPUT) if isinstance(labels, dict) else None
    return value if isinstance(value, str) and value else schedule.target


def describe_job(record: JobRecord) -> DescribeJob:
    """A dask-batch job as jupyter-scheduler describes a job."""
    labels = record.labels
    created = millis(record.submitted) or 0
    updated = millis(record.updated or record.finished or record.started)
    return DescribeJob(
        **_common(labels, record.target),
        name=record.name,
        job_id=record.id,
        job_definition_id=labels.get(DEFINITION) or record.schedule or None,
        url=f"/jobs/{record.id}",
        create_time=created,
        update_time=updated or created,
        start_time=millis(record.started),
        end_time=millis(record.finished),
        status=STATUS[record.state],
        status_message=record.message or None,
    )


def describe_definition(schedule: Schedule) -> DescribeJobDefinition:
    """A dask-batch schedule as jupyter-scheduler describes a job definition."""
    labels = dict(schedule.spec.get("labels") or {})
    labels = {k: v for k, v in labels.items() if isinstance(v, str)}
    created = millis(schedule.created) or 0
    return DescribeJobDefinition(
        **_common(labels, schedule.target),
        name=schedule.name,
        job_definition_id=schedule.id,
        schedule=schedule.cron,
        timezone=schedule.timezone,
        create_time=created,
        update_time=created,
        active=not schedule.paused,
    )
