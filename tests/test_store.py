"""The job store and records, on memory:// and local directories."""

from __future__ import annotations

import datetime

import pytest

from dask_batch import CorruptRecordError, JobNotFoundError, JobState, StorageError
from dask_batch.core.records import new_job_id, utcnow
from dask_batch.storage.store import RESULT, SPEC, STATE, JobStore

J1 = "20260101-000000-000-00000001"
J2 = "20260101-000000-000-00000002"


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


# -- results: streamed in pieces, hashed on the way ------------------------------


@pytest.fixture(params=["local", "memory", "s3"])
def any_store(request, tmp_path, monkeypatch):
    return make_store(request.param, request, tmp_path, monkeypatch)


@pytest.fixture(params=["local", "s3"])
def streaming_store(request, tmp_path, monkeypatch):
    """Stores that write results in a stream (memory:// writes them whole)."""
    return make_store(request.param, request, tmp_path, monkeypatch)


def make_store(kind, request, tmp_path, monkeypatch):
    import dask_batch.storage.streams

    # Small chunks, so that a few MB cross many chunk boundaries.
    monkeypatch.setattr(dask_batch.storage.streams, "CHUNK", 2**20)
    if kind == "local":
        return JobStore(str(tmp_path / "jobs"))
    if kind == "memory":
        return JobStore("memory://jobs")
    url, options = request.getfixturevalue("batch_s3_storage")
    return JobStore(url, options)


def test_results_round_trip_in_pieces_with_their_digest(any_store):
    import pickle

    import blake3
    import numpy as np

    from dask_batch.core.pickling import dumps_result

    grid = np.arange(3 * 2**20 // 8 + 5, dtype="f8").reshape(-1, 1)
    value = {"grid": grid, "strided": grid[::3], "raw": b"x" * 10, "n": 7}
    pieces = dumps_result(value)
    assert any(p.obj is grid for p in pieces)  # sent from its own memory
    found, signature = any_store.put_pieces("alice", J1, RESULT, pieces, "key")
    assert len(signature) == 64
    # The digest is BLAKE3 of the stored object: `b3sum result.pkl` checks it.
    stored = any_store.get("alice", J1, RESULT)
    assert found == "blake3:" + blake3.blake3(stored).hexdigest()

    stream, buffers, read_digest, read_signature = any_store.get_result(
        "alice", J1, "key"
    )
    assert (read_digest, read_signature) == (found, signature)
    # One byte changed in the last chunk of the array changes both.
    grid[-1, 0] += 1
    any_store.put("alice", J2, RESULT, b"".join(dumps_result(value)))
    _, _, changed, changed_signature = any_store.get_result("alice", J2, "key")
    assert changed != found and changed_signature != signature
    _, _, _, other_key = any_store.get_result("alice", J1, "other key")
    assert other_key != signature
    back = pickle.loads(stream, buffers=buffers)
    grid[-1, 0] -= 1
    np.testing.assert_array_equal(back["grid"], grid)
    np.testing.assert_array_equal(back["strided"], grid[::3])
    assert (back["raw"], back["n"]) == (b"x" * 10, 7)
    assert back["grid"].base is not None  # built on the read buffer, not copied


def test_an_object_not_in_the_result_format_is_refused_unread(any_store):
    import cloudpickle

    from dask_batch import ResultIntegrityError

    # A plain pickle whose loading would run code: never unpickled.
    any_store.put("alice", J1, RESULT, cloudpickle.dumps(print))
    with pytest.raises(ResultIntegrityError, match=J1) as info:
        any_store.get_result("alice", J1)
    assert info.value.job_id == J1


def test_a_failed_result_write_leaves_no_object(streaming_store, monkeypatch):
    any_store = streaming_store
    import dask_batch.storage.streams

    real_chunks = dask_batch.storage.streams.chunks

    def failing_after_two(view):
        for i, chunk in enumerate(real_chunks(view)):
            if i == 2:
                raise OSError("connection reset")
            yield chunk

    monkeypatch.setattr(dask_batch.storage.streams, "chunks", failing_after_two)
    data = memoryview(bytearray(5 * 2**20))
    with pytest.raises(StorageError, match="connection reset"):
        any_store.put_pieces("alice", J1, RESULT, [data])
    assert not any_store.exists("alice", J1, RESULT)
    job_dir = any_store.job_path("alice", J1)
    assert not any_store.fs.exists(job_dir) or any_store.fs.ls(job_dir) == []


def test_a_truncated_result_is_a_clear_error(any_store):
    import numpy as np

    from dask_batch.core.pickling import dumps_result

    whole = b"".join(dumps_result(np.zeros(2**19)))
    for cut in (15, 100, len(whole) // 2):  # in the frame, the pickle, a buffer
        any_store.put("alice", J1, RESULT, whole[:cut])
        with pytest.raises(StorageError, match="truncated"):
            any_store.get_result("alice", J1)
