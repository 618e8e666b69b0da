"""Client-side and server-side runner installs, on local and S3 storage."""

from __future__ import annotations

import os

import pytest
import s3fs
from conftest import cluster_status
from dask_gateway.client import ClusterStatus

from dask_batch import BatchClient, DaskBatchError, JobFailedError, JobState
from dask_batch.testing import wait_for


def whoami():
    import distributed

    client = distributed.get_client()
    print("who am i")
    return {"ppid": os.getppid(), "scheduler_pid": client.run_on_scheduler(os.getpid)}


def boom():
    raise RuntimeError("client-side failure")


@pytest.fixture
def plain_client(batch_plain_gateway, batch_s3_storage):
    url, options = batch_s3_storage
    gateway = batch_plain_gateway.gateway()
    with BatchClient(gateway=gateway, storage=url, storage_options=options) as batch:
        yield batch
    gateway.close()


def test_plain_gateway_runs_jobs_client_side_on_s3(plain_client, batch_s3_storage):
    job = plain_client.submit(whoami, workers=0)
    facts = job.result(timeout=60)
    assert facts["ppid"] == facts["scheduler_pid"]
    record = job.status()
    assert record.mode == "client"
    assert record.state is JobState.SUCCEEDED
    url, options = batch_s3_storage
    fs = s3fs.S3FileSystem(**options)
    stored = {
        p.rsplit("/", 1)[-1] for p in fs.ls(f"{url}/{plain_client.user}/{job.id}")
    }
    assert {
        "spec.json",
        "state.json",
        "payload.pkl",
        "result.pkl",
        "logs",
    } <= stored
    assert "who am i" in job.logs()


def test_client_side_failure_is_reported(plain_client):
    job = plain_client.submit(boom, workers=0)
    with pytest.raises(JobFailedError, match="client-side failure"):
        job.result(timeout=60)


def test_server_side_submit_does_not_wait_for_the_cluster(
    batch_gateway, batch_s3_storage
):
    url, options = batch_s3_storage
    with BatchClient(
        gateway=batch_gateway.gateway(), storage=url, storage_options=options
    ) as batch:
        job = batch.submit(whoami, workers=0)
        # The scheduler has not started yet: nothing has run.
        assert job.status().state is JobState.PENDING
        facts = job.result(timeout=60)
        assert facts["ppid"] == facts["scheduler_pid"]
        assert job.status().mode == "server"
        batch.gateway.close()


def test_cluster_options_never_carry_storage_credentials(
    batch_gateway, batch_s3_storage
):
    url, options = batch_s3_storage
    gateway = batch_gateway.gateway()
    with BatchClient(gateway=gateway, storage=url, storage_options=options) as batch:
        job = batch.submit(whoami, workers=0)
        job.result(timeout=60)
        report = gateway.get_cluster(job.status().cluster_name)
        assert report.options["batch_job_id"] == job.id
        assert report.options["batch_storage"] == url
        assert options["secret"] not in repr(report.options)
    gateway.close()


def test_client_mode_can_be_forced_on_a_server_side_gateway(batch_gateway, tmp_path):
    gateway = batch_gateway.gateway()
    with BatchClient(gateway=gateway, storage=str(tmp_path), mode="client") as batch:
        job = batch.submit(whoami, workers=0)
        job.result(timeout=60)
        assert job.status().mode == "client"
    gateway.close()


def env_digest(name):
    import hashlib
    import os

    return hashlib.sha256(os.environ[name].encode()).hexdigest()


def test_client_side_env_values_travel_over_tls_only(plain_client, batch_s3_storage):
    import hashlib

    secret = "tls-only-" + os.urandom(8).hex()
    job = plain_client.submit(env_digest, "TOKEN", env={"TOKEN": secret}, workers=0)
    assert job.result(timeout=60) == hashlib.sha256(secret.encode()).hexdigest()
    # The runner's last writes (the job catalog: a pack replaced, the live
    # marker removed) come before its cluster stops: read a settled store.
    name = job.status().cluster_name
    wait_for(
        lambda: cluster_status(plain_client, name) in (ClusterStatus.STOPPED, None),
        60,
        f"the cluster of job {job.id} to stop",
    )
    url, options = batch_s3_storage
    fs = s3fs.S3FileSystem(**options)
    for path in fs.find(url):
        assert secret.encode() not in fs.cat_file(path), path


def large_array(megabytes):
    import numpy as np

    return np.arange(megabytes * 2**20 // 8, dtype="f8")


def test_a_large_array_result_streams_through_s3_with_its_digest(plain_client):
    import numpy as np

    job = plain_client.submit(large_array, 110, workers=0)  # three S3 parts
    back = job.result(timeout=120)
    np.testing.assert_array_equal(back, large_array(110))
    assert job.status().result_digest.startswith("blake3:")


def test_a_runner_that_cannot_start_fails_the_job_and_stops_its_cluster(
    plain_client, monkeypatch
):
    from dask_batch.runtime.plugin import JobRunnerPlugin

    # The scheduler gets a runner whose storage it cannot open: its start()
    # raises there, on the scheduler, and the error comes back to submit.
    real_getstate = JobRunnerPlugin.__getstate__

    def unusable_storage(self):
        return {**real_getstate(self), "storage_url": "no-such-protocol://jobs"}

    monkeypatch.setattr(JobRunnerPlugin, "__getstate__", unusable_storage)
    before = {c.name for c in plain_client.gateway.list_clusters()}
    with pytest.raises(DaskBatchError, match="could not start the job runner") as err:
        plain_client.submit(abs, -1, workers=0)
    job_id = err.value.job_id
    record = plain_client.status(job_id)
    assert record.state is JobState.FAILED
    assert "no-such-protocol" in record.message
    assert {c.name for c in plain_client.gateway.list_clusters()} == before
