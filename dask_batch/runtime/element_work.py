"""What an array job's elements run on the workers.

Main's process beside the scheduler hands out *chunks* of elements as Dask
tasks; a worker runs each chunk's elements one after the other and returns
how each went. A function element runs in the worker's own thread, as any
Dask task does (with ``current_job()`` describing the element); a script
element runs as a process of its own on the worker, as ``python script.py``
would, with ``DASK_BATCH_ARRAY_INDEX`` set and its output kept as the
element's log.

Runs on the job's workers; imports nothing from the client or service.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from dask_batch.core.names import check_relative_path
from dask_batch.runtime import context as _context

__all__: list[str] = []

#: The end of a script element's output kept as its log.
LOG_TAIL_BYTES = 1 << 20


@dataclass
class ElementWork:
    """What every element of one array runs; sent once to each worker.

    ``env`` holds the job's env values (given to script elements' processes
    and, for function elements, set in the worker's environment: the worker
    belongs to this job alone).
    """

    kind: str  # "function" or "script"
    job: dict[str, Any]  # CurrentJob's fields, without task or index
    func: Any = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    script: tuple[str, bytes, list[str]] | None = None
    files: bytes = b""
    env: dict[str, str] = field(default_factory=dict, repr=False)
    process_env: dict[str, str] = field(default_factory=dict, repr=False)


def same_work(work: ElementWork) -> ElementWork:
    """A task that gives the array's work to the chunks that need it: when
    the worker holding it dies, the scheduler runs it again."""
    return work


def _error(exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": str(exc)[:2000],
        "traceback": "".join(traceback.format_exception(exc))[-20000:],
    }


_env_lock = threading.Lock()


def _set_env_once(env: dict[str, str]) -> None:
    with _env_lock:
        for key, value in env.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def run_chunk(
    work: ElementWork, elements: list[tuple[int, int, Any]], attempt: int
) -> list[dict[str, Any]]:
    """Run ``(position, index, item)`` elements in turn; how each went.

    Each entry has ``position``, ``ok``, ``value`` or ``error``, ``started``
    and ``finished`` (epoch seconds) and ``log`` (text, maybe empty).
    """
    out = []
    for position, index, item in elements:
        started = time.time()
        entry: dict[str, Any] = {"position": position, "attempt": attempt}
        try:
            if work.kind == "script":
                entry.update(_run_script(work, index))
            else:
                entry.update(ok=True, value=_run_function(work, index, item), log="")
        except Exception as exc:
            error = _error(exc)
            entry.update(ok=False, error=error, log=error["traceback"])
        entry.update(started=started, finished=time.time())
        out.append(entry)
    return out


def _run_function(work: ElementWork, index: int, item: Any) -> Any:
    if work.env:
        _set_env_once(work.env)
    job = _context.CurrentJob(**{**work.job, "task": str(index), "array_index": index})
    with _context.element_job(job):
        return work.func(item, **work.kwargs)


def _files_dir(work: ElementWork) -> str:
    """The uploaded files, unpacked once per worker process and archive."""
    digest = hashlib.sha256(work.files).hexdigest()[:16]
    folder = os.path.join(tempfile.gettempdir(), f"dask-batch-{os.getpid()}-{digest}")
    with _env_lock:
        if not os.path.isdir(folder):
            staging = tempfile.mkdtemp(prefix="dask-batch-files-")
            if work.files:
                _unpack(work.files, staging)
            os.rename(staging, folder)
    return folder


def _unpack(archive: bytes, folder: str) -> None:
    """Regular files and folders only, every one inside ``folder``."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar:
            name = check_relative_path(member.name, what="uploaded file")
            target = os.path.join(folder, name)
            if member.isdir():
                os.makedirs(target, exist_ok=True)
            elif member.isfile():
                os.makedirs(os.path.dirname(target), exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
                os.chmod(target, 0o755 if member.mode & 0o100 else 0o644)


def _run_script(work: ElementWork, index: int) -> dict[str, Any]:
    assert work.script is not None
    filename, source, argv = work.script
    with tempfile.TemporaryDirectory(prefix="dask-batch-element-") as workdir:
        files = _files_dir(work)
        for name in os.listdir(files):
            os.symlink(os.path.join(files, name), os.path.join(workdir, name))
        with open(os.path.join(workdir, filename), "wb") as f:
            f.write(source)
        job = {**work.job, "task": str(index), "array_index": index}
        env = {
            **os.environ,
            **work.process_env,
            **work.env,
            "DASK_BATCH_JOB_ID": str(work.job["id"]),
            "DASK_BATCH_TASK": str(index),
            "DASK_BATCH_ARRAY_INDEX": str(index),
            _context.ENV_CURRENT_JOB: json.dumps(job),
        }
        with tempfile.TemporaryFile() as log:
            done = subprocess.run(
                [sys.executable, filename, *argv],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
            size = log.tell()
            log.seek(max(0, size - LOG_TAIL_BYTES))
            text = log.read().decode(errors="replace")
    if done.returncode == 0:
        return {"ok": True, "value": None, "log": text}
    error = {
        "type": "dask_batch.runtime.targets.ScriptExit",
        "message": f"{filename} exited with code {done.returncode}",
        "returncode": done.returncode,
    }
    return {"ok": False, "error": error, "log": text}


def describe(job: _context.CurrentJob) -> dict[str, Any]:
    """The fields every element's ``current_job()`` shares."""
    fields = dataclasses.asdict(job)
    for name in ("task", "array_index", "params", "upstream"):
        fields.pop(name, None)
    return fields
