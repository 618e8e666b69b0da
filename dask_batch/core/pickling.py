"""Pickle main and its arguments for the cluster, and main's result back."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import mmap
import pickle
import site
import struct
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import cloudpickle


def _installed_roots() -> list[str]:
    roots = {
        sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")
    }
    with contextlib.suppress(AttributeError):
        roots.update(site.getsitepackages())
    with contextlib.suppress(AttributeError):
        roots.add(site.getusersitepackages())
    return sorted(roots)


def local_modules(*objects: Any) -> list[ModuleType]:
    """Top-level modules of ``objects`` that are not installed packages.

    Functions from a user's own files (``train.py`` beside the notebook, a
    project checkout on ``sys.path``) would be pickled by reference and fail on a
    cluster that lacks those files; they are pickled by value instead.
    """
    roots = _installed_roots()
    found: dict[str, ModuleType] = {}
    for obj in objects:
        name = getattr(obj, "__module__", None)
        if not name or name == "__main__" or name.startswith("dask_batch"):
            continue
        top = sys.modules.get(name.split(".")[0])
        path = getattr(top, "__file__", None)
        if top is None or path is None:
            continue
        if not any(path.startswith(root + "/") for root in roots):
            found[top.__name__] = top
    return list(found.values())


@contextlib.contextmanager
def pickled_by_value(modules: list[ModuleType]) -> Iterator[None]:
    registered = []
    try:
        for module in modules:
            if module.__name__ not in cloudpickle.list_registry_pickle_by_value():
                cloudpickle.register_pickle_by_value(module)
                registered.append(module)
        yield
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)


def _carried(value: Any) -> list[Any]:
    """What a dataclass argument (an array's work) carries: its fields and
    the values of its dict fields, whose modules may be local too."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return [value]
    found = []
    for item in dataclasses.fields(value):
        field_value = getattr(value, item.name)
        found.append(field_value)
        if isinstance(field_value, dict):
            found.extend(field_value.values())
    return found


def dumps_payload(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickle ``(func, args, kwargs)``; local modules go by value."""
    objects = [func, *(o for a in args for o in _carried(a)), *kwargs.values()]
    with pickled_by_value(local_modules(*objects)):
        return cloudpickle.dumps((func, args, kwargs))


def dumps_task_table(table: dict[str, tuple[Any, tuple[Any, ...], dict]]) -> bytes:
    """Pickle the mains of a pipeline's or array's tasks as one payload.

    Stored as ``(None, (table,), {})``: a task's main process picks its own
    ``(func, args, kwargs)`` by name. Objects shared between tasks (an
    array's function, a script's source) are pickled once.
    """
    objects = [o for func, args, kwargs in table.values() for o in (func, *args)]
    with pickled_by_value(local_modules(*objects)):
        return cloudpickle.dumps((None, (table,), {}))


# Stored results: a frame, the pickle, then its out-of-band buffers (pickle
# protocol 5), so that a large NumPy array or bytes-like value is written from
# and read into its own memory, never copied into one big blob.
RESULT_MAGIC = b"DBRESULT1\n"
_FRAME = struct.Struct(">QI")  # pickle length, number of buffers
# Writable memory that a result's out-of-band buffers are read into.
ResultBuffer = bytearray | mmap.mmap


def dumps_result(value: Any) -> list[memoryview]:
    """``value`` as the pieces of a stored result, in order."""
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            buffers.append(buffer.raw())
        except BufferError:  # not contiguous: goes inside the pickle
            return True
        return False

    stream = cloudpickle.dumps(value, protocol=5, buffer_callback=out_of_band)
    sizes = struct.pack(f">{len(buffers)}Q", *(b.nbytes for b in buffers))
    frame = RESULT_MAGIC + _FRAME.pack(len(stream), len(buffers)) + sizes
    return [memoryview(frame), memoryview(stream), *buffers]


def read_result_frame(read: Any, object_size: int) -> tuple[bytes, int, list[int]]:
    """Parse a stored result's frame, after its magic, with ``read(n)``.

    Returns the frame's bytes (magic included, as :func:`dumps_result` wrote
    them), the pickle's length and the buffer sizes. The sizes are checked
    against ``object_size``, the stored object's real size, before anything
    is allocated for them: a frame that claims more than the object holds
    raises EOFError (the object is truncated), one that claims less raises
    ValueError.
    """
    counts = read(_FRAME.size)
    length, count = _FRAME.unpack(counts)
    header = len(RESULT_MAGIC) + _FRAME.size
    if header + 8 * count > object_size:
        raise EOFError(
            f"the stored result is truncated: its frame claims {count} buffers "
            f"in {object_size} bytes"
        )
    sizes = read(8 * count)
    frame = RESULT_MAGIC + counts + sizes
    buffers = list(struct.unpack(f">{count}Q", sizes))
    described = len(frame) + length + sum(buffers)
    if described > object_size:
        raise EOFError(
            f"the stored result is truncated: its frame describes {described} "
            f"bytes, the object has {object_size}"
        )
    if described < object_size:
        raise ValueError(
            f"its frame describes {described} bytes, the object has {object_size}"
        )
    return frame, length, buffers


#: Where the modules of the first release's flat layout went. Stored pickles
#: (payloads, results, task tables) name classes and functions by module path,
#: ``dask_batch._deps.JobResult`` for one: the one loader below reads them
#: through this table, so a move never makes stored jobs unreadable. A module
#: that moves again gets its old path added here, never an alias module.
MOVED_MODULES: dict[str, str] = {
    "dask_batch._artifacts": "dask_batch.runtime.artifacts",
    "dask_batch._backends": "dask_batch.storage.backends",
    "dask_batch._child": "dask_batch.runtime.child",
    "dask_batch._client": "dask_batch.batch_client",
    "dask_batch._connection": "dask_batch.client.connection",
    "dask_batch._context": "dask_batch.runtime.context",
    "dask_batch._deps": "dask_batch.storage.upstream",
    "dask_batch._display": "dask_batch.client.display",
    "dask_batch._exceptions": "dask_batch.core.exceptions",
    "dask_batch._gateway": "dask_batch.client.gateway",
    "dask_batch._handoff": "dask_batch.runtime.handoff",
    "dask_batch._hub": "dask_batch.client.hub",
    "dask_batch._index": "dask_batch.storage.catalog",
    "dask_batch._job": "dask_batch.batch_client",
    "dask_batch._launcher": "dask_batch.client.launcher",
    "dask_batch._listing": "dask_batch.client.listing",
    "dask_batch._local_keeper": "dask_batch.service.local_keeper",
    "dask_batch._local_server": "dask_batch.service.local_server",
    "dask_batch._logs": "dask_batch.storage.logs",
    "dask_batch._mlflow_finish": "dask_batch.runtime.mlflow_finish",
    "dask_batch._options": "dask_batch.core.options",
    "dask_batch._outputs": "dask_batch.client.outputs",
    "dask_batch._pickling": "dask_batch.core.pickling",
    "dask_batch._pipeline": "dask_batch.workflows.pipelines",
    "dask_batch._prewarm": "dask_batch.runtime.prewarm",
    "dask_batch._reconcile": "dask_batch.client.reconcile",
    "dask_batch._records": "dask_batch.core.records",
    "dask_batch._runner": "dask_batch.runtime.plugin",
    "dask_batch._schedules": "dask_batch.workflows.schedules",
    "dask_batch._secrets": "dask_batch.core.secrets",
    "dask_batch._service": "dask_batch.service.hub",
    "dask_batch._signing": "dask_batch.core.signing",
    "dask_batch._store": "dask_batch.storage.store",
    "dask_batch._store_parts": "dask_batch.storage.parts",
    "dask_batch._streams": "dask_batch.storage.streams",
    "dask_batch._submission": "dask_batch.client.submission",
    "dask_batch._targets": "dask_batch.runtime.targets",
    "dask_batch._taskrun": "dask_batch.runtime.taskrun",
    "dask_batch._tasks": "dask_batch.core.tasks",
    "dask_batch._tracking": "dask_batch.client.tracking",
    "dask_batch._validate": "dask_batch.core.names",
    "dask_batch._zygote": "dask_batch.runtime.zygote",
    "dask_batch.ui._app": "dask_batch.ui.app",
    "dask_batch.ui._hub": "dask_batch.ui.hub",
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(MOVED_MODULES.get(module, module), name)


class _ViewReader:
    """A file over a memoryview (a mapped result) that copies only what is read."""

    def __init__(self, data: Any) -> None:
        self._view = memoryview(data).cast("B")
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._view) if size < 0 else self._position + size
        chunk = bytes(self._view[self._position : end])
        self._position += len(chunk)
        return chunk

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        chunk = self._view[self._position : self._position + len(target)]
        target[: len(chunk)] = chunk
        self._position += len(chunk)
        return len(chunk)

    def readline(self) -> bytes:
        start = self._position
        while start < len(self._view):
            found = bytes(self._view[start : start + 4096]).find(b"\n")
            if found >= 0:
                return self.read(start + found + 1 - self._position)
            start += 4096
        return self.read()


def load_pickle(data: Any, buffers: Sequence[Any] = ()) -> Any:
    """Unpickle ``data``, reading old module paths through :data:`MOVED_MODULES`.

    Only for bytes whose signature was checked: see
    :func:`dask_batch.core.signing.loads_verified`, its one caller.
    """
    source = io.BytesIO(data) if isinstance(data, bytes) else _ViewReader(data)
    return _Unpickler(source, buffers=buffers).load()
