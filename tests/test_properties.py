"""Property-based checks: any bytes in storage give a clear error, never a crash.

Every parser of stored data (records, index packs, result frames, log chunks)
and every validator is fed arbitrary input; the only outcomes allowed are a
value or a ``DaskBatchError`` subclass that names the job.
"""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dask_batch import DaskBatchError, JobRecord
from dask_batch.core.names import (
    InvalidNameError,
    check_job_id,
    check_parameter_name,
    check_relative_path,
    check_user,
    safe_link,
    strip_control,
)
from dask_batch.storage.store import (
    FINAL,
    HEARTBEAT,
    PROGRESS,
    RESULT,
    SPEC,
    STATE,
    JobStore,
)

JOB = "20260101-000000-000-00000001"
USER = "alice"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
record_like = st.fixed_dictionaries(
    {},
    optional={
        key: json_values
        for key in (
            "id", "user", "name", "state", "submitted", "started", "progress",
            "attempt", "attempts", "error", "adapt", "workers", "env_names",
            "frozen", "cluster_name", "timeout",
        )
    },
)  # fmt: skip
stored = st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode())
fast = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def store():
    return JobStore("memory://properties")


def _spec():
    return {"id": JOB, "user": USER, "name": "n", "submitted": "2026-01-01T00:00:00"}


@fast
@given(spec=stored, state=stored, progress=stored, heartbeat=stored)
def test_any_stored_documents_give_a_record_or_a_clear_error(
    store, spec, state, progress, heartbeat
):
    for name, data in ((SPEC, spec), (STATE, state), (PROGRESS, progress)):
        store.put(USER, JOB, name, data)
    store.put(USER, JOB, HEARTBEAT, heartbeat)
    result = store.read_records(USER, [JOB])[JOB]
    if isinstance(result, Exception):
        assert isinstance(result, DaskBatchError)
        assert result.job_id == JOB
    else:
        assert result.id == JOB


@fast
@given(state=record_like, final=record_like)
def test_any_state_documents_of_a_valid_spec_give_a_record_or_a_clear_error(
    store, state, final
):
    store.put_json(USER, JOB, SPEC, _spec())
    store.put_json(USER, JOB, STATE, state)
    store.put_json(USER, JOB, FINAL, final)
    result = store.read_records(USER, [JOB])[JOB]
    assert isinstance(result, (JobRecord, DaskBatchError))
    if isinstance(result, JobRecord):
        result.to_dict()  # and it renders
        from dask_batch.client.display import html_table, text_table

        text_table([result])
        html_table([result])


@fast
@given(entry=record_like)
def test_any_index_entry_gives_a_record_or_a_value_error(entry):
    try:
        record = JobRecord.from_dict(entry)
    except (KeyError, TypeError, ValueError):
        return
    assert record.dashboard_link is None


@fast
@given(pack=st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_index_pack_is_read_or_skipped(store, pack):
    from dask_batch.storage.catalog import parse_pack

    for name in (f"{JOB}-1-00000000.json.gz", f"pack-{JOB}-{JOB}-1-0.json.gz"):
        path = store.index_path(USER, name)
        for data in (pack, gzip.compress(pack)):
            store.backend.put_whole(path, data)
            read = store.read_packs(USER, [parse_pack(path)])
            for _, records in read:
                assert all(
                    r.id == JOB and r.state.is_terminal for r in records.values()
                )


@fast
@given(data=st.binary(max_size=200))
def test_any_result_object_is_refused_with_a_clear_error(store, data):
    from dask_batch.core.pickling import RESULT_MAGIC

    for blob in (data, RESULT_MAGIC + data):
        store.put(USER, JOB, RESULT, blob)
        try:
            store.get_result(USER, JOB, "00" * 32)
        except DaskBatchError as exc:
            assert exc.job_id == JOB
        # A well-formed frame may parse; it is then checked by its signature.


@fast
@given(chunks=st.lists(st.binary(max_size=40), max_size=5), lines=st.integers(1, 30))
def test_any_log_chunks_give_text(store, chunks, lines):
    logs = store.job_path(USER, JOB, "logs")
    if store.fs.exists(logs):
        store.fs.rm(logs, recursive=True)
    for index, chunk in enumerate(chunks):
        store.put_log_chunk(USER, JOB, 1, index, chunk)
    assert isinstance(store.log_tail(USER, JOB, lines), str)
    data, count = store.read_logs(USER, JOB, 0, limit=17)
    assert len(data) <= 17 and count == len(chunks)


@fast
@given(text=st.text(max_size=60))
def test_validators_accept_or_refuse_clearly(text):
    for check in (check_user, check_parameter_name):
        try:
            accepted = check(text)
        except InvalidNameError as exc:
            assert str(exc)  # refused, saying why
        else:
            assert accepted == text
    try:
        relative = check_relative_path(text, what="artifact")
    except InvalidNameError as exc:
        assert "would leave its folder" in str(exc)
    else:
        assert not relative.startswith(("/", "..")) and "\\" not in relative
    try:
        assert check_job_id(text) == text
    except DaskBatchError as exc:
        assert "not a dask-batch job id" in str(exc)
    link = safe_link(text)
    assert link is None or link.startswith(("http://", "https://"))
    assert "\x1b" not in strip_control(text)
