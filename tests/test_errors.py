"""Bad input fails clearly and leaves nothing behind."""

from __future__ import annotations

import os
import sys
import textwrap
import threading

import pytest

from dask_batch import (
    BatchClient,
    JobFailedError,
    JobNotFoundError,
    JobState,
    StorageError,
    SubmitError,
)
from dask_batch.testing import gateway_clusters

MISSING = "20990101-000000-000-deadbeef"


def clusters_ever(batch):
    # Every status: a cluster of an earlier test still STOPPING when counted
    # first, and STOPPED when counted again, is the same cluster.
    return gateway_clusters(batch.gateway)


def test_unpicklable_main_fails_in_submit_and_leaves_nothing(batch_client):
    lock = threading.Lock()
    before = len(clusters_ever(batch_client))

    def holds_a_lock():
        return lock

    with pytest.raises(SubmitError, match="cannot be pickled") as info:
        batch_client.submit(holds_a_lock)
    assert "Job '" in str(info.value)
    assert batch_client.jobs() == []
    assert len(clusters_ever(batch_client)) == before


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"workers": -1}, "workers must be a whole number"),
        ({"workers": 1.5}, "workers must be a whole number"),
        ({"adapt": (3, 1)}, "minimum <= maximum"),
        ({"adapt": 5}, "adapt must be"),
        ({"workers": 1, "adapt": (1, 2)}, "not both"),
    ],
)
def test_invalid_scaling_fails_before_anything_is_created(batch_client, kwargs, match):
    with pytest.raises(SubmitError, match=match):
        batch_client.submit(len, [], **kwargs)
    assert batch_client.jobs() == []


def test_unknown_job_id_raises_job_not_found_everywhere(batch_client):
    for call in (
        batch_client.status,
        batch_client.result,
        batch_client.logs,
        batch_client.cancel,
    ):
        with pytest.raises(JobNotFoundError, match=MISSING):
            call(MISSING)


def test_missing_bucket_fails_before_a_cluster_is_requested(
    batch_gateway, batch_s3_server
):
    gateway = batch_gateway.gateway()
    with BatchClient(
        gateway=gateway,
        storage="s3://no-such-bucket/jobs",
        storage_options=batch_s3_server.storage_options,
    ) as batch:
        before = len(clusters_ever(batch))
        with pytest.raises(StorageError, match="no-such-bucket") as info:
            batch.submit(len, [])
        assert str(info.value).startswith(f"Job {info.value.job_id!r} not submitted")
        assert len(clusters_ever(batch)) == before
    gateway.close()


def test_unknown_storage_protocol_fails_at_once(batch_gateway):
    gateway = batch_gateway.gateway()
    with pytest.raises(StorageError, match="nosuchproto"):
        BatchClient(gateway=gateway, storage="nosuchproto://bucket/jobs")
    gateway.close()


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"no_such_option": 1}, "no option 'no_such_option'"),
        ({"batch_job_id": "x"}, "set by dask-batch itself"),
    ],
)
def test_bad_cluster_options_fail_before_anything_is_created(
    batch_client, options, match
):
    before = len(clusters_ever(batch_client))
    with pytest.raises(SubmitError, match=match):
        batch_client.submit(len, [], cluster_options=options)
    assert batch_client.jobs() == []
    assert len(clusters_ever(batch_client)) == before


@pytest.fixture(scope="module")
def strict_gateway(tmp_path_factory):
    from dask_batch import local
    from dask_batch.testing import _start_gateway

    directory = str(tmp_path_factory.mktemp("strict-gateway"))
    info = _start_gateway(directory, allowed_storage=["memory://allowed-only"])
    yield info
    local.stop(directory)


def test_gateway_refusal_leaves_a_failed_record_with_its_message(
    strict_gateway, tmp_path
):
    gateway = strict_gateway.gateway()
    with BatchClient(gateway=gateway, storage=str(tmp_path / "jobs")) as batch:
        with pytest.raises(SubmitError, match="refused the cluster request") as info:
            batch.submit(len, [])
        (record,) = batch.jobs()
        assert record.state is JobState.FAILED
        assert "is not allowed on this gateway" in record.message
        assert record.id in str(info.value)
        assert gateway.list_clusters() == []
    gateway.close()


def test_module_not_importable_on_the_cluster_says_so(
    batch_client, tmp_path, monkeypatch
):
    (tmp_path / "privatelib.py").write_text("def work():\n    return 'private'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import privatelib

    # Pretend privatelib is installed here but not on the cluster.
    monkeypatch.setattr("dask_batch.core.pickling.local_modules", lambda *objects: [])
    job = batch_client.submit(privatelib.work, workers=0)
    with pytest.raises(JobFailedError, match=r"privatelib.*not importable"):
        job.result(timeout=60)
    sys.modules.pop("privatelib")


def test_functions_from_local_modules_are_pickled_by_value(
    batch_client, tmp_path, monkeypatch
):
    (tmp_path / "mylocalcode.py").write_text(
        textwrap.dedent(
            """
            SCALE = 3

            def helper(x):
                return x * SCALE

            def work(x):
                return helper(x) + 1
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import mylocalcode

    assert batch_client.submit(mylocalcode.work, 2, workers=0).result(timeout=60) == 7
    sys.modules.pop("mylocalcode")


def run_main_process(
    store, job_id, stored_payload, signed_payload, tmp_path, env=None, **more
):
    """Run main's process as the runner would, with no scheduler to reach.

    ``stored_payload`` is what storage holds, ``signed_payload`` what the
    submitter signed; the job's secrets are sealed as a client would.
    """
    import subprocess

    from dask_batch.core.secrets import JobSecrets, seal
    from dask_batch.core.signing import job_keys, sign
    from dask_batch.runtime.handoff import MainLaunch
    from dask_batch.storage.store import PAYLOAD, SECRETS

    keys = job_keys(os.urandom(32), job_id)
    store.put("alice", job_id, PAYLOAD, stored_payload)
    store.put(
        "alice", job_id, SECRETS, seal(JobSecrets({}, keys.job_key), keys.env_key)
    )
    launch = MainLaunch(
        job_id=job_id,
        user="alice",
        name="job",
        storage_url=store.url,
        storage_options={},
        storage_retry_for=0,
        payload_signature=sign(keys.job_key, signed_payload),
        scheduler_address="tls://127.0.0.1:1",
        tls_ca_file=None,
        tls_cert=None,
        tls_key=None,
        outcome_path=str(tmp_path / "outcome.json"),
        workdir=str(tmp_path / "work"),
        env_key=keys.env_key,
        **more,
    )
    return subprocess.run(
        [sys.executable, "-m", "dask_batch.runtime.child"],
        input=launch.to_json(),
        capture_output=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_payload_changed_after_submit_is_refused_by_mains_process(tmp_path):
    import json

    import cloudpickle

    from dask_batch.storage.store import ERROR, JobStore

    store = JobStore(str(tmp_path / "jobs"))
    job_id = "20260101-000000-000-0badc0de"
    original = cloudpickle.dumps((len, ([1],), {}))
    planted = cloudpickle.dumps((os.getpid, (), {}))
    proc = run_main_process(store, job_id, planted, original, tmp_path)
    assert proc.returncode == 1
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    assert outcome["error"]["type"] == "IntegrityError"
    assert job_id in outcome["error"]["message"]
    assert "not signed" in outcome["error"]["message"]
    assert store.get_json("alice", job_id, ERROR)["type"] == "IntegrityError"


def test_main_that_cannot_be_set_up_fails_with_the_reason(tmp_path):
    import json

    import cloudpickle

    from dask_batch.storage.store import JobStore

    store = JobStore(str(tmp_path / "jobs"))
    job_id = "20260101-000000-000-5e7babad"
    payload = cloudpickle.dumps((len, ([1],), {}))
    # has_files, but no files.tar.gz was stored
    proc = run_main_process(store, job_id, payload, payload, tmp_path, has_files=True)
    assert proc.returncode == 1
    error = json.loads((tmp_path / "outcome.json").read_text())["error"]
    assert error["type"] == "builtins.FileNotFoundError"
    assert f"main of job {job_id!r} could not be set up" in error["message"]
