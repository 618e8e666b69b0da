"""One Ploomber task, built on a worker as Dask runs any task.

Main's process (:mod:`dask_batch.runtime.ploomber_build`) first registers a
worker plugin that prepares the project on every worker, then hands each
task here pickled and signed with the project's key (derived from the
user's secret; only a signed task is unpickled); it is built in one of
the worker's threads (a notebook's kernel is a process of the worker's,
which ends with it) with Ploomber's own
``Task._build``, hooks included. The worker belongs to the job alone: the
project is importable from its folder, at the same absolute path as in
main's process (Ploomber's products and sources are absolute paths), and
the job's env values are in its environment. A worker on another host
unpacks the project there first and writes the upstream products it is
sent; the products it makes go back with the outcome. What the task's
thread prints is its log.

Runs on the workers (and, for :func:`quiet_ploomber`, wherever Ploomber is
imported); imports nothing from the client.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import os
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from dask_batch.core.secrets import PLOOMBER_KEY_ENV
from dask_batch.core.signing import loads_verified, sign
from dask_batch.runtime.element_work import LOG_TAIL_BYTES, _unpack

__all__: list[str] = []

#: What Ploomber does on import and at each command unless told not to:
#: telemetry and a version check over the network.
QUIET = {"PLOOMBER_STATS_ENABLED": "false", "PLOOMBER_VERSION_CHECK_DISABLED": "1"}


def quiet_ploomber() -> None:
    """Ploomber imported without telemetry, version checks or the deprecation
    warnings its dependencies raise on import (ImportError if missing)."""
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import ploomber
        import ploomber.cli.parsers  # noqa: F401


@dataclass
class ProjectFiles:
    """The uploaded project, as a worker needs it to run one task."""

    folder: str  # absolute, as in main's process
    spec: str  # the spec's path relative to the folder
    archive: bytes = field(repr=False)
    env: dict[str, str] = field(default_factory=dict, repr=False)


def task_signature(key: str, task: bytes) -> str:
    """The signature of a pickled task with the project's key."""
    return sign(key, b"dask-batch/v1/ploomber-task\0" + task)


class ProjectPlugin(WorkerPlugin):
    """Makes the project ready on every worker of the job, those that join
    later included, before any task reaches it: unpacked at main's path
    where this host lacks it, importable, the job's env values set, and the
    project's key kept, which every task must be signed with."""

    name = "dask-batch-ploomber-project"

    def __init__(self, project: ProjectFiles) -> None:
        self.project = project

    def setup(self, worker: Any) -> None:
        _project_here(self.project)


def run_on_worker(
    task: bytes,
    signature: str,
    products: list[str],
    folder: str,
    upstream: dict[str, bytes],
) -> dict[str, Any]:
    """Build one Ploomber task in this worker, as Dask runs any task; how it went.

    ``task`` is the task pickled by main's process, unpickled here once the
    project's modules import, and only if ``signature`` is its signature
    with the key of the project the :class:`ProjectPlugin` prepared.
    ``products``: the files it makes. ``upstream``: files of upstream
    products by absolute path, for a worker whose folder is not main's
    (written only where missing). The task's output (``print``, a
    notebook's progress) is its log.
    """
    import distributed

    key = _keys.get(folder, "")
    expected = task_signature(key, task) if key else ""
    if not expected or not hmac.compare_digest(signature, expected):
        raise PermissionError(
            f"a task for the project in {folder} is not signed with its key; "
            "it is not run"
        )
    own_folder = folder in _unpacked
    for path, data in upstream.items() if own_folder else ():
        _write_inside(folder, path, data)
    started = time.time()
    with _task_output() as output:
        try:
            # The one loader of pickles: it checks the signature itself.
            built = loads_verified(folder, "Ploomber task", task, signature, expected)
            _, metadata = built._build(catch_exceptions=True)  # noqa: SLF001
            report: dict[str, Any] = {"ok": True, "metadata": metadata}
        except Exception as exc:
            text = traceback.format_exc()
            print(text, file=sys.stderr)
            report = {"ok": False, "error": text, "cause": _root_cause(exc)}
    out = {
        "log": output.getvalue()[-LOG_TAIL_BYTES:],
        "started": started,
        "finished": time.time(),
        "worker": distributed.get_worker().address,
        **report,
    }
    if own_folder and out["ok"]:
        made = [p for p in products if os.path.isfile(p)]
        out["products"] = {p: _read(p) for p in made}
    return out


def _root_cause(exc: BaseException) -> str:
    """The error under Ploomber's ``TaskBuildError`` wrappers: what the
    task's own code (or its hook) raised."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return f"{type(exc).__name__}: {exc}"[:1000]


_worker_lock = threading.Lock()
_unpacked: set[str] = set()  # project folders this worker unpacked itself
_keys: dict[str, str] = {}  # project folder -> its key, from the plugin


def _project_here(project: ProjectFiles) -> None:
    """Make the project importable in this worker (which belongs to this job
    alone), unpacked at main's path if this host does not have it there
    (then remembered in ``_unpacked``: not main's folder)."""
    with _worker_lock:
        quiet_ploomber()
        if not os.path.isfile(os.path.join(project.folder, project.spec)):
            os.makedirs(project.folder, exist_ok=True)
            _unpack(project.archive, project.folder)
            _unpacked.add(project.folder)
        if project.folder not in sys.path:
            sys.path.insert(0, project.folder)
        for key, value in {**project.env, **QUIET}.items():
            os.environ[key] = value
        _keys[project.folder] = project.env.get(PLOOMBER_KEY_ENV, "")


class _ThreadOutput(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` of a worker: what a task's thread
    writes goes to that task's log, anything else where it went before."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback
        self.local = threading.local()

    def write(self, text: str) -> int:
        buffer = getattr(self.local, "buffer", None)
        return (buffer or self.fallback).write(text)

    def flush(self) -> None:
        self.fallback.flush()


@contextlib.contextmanager
def _task_output() -> Iterator[io.StringIO]:
    with _worker_lock:
        for name in ("stdout", "stderr"):
            if not isinstance(getattr(sys, name), _ThreadOutput):
                setattr(sys, name, _ThreadOutput(getattr(sys, name)))
    buffer = io.StringIO()
    outputs: list[Any] = [sys.stdout, sys.stderr]
    for stream in outputs:
        stream.local.buffer = buffer
    try:
        yield buffer
    finally:
        for stream in outputs:
            stream.local.buffer = None


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write_inside(folder: str, path: str, data: bytes) -> None:
    """Write ``data`` at ``path`` if it lies inside ``folder`` and is missing."""
    real = os.path.realpath(path)
    if os.path.commonpath([real, os.path.realpath(folder)]) != os.path.realpath(folder):
        raise ValueError(f"{path!r} is outside the project's folder")
    if not os.path.exists(real):
        os.makedirs(os.path.dirname(real), exist_ok=True)
        with open(real, "wb") as f:
            f.write(data)
