"""The job store and records, on memory:// and local directories."""

from __future__ import annotations

import datetime

import pytest

from dask_batch import CorruptRecordError, JobNotFoundError, JobState, StorageError
from dask_batch._records import new_job_id, utcnow
from dask_batch._store import SPEC, STATE, JobStore


def make_job(store: JobStore, user: str = "alice", **spec) -> str:
    job_id = new_job_id()
    doc = {"id": job_id, "user": user, "name": "job", "submitted": utcnow().isoformat()}
    doc.update(spec)
    store.put_json(user, job_id, SPEC, doc)
    store.put_json(user, job_id, STATE, {"state": "PENDING"})
    return job_id


def test_job_ids_sort_by_submission_time():
    t0 = datetime.datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=datetime.timezone.utc)
    ids = [
        new_job_id(t0 + datetime.timedelta(milliseconds=i)) for i in (0, 1, 999, 1000)
    ]
    assert ids == sorted(ids)
    assert ids[0].startswith("20260102-030405-006-")


def test_job_ids_are_unique_within_a_millisecond():
    now = utcnow()
    assert len({new_job_id(now) for _ in range(1000)}) == 1000


def test_terminal_state_is_never_overwritten():
    store = JobStore("memory://jobs")
    job_id = make_job(store)
    store.transition("alice", job_id, JobState.RUNNING)
    store.transition("alice", job_id, JobState.SUCCEEDED)
    won = store.transition("alice", job_id, JobState.FAILED, message="late")
    assert won["state"] == "SUCCEEDED"
    assert store.read_record("alice", job_id).state is JobState.SUCCEEDED


def test_terminal_transition_sets_finished_time():
    store = JobStore("memory://jobs")
    job_id = make_job(store)
    store.transition("alice", job_id, JobState.CANCELLED)
    record = store.read_record("alice", job_id)
    assert record.finished is not None
    assert record.finished >= record.submitted


def test_listing_is_per_user_and_newest_first(tmp_path):
    store = JobStore(str(tmp_path / "jobs"))
    first = make_job(store, "alice")
    second = make_job(store, "alice")
    make_job(store, "bob")
    assert store.job_ids("alice") == sorted([first, second], reverse=True)
    assert store.job_ids("nobody") == []


def test_unknown_job_raises_job_not_found_naming_it():
    store = JobStore("memory://jobs")
    with pytest.raises(JobNotFoundError, match="20990101-000000-000-deadbeef"):
        store.read_record("alice", "20990101-000000-000-deadbeef")


def test_corrupt_record_raises_clear_error():
    store = JobStore("memory://jobs")
    job_id = make_job(store)
    store.put("alice", job_id, STATE, b'{"state": "RUN')
    with pytest.raises(CorruptRecordError, match=job_id):
        store.read_record("alice", job_id)


def test_unknown_protocol_is_a_storage_error():
    with pytest.raises(StorageError, match="nosuchproto"):
        JobStore("nosuchproto://bucket/jobs")


def test_local_directory_needs_no_mkdir(tmp_path):
    store = JobStore(str(tmp_path / "deep" / "jobs"))
    job_id = make_job(store)
    assert store.read_record("alice", job_id).id == job_id


def test_local_writes_are_never_seen_half_done(tmp_path):
    import threading

    store = JobStore(str(tmp_path / "jobs"))
    job_id = make_job(store)
    big = {"state": "RUNNING", "padding": "x" * 1_000_000}
    stop = threading.Event()
    seen_bad = []

    def read_loop():
        while not stop.is_set():
            try:
                store.get_json("alice", job_id, STATE)
            except CorruptRecordError as exc:
                seen_bad.append(exc)

    reader = threading.Thread(target=read_loop)
    reader.start()
    try:
        for _ in range(30):
            store.put_json("alice", job_id, STATE, big)
    finally:
        stop.set()
        reader.join()
    assert seen_bad == []
    assert not [
        p
        for p in (tmp_path / "jobs" / "alice" / job_id).iterdir()
        if p.name.endswith(".tmp")
    ]


def race_to_terminal(store, job_id, writers=8):
    import threading

    barrier = threading.Barrier(writers)
    results = [None] * writers
    states = [JobState.SUCCEEDED, JobState.CANCELLED, JobState.FAILED, JobState.LOST]

    def write(i):
        barrier.wait()
        results[i] = store.transition(
            "alice", job_id, states[i % len(states)], message=f"writer {i}"
        )

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


@pytest.mark.parametrize("kind", ["local", "memory", "s3"])
def test_racing_terminal_transitions_agree_on_one_winner(kind, tmp_path, request):
    if kind == "local":
        store = JobStore(str(tmp_path / "jobs"))
    elif kind == "memory":
        store = JobStore("memory://race")
    else:
        url, options = request.getfixturevalue("batch_s3_storage")
        store = JobStore(url, options)
    for _ in range(5):
        job_id = make_job(store)
        store.transition("alice", job_id, JobState.RUNNING)
        results = race_to_terminal(store, job_id)
        winners = {(r["state"], r["message"]) for r in results}
        assert len(winners) == 1, winners
        record = store.read_record("alice", job_id)
        assert (record.state.value, record.message) == winners.pop()
        # A late non-terminal write does not resurrect the job.
        store.transition("alice", job_id, JobState.RUNNING)
        assert store.read_record("alice", job_id).state is record.state
