"""dask-batch on a real Slurm through dask-gateway's SlurmBackend (see
slurm.py): both modes, cancel, timeouts, allocations cancelled from outside,
a main that ignores SIGTERM, and jobs under their own Unix user."""

from __future__ import annotations

import pwd

import pytest
from conftest import first_attempt_hangs, wait_until_nothing_left
from dask_gateway import BasicAuth
from slurm import JOB_USER, running_slurm

from dask_batch import BatchClient, JobFailedError, JobLostError, JobState
from dask_batch.client.gateway import BatchGateway
from dask_batch.testing import (
    _gateway_environment,
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
        with BatchGateway(
            address=slurm.gateway.address,
            auth=BasicAuth(user, slurm.gateway.password),
        ) as gateway:
            wait_until_nothing_left(
                gateway, f"{user} after {request.node.name}", 60, 30
            )


@pytest.fixture
def s3(batch_s3_storage, slurm):
    """A fresh bucket, removed only once no scheduler of the test can still
    write to it (autouse checks run after the bucket's own teardown)."""
    yield batch_s3_storage
    wait_for(lambda: not slurm.job_ids(), 60, "squeue to be empty")


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


def running(batch, job):
    wait_for(lambda: batch.status(job.id).state is JobState.RUNNING, 120, "RUNNING")


def test_cancel_ends_the_slurm_jobs(slurm, s3):
    batch = client_for(slurm, *s3)
    try:
        job = batch.submit(sleeper, 600, workers=1)
        running(batch, job)
        wait_for(lambda: len(slurm.job_ids()) == 2, 60, "scheduler and worker jobs")
        assert batch.cancel(job.id).state is JobState.CANCELLED
        wait_for(lambda: not slurm.job_ids(), 60, "squeue to be empty after cancel")
    finally:
        batch.gateway.close()


def test_a_timeout_fails_the_job_and_frees_the_allocation(slurm, s3):
    batch = client_for(slurm, *s3)
    try:
        job = batch.submit(sleeper, 600, timeout="2s", workers=0)
        with pytest.raises(JobFailedError, match="timed out: main ran longer"):
            job.result(timeout=120)
        wait_for(lambda: not slurm.job_ids(), 60, "squeue to be empty")
    finally:
        batch.gateway.close()


def test_the_allocation_cancelled_from_outside(slurm, s3, tmp_path):
    batch = client_for(slurm, *s3)
    try:
        job = batch.submit(sleeper, 600, workers=0)
        running(batch, job)
        (scheduler_job,) = slurm.job_ids()
        slurm.run("scancel", scheduler_job)
        record = wait_for(
            lambda: (r := batch.status(job.id)).state.is_terminal and r,
            120,
            "the job to end after scancel",
        )
        # The scheduler (exec'd by the batch script) gets scancel's SIGTERM,
        # and the runner records why the job ended before it exits.
        assert record.state is JobState.FAILED, record
        assert "the cluster was stopped while main was running" in record.message
    finally:
        batch.gateway.close()


def test_a_main_that_ignores_sigterm_is_killed_with_its_allocation(slurm, s3, tmp_path):
    marker = tmp_path / "started"
    batch = client_for(slurm, *s3)
    try:
        job = batch.submit(ignores_sigterm, str(marker), workers=0)
        wait_for(marker.exists, 120, "main to start ignoring SIGTERM")
        name = batch.status(job.id).cluster_name
        (main,) = wait_for(lambda: main_processes([name]), 30, "main's process")
        (scheduler_job,) = slurm.job_ids()
        slurm.run("scancel", scheduler_job)
        wait_for(lambda: not main_processes([name]), 60, f"main ({main}) to be killed")
        record = wait_for(
            lambda: (r := batch.status(job.id)).state.is_terminal and r,
            120,
            "the job to end",
        )
        assert record.state is JobState.FAILED, record
    finally:
        batch.gateway.close()


def test_jobs_run_as_their_unix_user(slurm, s3):
    batch = client_for(slurm, *s3, user=JOB_USER)
    try:
        assert batch.user == JOB_USER
        out = batch.submit(where_am_i, 1, workers=0).result(timeout=120)
        assert out["uid"] == pwd.getpwnam(JOB_USER).pw_uid
    finally:
        batch.gateway.close()


def test_storage_the_job_user_cannot_write_fails_at_once_naming_it(slurm, tmp_path):
    # The client (root) made the folder; the job runs as JOB_USER.
    batch = client_for(slurm, str(tmp_path / "jobs"), user=JOB_USER)
    try:
        job = batch.submit(sleeper, 1, workers=0)
        with pytest.raises(JobLostError) as info:
            job.result(timeout=60)  # not after minutes of retries
        message = str(info.value)
        assert f"running as Unix user '{JOB_USER}', cannot write" in message
        assert f"{tmp_path}/jobs/{JOB_USER}/{job.id}" in message
        assert "permission denied" in message
    finally:
        batch.gateway.close()


def test_a_job_with_retries_runs_again_after_its_allocation_is_cancelled(
    slurm, s3, tmp_path
):
    marker = tmp_path / "attempted"
    batch = client_for(slurm, *s3)
    try:
        job = batch.submit(first_attempt_hangs, str(marker), retries=1, workers=0)
        wait_for(marker.exists, 120, "the first attempt to start")
        first = batch.status(job.id).cluster_name
        (scheduler_job,) = slurm.job_ids()
        slurm.run("scancel", scheduler_job)
        # Waiting for the result is what starts the retry on a new cluster.
        assert job.result(timeout=180) == "second attempt"
        record = batch.status(job.id)
        assert record.attempt == 2 and record.cluster_name != first
        assert first in record.attempts[0]["error"]
    finally:
        batch.gateway.close()
