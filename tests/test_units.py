"""Pure parts, without a gateway or storage server: they run in milliseconds."""

from __future__ import annotations

import datetime
import errno
import os

import dask
import pytest

from dask_batch import ErrorInfo, SubmitError, SubmitOptions
from dask_batch.client.listing import ids_between, wanted_states
from dask_batch.client.submission import (
    build,
    check_memory_limit,
    check_retries,
    check_scaling,
    check_timeout,
    function_target,
    notebook_target,
    pack_files,
    resolve_env,
    script_target,
)
from dask_batch.core.records import JobState, new_job_id, parse_job_time, utcnow
from dask_batch.core.secrets import JobSecrets, seal, unseal
from dask_batch.core.signing import job_keys
from dask_batch.runtime.handoff import MainLaunch, Outcome
from dask_batch.storage.store import is_transient

JOB = "20261126-000000-000-00000000"


def add(a, b=0):
    return a + b


def test_submit_options_split_keeps_mains_own_keywords():
    options, rest = SubmitOptions.split(None, {"workers": 2, "lr": 0.1})
    assert (options.workers, rest) == (2, {"lr": 0.1})
    base = SubmitOptions(workers=3, timeout="1h")
    merged, _ = SubmitOptions.split(base, {"workers": 5})
    assert (merged.workers, merged.timeout) == (5, "1h")


def test_submit_options_refuse_unknown_names():
    with pytest.raises(TypeError, match="wokers"):
        SubmitOptions.merge(None, {"wokers": 2})


def test_not_submitted_errors_carry_the_job_id():
    with pytest.raises(SubmitError) as info:
        check_scaling(JOB, 1, (1, 2))
    assert info.value.job_id == JOB
    assert (
        str(info.value)
        == f"Job {JOB!r} not submitted: give workers or adapt, not both."
    )


@pytest.mark.parametrize(
    ("workers", "adapt", "expected"),
    [(None, None, (1, None)), (0, None, (0, None)), (None, [0, 4], (None, (0, 4)))],
)
def test_scaling(workers, adapt, expected):
    assert check_scaling(JOB, workers, adapt) == expected


@pytest.mark.parametrize(
    ("timeout", "seconds"), [(None, None), (90, 90.0), ("2h", 7200.0)]
)
def test_timeouts(timeout, seconds):
    assert check_timeout(JOB, timeout) == seconds


@pytest.mark.parametrize("timeout", [0, -1, "soon", float("nan")])
def test_bad_timeouts(timeout):
    with pytest.raises(SubmitError, match="timeout must be a positive duration"):
        check_timeout(JOB, timeout)


def test_retry_on_takes_classes_and_names():
    assert check_retries(JOB, 2, [ConnectionError, "MyError"]) == [
        "builtins.ConnectionError",
        "MyError",
    ]
    for retries, retry_on in [(-1, ()), (True, ()), (1, [3])]:
        with pytest.raises(SubmitError, match="retr"):
            check_retries(JOB, retries, retry_on)


def test_memory_limit():
    assert check_memory_limit(JOB, "1 GiB") == 2**30
    assert check_memory_limit(JOB, None) is None
    for bad in ("1 MiB", "lots", -5):
        with pytest.raises(SubmitError, match="memory_limit"):
            check_memory_limit(JOB, bad)


def test_env_values_come_from_items_mappings_and_this_process(monkeypatch):
    monkeypatch.setenv("DASK_BATCH_TEST_TOKEN", "t0ken")
    assert resolve_env(JOB, ["A=1", "DASK_BATCH_TEST_TOKEN"]) == {
        "A": "1",
        "DASK_BATCH_TEST_TOKEN": "t0ken",
    }
    assert resolve_env(JOB, {"B": "2"}) == {"B": "2"}
    with pytest.raises(SubmitError, match="NOT_SET_ANYWHERE"):
        resolve_env(JOB, ["NOT_SET_ANYWHERE"])
    with pytest.raises(SubmitError, match="string names and values"):
        resolve_env(JOB, {"C": 3})


def test_files_are_packed_with_directory_contents_at_the_top(tmp_path):
    import io
    import tarfile

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.csv").write_text("1,2")
    (tmp_path / "conf.yaml").write_text("a: 1")
    archive = pack_files(JOB, [tmp_path / "data", str(tmp_path / "conf.yaml")])
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert sorted(tar.getnames()) == ["conf.yaml", "x.csv"]
    with pytest.raises(SubmitError, match="does not exist"):
        pack_files(JOB, [tmp_path / "missing"])
    with (
        dask.config.set({"batch.upload-limit": "2 B"}),
        pytest.raises(SubmitError, match="upload-limit"),
    ):
        pack_files(JOB, [tmp_path / "data"])


def test_targets(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print(1)")
    assert script_target(JOB, str(script), [1]).args[1:] == (b"print(1)", ["1"])
    module = script_target(JOB, "pkg.jobs:nightly", ["x"])
    assert (module.kind, module.default_name) == ("module", "nightly")
    with pytest.raises(SubmitError, match="neither a script"):
        script_target(JOB, "nothing-runnable", [])
    with pytest.raises(SubmitError, match="is not callable"):
        function_target(JOB, 3, (), {})
    with pytest.raises(SubmitError, match="cannot read notebook"):
        notebook_target(JOB, str(tmp_path / "missing.ipynb"), {})


def test_build_makes_a_spec_without_env_values():
    target = function_target(JOB, add, (1,), {"b": 2})
    options = SubmitOptions(env={"SECRET": "s3cr3t"}, retries=1, adapt=(0, 2))
    submission = build(JOB, "alice", "memory://jobs/alice/x", target, options)
    spec = submission.spec
    assert (spec["kind"], spec["name"], spec["function"]) == (
        "function",
        "add",
        f"{__name__}.add",
    )
    assert (spec["workers"], spec["adapt"]) == (None, [0, 2])
    assert spec["env_names"] == ["SECRET"]
    assert "s3cr3t" not in repr(spec)
    assert submission.env_values == {"SECRET": "s3cr3t"}
    assert spec["payload_digest"].startswith("sha256:")


def test_payload_limit_is_checked_before_anything_else_happens():
    target = function_target(JOB, add, (b"x" * 4096,), {})
    with (
        dask.config.set({"batch.payload-limit": "1 kiB"}),
        pytest.raises(SubmitError, match=r"batch\.payload-limit \(1.00 kiB\)"),
    ):
        build(JOB, "alice", "", target, SubmitOptions())


def test_job_times_parse_as_datetimes_iso_text_and_durations():
    aware = datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)
    assert parse_job_time(aware) == aware
    assert parse_job_time("2026-01-02T00:00:00") == aware
    assert parse_job_time(None) is None
    with pytest.raises(ValueError, match="neither an ISO 8601 time nor a duration"):
        parse_job_time("soonish")
    before = utcnow()
    two_hours_ago = parse_job_time("2h")
    after = utcnow()
    hours = datetime.timedelta(hours=2)
    assert before - hours <= two_hours_ago <= after - hours


def test_listing_filters_ids_by_time_and_states():
    now = utcnow()
    old = new_job_id(now - datetime.timedelta(days=3))
    new = new_job_id(now - datetime.timedelta(minutes=1))
    assert ids_between([new, old], "1d", None) == [new]
    assert ids_between([new, old], None, "1d") == [old]
    assert wanted_states("running") == {JobState.RUNNING}
    assert wanted_states(None) is None


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (ConnectionResetError("reset"), True),
        (TimeoutError("slow"), True),
        (OSError(errno.ETIMEDOUT, "timed out"), True),
        (PermissionError("Access Denied"), False),
        (FileNotFoundError("gone"), False),
        (TypeError("a bug"), False),
        (OSError(errno.ENOSPC, "disk full"), False),
    ],
)
def test_only_transient_storage_failures_are_retried(exc, transient):
    assert is_transient(exc) is transient


def test_a_5xx_or_throttled_answer_is_transient_through_its_cause():
    class ClientError(Exception):
        def __init__(self, status, code):
            self.response = {
                "ResponseMetadata": {"HTTPStatusCode": status},
                "Error": {"Code": code},
            }

    for status, code, transient in [
        (503, "ServiceUnavailable", True),
        (400, "SlowDown", True),
        (403, "AccessDenied", False),
    ]:
        wrapped = OSError(errno.EIO, "failed")
        wrapped.__cause__ = ClientError(status, code)
        assert is_transient(wrapped) is transient


def test_secrets_round_trip_and_refuse_another_jobs_key():
    from cryptography.fernet import InvalidToken

    secret = os.urandom(32)
    keys, other = job_keys(secret, JOB), job_keys(secret, JOB[:-1] + "1")
    token = seal(JobSecrets({"TOKEN": "x"}, keys.job_key), keys.env_key)
    assert unseal(keys.env_key, token) == JobSecrets({"TOKEN": "x"}, keys.job_key)
    with pytest.raises(InvalidToken):
        unseal(other.env_key, token)
    assert keys.job_key not in repr(keys)


def test_handoff_documents_round_trip(tmp_path):
    launch = MainLaunch(
        job_id=JOB,
        user="alice",
        name="n",
        storage_url="memory://jobs",
        storage_options={"anon": True},
        storage_retry_for=1.5,
        payload_signature="hmac-sha256:00",
        scheduler_address="tls://127.0.0.1:1",
        tls_ca_file=None,
        tls_cert=None,
        tls_key=None,
        outcome_path=str(tmp_path / "o.json"),
        workdir=str(tmp_path),
        env_key="k",
    )
    assert MainLaunch.from_json(launch.to_json()) == launch
    assert "env_key='k'" not in repr(launch)
    failed = Outcome.failure("ProcessExit", "killed", returncode=-9)
    failed.write(launch.outcome_path)
    assert Outcome.read(launch.outcome_path) == failed
    assert failed.error == ErrorInfo("ProcessExit", "killed", "", -9)
    assert ErrorInfo.from_dict(failed.error.to_dict()) == failed.error


def test_the_pages_listing_cache_shares_one_listing_and_forgets_on_cancel():
    import asyncio

    from dask_batch.ui.app import ListingCache

    calls = []

    async def listing(n):
        calls.append(n)
        await asyncio.sleep(0.05)
        if n == "boom":
            raise RuntimeError("storage down")
        return [n]

    async def scenario():
        cache = ListingCache(ttl=60)
        # Concurrent requests for the same query wait for one listing.
        same = await asyncio.gather(
            *(cache.get(("alice", "q"), lambda: listing("a")) for _ in range(5))
        )
        assert same == [["a"]] * 5 and calls == ["a"]
        assert await cache.get(("alice", "q"), lambda: listing("again")) == ["a"]
        assert await cache.get(("bob", "q"), lambda: listing("b")) == ["b"]
        cache.forget("alice")  # a cancel: alice's next listing is fresh
        assert await cache.get(("alice", "q"), lambda: listing("c")) == ["c"]
        assert await cache.get(("bob", "q"), lambda: listing("x")) == ["b"]
        # An error is not kept.
        with pytest.raises(RuntimeError, match="storage down"):
            await cache.get(("carol", "q"), lambda: listing("boom"))
        assert await cache.get(("carol", "q"), lambda: listing("d")) == ["d"]
        expiring = ListingCache(ttl=0)
        await expiring.get(("k",), lambda: listing("e1"))
        assert await expiring.get(("k",), lambda: listing("e2")) == ["e2"]

    asyncio.run(scenario())
    assert calls == ["a", "b", "c", "boom", "d", "e1", "e2"]


def test_artifact_sync_copies_changes_and_keeps_within_its_limit(tmp_path):
    from dask_batch.runtime.artifacts import ArtifactSync
    from dask_batch.storage.store import JobStore

    store = JobStore(str(tmp_path / "jobs"))
    job_id = "20260101-000000-000-0badc0de"
    folder = tmp_path / "artifacts"
    folder.mkdir()
    sync = ArtifactSync(store, "alice", job_id, str(folder), limit=10)
    (folder / "a.txt").write_bytes(b"123456")
    (folder / "b.txt").write_bytes(b"abcdef")
    notes = sync.sync()
    assert store.artifacts("alice", job_id) == {"a.txt": 6}
    assert len(notes) == 1 and "'b.txt' (6 B) not stored" in notes[0]
    assert "batch.artifacts.limit (10 B)" in notes[0]
    assert sync.sync() == []  # said once
    # A file that shrinks makes room; its own old size does not count twice.
    (folder / "a.txt").write_bytes(b"12")
    sync.sync()
    assert store.artifacts("alice", job_id) == {"a.txt": 2, "b.txt": 6}


def running_job_of_alice(tmp_path):
    """A job store with one RUNNING job of alice's: (store, job id)."""
    from dask_batch.storage.store import STATE, JobStore
    from dask_batch.testing import write_job_records

    store = JobStore(str(tmp_path / "jobs"))
    (job_id,) = write_job_records(store, "alice", 1)
    store.put_json("alice", job_id, STATE, {"state": "RUNNING"})
    return store, job_id


def two_sweeps_logged(store, client, catalog_interval, caplog):
    """The messages logged by two sweeps of the hub service's keeper whose
    client for every user is ``client``."""
    import asyncio
    import logging

    from dask_batch.service.hub import JobKeeper

    class Clients:
        async def client_for(self, user):
            return client

    keeper = JobKeeper(store, Clients(), interval=1, catalog_interval=catalog_interval)
    with caplog.at_level(logging.INFO):
        asyncio.run(keeper.sweep())
        asyncio.run(keeper.sweep())  # starts from LOST: nothing new to audit
    return [r.getMessage() for r in caplog.records]


def test_a_sweep_that_fails_after_acting_still_audits_the_acts(tmp_path, caplog):
    """The service's check of a user may act (judge a job LOST, ask for a
    retry's cluster) and then fail (a gateway call times out): the acts it
    did are audited all the same, once, and the failure is logged."""
    from dask_batch.storage.store import STATE

    store, job_id = running_job_of_alice(tmp_path)

    class ActsThenTimesOut:
        """A user's client whose check judges the job LOST, as a reconcile
        does, then meets a gateway that does not answer."""

        async def reconcile(self, live):
            store.put_json("alice", job_id, STATE, {"state": "LOST"})
            raise TimeoutError("the gateway did not answer in time")

    lines = two_sweeps_logged(store, ActsThenTimesOut(), 3600, caplog)
    act = f"dask-batch audit: user=alice act=judge-lost id={job_id} by=service"
    assert sum(act in line for line in lines) == 1, lines
    assert any("Could not check the jobs of user 'alice'" in line for line in lines)


def test_a_job_judged_lost_by_the_sweeps_full_listing_is_audited(tmp_path, caplog):
    """The sweep's full listing checks live jobs with the gateway too: a
    cluster the gateway saw die after the sweep's reconcile asked it is
    judged LOST by the listing, and that act is audited once, as the
    reconcile's are (CI saw the line missing)."""
    from dask_batch.storage.store import STATE

    store, job_id = running_job_of_alice(tmp_path)

    class GatewaySeesTheDeathBetweenCalls:
        """The reconcile finds the cluster running; the listing just after
        finds it gone and judges the job LOST, as a listing does."""

        async def reconcile(self, live):
            return live

        async def jobs(self):
            store.put_json("alice", job_id, STATE, {"state": "LOST"})
            return [store.read_record("alice", job_id)]

    lines = two_sweeps_logged(store, GatewaySeesTheDeathBetweenCalls(), 0, caplog)
    act = f"dask-batch audit: user=alice act=judge-lost id={job_id} by=service"
    assert sum(act in line for line in lines) == 1, lines
