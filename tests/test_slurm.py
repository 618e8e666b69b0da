"""dask-batch on a real Slurm through dask-gateway's SlurmBackend (see
slurm.py): both modes, cancel, timeouts, allocations cancelled from outside,
a main that ignores SIGTERM, and jobs under their own Unix user."""

from __future__ import annotations

import os
import pwd
import signal

import pytest
from dask_gateway import BasicAuth
from slurm import JOB_USER, running_slurm

from dask_batch import BatchClient, JobFailedError, JobState
from dask_batch._gateway import BatchGateway
from dask_batch.testing import (
    _gateway_environment,
    gateway_clusters,
    main_processes,
    wait_for,
)

pytestmark = pytest.mark.xdist_group("slurm")


def where_am_i(n):
    import os

    import fsspec

    import dask_batch

    dask_batch.report(0.5, "halfway")
    with fsspec.open(dask_batch.artifacts_path("out.txt"), "w") as f:
        f.write("artifact")
    print("in the allocation", flush=True)
    return {
        "n": n,
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "uid": os.getuid(),
        "ppid": os.getppid(),
    }


def sleeper(seconds):
    import time

    time.sleep(seconds)
    return seconds


def ignores_sigterm(marker):
    import pathlib
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pathlib.Path(marker).touch()
    time.sleep(600)


@pytest.fixture(scope="module")
def slurm(batch_s3_server):
    with running_slurm(_gateway_environment(batch_s3_server)) as running:
        yield running


def client_for(slurm, storage, storage_options=None, *, user="root", mode=None):
    gateway = BatchGateway(
        address=slurm.gateway.address,
        proxy_address=slurm.gateway.proxy_address,
        auth=BasicAuth(user, slurm.gateway.password),
    )
    return BatchClient(
        gateway=gateway, storage=storage, storage_options=storage_options, mode=mode
    )


@pytest.fixture(autouse=True)
def _nothing_left_on_the_node(slurm, request):
    """After each test: no Slurm job, no cluster, no main process left."""
    yield
    wait_for(
        lambda: not slurm.job_ids(), 60, f"squeue to be empty after {request.node.name}"
    )
    for user in ("root", JOB_USER):
        batch = client_for(slurm, "memory://unused", user=user)
        try:
            names = gateway_clusters(batch.gateway)
            wait_for(
                lambda names=names: not main_processes(names),
                30,
                f"{user}'s main processes to exit after {request.node.name}",
            )
        finally:
            batch.gateway.close()


@pytest.fixture
def s3(batch_s3_storage):
    return batch_s3_storage


@pytest.mark.parametrize("mode", ["server", "client"])
def test_a_job_runs_in_the_scheduler_allocation(slurm, s3, mode):
    batch = client_for(slurm, *s3, mode=mode)
    try:
        job = batch.submit(where_am_i, 7, name=f"on-slurm-{mode}", workers=1)
        out = job.result(timeout=120)
        assert out["n"] == 7 and out["slurm_job"], out
        record = batch.status(job.id)
        assert record.state is JobState.SUCCEEDED and record.progress == 0.5
        assert batch.artifacts(job.id) == {"out.txt": 8}
        # The allocation is gone, the log is not.
        wait_for(lambda: not slurm.job_ids(), 60, "the Slurm jobs to end")
        assert "in the allocation" in batch.logs(job.id)
    finally:
        batch.gateway.close()
