"""The listing index: terminal records packed for listing, records stay the truth."""

from __future__ import annotations

import logging
import os
import pathlib

import pytest

from dask_batch import BatchClient, JobState
from dask_batch._listing import MAX_INDEX_PACKS as _MAX_INDEX_PACKS
from dask_batch._store import STATE
from dask_batch.testing import wait_for, write_job_records


def packs(batch):
    store = batch.store
    try:
        return store.fs.ls(store.index_path(batch.user), detail=False)
    except FileNotFoundError:
        return []


@pytest.fixture(params=["local", "s3"])
def any_batch(request, batch_gateway, tmp_path):
    if request.param == "local":
        storage, options = str(tmp_path / "jobs"), {}
    else:
        storage, options = request.getfixturevalue("batch_s3_storage")
    gateway = batch_gateway.gateway()
    with BatchClient(gateway=gateway, storage=storage, storage_options=options) as b:
        yield b
    gateway.close()


def test_a_listing_packs_finished_jobs_and_later_listings_read_the_pack(any_batch):
    batch = any_batch
    ids = write_job_records(batch.store, batch.user, 40)
    first = batch.jobs()
    assert [r.id for r in first] == ids[::-1]
    assert len(packs(batch)) == 1
    # From now on the pack answers: the per-job state objects are not read.
    for job_id in ids:
        batch.store.fs.rm_file(batch.store.job_path(batch.user, job_id, STATE))
    second = batch.jobs()
    assert [r.to_dict() for r in second] == [r.to_dict() for r in first]
    assert len(batch.jobs(state="FAILED")) == 4
    assert [r.id for r in batch.jobs(name="job-3", limit=2)] == [ids[38], ids[31]]
    assert len(packs(batch)) == 1  # nothing new to pack


def sleep_until_exists(path):
    import time

    while not os.path.exists(path):
        time.sleep(0.05)
    return "done"


def test_the_runner_packs_its_job_when_it_ends_and_cancel_packs_too(
    batch_client, tmp_path
):
    go = tmp_path / "go"
    job = batch_client.submit(sleep_until_exists, str(go), workers=0)
    cancelled = batch_client.submit(sleep_until_exists, str(go), workers=0)
    wait_for(
        lambda: batch_client.status(job.id).state is JobState.RUNNING, 60, "RUNNING"
    )
    assert JobState.RUNNING in [r.state for r in batch_client.jobs()]
    assert packs(batch_client) == []  # a live job is never packed
    batch_client.cancel(cancelled.id)
    go.touch()
    assert job.result(timeout=60) == "done"
    store = batch_client.store
    entries, _ = store.read_index(batch_client.user)
    assert set(entries) == {job.id, cancelled.id}
    # Packed as the record reads, so listings need not read the record.
    for j in (job, cancelled):
        store.fs.rm_file(store.job_path(batch_client.user, j.id, STATE))
    listed = {r.id: r.to_dict() for r in batch_client.jobs()}
    assert listed == {j.id: j.status().to_dict() for j in (job, cancelled)}
    assert listed[cancelled.id]["state"] == "CANCELLED"


def test_a_damaged_pack_is_ignored_with_a_warning(batch_client, caplog):
    ids = write_job_records(batch_client.store, batch_client.user, 10)
    batch_client.jobs()
    [pack] = packs(batch_client)
    pathlib.Path(pack).write_bytes(b"not gzip")
    with caplog.at_level(logging.WARNING, logger="dask_batch.store"):
        listed = batch_client.jobs()
    assert [r.id for r in listed] == ids[::-1]
    assert "Ignoring damaged job index pack" in caplog.text
    assert len(packs(batch_client)) == 2  # the records, packed again


def test_packs_are_merged_and_forget_deleted_jobs(batch_client):
    store, user = batch_client.store, batch_client.user
    ids = []
    for _ in range(_MAX_INDEX_PACKS):
        ids += write_job_records(store, user, 3)
        batch_client.jobs()
    assert len(packs(batch_client)) == _MAX_INDEX_PACKS
    store.fs.rm(store.job_path(user, ids[0]), recursive=True)
    ids += write_job_records(store, user, 3)
    listed = batch_client.jobs()
    [merged] = packs(batch_client)
    assert sorted(r.id for r in listed) == sorted(ids[1:])
    # The merged pack alone answers, without the deleted job.
    for job_id in ids[1:]:
        store.fs.rm_file(store.job_path(user, job_id, STATE))
    assert [r.to_dict() for r in batch_client.jobs()] == [r.to_dict() for r in listed]
    assert os.path.basename(merged).startswith(f"{max(ids)}-{len(ids) - 1}-")


def test_packs_left_by_runners_are_merged_by_a_listing_with_nothing_new(batch_client):
    from dask_batch._index import SMALL_PACK

    store, user = batch_client.store, batch_client.user
    count = SMALL_PACK * _MAX_INDEX_PACKS + 1  # one more pack than allowed
    ids = write_job_records(store, user, count, indexed=True)
    assert len(packs(batch_client)) == _MAX_INDEX_PACKS + 1
    assert len(batch_client.jobs()) == count
    [merged] = packs(batch_client)
    assert os.path.basename(merged).startswith(f"{ids[-1]}-{count}-")


def test_a_merge_that_keeps_no_job_removes_the_packs(batch_client):
    from dask_batch._index import SMALL_PACK

    store, user = batch_client.store, batch_client.user
    ids = write_job_records(
        store, user, SMALL_PACK * _MAX_INDEX_PACKS + 1, indexed=True
    )
    for job_id in ids:  # the jobs are deleted by hand; their packs stay
        store.fs.rm(store.job_path(user, job_id), recursive=True)
    assert batch_client.jobs() == []
    assert packs(batch_client) == []
