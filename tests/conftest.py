from __future__ import annotations

import os

import dask
import fsspec
import pytest

from dask_batch.testing import wait_for


def child_processes() -> list[int]:
    """PIDs of every live main process (``python -m dask_batch._child``)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().split(")")[-1].split()[0] == "Z"
        except OSError:
            continue
        if b"dask_batch._child" in cmdline and not zombie:
            found.append(int(pid))
    return found


def active_clusters(info) -> list:
    with info.gateway() as gateway:
        return gateway.list_clusters()


@pytest.fixture(autouse=True)
def _nothing_left_behind(request):
    """Every test ends with no running cluster and no main process."""
    yield
    for fixture in (
        "batch_gateway",
        "batch_plain_gateway",
        "idle_gateway",
        "notebook_gateway",
        "strict_gateway",
    ):
        if fixture in request.fixturenames:
            info = request.getfixturevalue(fixture)
            wait_for(
                lambda info=info: not active_clusters(info),
                30,
                f"every cluster of {fixture} to stop after {request.node.name}",
            )
    wait_for(lambda: not child_processes(), 15, "every main process to exit")


@pytest.fixture(autouse=True)
def _clean_memory_filesystem():
    yield
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")


@pytest.fixture(autouse=True)
def _fresh_config(monkeypatch):
    for key in list(os.environ):
        if key.startswith(("DASK_BATCH__", "DASK_GATEWAY__")):
            monkeypatch.delenv(key)
    with dask.config.set({"batch.storage": None, "gateway.address": None}):
        yield
