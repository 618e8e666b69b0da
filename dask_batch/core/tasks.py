"""The tasks of a pipeline or an array job, as declared and as they went.

A pipeline's steps and an array's elements are *tasks*: each runs in its own
main process beside the job's scheduler, sharing the job's cluster. What is
to run is declared in the job's spec (``spec["tasks"]``), which the job key
signs, so the graph a runner follows is the submitter's whoever can write
the storage. How the tasks went is kept by the runner in ``tasks.json``;
each task's own outputs live below ``tasks/{name}/`` in the job's folder
(``result.pkl``, ``error.json``, ``progress.json``, ``logs/``), and its
artifacts below ``artifacts/{name}/``.

Shared by the client and the scheduler-side runner: imports neither.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dask_batch.core.names import InvalidNameError
from dask_batch.core.records import (
    ErrorInfo,
    JobState,
    _count,
    _number,
    _text,
    _time,
    ended_task_state,
    to_iso,
)

__all__ = ["TaskRecord"]

TASKS_DOC = "tasks.json"
TASKS_DIR = "tasks"
#: Kinds of job whose main is a graph of tasks.
TASK_KINDS = frozenset({"pipeline", "array", "ploomber"})
#: Kinds of job whose value is their tasks' values (a Ploomber project's is
#: the states its main returns: its products are the job's artifacts).
VALUE_KINDS = frozenset({"pipeline", "array"})

_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_task_name(name: object, *, job_id: str | None = None) -> str:
    """``name`` if it can name a task (and so a folder in storage)."""
    if isinstance(name, str) and _TASK_NAME.match(name) and ".." not in name:
        return name
    raise InvalidNameError(
        f"Step name {str(name)[:80]!r}"
        + (f" of job {job_id!r}" if job_id else "")
        + " is not allowed: use up to 64 letters, digits and _ . - , starting "
        "with a letter or digit.",
        job_id=job_id,
    )


def task_path(task: str, name: str) -> str:
    """The path of ``name`` below a task's folder, relative to the job's."""
    return f"{TASKS_DIR}/{check_task_name(task)}/{name}"


@dataclass(frozen=True)
class TaskSpec:
    """One task as the signed spec declares it.

    Attributes
    ----------
    name : str
    upstream : tuple of str
        Tasks that must succeed before this one starts.
    kind, target : str
        What runs, as for a job (``"function"``, ``"script"``, ...).
    digest : str
        Content digest of the code, parameters and upstream digests: equal
        digests mean the same computation (for ``resume=``).
    index : int or None
        The element's index in an array.
    pass_upstream : bool
        Whether main takes the upstream results as its ``upstream`` argument.
    params : dict
        The task's parameters, as ``current_job().params`` shows them.
    reuse : dict or None
        ``{"job", "result_digest", ...}``: the task is not run; the outputs
        of the same task of that earlier job are taken over.
    """

    name: str
    upstream: tuple[str, ...] = ()
    kind: str = "function"
    target: str = ""
    digest: str = ""
    index: int | None = None
    pass_upstream: bool = False
    params: dict[str, Any] = field(default_factory=dict)
    reuse: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name,
            "upstream": list(self.upstream),
            "kind": self.kind,
            "target": self.target,
            "digest": self.digest,
            "pass_upstream": self.pass_upstream,
            "params": self.params,
        }
        if self.index is not None:
            doc["index"] = self.index
        if self.reuse is not None:
            doc["reuse"] = self.reuse
        return doc

    @classmethod
    def from_dict(cls, doc: Any, job_id: str | None = None) -> TaskSpec:
        if not isinstance(doc, dict):
            raise TypeError("a task is not a JSON object")
        upstream = doc.get("upstream") or []
        if not isinstance(upstream, list):
            raise TypeError("a task's upstream is not a list")
        params = doc.get("params") or {}
        reuse = doc.get("reuse")
        return cls(
            name=check_task_name(doc.get("name"), job_id=job_id),
            upstream=tuple(check_task_name(u, job_id=job_id) for u in upstream),
            kind=_text(doc.get("kind"), "function"),
            target=_text(doc.get("target")),
            digest=_text(doc.get("digest")),
            index=_count(doc.get("index")),
            pass_upstream=doc.get("pass_upstream") is True,
            params=params if isinstance(params, dict) else {},
            reuse=reuse if isinstance(reuse, dict) else None,
        )


def task_specs(spec: Mapping[str, Any], job_id: str | None = None) -> list[TaskSpec]:
    """The tasks a job's spec declares, in an order that runs upstream first.

    Raises InvalidNameError for bad or repeated names, an unknown upstream
    task or a cycle.
    """
    tasks = [TaskSpec.from_dict(d, job_id) for d in spec.get("tasks") or []]
    return order_tasks(tasks, job_id)


def order_tasks(tasks: Iterable[TaskSpec], job_id: str | None = None) -> list[TaskSpec]:
    """``tasks`` with every task after its upstream ones (declared order kept)."""
    by_name: dict[str, TaskSpec] = {}
    for task in tasks:
        if task.name in by_name:
            raise InvalidNameError(
                f"step {task.name!r}"
                + (f" of job {job_id!r}" if job_id else "")
                + " is declared twice: give each step its own name.",
                job_id=job_id,
            )
        by_name[task.name] = task
    for task in by_name.values():
        for up in task.upstream:
            if up not in by_name:
                raise InvalidNameError(
                    f"step {task.name!r}"
                    + (f" of job {job_id!r}" if job_id else "")
                    + f" needs {up!r}, which is not a step of the pipeline "
                    f"(steps: {', '.join(by_name)}).",
                    job_id=job_id,
                )
    ordered: list[TaskSpec] = []
    placed: set[str] = set()
    visiting: list[str] = []

    def place(task: TaskSpec) -> None:
        if task.name in placed:
            return
        if task.name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(task.name) :], task.name])
            raise InvalidNameError(
                "the steps"
                + (f" of job {job_id!r}" if job_id else "")
                + f" depend on each other in a cycle ({cycle}): a pipeline "
                "must be a DAG.",
                job_id=job_id,
            )
        visiting.append(task.name)
        for up in task.upstream:
            place(by_name[up])
        visiting.pop()
        placed.add(task.name)
        ordered.append(task)

    for task in by_name.values():
        place(task)
    return ordered


@dataclass
class TaskRecord:
    """How one step of a pipeline, or one element of an array, went.

    Attributes
    ----------
    name : str
        The step's name; an element's index as text.
    state : JobState
        ``PENDING`` (waiting for its turn or its upstream steps),
        ``RUNNING``, ``SUCCEEDED``, ``FAILED``, or ``CANCELLED`` (not run, or
        stopped: an upstream step failed, fail-fast, or the job was cancelled).
    index : int or None
        The element's index in an array.
    upstream : list of str
    kind, target : str
    started, finished : datetime or None
    attempt : int
        Attempts of this task (``retries`` and ``retry_on`` apply per task).
    message : str
    error : dict or None
    result_digest, result_hmac, result_type : str
    result_bytes : int or None
    progress : float or None
    progress_message : str
        The task's latest ``dask_batch.report``.
    reused_from : str
        The earlier job whose outputs this task took over (``resume=``).
    digest : str
        The task's content digest.
    worker : str
        The Dask worker it ran on, where it ran on one (Ploomber tasks).
    """

    name: str
    state: JobState = JobState.PENDING
    index: int | None = None
    upstream: list[str] = field(default_factory=list)
    kind: str = "function"
    target: str = ""
    started: Any = None
    finished: Any = None
    attempt: int = 0
    message: str = ""
    error: dict[str, Any] | None = None
    result_digest: str = ""
    result_hmac: str = ""
    result_type: str = ""
    result_bytes: int | None = None
    progress: float | None = None
    progress_message: str = ""
    reused_from: str = ""
    digest: str = ""
    worker: str = ""

    @property
    def duration(self) -> Any:
        if self.started is None:
            return None
        from dask_batch.core.records import utcnow

        return (self.finished or utcnow()) - self.started

    @classmethod
    def declared(cls, task: TaskSpec) -> TaskRecord:
        return cls(
            name=task.name,
            index=task.index,
            upstream=list(task.upstream),
            kind=task.kind,
            target=task.target,
            digest=task.digest,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "index": self.index,
            "upstream": self.upstream,
            "kind": self.kind,
            "target": self.target,
            "started": to_iso(self.started),
            "finished": to_iso(self.finished),
            "attempt": self.attempt,
            "message": self.message,
            "error": self.error,
            "result_digest": self.result_digest,
            "result_hmac": self.result_hmac,
            "result_type": self.result_type,
            "result_bytes": self.result_bytes,
            "progress": self.progress,
            "progress_message": self.progress_message,
            "reused_from": self.reused_from,
            "digest": self.digest,
            "worker": self.worker,
        }

    @classmethod
    def from_dict(cls, doc: Any) -> TaskRecord:
        """A task record from ``tasks.json``, every field type-checked."""
        if not isinstance(doc, dict):
            raise TypeError("a task record is not a JSON object")
        error = doc.get("error")
        progress = _number(doc.get("progress"))
        upstream = doc.get("upstream") or []
        return cls(
            name=check_task_name(doc.get("name")),
            state=JobState(doc.get("state", "PENDING")),
            index=_count(doc.get("index")),
            upstream=[u for u in upstream if isinstance(u, str)]
            if isinstance(upstream, list)
            else [],
            kind=_text(doc.get("kind"), "function"),
            target=_text(doc.get("target")),
            started=_time(doc.get("started")),
            finished=_time(doc.get("finished")),
            attempt=_count(doc.get("attempt")) or 0,
            message=_text(doc.get("message")),
            error=ErrorInfo.from_dict(error).to_dict()
            if isinstance(error, dict)
            else None,
            result_digest=_text(doc.get("result_digest")),
            result_hmac=_text(doc.get("result_hmac")),
            result_type=_text(doc.get("result_type")),
            result_bytes=_count(doc.get("result_bytes")),
            progress=progress if progress is not None and 0 <= progress <= 1 else None,
            progress_message=_text(doc.get("progress_message")),
            reused_from=_text(doc.get("reused_from")),
            digest=_text(doc.get("digest")),
            worker=_text(doc.get("worker")),
        )


def read_task_records(declared: list[TaskSpec], doc: Any) -> list[TaskRecord]:
    """The declared tasks, each as ``tasks.json`` says it went.

    Only declared tasks are shown, in declared order; an entry that cannot
    be read leaves its task as declared (PENDING): the document is written
    by the runner, but lives in storage that others may write.
    """
    found: dict[str, TaskRecord] = {}
    entries = doc.get("tasks") if isinstance(doc, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        try:
            record = TaskRecord.from_dict(entry)
        except (KeyError, TypeError, ValueError):
            continue
        found.setdefault(record.name, record)
    out = []
    for task in declared:
        record = found.get(task.name) or TaskRecord.declared(task)
        # What ran is what the signed spec says, whatever the document says.
        record.index, record.upstream = task.index, list(task.upstream)
        record.kind, record.target, record.digest = task.kind, task.target, task.digest
        out.append(record)
    return out


def count_states(records: Iterable[TaskRecord]) -> dict[str, int]:
    """How many tasks are in each state (states with none left out)."""
    counts: dict[str, int] = {}
    for record in records:
        counts[record.state.value] = counts.get(record.state.value, 0) + 1
    return {s.value: counts[s.value] for s in JobState if s.value in counts}


def describe_counts(counts: Mapping[str, int]) -> str:
    """``"12/20 succeeded, 4 running, 1 failed"`` for a job's progress line."""
    total = sum(counts.values())
    parts = [f"{counts.get('SUCCEEDED', 0)}/{total} succeeded"]
    for state in ("RUNNING", "FAILED", "CANCELLED"):
        if counts.get(state):
            parts.append(f"{counts[state]} {state.lower()}")
    return ", ".join(parts)


#: The most elements one array job may have.
MAX_ARRAY_ELEMENTS = 100_000


def parse_array(text: str, job_id: str | None = None) -> tuple[list[int], int | None]:
    """The indices of Slurm's ``--array`` syntax and its limit
    (see :func:`parse_array_spans`).

    Examples
    --------
    >>> parse_array("0-3%2")
    ([0, 1, 2, 3], 2)
    >>> parse_array("1,5-7")
    ([1, 5, 6, 7], None)
    """
    spans, limit = parse_array_spans(text, job_id)
    return [
        i for first, last, step in spans for i in range(first, last + 1, step)
    ], limit


def parse_array_spans(
    text: str, job_id: str | None = None
) -> tuple[list[tuple[int, int, int]], int | None]:
    """Slurm's ``--array`` syntax: ``0-99%10``, ``1,3,5``, ``0-10:2``.

    Returns ``(first, last, step)`` spans and the most that run at once
    (None: no limit given).

    Examples
    --------
    >>> parse_array_spans("0-99:2%10")
    ([(0, 98, 2)], 10)
    """
    from dask_batch.core.exceptions import SubmitError

    def bad(why: str) -> SubmitError:
        return SubmitError.not_submitted(
            job_id or "(new)",
            f"--array {text!r} {why}; write it as Slurm does: 0-99, 0-99%10, "
            "1,3,5 or 0-10:2.",
        )

    body, sep, limit_text = str(text).partition("%")
    limit: int | None = None
    if sep:
        if not limit_text.isdigit() or int(limit_text) < 1:
            raise bad("has a limit that is not a whole number of at least 1")
        limit = int(limit_text)
    spans: list[range] = []
    for part in body.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
        if not match:
            raise bad(f"has the part {part!r}, which is not an index or a range")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) else first
        step = int(match.group(3)) if match.group(3) else 1
        if last < first or step < 1:
            raise bad(f"has the empty range {part!r}")
        span = range(first, last + 1, step)
        spans.append(span)
        # Counted before any list is built: 0-999999999 is refused at once.
        if sum(len(span) for span in spans) > MAX_ARRAY_ELEMENTS:
            raise bad(f"has more than {MAX_ARRAY_ELEMENTS} elements")
    seen: set[int] = set()
    for span in spans:
        if not seen.isdisjoint(span):
            raise bad("names an index twice")
        seen.update(span)
    return [(s.start, s[-1], s.step) for s in spans], limit


def settle_tasks(
    tasks: list[TaskRecord], job: JobState, job_message: str = ""
) -> list[TaskRecord]:
    """``tasks`` of a job in state ``job``, each with exactly one final state
    once the job has ended (see :func:`~dask_batch.core.records.ended_task_state`)."""
    settled = []
    for task in tasks:
        final = ended_task_state(task.state, job)
        if final is not task.state:
            why = f": {job_message}" if job_message else ""
            task = replace(
                task,
                state=final,
                message=f"not finished: the job ended {job.value}{why}",
            )
        settled.append(task)
    return settled
