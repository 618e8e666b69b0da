"""Job ids, states and the record that describes a job.

Shared by the client and the scheduler-side runner: imports nothing from either.
"""

from __future__ import annotations

import datetime
import enum
import math
import os
from dataclasses import dataclass, field
from typing import Any

from dask_batch.core.names import JOB_ID, safe_link

__all__ = ["TERMINAL_STATES", "ErrorInfo", "JobRecord", "JobState", "new_job_id"]


class JobState(str, enum.Enum):
    """The life cycle of a job.

    ``PENDING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED``, and ``LOST`` when
    the job's cluster disappeared while the record was not terminal.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    LOST = "LOST"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES

    def __str__(self) -> str:
        return self.value


TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.LOST}
)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def new_job_id(now: datetime.datetime | None = None) -> str:
    """A unique id that sorts by submission time: ``YYYYmmdd-HHMMSS-mmm-xxxxxxxx``."""
    now = now or utcnow()
    stamp = now.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{now.microsecond // 1000:03d}-{os.urandom(4).hex()}"


def parse_job_time(value: Any) -> datetime.datetime | None:
    """A time bound for listings: a datetime, ISO 8601 text, or a duration ago.

    ``"2h"`` and ``7200`` both mean two hours before now; naive times are UTC.

    Examples
    --------
    >>> parse_job_time("2026-11-26T08:00:00")
    datetime.datetime(2026, 11, 26, 8, 0, tzinfo=datetime.timezone.utc)
    """
    from dask.utils import parse_timedelta

    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    if isinstance(value, (int, float)):
        return utcnow() - datetime.timedelta(seconds=value)
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        try:
            seconds = parse_timedelta(value)
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{value!r} is neither an ISO 8601 time nor a duration such as "
                "'2h' or '3d'"
            ) from None
        return utcnow() - datetime.timedelta(seconds=seconds)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


def to_iso(when: datetime.datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def from_iso(text: str | None) -> datetime.datetime | None:
    return None if not text else datetime.datetime.fromisoformat(text)


@dataclass(frozen=True)
class ErrorInfo:
    """Why a job failed, as stored in its record's ``error``.

    Attributes
    ----------
    type : str
        Qualified name of main's exception (``"builtins.ValueError"``), or a
        dask-batch name such as ``"JobTimeout"``, ``"ProcessExit"``,
        ``"RunnerError"`` or ``"ClusterRequestError"``.
    message : str
    traceback : str
        Formatted remote traceback, if any.
    returncode : int or None
        Exit status of main's process or of a script, where there is one.
    """

    type: str
    message: str
    traceback: str = ""
    returncode: int | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": self.type,
            "message": self.message,
            "traceback": self.traceback,
        }
        if self.returncode is not None:
            doc["returncode"] = self.returncode
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ErrorInfo:
        code = doc.get("returncode")
        return cls(
            type=str(doc.get("type", "UnknownError")),
            message=str(doc.get("message", "")),
            traceback=str(doc.get("traceback", "")),
            returncode=code if isinstance(code, int) else None,
        )


@dataclass(slots=True)
class JobRecord:
    """Everything stored about one job, as returned by ``BatchClient.status``.

    Attributes
    ----------
    id, user, name : str
        The job id, its owner (the gateway user) and its display name.
    state : JobState
    submitted, started, finished : datetime or None
        UTC times of submission, of main starting, and of the terminal state.
    cluster_name, gateway_address : str or None
        The job's cluster, and the gateway that runs it.
    workers : int or None
        Workers requested (None when ``adapt`` was given).
    adapt : tuple of int or None
        ``(minimum, maximum)`` for adaptive scaling.
    payload_digest : str
        SHA-256 of the pickled main and its arguments.
    message : str
        A short human explanation of the state (why it failed, who cancelled).
    error : dict or None
        ``{"type", "message", "traceback"}`` of a failed job.
    mode : str
        ``"server"`` or ``"client"``: how the runner reached the scheduler.
    progress : float or None
        The latest fraction (0 to 1) main reported with ``dask_batch.report``.
    progress_message : str
        The message of that report.
    kind : str
        ``"function"``, ``"script"``, ``"module"``, ``"notebook"`` or
        ``"command"`` (an MLflow project's entry point).
    target : str
        What runs: ``module.function``, the script or the notebook's name.
    env_names : list of str
        Names of the environment variables given to main (never their values).
    artifacts_url : str
        Where files written to ``dask_batch.artifacts_path()`` are kept.
    dashboard_link : str or None
        The Dask dashboard of the job's cluster while it runs (not stored).
    last_seen : datetime or None
        The runner's latest heartbeat (every ``batch.runner.heartbeat-interval``).
    timeout : float or None
        The run-time limit of main in seconds, if one was given.
    retries : int
        How many more attempts were allowed at submission.
    attempt : int
        The current (or last) attempt, from 1.
    attempts : list of dict
        The earlier attempts and why each ended (``{"attempt", "error"}``).
    updated : datetime or None
        When the state last changed.
    result_digest, result_hmac : str
        What the runner recorded of a SUCCEEDED job's stored result: its
        digest and its signature with the job key.
    result_type : str
        The qualified type name of the value main returned (``""`` if none).
    result_bytes : int or None
        The size of the stored result.
    mlflow_run_id : str
        The job's MLflow run ("" if the job is not tracked).
    mlflow_url : str
        The run's page in the MLflow UI (an http(s) tracking server), or "".
    task_counts : dict
        For a pipeline or array job, how many of its steps or elements are in
        each state (``{"SUCCEEDED": 12, "RUNNING": 4}``); empty otherwise.
    tasks : list of TaskRecord or None
        Each step or element, as ``status()`` reads it (not kept in listings).
    after : list of str
        The jobs this one waits for (``after=``, or Jobs passed to main).
    released : datetime or None
        When its upstream jobs had all SUCCEEDED and its cluster was asked for.
    schedule : str
        The schedule that submitted this job ("" if none).
    keys_from : str
        The schedule whose keys this job's are derived from (a run that a
        service submitted for its owner), "" for a job's own keys.
    labels : dict
        The ``labels=`` it was submitted with (a schedule's runs carry the
        schedule's): short text that tools file with a job, not secret.
    elements : int or None
        For an array job, how many elements it has (None otherwise, and for
        arrays of earlier releases, which list their elements in ``tasks``).
    """

    id: str
    user: str
    name: str
    state: JobState
    submitted: datetime.datetime
    started: datetime.datetime | None = None
    finished: datetime.datetime | None = None
    cluster_name: str | None = None
    gateway_address: str | None = None
    workers: int | None = None
    adapt: tuple[int, int] | None = None
    payload_digest: str = ""
    message: str = ""
    error: dict[str, Any] | None = None
    mode: str = ""
    progress: float | None = None
    progress_message: str = ""
    kind: str = "function"
    target: str = ""
    env_names: list[str] = field(default_factory=list)
    artifacts_url: str = ""
    dashboard_link: str | None = field(default=None, compare=False)
    last_seen: datetime.datetime | None = None
    timeout: float | None = None
    retries: int = 0
    attempt: int = 1
    attempts: list[dict[str, Any]] = field(default_factory=list)
    updated: datetime.datetime | None = None
    result_digest: str = ""
    result_hmac: str = ""
    result_type: str = ""
    result_bytes: int | None = None
    mlflow_run_id: str = ""
    mlflow_url: str = ""
    task_counts: dict[str, int] = field(default_factory=dict)
    tasks: list[Any] | None = field(default=None, compare=False)
    after: list[str] = field(default_factory=list)
    released: datetime.datetime | None = None
    schedule: str = ""
    keys_from: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    elements: int | None = None

    @property
    def duration(self) -> datetime.timedelta | None:
        """Run time of main so far (or in all, once finished)."""
        if self.started is None:
            return None
        return (self.finished or utcnow()) - self.started

    @classmethod
    def from_documents(
        cls,
        spec: dict[str, Any],
        state: dict[str, Any] | None,
        cluster: dict[str, Any] | None,
        progress: dict[str, Any] | None = None,
        heartbeat: dict[str, Any] | None = None,
    ) -> JobRecord:
        """The record from its stored documents, every field type-checked.

        A terminal state carries what the live documents said when it was
        written (``frozen``), so a terminal record never changes afterwards
        (a heartbeat or progress report racing with a cancel included).
        Raises KeyError, TypeError or ValueError for a record that cannot be
        read.
        """
        state = _document(state)
        job_state = JobState(state.get("state", JobState.PENDING))
        frozen = state.get("frozen") if job_state.is_terminal else None
        if isinstance(frozen, dict):
            progress = _document(frozen.get("progress"))
            heartbeat = {"time": frozen.get("last_seen")}
            cluster = {"cluster_name": frozen.get("cluster_name")}
        return cls.from_dict(
            {
                **_spec_fields(_document(spec)),
                **_state_fields(state),
                "cluster_name": state.get("cluster_name")
                or _document(cluster).get("cluster_name"),
                "progress": _document(progress).get("progress"),
                "progress_message": _document(progress).get("message", ""),
                "task_counts": settled_counts(
                    _task_counts(_document(progress).get("tasks"))
                    or _unstarted(_document(spec)),
                    job_state,
                ),
                "last_seen": _document(heartbeat).get("time"),
            }
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        """The inverse of :meth:`to_dict`: known fields only, each type-checked.

        Raises KeyError, TypeError or ValueError for data that is not a record.
        """
        d = _document(data)
        adapt = d.get("adapt")
        progress = _number(d.get("progress"))
        return cls(
            id=_required_text(d, "id"),
            user=_required_text(d, "user"),
            name=_text(d.get("name")),
            state=JobState(d["state"]),
            submitted=_required_time(d, "submitted"),
            started=_time(d.get("started")),
            finished=_time(d.get("finished")),
            cluster_name=_text(d.get("cluster_name")) or None,
            gateway_address=_text(d.get("gateway_address")) or None,
            workers=_count(d.get("workers")),
            adapt=(_count(adapt[0]) or 0, _count(adapt[1]) or 0)
            if isinstance(adapt, list) and len(adapt) == 2
            else None,
            payload_digest=_text(d.get("payload_digest")),
            message=_text(d.get("message")),
            error=ErrorInfo.from_dict(d["error"]).to_dict()
            if isinstance(d.get("error"), dict)
            else None,
            mode=_text(d.get("mode")),
            progress=progress if progress is not None and 0 <= progress <= 1 else None,
            progress_message=_text(d.get("progress_message")),
            kind=_text(d.get("kind"), "function"),
            target=_text(d.get("target")),
            env_names=[n for n in d.get("env_names") or [] if isinstance(n, str)],
            artifacts_url=_text(d.get("artifacts_url")),
            last_seen=_time(d.get("last_seen")),
            timeout=_number(d.get("timeout")),
            retries=_count(d.get("retries")) or 0,
            attempt=_count(d.get("attempt")) or 1,
            attempts=[a for a in d.get("attempts") or [] if isinstance(a, dict)],
            updated=_time(d.get("updated")),
            result_digest=_text(d.get("result_digest")),
            result_hmac=_text(d.get("result_hmac")),
            result_type=_text(d.get("result_type")),
            result_bytes=_count(d.get("result_bytes")),
            mlflow_run_id=_text(d.get("mlflow_run_id")),
            # Shown as a link on the jobs page: never javascript: or data:.
            mlflow_url=safe_link(d.get("mlflow_url")) or "",
            task_counts=_task_counts(d.get("task_counts")),
            # Ids only: they name folders to read (a planted "../x" is dropped).
            after=[
                a
                for a in d.get("after") or []
                if isinstance(a, str) and JOB_ID.match(a)
            ],
            released=_time(d.get("released")),
            schedule=_text(d.get("schedule")),
            keys_from=_text(d.get("keys_from")),
            labels=_labels(d.get("labels")),
            elements=_count(d.get("elements")),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (times as ISO 8601 strings)."""
        return {
            "id": self.id,
            "user": self.user,
            "name": self.name,
            "state": self.state.value,
            "submitted": to_iso(self.submitted),
            "started": to_iso(self.started),
            "finished": to_iso(self.finished),
            "cluster_name": self.cluster_name,
            "gateway_address": self.gateway_address,
            "workers": self.workers,
            "adapt": list(self.adapt) if self.adapt else None,
            "payload_digest": self.payload_digest,
            "message": self.message,
            "error": self.error,
            "mode": self.mode,
            "progress": self.progress,
            "progress_message": self.progress_message,
            "kind": self.kind,
            "target": self.target,
            "env_names": self.env_names,
            "artifacts_url": self.artifacts_url,
            "last_seen": to_iso(self.last_seen),
            "timeout": self.timeout,
            "retries": self.retries,
            "attempt": self.attempt,
            "attempts": self.attempts,
            "updated": to_iso(self.updated),
            "result_digest": self.result_digest,
            "result_hmac": self.result_hmac,
            "result_type": self.result_type,
            "result_bytes": self.result_bytes,
            "mlflow_run_id": self.mlflow_run_id,
            "mlflow_url": self.mlflow_url,
            "task_counts": self.task_counts,
            "after": self.after,
            "released": to_iso(self.released),
            "schedule": self.schedule,
            "keys_from": self.keys_from,
            "labels": self.labels,
            "elements": self.elements,
            **(
                {"tasks": [t.to_dict() for t in self.tasks]}
                if self.tasks is not None
                else {}
            ),
        }


def ended_task_state(task: JobState, job: JobState) -> JobState:
    """The state of a task that its job left unfinished when it ended.

    A job that ends (LOST with its scheduler, cancelled before it ran, a
    runner that failed) may leave its tasks as it last recorded them: each
    gets exactly one final state with the job. A task not yet started was
    not run (CANCELLED); a running one ended as the job did (LOST,
    CANCELLED), or FAILED.
    """
    if task.is_terminal or not job.is_terminal:
        return task
    if task is JobState.PENDING:
        return JobState.CANCELLED
    return job if job in (JobState.LOST, JobState.CANCELLED) else JobState.FAILED


def settled_counts(counts: dict[str, int], job: JobState) -> dict[str, int]:
    """Counts per task state, with the tasks an ended job left unfinished
    counted in their final states."""
    settled: dict[str, int] = {}
    for state, count in counts.items():
        final = ended_task_state(JobState(state), job).value
        settled[final] = settled.get(final, 0) + count
    return settled


def _task_counts(value: Any) -> dict[str, int]:
    """Counts per state, known states and whole numbers only."""
    if not isinstance(value, dict):
        return {}
    return {
        state.value: value[state.value]
        for state in JobState
        if _count(value.get(state.value)) is not None
    }


def _unstarted(spec: dict[str, Any]) -> dict[str, int]:
    """An array's counts before its main wrote any: every element PENDING."""
    array = spec.get("array")
    count = _count(array.get("count")) if isinstance(array, dict) else None
    return {JobState.PENDING.value: count} if count else {}


def _document(value: Any) -> dict[str, Any]:
    """A stored JSON object (None: empty); anything else is not a record."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, found {type(value).__name__}")
    return value


def _spec_fields(spec: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "id", "user", "name", "submitted", "gateway_address", "workers", "adapt",
        "payload_digest", "mode", "kind", "env_names", "artifacts_url", "timeout",
        "retries", "after", "schedule", "keys_from", "labels",
    )  # fmt: skip
    fields = {k: spec.get(k) for k in keys}
    fields["target"] = spec.get("function")
    array = spec.get("array")
    fields["elements"] = array.get("count") if isinstance(array, dict) else None
    tracked = _document(spec.get("mlflow"))
    fields["mlflow_run_id"] = tracked.get("run_id")
    fields["mlflow_url"] = tracked.get("run_url")
    return fields


def _state_fields(state: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "state", "started", "finished", "message", "error", "attempt", "attempts",
        "updated", "result_digest", "result_hmac", "result_type", "result_bytes",
        "released",
    )  # fmt: skip
    fields = {k: state.get(k) for k in keys}
    fields["state"] = state.get("state", JobState.PENDING.value)
    return fields


def _labels(value: Any) -> dict[str, str]:
    """Text labels only: a stored document may say anything."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _text(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _required_text(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise TypeError(f"{key} is not a non-empty string")
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) else None
    return None


def _count(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _time(value: Any) -> datetime.datetime | None:
    """A stored time; anything that is not ISO 8601 text counts as absent."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


def _required_time(data: dict[str, Any], key: str) -> datetime.datetime:
    value = _time(data[key])
    if value is None:
        raise ValueError(f"{key} is not an ISO 8601 time")
    return value
