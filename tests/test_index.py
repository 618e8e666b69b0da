"""The job catalog: live markers and packs of ended jobs; records stay the truth."""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import os
import pathlib

import pytest

from dask_batch import BatchClient, JobState
from dask_batch.client.listing import MAX_INDEX_PACKS as _MAX_INDEX_PACKS
from dask_batch.core.records import new_job_id
from dask_batch.storage.catalog import (
    CATALOG,
    LARGE_PACK,
    LIVE_PREFIX,
    SMALL_PACK,
    parse_pack,
)
from dask_batch.storage.store import STATE
from dask_batch.testing import wait_for, write_job_records


def index_names(batch):
    store = batch.store
    try:
        names = store.fs.ls(store.index_path(batch.user), detail=False)
    except FileNotFoundError:
        return []
    return sorted(os.path.basename(n.rstrip("/")) for n in names)


def packs(batch):
    return [n for n in index_names(batch) if n.endswith(".json.gz")]


def live_markers(batch):
    return {n[len(LIVE_PREFIX) :] for n in index_names(batch) if n.startswith("live-")}


def drop_states(batch, ids):
    """Remove the per-job state objects: only the index can answer now."""
    for job_id in ids:
        batch.store.fs.rm_file(batch.store.job_path(batch.user, job_id, STATE))


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
    assert CATALOG in index_names(batch)  # the first full listing completed it
    drop_states(batch, ids)
    second = batch.jobs()
    assert [r.to_dict() for r in second] == [r.to_dict() for r in first]
    assert len(batch.jobs(state="FAILED")) == 4
    assert [r.id for r in batch.jobs(name="job-3", limit=2)] == [ids[38], ids[31]]
    assert [r.id for r in batch.jobs(limit=3)] == ids[:-4:-1]
    assert len(packs(batch)) == 1  # nothing new to pack


def sleep_until_exists(path):
    import time

    while not os.path.exists(path):
        time.sleep(0.05)
    return "done"


def wait_until_packed(batch_client, ids):
    """The jobs' runners fold them into the catalog just after storing their
    final state, which is what result() sees first."""
    store, user = batch_client.store, batch_client.user
    wait_for(
        lambda: (
            set(ids) <= set(store.read_index(user))
            and not set(ids) & live_markers(batch_client)
        ),
        60,
        f"jobs {sorted(ids)} to be packed and their live markers to go",
    )


def test_the_runner_packs_its_job_when_it_ends_and_cancel_packs_too(
    batch_client, tmp_path
):
    go = tmp_path / "go"
    job = batch_client.submit(sleep_until_exists, str(go), workers=0)
    cancelled = batch_client.submit(sleep_until_exists, str(go), workers=0)
    assert live_markers(batch_client) == {job.id, cancelled.id}
    wait_for(
        lambda: batch_client.status(job.id).state is JobState.RUNNING, 60, "RUNNING"
    )
    assert JobState.RUNNING in [r.state for r in batch_client.jobs(limit=5)]
    assert packs(batch_client) == []  # a live job is never packed
    batch_client.cancel(cancelled.id)
    go.touch()
    assert job.result(timeout=60) == "done"
    store = batch_client.store
    wait_until_packed(batch_client, {job.id, cancelled.id})
    assert set(store.read_index(batch_client.user)) == {job.id, cancelled.id}
    assert live_markers(batch_client) == set()
    # Packed as the record reads, so listings need not read the record.
    drop_states(batch_client, [job.id, cancelled.id])
    for listed in (batch_client.jobs(), batch_client.jobs(limit=5, since="1h")):
        by_id = {r.id: r.to_dict() for r in listed}
        assert by_id == {j.id: j.status().to_dict() for j in (job, cancelled)}
        assert by_id[cancelled.id]["state"] == "CANCELLED"


def test_a_damaged_pack_is_ignored_with_a_warning_and_replaced(batch_client, caplog):
    ids = write_job_records(batch_client.store, batch_client.user, 10)
    batch_client.jobs()
    [pack] = packs(batch_client)
    index = pathlib.Path(batch_client.store.index_path(batch_client.user))
    for listing in (batch_client.jobs, lambda: batch_client.jobs(limit=50)):
        (index / pack).write_bytes(b"not gzip")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dask_batch.store"):
            listed = listing()
        assert [r.id for r in listed] == ids[::-1]
        assert "Ignoring damaged job index pack" in caplog.text
        # Its jobs were read one by one and packed again; it is gone.
        [pack] = packs(batch_client)
        assert batch_client.store.read_index(batch_client.user).keys() == set(ids)


def test_small_packs_left_by_runners_are_merged_by_a_windowed_listing(batch_client):
    store, user = batch_client.store, batch_client.user
    count = SMALL_PACK * _MAX_INDEX_PACKS + 1  # one more pack than allowed
    assert count == 2 * LARGE_PACK + 1
    ids = write_job_records(store, user, count, indexed=True, pack_size=SMALL_PACK)
    assert len(packs(batch_client)) == _MAX_INDEX_PACKS + 1
    assert [r.id for r in batch_client.jobs(limit=50)] == ids[:-51:-1]
    merged = sorted(
        (parse_pack(n) for n in packs(batch_client)), key=lambda p: p.oldest
    )
    # Cut by id into packs that merges leave alone, and the newest remainder.
    assert [p.count for p in merged] == [LARGE_PACK, LARGE_PACK, 1]
    assert (merged[0].oldest, merged[-1].newest) == (ids[0], ids[-1])
    assert all(a.newest < b.oldest for a, b in itertools.pairwise(merged))


def test_jobs_deleted_by_hand_leave_listings_and_packs(batch_client):
    store, user = batch_client.store, batch_client.user
    ids = write_job_records(store, user, 20, indexed=True)
    for job_id in (ids[0], ids[-1]):
        store.fs.rm(store.job_path(user, job_id), recursive=True)
    # A full listing reads every prefix, and rewrites the pack without them.
    assert [r.id for r in batch_client.jobs()] == ids[-2:0:-1]
    assert store.read_index(user).keys() == set(ids[1:-1])
    assert [r.id for r in batch_client.jobs(limit=5)] == ids[-2:-7:-1]
    for job_id in ids[1:-1]:
        store.fs.rm(store.job_path(user, job_id), recursive=True)
    assert batch_client.jobs() == []
    assert packs(batch_client) == []


def test_a_window_reads_only_the_packs_that_can_hold_its_jobs(
    batch_client, caplog, monkeypatch
):
    store, user = batch_client.store, batch_client.user
    monkeypatch.setattr("dask_batch.client.listing.LARGE_PACK", 20)  # none to merge
    ids = write_job_records(store, user, 300, days=30, indexed=True, pack_size=20)
    names = sorted(packs(batch_client), key=lambda n: parse_pack(n).newest)
    assert len(names) == 15
    index = pathlib.Path(store.index_path(user))
    for name in names[:10]:  # the packs of the oldest 20 days are unreadable
        (index / name).write_bytes(b"not gzip")
    with caplog.at_level(logging.WARNING, logger="dask_batch.store"):
        assert [r.id for r in batch_client.jobs(limit=50)] == ids[:-51:-1]
        recent = batch_client.jobs(since="5d")
        assert caplog.text == ""  # the damaged packs were never read
        # Five days of jobs 2.4 h apart: the newest 50, give or take one.
        assert [r.id for r in recent] == ids[::-1][: len(recent)]
        assert 49 <= len(recent) <= 51
        # A window that reaches them reads them, and falls back on the records.
        older = batch_client.jobs(since="25d")
        assert [r.id for r in older] == ids[::-1][: len(older)]
        assert 249 <= len(older) <= 251
    assert "Ignoring damaged job index pack" in caplog.text


def test_a_store_from_before_the_catalog_is_migrated_by_its_first_listing(
    batch_client, tmp_path
):
    from dask_batch.storage.catalog import index_entry

    store, user = batch_client.store, batch_client.user
    old = write_job_records(store, user, 30)
    # Ten of them in a pack of the first layout, as earlier versions named it.
    entries = [index_entry(store.read_record(user, i)) for i in old[:10]]
    document = gzip.compress(json.dumps({"version": 1, "jobs": entries}).encode())
    store.backend.put_whole(
        store.index_path(user, f"{old[9]}-10-0123abcd.json.gz"), document
    )
    go = tmp_path / "go"
    live = batch_client.submit(sleep_until_exists, str(go), workers=0)
    try:
        # An earlier client kept no catalog: no marker, no catalog.json.
        store.forget_live(user, [live.id])
        assert CATALOG not in index_names(batch_client)
        expected = [live.id, *old[::-1]]
        assert [r.id for r in batch_client.jobs(limit=50)] == expected
        assert CATALOG in index_names(batch_client)
        assert live_markers(batch_client) == {live.id}
        assert all(parse_pack(n).oldest for n in packs(batch_client))
        # From now on the catalog answers windowed listings.
        drop_states(batch_client, old)
        assert [r.id for r in batch_client.jobs(limit=50)] == expected
        assert [r.id for r in batch_client.jobs(since="1h")] == [live.id]
    finally:
        go.touch()
    assert live.result(timeout=60) == "done"
    wait_until_packed(batch_client, {live.id})
    assert live_markers(batch_client) == set()


def test_planted_catalog_names_never_list_a_job(batch_client):
    from dask_batch.storage.catalog import index_entry

    store, user = batch_client.store, batch_client.user
    ids = write_job_records(store, user, 5, indexed=True)
    index = pathlib.Path(store.index_path(user))
    nobody = new_job_id()
    planted = (
        f"{LIVE_PREFIX}{nobody}",
        "live-..",
        "pack-x-1-a.json.gz",
        f"pack-{ids[0]}-{ids[0]}-\u00b2-a.json.gz",  # a digit to isdigit(), not int()
    )
    for name in planted:
        (index / name).write_bytes(b"")
    # A pack whose name claims one job, holding another with a forged state.
    forged = index_entry(store.read_record(user, ids[4]))
    forged["state"] = "FAILED" if forged["state"] == "SUCCEEDED" else "SUCCEEDED"
    document = gzip.compress(json.dumps({"version": 1, "jobs": [forged]}).encode())
    (index / f"pack-{ids[0]}-{ids[0]}-1-00000000.json.gz").write_bytes(document)
    true = {r.id: r.state for r in batch_client.jobs()}
    listed = batch_client.jobs(limit=50)
    assert [r.id for r in listed] == ids[::-1]
    assert {r.id: r.state for r in listed} == true
    assert nobody not in live_markers(batch_client)  # the stale marker went


def test_a_forged_pack_entry_never_hides_a_live_job_from_the_service(
    batch_client, tmp_path
):
    import asyncio

    from dask_batch.client.reconcile import live_records
    from dask_batch.storage.catalog import index_entry

    store, user = batch_client.store, batch_client.user
    go = tmp_path / "go"
    job = batch_client.submit(sleep_until_exists, str(go), workers=0)
    try:
        wait_for(lambda: job.status().state is JobState.RUNNING, 60, "RUNNING")
        # Someone who can write the folder claims the job ended.
        forged = index_entry(job.status())
        forged["state"] = "SUCCEEDED"
        document = gzip.compress(json.dumps({"version": 1, "jobs": [forged]}).encode())
        name = f"pack-{job.id}-{job.id}-1-00000000.json.gz"
        store.backend.put_whole(store.index_path(user, name), document)
        batch_client.jobs(limit=10)
        batch_client.jobs()
        # Its record says RUNNING: the marker stays, and the service's sweep
        # (which reads the marked jobs) still checks it.
        assert job.id in live_markers(batch_client)
        swept = asyncio.run(live_records(store, user))
        assert [r.id for r in swept] == [job.id]
    finally:
        go.touch()
    assert job.result(timeout=60) == "done"
    wait_until_packed(batch_client, {job.id})
    assert live_markers(batch_client) == set()


# -- the head: on S3 a listing reads one object instead of LISTing the folder --
@pytest.fixture
def s3_store(batch_s3_storage):
    from dask_batch.storage.store import JobStore

    storage, options = batch_s3_storage
    return JobStore(storage, options)


def count_lists(monkeypatch, store):
    """A list that grows by one path per LIST the store makes."""
    made = []
    names = store.backend.names

    def counting(path):
        made.append(path)
        return names(path)

    monkeypatch.setattr(store.backend, "names", counting)
    return made


def read_head(store, user):
    from dask_batch.storage.catalog_head import HEAD

    return json.loads(store.fs.cat_file(store.index_path(user, HEAD)))


def test_on_s3_a_windowed_listing_reads_the_head_and_lists_nothing(
    any_batch, monkeypatch
):
    batch = any_batch
    store, user = batch.store, batch.user
    ids = write_job_records(store, user, 30, indexed=True, pack_size=10)
    batch.jobs(limit=5)  # the first listing LISTs, then publishes the head
    made = count_lists(monkeypatch, store)
    listed = [r.id for r in batch.jobs(limit=12)]
    assert listed == ids[:-13:-1]
    if store.backend.tagged_writes:
        assert made == []
        head = read_head(store, user)
        assert head["complete"] is True
        assert sorted(head["packs"]) == packs(batch)
    else:  # local folders are listed: a directory read is cheap and flat
        assert made == [store.index_path(user)]


def test_the_head_follows_submissions_endings_and_merges(batch_gateway, s3_store):
    store, user = s3_store, "alice"
    ids = write_job_records(store, user, 3, indexed=True)
    store.catalog(user)  # publishes the head
    live = write_job_records(store, user, 2)  # records only: these stay live
    for job_id in live:
        store.mark_live(user, job_id)
    assert set(read_head(store, user)["live"]) == set(live)
    store.add_to_index(user, store.read_record(user, live[0]))
    head = read_head(store, user)
    assert head["live"] == [live[1]]
    assert sorted(head["packs"]) == sorted(
        os.path.basename(p.path) for p in store._listed_catalog(user).packs
    )
    catalog = store.catalog(user)
    assert catalog.complete and catalog.live == {live[1]}
    assert set(store.read_index(user, catalog.packs)) == {*ids, live[0]}


def test_writers_racing_for_the_head_lose_no_change(s3_store):
    from concurrent.futures import ThreadPoolExecutor

    store, user = s3_store, "alice"
    write_job_records(store, user, 1, indexed=True)
    store.catalog(user)
    ids = [new_job_id() for _ in range(24)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.mark_live(user, i), ids))
    # A writer that lost too often removes the head (listings then LIST):
    # either way, no change is lost, and the head is published again.
    assert store.catalog(user).live == set(ids)
    assert set(read_head(store, user)["live"]) == set(ids)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.forget_live(user, [i]), ids[:12]))
    assert store.catalog(user).live == set(ids[12:])
    assert set(read_head(store, user)["live"]) == set(ids[12:])


def test_a_head_changed_during_a_listing_is_not_overwritten(s3_store, monkeypatch):
    from dask_batch.storage.catalog import ListingIndex

    store, user = s3_store, "alice"
    write_job_records(store, user, 2, indexed=True)
    submitted = new_job_id()
    listed_catalog = ListingIndex._listed_catalog

    def list_while_a_job_is_submitted(self, who):
        found = listed_catalog(self, who)
        store.mark_live(user, submitted)  # after the LIST: not in `found`
        return found

    monkeypatch.setattr(ListingIndex, "_listed_catalog", list_while_a_job_is_submitted)
    assert submitted not in store.catalog(user).live
    monkeypatch.undo()
    # The publication lost to the submission; the next listing publishes.
    assert read_head(store, user)["complete"] is False
    assert submitted in store.catalog(user).live
    assert read_head(store, user)["complete"] is True
    assert submitted in read_head(store, user)["live"]


def test_a_head_that_says_too_much_still_lists_right_and_heals(
    batch_gateway, batch_s3_storage
):
    storage, options = batch_s3_storage
    gateway = batch_gateway.gateway()
    batch = BatchClient(gateway=gateway, storage=storage, storage_options=options)
    store, user = batch.store, batch.user
    ids = write_job_records(store, user, 40, indexed=True, pack_size=10)
    batch.jobs(limit=5)
    # Writers that died midway: one named a live job before creating it, and
    # the head names a pack that another removed.
    ghost = new_job_id()
    store._change_head(user, lambda h: h.live.add(ghost))
    newest = max(store.catalog(user).packs, key=lambda p: p.newest)
    store.fs.rm_file(newest.path)
    assert [r.id for r in batch.jobs(limit=15)] == ids[:-16:-1]
    assert ghost not in read_head(store, user)["live"]
    assert os.path.basename(newest.path) not in read_head(store, user)["packs"]
    assert [r.id for r in batch.jobs(limit=15)] == ids[:-16:-1]
    batch.close()
    gateway.close()


@pytest.mark.parametrize(
    "planted",
    [
        b"not json",
        b'{"version": 1, "complete": true, "live": ["../x"], "packs": []}',
        b'{"version": 1, "complete": true, "live": [], "packs": ["../../bob/x"]}',
        b'{"version": 1, "complete": "yes", "live": [], "packs": []}',
    ],
)
def test_a_planted_head_is_ignored_with_a_warning_and_replaced(
    s3_store, caplog, planted
):
    from dask_batch.storage.catalog_head import HEAD

    store, user = s3_store, "alice"
    ids = write_job_records(store, user, 5, indexed=True)
    store.fs.pipe_file(store.index_path(user, HEAD), planted)
    with caplog.at_level(logging.WARNING, logger="dask_batch.store"):
        catalog = store.catalog(user)
    assert "Ignoring the damaged job index head" in caplog.text
    assert set(store.read_index(user, catalog.packs)) == set(ids)
    assert read_head(store, user)["complete"] is True  # published from the LIST


def test_a_writer_that_keeps_losing_the_race_removes_the_head(
    s3_store, monkeypatch, caplog
):
    store, user = s3_store, "alice"
    write_job_records(store, user, 2, indexed=True)
    store.catalog(user)
    monkeypatch.setattr("dask_batch.storage.catalog.HEAD_BACKOFF", 0.001)
    monkeypatch.setattr(store.backend, "put_tagged", lambda *a: False)
    job_id = new_job_id()
    with caplog.at_level(logging.WARNING, logger="dask_batch.store"):
        store.mark_live(user, job_id)
    assert "kept changing; removing it" in caplog.text
    monkeypatch.undo()
    assert job_id in store.catalog(user).live  # listed from the folder
