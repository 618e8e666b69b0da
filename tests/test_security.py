"""Other users, and anyone who can write the job storage, are attackers.

Two users share one gateway and one storage; each has their own secret, as
two people on two machines would. Nothing one of them writes into the other's
job folder is ever unpickled by the other's client.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import dask
import pytest
from dask_gateway.client import ClusterStatus

from dask_batch import (
    BatchClient,
    CorruptRecordError,
    JobState,
    MissingSecretError,
    ResultIntegrityError,
)
from dask_batch._store import FINAL, SPEC, STATE
from dask_batch.testing import gateway_clusters, job_cluster_client, wait_for


class Planted:
    """A value whose unpickling runs code: it touches ``marker``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path(self.marker).touch, ())


def plant(marker):
    return Planted(marker)


def add(a, b):
    return a + b


def first_attempt_hangs(marker):
    import pathlib
    import time

    path = pathlib.Path(marker)
    if not path.exists():
        path.write_text("first attempt")
        time.sleep(120)
    return "second attempt"


class User:
    """One user's view: a client with that user's name and secret."""

    def __init__(self, name, gateway_info, storage, home):
        from dask_gateway import BasicAuth

        from dask_batch._gateway import BatchGateway

        self.secret_file = str(home / "secret")
        # The local gateway's simple authenticator takes any user name with
        # its password: two users of one gateway, as on a shared deployment.
        gateway = BatchGateway(
            address=gateway_info.address,
            proxy_address=gateway_info.proxy_address,
            auth=BasicAuth(name, gateway_info.password),
        )
        self.batch = BatchClient(gateway=gateway, storage=storage)
        assert self.batch.user == name

    def __call__(self, method, *args, **kwargs):
        with dask.config.set({"batch.secret-file": self.secret_file}):
            return getattr(self.batch, method)(*args, **kwargs)

    def close(self):
        self.batch.gateway.close()


@pytest.fixture
def alice_and_mallory(batch_gateway, tmp_path):
    storage = str(tmp_path / "shared-jobs")
    users = [
        User(name, batch_gateway, storage, tmp_path / name)
        for name in ("alice", "mallory")
    ]
    yield users
    for user in users:
        user.close()


def copy_job_folder(store, source_user, source_id, target_user, target_id, keep=()):
    """Copy the objects of one job over another's (what a writer can do),
    except the target's own ``keep``."""
    source = store.job_path(source_user, source_id)
    for path in store.fs.find(source):
        relative = path[len(source) + 1 :]
        if relative in keep:
            continue
        store.fs.pipe_file(
            store.job_path(target_user, target_id, relative), store.fs.cat_file(path)
        )


def test_a_folder_copied_over_another_users_job_is_never_unpickled(
    alice_and_mallory, tmp_path
):
    alice, mallory = alice_and_mallory
    marker = tmp_path / "mallory-ran-code-in-alices-client"
    victim = alice("submit", add, 1, 2, workers=0)
    attack = mallory("submit", plant, str(marker), workers=0)
    assert alice("result", victim.id, timeout=60) == 3
    assert mallory("wait", attack.id, timeout=60).state is JobState.SUCCEEDED
    store = alice.batch.store
    copy_job_folder(store, "mallory", attack.id, "alice", victim.id, keep=[SPEC])
    with pytest.raises(ResultIntegrityError, match="not signed") as info:
        alice("result", victim.id, timeout=10)
    assert info.value.job_id == victim.id
    # The whole folder, spec included: the record names another job.
    copy_job_folder(store, "mallory", attack.id, "alice", victim.id)
    with pytest.raises(CorruptRecordError, match="copied or changed") as info:
        alice("result", victim.id, timeout=10)
    assert info.value.job_id == victim.id
    assert not marker.exists()
    # The planted value does run code when unpickled: Mallory's own client
    # loads it (it is her job), which shows what Alice was spared.
    mallory("result", attack.id)
    assert marker.exists()


def test_an_older_result_replayed_over_a_newer_job_is_refused(alice_and_mallory):
    alice, _ = alice_and_mallory
    older = alice("submit", add, 1, 1, workers=0)
    newer = alice("submit", add, 2, 2, workers=0)
    assert alice("result", older.id, timeout=60) == 2
    assert alice("result", newer.id, timeout=60) == 4
    store = alice.batch.store
    copy_job_folder(store, "alice", older.id, "alice", newer.id, keep=[SPEC])
    with pytest.raises(ResultIntegrityError, match=newer.id):
        alice("result", newer.id, timeout=10)


def test_a_machine_without_the_secret_says_how_to_bring_it(alice_and_mallory, tmp_path):
    alice, _ = alice_and_mallory
    job = alice("submit", add, 3, 4, workers=0)
    alice("wait", job.id, timeout=60)
    laptop = {"batch.secret-file": str(tmp_path / "laptop" / "secret")}
    with dask.config.set(laptop), pytest.raises(MissingSecretError) as info:
        alice.batch.result(job.id)
    assert "dask batch secret import" in str(info.value)
    assert info.value.job_id == job.id
    # With the secret brought over, the same machine loads the result.
    exported = subprocess.run(
        [sys.executable, "-m", "dask_batch.cli", "secret", "export"],
        env={**os.environ, "DASK_BATCH__SECRET_FILE": alice.secret_file},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    subprocess.run(
        [sys.executable, "-m", "dask_batch.cli", "secret", "import"],
        input=exported,
        text=True,
        env={**os.environ, "DASK_BATCH__SECRET_FILE": laptop["batch.secret-file"]},
        check=True,
        capture_output=True,
    )
    assert oct(os.stat(laptop["batch.secret-file"]).st_mode & 0o777) == "0o600"
    with dask.config.set(laptop):
        assert alice.batch.result(job.id) == 7


def test_an_unsigned_result_is_refused_unless_allowed(alice_and_mallory):
    alice, _ = alice_and_mallory
    job = alice("submit", add, 5, 5, workers=0)
    assert alice("result", job.id, timeout=60) == 10
    store = alice.batch.store
    for name in (FINAL, STATE):  # as a dask-batch that did not sign left it
        doc = store.get_json("alice", job.id, name)
        doc["result_hmac"] = ""
        store.put_json("alice", job.id, name, doc)
    with pytest.raises(ResultIntegrityError, match=r"batch\.allow-unsigned-results"):
        alice("result", job.id)
    with dask.config.set({"batch.allow-unsigned-results": True}):
        assert alice("result", job.id) == 10


def test_a_retry_never_uses_a_spec_rewritten_in_storage(alice_and_mallory, tmp_path):
    alice, _ = alice_and_mallory
    marker = tmp_path / "attempted"
    job = alice("submit", first_attempt_hangs, str(marker), retries=1, workers=0)
    wait_for(marker.exists, 30, "the first attempt to start")
    # Mallory rewrites the spec: a new cluster of her choosing, her payload.
    store = alice.batch.store
    spec = store.get_json("alice", job.id, SPEC)
    spec["cluster_options"] = {"worker_memory": 64}
    spec["payload_signature"] = "hmac-sha256:" + "0" * 64
    store.put_json("alice", job.id, SPEC, spec)
    with job_cluster_client(alice.batch, job.id) as client:
        pid = client.run_on_scheduler(os.getpid)
    name = alice("status", job.id).cluster_name
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: (
            alice.batch.gateway.get_cluster(name).status
            not in (ClusterStatus.RUNNING, ClusterStatus.PENDING)
        ),
        60,
        "the gateway to see the cluster gone",
    )
    clusters = gateway_clusters(alice.batch.gateway)
    (record,) = alice("reconcile")
    assert record.state is JobState.LOST
    assert "not signed with your key" in record.message
    assert gateway_clusters(alice.batch.gateway) == clusters
