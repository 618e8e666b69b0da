"""Jobs that wait for other jobs, on a real local gateway."""

from __future__ import annotations

import os

import pytest

from dask_batch import JobCancelledError, JobState, SubmitError
from dask_batch.testing import gateway_clusters


def add(a, b):
    return a + b


def pair(a, b):
    return (a, b)


def wait_for_file(path):
    import time

    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "released"


def broken():
    raise RuntimeError("upstream broke")


def test_a_chain_of_three_jobs_passes_results_along(batch_client, tmp_path):
    gate = tmp_path / "go"
    before = gateway_clusters(batch_client.gateway)
    first = batch_client.submit(wait_for_file, str(gate), workers=0)
    second = batch_client.submit(add, first, "!", workers=0)
    third = batch_client.submit(pair, second, {"again": second}, after=[first])
    for job in (second, third):
        record = batch_client.status(job.id)
        assert record.state is JobState.PENDING
        assert record.message.startswith("waiting for ")
        assert record.cluster_name is None
    assert first.id in batch_client.status(second.id).message
    assert batch_client.status(third.id).after == [first.id, second.id]
    # No cluster is started while a job waits: only the first job's exists.
    assert len(gateway_clusters(batch_client.gateway) - before) == 1
    gate.touch()
    # Waiting for the last link starts the ones before it too.
    assert third.result(timeout=240) == ("released!", {"again": "released!"})
    assert second.status().released is not None
    assert len(gateway_clusters(batch_client.gateway) - before) == 3


def test_a_broken_upstream_cancels_its_dependant_with_the_reason(batch_client):
    before = gateway_clusters(batch_client.gateway)
    upstream = batch_client.submit(broken, workers=0)
    dependant = batch_client.submit(add, upstream, 1, workers=0)
    below = batch_client.submit(add, 1, 2, after=[dependant], workers=0)
    with pytest.raises(JobCancelledError, match=f"upstream job {upstream.id} FAILED"):
        dependant.result(timeout=240)
    record = batch_client.wait(below.id, timeout=60)
    assert record.state is JobState.CANCELLED
    assert f"upstream job {dependant.id} CANCELLED" in record.message
    # Neither ever had a cluster.
    assert len(gateway_clusters(batch_client.gateway) - before) == 1


def test_after_refuses_what_is_not_a_job(batch_client):
    with pytest.raises(SubmitError, match="after= takes Jobs or job ids"):
        batch_client.submit(add, 1, 2, after=["../../etc"])
    assert batch_client.jobs() == []


def test_a_cycle_planted_in_storage_only_keeps_both_waiting(batch_client, tmp_path):
    import json

    gate = tmp_path / "never"
    first = batch_client.submit(wait_for_file, str(gate), workers=0)
    second = batch_client.submit(add, 1, 2, after=[first], workers=0)
    third = batch_client.submit(add, 3, 4, after=[second], workers=0)
    # Someone who can write the storage makes the second wait for the third.
    path = batch_client.store.job_path(batch_client.user, second.id, "spec.json")
    with open(path) as f:
        spec = json.load(f)
    spec["after"] = [third.id, "../../elsewhere"]
    with open(path, "w") as f:
        json.dump(spec, f)
    assert batch_client.status(second.id).after == [third.id]  # no path escapes
    with pytest.raises(TimeoutError, match="still PENDING"):
        batch_client.wait(third.id, timeout=2)
    assert batch_client.status(third.id).message.startswith("waiting for")
    batch_client.cancel(first.id)
    batch_client.cancel(second.id)
    record = batch_client.wait(third.id, timeout=60)
    assert record.state is JobState.CANCELLED
    assert f"upstream job {second.id} CANCELLED" in record.message


def test_a_waiting_job_starts_after_the_gateway_restarted_and_forgot_everything(
    tmp_path, monkeypatch
):
    import dask_batch.local
    from dask_batch import BatchClient
    from dask_batch.storage.store import JobStore
    from dask_batch.testing import _start_gateway, wait_for

    # The keeper sweeps when its gateway starts, and then not for an hour:
    # only the restarted gateway's first sweep can start the waiting job.
    monkeypatch.setenv("DASK_BATCH__LOCAL__KEEPER_INTERVAL", "1h")
    directory = tmp_path / "local"
    info = _start_gateway(str(directory))
    gate = tmp_path / "gate"
    try:
        with BatchClient(gateway=info.gateway(), storage=info.storage) as batch:
            upstream = batch.submit(wait_for_file, str(gate), workers=0)
            waiting = batch.submit(pair, upstream, "b", workers=0)
            user = batch.user
            batch.gateway.close()
        store = JobStore(info.storage)
        gate.touch()
        wait_for(
            lambda: store.read_record(user, upstream.id).state is JobState.SUCCEEDED,
            120,
            "the upstream job to succeed",
        )
        assert store.read_record(user, waiting.id).state is JobState.PENDING
        dask_batch.local.stop(str(directory))
        # A gateway that remembers no cluster: its database is gone.
        os.remove(directory / "gateway.sqlite")
        info = _start_gateway(str(directory))
        record = wait_for(
            lambda: (r := store.read_record(user, waiting.id)).state.is_terminal and r,
            120,
            "the restarted gateway's keeper to start the waiting job",
        )
        assert record.state is JobState.SUCCEEDED and record.released is not None
        with BatchClient(gateway=info.gateway(), storage=info.storage) as batch:
            assert batch.result(waiting.id) == ("released", "b")
            batch.gateway.close()
    finally:
        dask_batch.local.stop(str(directory))
