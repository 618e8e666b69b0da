"""Main's process: ``python -m dask_batch.runtime.child``, started by the job runner.

Imports what every main needs, then reads its
:class:`~dask_batch.runtime.handoff.MainLaunch` (JSON, from stdin; in server-side
mode it is started while the scheduler starts, and waits there), loads
and checks the payload, connects a default Dask client to its own scheduler
over the cluster's TLS, runs main, stores the result or the error, and
reports an :class:`~dask_batch.runtime.handoff.Outcome` in a small file for the
runner. Its stdout and stderr are the job's log.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import sys
import tarfile
import threading
import traceback
from typing import Any, NoReturn

import dask.config
import fsspec
from dask.utils import format_bytes, parse_bytes
from distributed import Client
from distributed.security import Security

from dask_batch.core import secrets as _secrets
from dask_batch.core.exceptions import ResultIntegrityError
from dask_batch.core.names import InvalidNameError, check_relative_path
from dask_batch.core.pickling import dumps_result
from dask_batch.core.records import ErrorInfo, JobState
from dask_batch.core.signing import load_signed_result, loads_verified, sign
from dask_batch.core.tasks import task_path
from dask_batch.runtime import arrays as _arrays
from dask_batch.runtime import context as _context
from dask_batch.runtime.element_work import describe as describe_job
from dask_batch.runtime.forking import exit_with_parent
from dask_batch.runtime.handoff import ENV_RUNNER_PID, MainLaunch, Outcome
from dask_batch.runtime.zygote import COMMAND as ZYGOTE_COMMAND
from dask_batch.runtime.zygote import serve as serve_tasks
from dask_batch.storage.store import (
    ERROR,
    FILES,
    PAYLOAD,
    RESULT,
    SECRETS,
    JobStore,
    digest,
)
from dask_batch.storage.upstream import JobResult, job_value, substitute


def _error_info(
    exc: BaseException, *, type_name: str | None = None, message: str | None = None
) -> ErrorInfo:
    cls = type(exc)
    code = getattr(exc, "code", None)  # SystemExit, and ScriptExit of scripts
    return ErrorInfo(
        type=type_name or f"{cls.__module__}.{cls.__qualname__}",
        message=str(exc) if message is None else message,
        traceback="".join(traceback.format_exception(exc)),
        returncode=code if isinstance(code, int) else None,
    )


def _fail(
    store: JobStore,
    launch: MainLaunch,
    error: ErrorInfo | BaseException,
    **described: str,
) -> NoReturn:
    """Store the error, report the outcome, exit; ``described`` as for _error_info."""
    if isinstance(error, BaseException):
        error = _error_info(error, **described)
    print(
        f"dask-batch: job {launch.job_id} failed: {error.type}: {error.message}",
        file=sys.stderr,
    )
    try:
        store.put_json(launch.user, launch.job_id, launch.own(ERROR), error.to_dict())
    finally:
        Outcome(False, error=error).write(launch.outcome_path)
    sys.exit(1)


def _open_secrets(store: JobStore, launch: MainLaunch) -> _secrets.JobSecrets:
    """The job key and env values, decrypted with the env key from the runner."""
    try:
        token = store.get(launch.user, launch.job_id, SECRETS)
        secrets = _secrets.unseal(launch.env_key, token)
        return _secrets.for_job(secrets, launch.job_id, launch.env_key)
    except Exception as exc:
        _fail(
            store,
            launch,
            ErrorInfo(
                "IntegrityError",
                f"the secrets of job {launch.job_id!r} cannot be opened with the "
                f"key its submitter sent ({type(exc).__name__}): they were "
                "changed or copied in storage. Submit the job again.",
            ),
        )


def _load_main(
    store: JobStore, launch: MainLaunch, job_key: str
) -> tuple[Any, tuple, dict]:
    job_id = launch.job_id
    data = store.get(launch.user, job_id, PAYLOAD)
    try:
        func, args, kwargs = loads_verified(
            job_id,
            "payload",
            data,
            sign(job_key, data) if job_key else "",
            launch.payload_signature,
        )
    except ResultIntegrityError as exc:
        message = f"{exc} It was changed after submit; submit the job again."
        _fail(store, launch, ErrorInfo("IntegrityError", message))
    except ImportError as exc:
        module = getattr(exc, "name", None) or str(exc)
        _fail(
            store,
            launch,
            exc,
            type_name="ModuleNotFoundError",
            message=f"main of job {job_id!r} cannot be loaded on the cluster: "
            f"module {module!r} is not importable there ({exc}). Install it "
            "in the cluster's environment, or call "
            "cloudpickle.register_pickle_by_value(module) before submit.",
        )
    except Exception as exc:
        _fail(
            store,
            launch,
            exc,
            message=f"main of job {job_id!r} cannot be unpickled on the "
            f"cluster: {exc}. Check that client and cluster run the same "
            "Python and library versions.",
        )
    return func, args, kwargs


def _connect(launch: MainLaunch) -> Any:
    if launch.tls_ca_file:
        security = Security(
            tls_ca_file=launch.tls_ca_file,
            tls_client_cert=launch.tls_cert,
            tls_client_key=launch.tls_key,
            require_encryption=True,
        )
        return Client(launch.scheduler_address, security=security, set_as_default=True)
    return Client(launch.scheduler_address, set_as_default=True)


def _share_storage_options(store: JobStore, launch: MainLaunch) -> None:
    """``fsspec.open(artifacts_path(...))`` in main gets the job's storage options."""
    protocol = store.fs.protocol
    for name in [protocol] if isinstance(protocol, str) else protocol:
        fsspec.config.conf.setdefault(name, {}).update(store.storage_options)
        try:
            # main's subprocesses (a notebook's kernel) read fsspec's config
            # from the environment: same process tree, same credentials.
            os.environ[f"FSSPEC_{name.upper()}"] = json.dumps(fsspec.config.conf[name])
        except TypeError:
            print(
                f"dask-batch: storage options of job {launch.job_id} are not JSON; "
                "subprocesses of main get no storage credentials",
                file=sys.stderr,
            )


def _unpack_files(store: JobStore, launch: MainLaunch) -> None:
    """Unpack the uploaded files into the working directory, checking each.

    Regular files and directories only, every path inside the working
    directory, at most ``batch.upload-limit`` in all: the archive comes from
    storage, so it is treated as written by anyone who can write there.
    """
    archive = store.get(launch.user, launch.job_id, FILES)
    # Jobs submitted before the digest was signed have none to compare.
    if launch.files_digest and digest(archive) != launch.files_digest:
        raise ResultIntegrityError(
            f"the uploaded files of job {launch.job_id!r} are not those its "
            "submitter signed: they were changed in storage. Submit the job "
            "again.",
            job_id=launch.job_id,
        )
    limit = parse_bytes(dask.config.get("batch.upload-limit"))
    total = 0
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar:
            name = check_relative_path(
                member.name, what="uploaded file", job_id=launch.job_id
            )
            if member.isdir():
                os.makedirs(name, exist_ok=True)
                continue
            if not member.isfile():
                raise InvalidNameError(
                    f"uploaded {name!r} of job {launch.job_id!r} is neither a "
                    "file nor a directory (links and devices are refused)",
                    job_id=launch.job_id,
                )
            total += member.size
            if total > limit:
                raise InvalidNameError(
                    f"the uploaded files of job {launch.job_id!r} unpack to more "
                    f"than batch.upload-limit ({format_bytes(limit)})",
                    job_id=launch.job_id,
                )
            if os.path.dirname(name):
                os.makedirs(os.path.dirname(name), exist_ok=True)
            mode = 0o755 if member.mode & 0o100 else 0o644
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            source = tar.extractfile(member)
            assert source is not None  # a regular file
            with os.fdopen(os.open(name, flags, mode), "wb") as out, source:
                shutil.copyfileobj(source, out)


def _artifacts_url(store: JobStore, launch: MainLaunch) -> str:
    """The job's artifacts prefix; a task's own folder below it for a task."""
    url = store.artifacts_url(launch.user, launch.job_id)
    return f"{url}/{launch.task}" if launch.task else url


def _select_task(
    store: JobStore, launch: MainLaunch, job_key: str, payload: Any
) -> tuple[Any, tuple, dict]:
    """This task's main from a pipeline's or array's table, upstream values in."""
    _, (table,), _ = payload
    try:
        func, args, kwargs = table[launch.task]
    except (KeyError, TypeError, ValueError):
        _fail(
            store,
            launch,
            ErrorInfo(
                "IntegrityError",
                f"job {launch.job_id!r} has no step {launch.task!r} in its payload",
            ),
        )
    if launch.pass_upstream:
        kwargs = dict(kwargs, upstream=_upstream_values(store, launch, job_key))
    return func, args, kwargs


def _upstream_values(store: JobStore, launch: MainLaunch, job_key: str) -> dict:
    """The values the upstream tasks returned, each checked before loading.

    The digest and signature come from the runner, which read them from the
    upstream tasks' own reports: a result changed in storage is refused.
    """
    values = {}
    for name, expected in launch.upstream.items():
        try:
            values[name] = load_signed_result(
                store,
                launch.user,
                launch.job_id,
                job_key,
                name=task_path(name, RESULT),
                digest=str(expected.get("digest") or ""),
                signature=str(expected.get("hmac") or ""),
                what=f"result of step {name!r}",
            )
        except Exception as exc:
            _fail(
                store,
                launch,
                exc,
                message=f"the result of step {name!r} of job {launch.job_id!r} "
                f"cannot be handed to step {launch.task!r}: {exc}",
            )
    return values


def _upstream_job_values(
    store: JobStore,
    launch: MainLaunch,
    secrets: _secrets.JobSecrets,
    args: tuple,
    kwargs: dict,
) -> tuple[tuple, dict]:
    """main's arguments with each upstream Job replaced by the value it
    returned, checked with that job's key before it is loaded."""
    values: dict[str, Any] = {}

    def value(placeholder: JobResult) -> Any:
        upstream = placeholder.job_id
        if upstream not in values:
            try:
                key = secrets.upstream_keys[upstream]
                record = store.read_record(launch.user, upstream)
                if record.state is not JobState.SUCCEEDED:
                    raise ValueError(f"it is {record.state.value}")
                values[upstream] = job_value(store, record, key)
            except Exception as exc:
                _fail(
                    store,
                    launch,
                    exc,
                    message=f"the result of job {upstream!r}, an argument of job "
                    f"{launch.job_id!r}, cannot be loaded: {exc}",
                )
        return values[upstream]

    return (
        substitute(args, JobResult, value),
        substitute(kwargs, JobResult, value),
    )


def _prepare(store: JobStore, launch: MainLaunch, env: dict[str, str]) -> Any:
    """Storage, working directory, files, env values and logging for main.

    Returns the progress reporter.
    """
    _share_storage_options(store, launch)
    reporter = _context.activate(
        store,
        _context.CurrentJob(
            id=launch.job_id,
            user=launch.user,
            name=launch.name,
            artifacts_url=_artifacts_url(store, launch),
            storage_url=store.url,
            artifacts_dir=launch.artifacts_dir,
            mlflow_run_id=launch.mlflow_run_id,
            task=launch.task,
            array_index=launch.array_index,
            params=dict(launch.params),
            upstream=dict(launch.upstream_dirs),
        ),
    )
    os.makedirs(launch.workdir, exist_ok=True)
    os.chdir(launch.workdir)
    if launch.has_files:
        _unpack_files(store, launch)
    os.environ.update(env)
    os.environ["DASK_BATCH_JOB_ID"] = launch.job_id
    if launch.task:
        os.environ["DASK_BATCH_TASK"] = launch.task
    if launch.array_index is not None:
        os.environ["DASK_BATCH_ARRAY_INDEX"] = str(launch.array_index)
    # main's logging.info(...) goes to the job's log like its prints.
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return reporter


def _array_runtime(
    store: JobStore, launch: MainLaunch, secrets: _secrets.JobSecrets, client: Any
) -> _arrays.ArrayRuntime:
    """What an array's main needs beyond its payload: keys, env, the cluster."""
    job = _context.current_job()
    assert job is not None  # set up by _prepare
    return _arrays.ArrayRuntime(
        store=store,
        user=launch.user,
        job_id=launch.job_id,
        job_key=secrets.job_key,
        env=dict(secrets.env),
        upstream_keys=dict(secrets.upstream_keys),
        client=client,
        job=describe_job(job),
        has_files=launch.has_files,
    )


def _run(store: JobStore, launch: MainLaunch) -> tuple[Any, str]:
    """Run main with its cluster as the default client.

    Returns main's value and the job key, which signs it.
    """
    secrets = _open_secrets(store, launch)
    func, args, kwargs = _load_main(store, launch, secrets.job_key)
    if launch.task:
        func, args, kwargs = _select_task(
            store, launch, secrets.job_key, (func, args, kwargs)
        )
    is_array = func is _arrays.drive_array
    needs_runtime = is_array or getattr(func, "__dask_batch_runtime__", False)
    if secrets.upstream_keys and not is_array:
        args, kwargs = _upstream_job_values(store, launch, secrets, args, kwargs)
    try:
        reporter = _prepare(store, launch, secrets.env)
    except Exception as exc:
        _fail(
            store,
            launch,
            exc,
            message=f"main of job {launch.job_id!r} could not be set up on the "
            f"cluster (files, env values, working directory): {exc}",
        )
    client = _connect(launch)
    if launch.memory_limit:
        import resource

        # After start-up, so that only main's own allocations meet it.
        limit = int(launch.memory_limit)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if needs_runtime:
        kwargs = dict(kwargs, runtime=_array_runtime(store, launch, secrets, client))
    try:
        return func(*args, **kwargs), secrets.job_key
    except _arrays.ElementsFailed as exc:
        _fail(store, launch, ErrorInfo("TasksFailed", str(exc)))
    except BaseException as exc:  # SystemExit and KeyboardInterrupt included
        traceback.print_exc()
        _fail(store, launch, exc)
    finally:
        try:
            reporter.flush()
            client.close()
        except Exception:
            traceback.print_exc()


def main() -> None:
    # The runner's pid: had it died before this line, getppid() would name
    # another process.
    parent = int(os.environ.pop(ENV_RUNNER_PID, "") or os.getppid())
    # A process started early waits here, maybe a while; the scheduler's end
    # closes this pipe, so it never outlives it. The first line is the
    # launch, or the command that makes this process a zygote.
    first = _read_line(0)
    if not first.strip():
        return  # the job is not to run (cancelled before its cluster came up)
    command, _, fifo = first.strip().partition(b" ")
    if command == ZYGOTE_COMMAND:
        serve_tasks(0, fifo.decode(), run_launch)
        return
    threading.Thread(target=exit_with_parent, args=(parent,), daemon=True).start()
    rest = b"".join(iter(lambda: os.read(0, 1 << 20), b""))
    run_launch(MainLaunch.from_json(first + rest))


def _read_line(fd: int) -> bytes:
    """One line from ``fd``, read a byte at a time: nothing after it is taken
    (a zygote reads its requests from the same pipe)."""
    line = bytearray()
    while byte := os.read(fd, 1):
        line += byte
        if byte == b"\n":
            break
    return bytes(line)


def run_launch(launch: MainLaunch) -> None:
    """Run one launch: main, then its result or error stored, then the outcome."""
    store = JobStore(
        launch.storage_url, launch.storage_options, retry_for=launch.storage_retry_for
    )
    result, job_key = _run(store, launch)
    try:
        pieces = dumps_result(result)
    except Exception as exc:
        _fail(
            store,
            launch,
            exc,
            message=f"the value returned by main of job {launch.job_id!r} "
            f"cannot be pickled: {exc}. Return plain data, or write it to "
            "storage yourself and return its path.",
        )
    kind = type(result)
    del result  # the pieces hold what is needed of it
    result_digest, signature = store.put_pieces(
        launch.user, launch.job_id, launch.own(RESULT), pieces, job_key
    )
    Outcome(
        True,
        result_digest=result_digest,
        result_hmac=signature,
        result_type=f"{kind.__module__}.{kind.__qualname__}",
        result_bytes=sum(memoryview(p).nbytes for p in pieces),
    ).write(launch.outcome_path)


if __name__ == "__main__":
    main()
