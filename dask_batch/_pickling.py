"""Pickle main and its arguments so that the cluster can load them."""

from __future__ import annotations

import contextlib
import site
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
