"""Jobs that wait for other jobs: placeholders for upstream results.

``batch.submit(g, job_a)`` replaces the :class:`~dask_batch.Job` argument by a
:class:`JobResult` placeholder, as Dask does with futures, and makes the job
wait for ``job_a`` (``after=``). When main's process starts, each placeholder
becomes the value ``job_a``'s main returned, loaded only if its signature
holds with ``job_a``'s key (which the submitter sealed into the waiting job's
``secrets.bin``).

A waiting job's env key is also kept sealed with each upstream job's env key
(``after/{upstream}.bin``): a service that holds no user's secret can start
the waiting job with the env key the gateway reports for the upstream job's
cluster, which storage alone never reveals.

Shared by the client and main's process: imports neither.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from dask_batch.core.records import JobRecord, JobState
from dask_batch.core.signing import load_signed_result
from dask_batch.core.tasks import VALUE_KINDS, task_path
from dask_batch.storage.store import RESULT, JobStore

AFTER_DIR = "after"


class JobResult:
    """Stands for the value an upstream job returned, in a waiting job's payload."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id

    def __repr__(self) -> str:
        return f"JobResult({self.job_id!r})"


def substitute(obj: Any, kind: type, convert: Callable[[Any], Any]) -> Any:
    """``obj`` with every instance of ``kind`` in it replaced by ``convert(it)``.

    Walks lists, tuples, sets and dict values, as Dask does when it looks
    for futures in arguments.
    """
    if isinstance(obj, kind):
        return convert(obj)
    if type(obj) is list:
        return [substitute(o, kind, convert) for o in obj]
    if type(obj) is tuple:
        return tuple(substitute(o, kind, convert) for o in obj)
    if type(obj) is set:
        return {substitute(o, kind, convert) for o in obj}
    if type(obj) is dict:
        return {k: substitute(v, kind, convert) for k, v in obj.items()}
    return obj


def upstream_placeholders(
    args: tuple[Any, ...], kwargs: dict[str, Any], job_type: type
) -> tuple[tuple[Any, ...], dict[str, Any], list[str]]:
    """``args`` and ``kwargs`` with each ``job_type`` (a Job) in them replaced
    by a :class:`JobResult`, and the ids of those jobs, in order, once each."""
    upstream: list[str] = []

    def placeholder(job: Any) -> JobResult:
        upstream.append(job.id)
        return JobResult(job.id)

    args = substitute(args, job_type, placeholder)
    kwargs = substitute(kwargs, job_type, placeholder)
    return args, kwargs, list(dict.fromkeys(upstream))


def seal_env_key(env_key: str, job_id: str, upstream_env_key: str) -> bytes:
    """The waiting job's env key, sealed with an upstream job's env key."""
    from cryptography.fernet import Fernet

    document = {"job": job_id, "env_key": env_key}
    return Fernet(upstream_env_key).encrypt(json.dumps(document).encode())


def open_env_key(token: bytes, job_id: str, upstream_env_key: str) -> str:
    """What :func:`seal_env_key` made, for ``job_id`` only; raises otherwise."""
    from cryptography.fernet import Fernet

    document = json.loads(Fernet(upstream_env_key).decrypt(token))
    if not isinstance(document, dict) or document.get("job") != job_id:
        raise ValueError("sealed for another job")
    return str(document["env_key"])


def job_value(store: JobStore, record: JobRecord, job_key: str) -> Any:
    """The value a SUCCEEDED job returned: an array's list, a pipeline's dict.

    Every stored result is checked against ``job_key`` before it is loaded.
    """
    if record.kind not in VALUE_KINDS:
        return load_signed_result(
            store,
            record.user,
            record.id,
            job_key,
            name=RESULT,
            digest=record.result_digest or None,
            signature=record.result_hmac,
            what="result",
        )
    values = {}
    tasks = store.read_tasks(record.user, record.id)
    for task in tasks:
        if task.state is not JobState.SUCCEEDED:
            raise ValueError(f"step {task.name!r} of job {record.id} did not succeed")
        values[task.name] = load_signed_result(
            store,
            record.user,
            record.id,
            job_key,
            name=task_path(task.name, RESULT),
            digest=task.result_digest or None,
            signature=task.result_hmac,
            what=f"result of {task.name!r}",
        )
    if record.kind == "array":
        return [values[t.name] for t in tasks]
    return values
