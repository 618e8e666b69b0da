"""Cancel, a dead scheduler, and the gateway's idle culler."""

from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import child_processes, cluster_status
from dask_gateway.client import ClusterStatus

from dask_batch import BatchClient, JobCancelledError, JobLostError, JobState
from dask_batch.testing import _start_gateway, job_cluster_client, wait_for


def sleeper(seconds):
    print("sleeping", flush=True)
    time.sleep(seconds)
    return "woke up"


def wait_for_state(batch, job_id, state, timeout=30):
    return wait_for(
        lambda: batch.status(job_id).state is state,
        timeout,
        f"job {job_id} to be {state}",
    )


def test_cancel_running_job_stops_main_and_cluster(batch_client):
    job = batch_client.submit(sleeper, 120, workers=0)
    wait_for_state(batch_client, job.id, JobState.RUNNING)
    # Logs are copied to storage while main runs.
    wait_for(lambda: "sleeping" in job.logs(), 15, "main's first log line")
    record = job.cancel()
    assert record.state is JobState.CANCELLED
    assert record.message.startswith("cancelled by")
    wait_for(
        lambda: not child_processes(batch_client), 15, "main's process to be terminated"
    )
    wait_for(
        lambda: (
            cluster_status(batch_client, record.cluster_name) is ClusterStatus.STOPPED
        ),
        15,
        "the cancelled job's cluster to stop",
    )
    with pytest.raises(JobCancelledError, match=job.id):
        job.result(timeout=10)
    # The runner kept main's log and did not overwrite the state.
    assert "sleeping" in job.logs()
    assert job.status().state is JobState.CANCELLED


def test_cancel_pending_job_never_runs_main(batch_client, tmp_path):
    marker = tmp_path / "ran"

    def touch():
        marker.write_text("ran")

    job = batch_client.submit(touch, workers=0)
    assert job.status().state is JobState.PENDING
    job.cancel()
    record = job.status()
    assert record.state is JobState.CANCELLED
    wait_for(
        lambda: (
            cluster_status(batch_client, record.cluster_name)
            in (ClusterStatus.STOPPED, None)
        ),
        15,
        "the cancelled job's cluster to stop",
    )
    assert not marker.exists()
    assert job.status().started is None


def test_cancel_of_finished_job_keeps_its_state(batch_client):
    job = batch_client.submit(sleeper, 0, workers=0)
    job.result(timeout=60)
    assert job.cancel().state is JobState.SUCCEEDED


def test_killed_scheduler_makes_the_job_lost(batch_client):
    job = batch_client.submit(sleeper, 120, workers=0)
    wait_for_state(batch_client, job.id, JobState.RUNNING)
    cluster_name = job.status().cluster_name
    with job_cluster_client(batch_client, job.id) as client:
        scheduler_pid = client.run_on_scheduler(os.getpid)
    os.kill(scheduler_pid, signal.SIGKILL)
    wait_for(
        lambda: not child_processes(batch_client), 10, "main to exit with its scheduler"
    )
    wait_for_state(batch_client, job.id, JobState.LOST, timeout=60)
    lost = job.status()
    assert lost.finished is not None
    assert cluster_name in lost.message
    with pytest.raises(JobLostError, match=job.id):
        job.result(timeout=5)
    # LOST was written back: a fresh reader sees it without asking the gateway.
    assert (
        batch_client.store.read_record(batch_client.user, job.id).state is JobState.LOST
    )


def test_pending_job_without_cluster_becomes_lost(batch_client):
    import dask

    from dask_batch.core.records import new_job_id, utcnow
    from dask_batch.storage.store import SPEC, STATE

    job_id = new_job_id()
    store, user = batch_client.store, batch_client.user
    store.put_json(
        user,
        job_id,
        SPEC,
        {
            "id": job_id,
            "user": user,
            "name": "orphan",
            "submitted": utcnow().isoformat(),
            "gateway_address": batch_client.gateway.address,
        },
    )
    store.put_json(user, job_id, STATE, {"state": "PENDING"})
    assert batch_client.status(job_id).state is JobState.PENDING
    with dask.config.set({"batch.lost-after": 0}):
        assert batch_client.status(job_id).state is JobState.LOST
        assert [r.state for r in batch_client.jobs()] == [JobState.LOST]


@pytest.fixture(scope="module")
def idle_gateway(tmp_path_factory):
    from dask_batch import local

    directory = str(tmp_path_factory.mktemp("idle-gateway"))
    info = _start_gateway(directory, idle_timeout=2)
    yield info
    local.stop(directory)


def test_idle_culler_is_active_on_plain_clusters(idle_gateway):
    # The control for the next test: this gateway does cull idle clusters.
    with idle_gateway.gateway() as gateway:
        name = gateway.submit()
        wait_for(
            lambda: gateway.get_cluster(name).status is ClusterStatus.STOPPED,
            30,
            "the idle plain cluster to be culled",
        )


def test_idle_timeout_does_not_kill_a_running_job(idle_gateway, tmp_path):
    with BatchClient(gateway=idle_gateway.gateway(), storage=str(tmp_path)) as batch:
        job = batch.submit(sleeper, 8, workers=0)  # 4x the idle timeout, no tasks
        assert job.result(timeout=60) == "woke up"
        name = job.status().cluster_name
        wait_for(
            lambda: cluster_status(batch, name) is ClusterStatus.STOPPED,
            15,
            "the job's cluster to stop after main",
        )
        batch.gateway.close()
