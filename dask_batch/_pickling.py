"""Pickle main and its arguments for the cluster, and main's result back."""

from __future__ import annotations

import contextlib
import mmap
import pickle
import site
import struct
import sys
import sysconfig
from collections.abc import Iterator
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


def dumps_payload(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickle ``(func, args, kwargs)``; local modules go by value."""
    with pickled_by_value(local_modules(func, *args, *kwargs.values())):
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
