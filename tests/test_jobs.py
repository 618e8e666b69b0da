"""Batch jobs end to end on a real local gateway (server-side mode)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest
from dask_gateway.client import ClusterStatus

from dask_batch import (
    BatchClient,
    JobFailedError,
    JobNotFoundError,
    JobRecord,
    JobState,
    SubmitError,
)
from dask_batch.testing import wait_for


def add(a, b=0):
    return a + b


def where_am_i():
    import distributed

    client = distributed.get_client()
    worker_pids = client.run(os.getpid)
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "scheduler_pid": client.run_on_scheduler(os.getpid),
        "worker_pids": sorted(worker_pids.values()),
    }


def compute_on_workers():
    import dask
    import dask.bag as db
    import distributed
    import joblib

    client = distributed.get_client()
    client.wait_for_workers(1)
    bag_total = dask.compute(db.from_sequence(range(10), npartitions=5).sum())[0]
    with joblib.parallel_backend("dask"):
        squares = joblib.Parallel()(joblib.delayed(pow)(i, 2) for i in range(5))
    seen = client.run(lambda dask_worker: len(dask_worker.data) >= 0)
    return {"bag": bag_total, "joblib": squares, "workers": len(seen)}


def noisy_failure():
    print("starting the failing job")
    print("to stderr", file=sys.stderr)
    raise ValueError("bad learning rate")


def hard_exit():
    print("about to exit", flush=True)
    os._exit(3)


def test_submit_returns_job_and_result_is_main_value(batch_client):
    job = batch_client.submit(add, 40, b=2, name="adder", workers=0)
    assert job.result(timeout=60) == 42
    record = job.status()
    assert isinstance(record, JobRecord)
    assert record.state is JobState.SUCCEEDED
    assert record.name == "adder"
    assert record.mode == "server"
    assert record.started is not None and record.finished >= record.started


def test_main_runs_in_a_child_of_the_scheduler_not_on_a_worker(batch_client):
    facts = batch_client.submit(where_am_i, workers=1).result(timeout=60)
    assert facts["ppid"] == facts["scheduler_pid"]
    assert facts["pid"] != facts["scheduler_pid"]
    assert facts["pid"] not in facts["worker_pids"]


def test_main_uses_its_cluster_as_default_client(batch_client):
    out = batch_client.submit(compute_on_workers, workers=1).result(timeout=90)
    assert out == {"bag": 45, "joblib": [0, 1, 4, 9, 16], "workers": 1}


def test_cluster_is_stopped_not_failed_when_main_finishes(batch_client):
    job = batch_client.submit(add, 1, workers=0)
    job.result(timeout=60)
    cluster_name = job.status().cluster_name
    report = wait_for(
        lambda: (
            batch_client.gateway.get_cluster(cluster_name).status
            in (ClusterStatus.STOPPED, ClusterStatus.FAILED)
            and batch_client.gateway.get_cluster(cluster_name)
        ),
        15,
        "the job's cluster to stop",
    )
    assert report.status is ClusterStatus.STOPPED


def test_failed_main_raises_with_remote_traceback_and_logs(batch_client):
    job = batch_client.submit(noisy_failure, workers=0)
    with pytest.raises(JobFailedError) as info:
        job.result(timeout=60)
    err = info.value
    assert err.job_id == job.id
    assert err.remote_type == "builtins.ValueError"
    assert err.remote_message == "bad learning rate"
    assert "noisy_failure" in err.remote_traceback
    assert job.id in str(err)
    assert job.status().state is JobState.FAILED
    logs = job.logs()
    assert "starting the failing job" in logs
    assert "to stderr" in logs


def test_main_calling_os_exit_fails_with_its_exit_code(batch_client):
    job = batch_client.submit(hard_exit, workers=0)
    with pytest.raises(JobFailedError, match="exited with code 3") as info:
        job.result(timeout=60)
    assert info.value.remote_type == "ProcessExit"
    assert "about to exit" in info.value.log_tail


def test_logs_remain_after_the_cluster_is_gone(batch_client):
    def chatty():
        for i in range(3):
            print(f"line {i}")
        return "done"

    job = batch_client.submit(chatty, workers=0)
    assert job.result(timeout=60) == "done"
    wait_for(
        lambda: (
            batch_client.gateway.get_cluster(job.status().cluster_name).status
            is ClusterStatus.STOPPED
        ),
        15,
        "the job's cluster to stop",
    )
    logs = job.logs()
    assert all(f"line {i}" in logs for i in range(3)), logs


def test_jobs_lists_newest_first_with_filters(batch_client):
    first = batch_client.submit(add, 1, name="one", workers=0)
    second = batch_client.submit(noisy_failure, name="two", workers=0)
    first.result(timeout=60)
    with pytest.raises(JobFailedError):
        second.result(timeout=60)
    assert [r.id for r in batch_client.jobs()] == [second.id, first.id]
    assert [r.id for r in batch_client.jobs(state="FAILED")] == [second.id]
    assert [r.id for r in batch_client.jobs(name="one")] == [first.id]
    assert [r.id for r in batch_client.jobs(limit=1)] == [second.id]
    assert batch_client.jobs(since="1h") and not batch_client.jobs(until="1h")
    # Labels are filed with a job and kept in listings; a page goes on
    # before the last job of the one before.
    third = batch_client.submit(
        add, 2, name="three", workers=0, labels={"team": "ocean"}
    )
    third.result(timeout=60)
    assert batch_client.status(third.id).labels == {"team": "ocean"}
    listed = batch_client.jobs(limit=1)
    assert listed[0].labels == {"team": "ocean"}
    assert [r.id for r in batch_client.jobs(before=third.id)] == [second.id, first.id]
    assert [r.id for r in batch_client.jobs(kind="function", limit=2)] == [
        third.id,
        second.id,
    ]
    service = batch_client.service
    labelled = batch_client.sync(service.jobs, labels={"team": "ocean"})
    assert [r.id for r in labelled] == [third.id]
    # Deleting a job removes it from storage and from every listing.
    batch_client.sync(service.delete, first.id)
    assert [r.id for r in batch_client.jobs()] == [third.id, second.id]
    assert [r.id for r in batch_client.jobs(limit=5)] == [third.id, second.id]
    with pytest.raises(JobNotFoundError, match=first.id):
        batch_client.status(first.id)


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"": "x"}, "label ''"),
        ({"../x": "y"}, "label '../x'"),
        ({"k": 3}, "its value must be text"),
        ({"k": "v" * 5000}, "at most 4096"),
        ({f"k{i}": "v" * 4000 for i in range(5)}, "16 KiB"),
        (["k=v"], "dict of texts"),
    ],
)
def test_bad_labels_are_refused_before_anything_is_stored(
    batch_client, labels, expected
):
    with pytest.raises(SubmitError, match=expected) as info:
        batch_client.submit(add, 1, workers=0, labels=labels)
    assert info.value.job_id in str(info.value)
    assert batch_client.jobs() == []


SUBMIT_AND_DIE = textwrap.dedent(
    """
    import os, signal, sys
    from dask_batch import BatchClient
    from dask_batch.local import status

    def main(x):
        import time
        time.sleep(1)
        return x * 2

    info = status(sys.argv[1])
    batch = BatchClient(gateway=info.gateway(), storage=sys.argv[2])
    job = batch.submit(main, 21, workers=0)
    print(job.id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_submitter_killed_right_after_submit_result_still_arrives(
    batch_gateway, tmp_path
):
    storage = str(tmp_path / "jobs")
    proc = subprocess.run(
        [sys.executable, "-c", SUBMIT_AND_DIE, batch_gateway.directory, storage],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr
    job_id = proc.stdout.strip()
    # A different process, knowing only the gateway, the storage and the id.
    fetch = textwrap.dedent(
        """
        import sys
        from dask_batch import BatchClient
        from dask_batch.local import status

        gateway = status(sys.argv[1]).gateway()
        batch = BatchClient(gateway=gateway, storage=sys.argv[2])
        print(batch.result(sys.argv[3], timeout=60))
        gateway.close()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", fetch, batch_gateway.directory, storage, job_id],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "42", out.stderr


def test_asynchronous_api(batch_gateway, tmp_path):
    async def run():
        async with batch_gateway.gateway(asynchronous=True) as gateway:
            batch = BatchClient(gateway=gateway, storage=str(tmp_path / "jobs"))
            job = await batch.submit(add, 2, b=3, workers=0)
            assert await job.result(timeout=60) == 5
            assert (await job.status()).state is JobState.SUCCEEDED
            assert [r.id for r in await batch.jobs()] == [job.id]

    asyncio.run(run())


def test_the_job_service_acts_for_one_user_with_public_names_only(
    batch_gateway, tmp_path
):
    from dask_batch import DaskBatchError, JobService, SubmitOptions
    from dask_batch.client.submission import function_target
    from dask_batch.core.records import new_job_id
    from dask_batch.storage.store import JobStore

    async def run():
        async with batch_gateway.gateway(asynchronous=True) as gateway:
            service = JobService(gateway, JobStore(str(tmp_path / "jobs")), "auto")
            job_id = new_job_id()
            target = function_target(job_id, add, (4,), {"b": 5})
            with pytest.raises(DaskBatchError, match="identify"):
                service.submission(job_id, target, SubmitOptions(workers=0))
            assert await service.identify() == batch_gateway.username
            submitted = await service.submit_target(
                job_id, target, SubmitOptions(workers=0)
            )
            assert submitted == job_id
            assert await service.result(job_id, timeout=60) == 9
            assert (await service.status(job_id)).state is JobState.SUCCEEDED
            assert [r.id for r in await service.jobs()] == [job_id]
            assert await service.artifacts(job_id) == {}
            assert await service.schedules() == []

    asyncio.run(run())


def test_asynchronous_close_is_awaitable_and_closes_the_owned_gateway(
    batch_gateway, tmp_path, monkeypatch
):
    import dask

    for key, value in batch_gateway.environment().items():
        monkeypatch.setenv(key, value)
    dask.config.refresh()

    async def run():
        batch = BatchClient(storage=str(tmp_path / "jobs"), asynchronous=True)
        assert await batch.jobs() == []
        await batch.gateway.list_clusters()  # opens its HTTP session
        assert batch.gateway._session is not None
        await batch.close()
        assert batch.gateway._session is None
        await batch.close()  # twice is harmless

    try:
        asyncio.run(run())
    finally:
        monkeypatch.undo()
        dask.config.refresh()
