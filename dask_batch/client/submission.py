"""Turn what a user asked for into a :class:`Submission`, or refuse it.

Everything that can be wrong with the input (scaling, timeout, retries, the
memory limit, env variables, files, pickling, sizes) is found here, before
any record or cluster exists. Nothing here touches the gateway or the job
storage (it reads the user's local files), so it is tested without either.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import dask.config
from dask.utils import format_bytes, parse_bytes, parse_timedelta

from dask_batch.core.elements import ArrayShape
from dask_batch.core.exceptions import SubmitError
from dask_batch.core.names import JOB_ID, InvalidNameError, check_parameter_name
from dask_batch.core.options import SubmitOptions
from dask_batch.core.pickling import dumps_payload, dumps_task_table
from dask_batch.core.tasks import TaskSpec
from dask_batch.runtime import targets as _targets
from dask_batch.storage.store import digest

_MIN_MEMORY_LIMIT = 256 * 2**20


@dataclass(frozen=True)
class Submission:
    """A checked job, ready to be stored and launched.

    Attributes
    ----------
    job_id : str
    spec : dict
        What ``spec.json`` will hold, less what is known only at launch
        (submission time, gateway address, mode).
    payload : bytes
        cloudpickle of ``(main, args, kwargs)``.
    env_values : dict
        Env values for main (stored encrypted, never in the spec).
    archive : bytes
        The uploaded files as a tar.gz (empty: none).
    sealed_secrets : bytes
        A schedule's own sealed secrets, stored as the run's as they are, by
        a service that cannot open them (empty: seal ``env_values``).
    """

    job_id: str
    spec: dict[str, Any]
    payload: bytes
    env_values: dict[str, str]
    archive: bytes
    sealed_secrets: bytes = b""


def check_scaling(job_id: str, workers: Any, adapt: Any) -> tuple[Any, Any]:
    """``(workers, None)`` or ``(None, (minimum, maximum))``.

    ``workers`` defaults to ``batch.workers``.
    """
    if workers is not None and adapt is not None:
        raise SubmitError.not_submitted(job_id, "give workers or adapt, not both.")
    if adapt is not None:
        try:
            minimum, maximum = (int(a) for a in adapt)
        except (TypeError, ValueError):
            raise SubmitError.not_submitted(
                job_id, f"adapt must be (minimum, maximum), got {adapt!r}."
            ) from None
        if not 0 <= minimum <= maximum:
            raise SubmitError.not_submitted(
                job_id, f"adapt needs 0 <= minimum <= maximum, got {adapt!r}."
            )
        return None, (minimum, maximum)
    if workers is None:
        workers = dask.config.get("batch.workers")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise SubmitError.not_submitted(
            job_id, f"workers must be a whole number >= 0, got {workers!r}."
        )
    return workers, None


def check_timeout(job_id: str, timeout: float | str | None) -> float | None:
    """The run-time limit in seconds (None: no limit)."""
    if timeout is None:
        return None
    try:
        seconds = float(parse_timedelta(timeout))
    except (TypeError, ValueError, KeyError):
        seconds = float("nan")
    if not seconds > 0:  # also rejects NaN
        raise SubmitError.not_submitted(
            job_id,
            f"timeout must be a positive duration such as 3600 or '2h', "
            f"got {timeout!r}.",
        )
    return seconds


def check_retries(job_id: str, retries: Any, retry_on: Any) -> list[str]:
    """The names of the exceptions to retry main after."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise SubmitError.not_submitted(
            job_id, f"retries must be a whole number >= 0, got {retries!r}."
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
            raise SubmitError.not_submitted(
                job_id, f"retry_on takes exception classes or names, got {entry!r}."
            )
    return names


def check_memory_limit(job_id: str, memory_limit: int | str | None) -> int | None:
    """The address-space limit of main in bytes (None: no limit)."""
    if memory_limit is None:
        return None
    try:
        limit = parse_bytes(memory_limit)
    except (TypeError, ValueError):
        limit = -1
    if limit < _MIN_MEMORY_LIMIT:
        raise SubmitError.not_submitted(
            job_id,
            f"memory_limit must be a size of at least 256 MiB such as '4 GiB', "
            f"got {memory_limit!r}.",
        )
    return int(limit)


_LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}\Z")
_LABEL_VALUE_CHARS = 4096
_LABELS_CHARS = 16 * 1024


def check_labels(job_id: str, labels: Any) -> dict[str, str]:
    """``labels=`` as a dict of short texts, or SubmitError naming the job."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise SubmitError.not_submitted(
            job_id, f"labels= takes a dict of texts, got {type(labels).__name__}."
        )
    checked: dict[str, str] = {}
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            raise SubmitError.not_submitted(
                job_id,
                f"label {key!r}: a label's name is 1 to 63 letters, digits, "
                "'.', '_', '/' or '-', starting with a letter or digit.",
            )
        if not isinstance(value, str) or len(value) > _LABEL_VALUE_CHARS:
            raise SubmitError.not_submitted(
                job_id,
                f"label {key!r}: its value must be text of at most "
                f"{_LABEL_VALUE_CHARS} characters.",
            )
        checked[key] = value
    if sum(len(k) + len(v) for k, v in checked.items()) > _LABELS_CHARS:
        raise SubmitError.not_submitted(
            job_id, "labels: at most 16 KiB of names and values in all."
        )
    return checked


def resolve_env(job_id: str, env: Any) -> dict[str, str]:
    """Env values for main; bare names are copied from this process."""
    if env is None:
        return {}
    if isinstance(env, str):
        env = [env]
    items: dict[Any, Any] = {}
    if isinstance(env, Mapping):
        items = dict(env)
    else:
        for entry in env:
            key, sep, value = str(entry).partition("=")
            if sep:
                items[key] = value
            elif key in os.environ:
                items[key] = os.environ[key]
            else:
                raise SubmitError.not_submitted(
                    job_id,
                    f"env variable {key!r} is not set in this process; set it, "
                    "or pass KEY=VALUE.",
                )
    for key, value in items.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise SubmitError.not_submitted(
                job_id, f"env needs string names and values, got {key!r}."
            )
    return items


#: Folders of an uploaded directory that are never uploaded: version control
#: and caches, which main does not need (a Ploomber project's {{git}} is
#: taken on the submitting machine).
NOT_UPLOADED = frozenset({".git", ".hg", "__pycache__", ".ipynb_checkpoints"})


def _members(job_id: str, path: str) -> list[tuple[str, str]]:
    """``(source, name in the archive)`` of a file, or of a directory's files."""
    if not os.path.exists(path):
        raise SubmitError.not_submitted(job_id, f"file {path!r} does not exist.")
    if not os.path.isdir(path):
        return [(path, os.path.basename(path))]
    members = []
    for root, folders, names in os.walk(path):
        folders[:] = sorted(f for f in folders if f not in NOT_UPLOADED)
        members += [
            (os.path.join(root, f), os.path.relpath(os.path.join(root, f), path))
            for f in sorted(names)
        ]
    return members


def pack_files(job_id: str, files: Any) -> bytes:
    """A tar.gz of ``files`` (a directory's contents go to the top level)."""
    if not files:
        return b""
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    limit = parse_bytes(dask.config.get("batch.upload-limit"))
    buffer = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for entry in files:
            for source, arcname in _members(job_id, os.fspath(entry)):
                total += os.path.getsize(source)
                if total > limit:
                    raise SubmitError.not_submitted(
                        job_id,
                        f"the uploaded files exceed batch.upload-limit "
                        f"({format_bytes(limit)}). Put large inputs in object "
                        "storage and read them from main.",
                    )
                tar.add(source, arcname=arcname)
    return buffer.getvalue()


def pickle_payload(
    job_id: str,
    func: Callable[..., Any] | None,
    args: tuple[Any, ...],
    kwargs: dict,
) -> bytes:
    """cloudpickle of ``(func, args, kwargs)``, within ``batch.payload-limit``.

    With ``func`` None, ``args`` is ``(table,)``: the mains of a pipeline's
    or an array's tasks by name.
    """
    try:
        if func is None:
            payload = dumps_task_table(args[0])
        else:
            payload = dumps_payload(func, args, kwargs)
    except Exception as exc:
        raise SubmitError.not_submitted(
            job_id,
            f"main or its arguments cannot be pickled ({type(exc).__name__}: "
            f"{exc}). Pass data that cloudpickle can serialise, or load it "
            "inside main.",
        ) from exc
    limit = parse_bytes(dask.config.get("batch.payload-limit"))
    if len(payload) > limit:
        raise SubmitError.not_submitted(
            job_id,
            f"main with its arguments pickles to {format_bytes(len(payload))}, "
            f"over batch.payload-limit ({format_bytes(limit)}). Put large data "
            "in storage and pass its path.",
        )
    return payload


def read_source(job_id: str, path: str, what: str) -> tuple[str, bytes]:
    """The file name and bytes of a script or notebook to submit."""
    try:
        with open(path, "rb") as f:
            return os.path.basename(path), f.read()
    except OSError as exc:
        raise SubmitError.not_submitted(
            job_id, f"cannot read {what} {path!r}: {exc}"
        ) from exc


@dataclass(frozen=True)
class Target:
    """What runs: a kind, its description, and the callable main's process calls."""

    kind: str
    target: str
    default_name: str
    func: Callable[..., Any] | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    # A pipeline or array: its declared tasks (func is None, args the table).
    tasks: list[TaskSpec] = dataclasses.field(default_factory=list)
    max_parallel: int | None = None
    fail_fast: bool = False
    # Jobs whose results main takes as arguments (JobResult placeholders).
    upstream_values: list[str] = dataclasses.field(default_factory=list)
    # An array: its indices, what each element is (main hands them out), and
    # the earlier run whose succeeded elements it takes over.
    array: ArrayShape | None = None
    element_kind: str = ""
    reuses: str = ""


def function_target(
    job_id: str, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Target:
    """A Python callable as main."""
    if not callable(func):
        raise SubmitError.not_submitted(job_id, f"{func!r} is not callable.")
    target = (
        f"{getattr(func, '__module__', '?')}."
        f"{getattr(func, '__qualname__', repr(func))}"
    )
    name = str(getattr(func, "__name__", "job"))
    return Target("function", target, name, func, args, kwargs, dict(kwargs))


def script_target(job_id: str, target: str, args: list[Any]) -> Target:
    """A script (``train.py``) or a ``package.module:function`` as main."""
    if target.endswith(".py") or os.path.isfile(target):
        filename, source = read_source(job_id, target, "script")
        script_args = (filename, source, [str(a) for a in args])
        return Target(
            "script", filename, filename, _targets.run_script, script_args, {}
        )
    module, sep, function = target.partition(":")
    if not sep or not module or not function:
        raise SubmitError.not_submitted(
            job_id,
            f"{target!r} is neither a script (path ending in .py) nor a "
            "'package.module:function' target.",
        )
    function_args: tuple[Any, ...] = (target, list(args), {})
    return Target("module", target, function, _targets.run_function, function_args, {})


def command_target(
    job_id: str, command: str, name: str, params: dict[str, Any]
) -> Target:
    """A shell command (an MLflow project's entry point) as main."""
    if not isinstance(command, str) or not command.strip():
        raise SubmitError.not_submitted(job_id, f"no command to run: {command!r}.")
    return Target(
        "command", command, name, _targets.run_command, (command,), {}, dict(params)
    )


def notebook_target(job_id: str, path: str, parameters: dict[str, Any]) -> Target:
    """A notebook executed by papermill as main."""
    for name in parameters:
        try:
            check_parameter_name(name, job_id=job_id)
        except InvalidNameError as exc:
            raise SubmitError.not_submitted(job_id, str(exc)) from None
    filename, source = read_source(job_id, path, "notebook")
    run_args = (filename, source, dict(parameters))
    return Target(
        "notebook",
        filename,
        filename,
        _targets.run_notebook,
        run_args,
        {},
        dict(parameters),
    )


def check_after(job_id: str, after: Any, found: list[str]) -> list[str]:
    """The ids of the jobs to wait for: ``after`` (Jobs or ids) and ``found``."""
    if isinstance(after, str) or hasattr(after, "id"):
        after = [after]
    ids: list[str] = []
    for entry in [*list(after or ()), *found]:
        job = getattr(entry, "id", entry)
        if not isinstance(job, str) or not JOB_ID.match(job):
            raise SubmitError.not_submitted(
                job_id, f"after= takes Jobs or job ids, got {entry!r}."
            )
        if job not in ids:
            ids.append(job)
    if job_id in ids:
        raise SubmitError.not_submitted(job_id, "a job cannot wait for itself.")
    return ids


def build(
    job_id: str,
    user: str,
    artifacts_url: str,
    target: Target,
    options: SubmitOptions,
) -> Submission:
    """Check ``options`` and pack ``target``; raises SubmitError on bad input."""
    after = check_after(job_id, options.after, target.upstream_values)
    workers, adapt = check_scaling(job_id, options.workers, options.adapt)
    timeout = check_timeout(job_id, options.timeout)
    retry_names = check_retries(job_id, options.retries, options.retry_on)
    memory_limit = check_memory_limit(job_id, options.memory_limit)
    payload = pickle_payload(job_id, target.func, target.args, target.kwargs)
    env_values = resolve_env(job_id, options.env)
    archive = pack_files(job_id, options.files)
    spec = {
        "id": job_id,
        "user": user,
        "name": options.name or target.default_name,
        "kind": target.kind,
        "function": target.target,
        "workers": workers,
        "adapt": list(adapt) if adapt else None,
        "cluster_options": dict(options.cluster_options or {}),
        "payload_digest": digest(payload),
        "payload_bytes": len(payload),
        "env_names": sorted(env_values),
        "files_bytes": len(archive),
        # Signed with the spec: main's process unpacks only these files.
        "files_digest": digest(archive) if archive else "",
        "artifacts_url": artifacts_url,
        "timeout": timeout,
        "idempotency_key": options.idempotency_key,
        "retries": options.retries,
        "retry_on": retry_names,
        "memory_limit": memory_limit,
        "labels": check_labels(job_id, options.labels),
    }
    if after:
        spec.update(after=after, upstream_values=list(target.upstream_values))
    if target.tasks:
        spec.update(
            tasks=[t.to_dict() for t in target.tasks],
            max_parallel=target.max_parallel,
            fail_fast=target.fail_fast,
        )
    if target.array is not None:
        if workers == 0 or (adapt and adapt[1] == 0):
            raise SubmitError.not_submitted(
                job_id,
                "an array runs its elements on the job's workers: ask for at "
                "least one (workers=1 or more, or adapt=(0, N) with N >= 1).",
            )
        spec.update(
            array=target.array.to_dict(),
            element_kind=target.element_kind,
            max_parallel=target.max_parallel,
        )
        if target.reuses:
            spec["reuses"] = target.reuses
    return Submission(job_id, spec, payload, env_values, archive)


def target_for(
    job_id: str,
    target: Callable[..., Any] | str | os.PathLike[str],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Target:
    """A function's, notebook's (``.ipynb``, ``kwargs`` as parameters) or
    script's target, whichever ``target`` is."""
    if callable(target):
        return function_target(job_id, target, args, kwargs)
    path = os.fspath(target)
    if path.endswith(".ipynb"):
        return notebook_target(job_id, path, kwargs)
    return script_target(job_id, path, list(args))
