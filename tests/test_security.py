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
from conftest import first_attempt_hangs
from dask_gateway.client import ClusterStatus

from dask_batch import (
    BatchClient,
    CorruptRecordError,
    JobState,
    MissingSecretError,
    ResultIntegrityError,
    SubmitError,
)
from dask_batch.storage.store import FINAL, SPEC, STATE, JobStore
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


class User:
    """One user's view: a client with that user's name and secret."""

    def __init__(self, name, gateway_info, storage, home, storage_options):
        from dask_gateway import BasicAuth

        from dask_batch.client.gateway import BatchGateway

        self.secret_file = str(home / "secret")
        # The local gateway's simple authenticator takes any user name with
        # its password: two users of one gateway, as on a shared deployment.
        gateway = BatchGateway(
            address=gateway_info.address,
            proxy_address=gateway_info.proxy_address,
            auth=BasicAuth(name, gateway_info.password),
        )
        self.batch = BatchClient(
            gateway=gateway, storage=storage, storage_options=storage_options
        )
        assert self.batch.user == name

    def __call__(self, method, *args, **kwargs):
        with dask.config.set({"batch.secret-file": self.secret_file}):
            return getattr(self.batch, method)(*args, **kwargs)

    def close(self):
        self.batch.gateway.close()


@pytest.fixture(params=["local", "s3"])
def alice_and_mallory(request, batch_gateway, tmp_path):
    """Two users of one gateway and one storage, with one storage credential
    between them (the worst case): a shared directory, or a shared bucket."""
    if request.param == "s3":
        storage, options = request.getfixturevalue("batch_s3_storage")
    else:
        storage, options = str(tmp_path / "shared-jobs"), {}
    users = [
        User(name, batch_gateway, storage, tmp_path / name, options)
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


def test_an_unsigned_result_is_refused_and_says_why(alice_and_mallory):
    alice, _ = alice_and_mallory
    job = alice("submit", add, 5, 5, workers=0)
    assert alice("result", job.id, timeout=60) == 10
    store = alice.batch.store
    for name in (FINAL, STATE):  # as a dask-batch that did not sign left it
        doc = store.get_json("alice", job.id, name)
        doc["result_hmac"] = ""
        store.put_json("alice", job.id, name, doc)
    # One way to unpickle: no setting loads it.
    with pytest.raises(ResultIntegrityError, match="carries no signature") as info:
        alice("result", job.id)
    assert info.value.job_id == job.id
    assert "run it again" in str(info.value)
    with (
        dask.config.set({"batch.allow-unsigned-results": True}),
        pytest.raises(ResultIntegrityError, match="carries no signature"),
    ):
        alice("result", job.id)


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


# -- paths: nothing from storage lands outside where it belongs ---------------


def test_artifact_keys_that_climb_out_are_never_downloaded(
    batch_gateway, batch_s3_storage, tmp_path
):
    import s3fs

    from dask_batch.storage.store import ARTIFACTS

    url, options = batch_s3_storage
    with BatchClient(
        gateway=batch_gateway.gateway(), storage=url, storage_options=options
    ) as batch:
        job = batch.submit(add, 1, 1, workers=0)
        batch.wait(job.id, timeout=60)
        fs = s3fs.S3FileSystem(**options)
        base = batch.store.job_path(batch.user, job.id, ARTIFACTS)
        fs.pipe({f"{base}/good.txt": b"fine", f"{base}/../../../../../escaped": b"x"})
        folder = batch.store.job_path(batch.user, job.id)
        assert any(p.endswith("/../escaped") for p in fs.find(folder))  # planted
        destination = tmp_path / "a" / "b" / "c" / "d" / "e"
        written = batch.download_artifacts(job.id, destination)
        assert [pathlib.Path(p).name for p in written] == ["good.txt"]
        assert set(batch.artifacts(job.id)) == {"good.txt"}
        assert not list(tmp_path.rglob("escaped"))
        batch.gateway.close()


def test_artifact_links_and_links_in_the_destination_are_refused(
    batch_client, tmp_path
):
    from dask_batch.core.names import InvalidNameError
    from dask_batch.storage.store import ARTIFACTS

    job = batch_client.submit(add, 1, 1, workers=0)
    batch_client.wait(job.id, timeout=60)
    folder = pathlib.Path(batch_client.store.job_path(batch_client.user, job.id))
    (folder / ARTIFACTS / "sub").mkdir(parents=True)
    (folder / ARTIFACTS / "sub" / "data.txt").write_text("fine")
    (folder / ARTIFACTS / "passwd").symlink_to("/etc/passwd")
    assert batch_client.artifacts(job.id) == {"sub/data.txt": 4}
    outside = tmp_path / "outside"
    outside.mkdir()
    destination = tmp_path / "dl"
    destination.mkdir()
    (destination / "sub").symlink_to(outside)
    with pytest.raises(InvalidNameError, match="outside"):
        batch_client.download_artifacts(job.id, destination)
    assert list(outside.iterdir()) == []


def escape_through_artifacts_path():
    import dask_batch

    return dask_batch.artifacts_path("..", "..", "spec.json")


def test_artifacts_path_refuses_parts_that_leave_the_folder(batch_client):
    from dask_batch import JobFailedError

    job = batch_client.submit(escape_through_artifacts_path, workers=0)
    with pytest.raises(JobFailedError, match="would leave its folder"):
        job.result(timeout=60)


@pytest.mark.parametrize(
    "member",
    ["link", "dotdot", "absolute", "too-big"],
)
def test_uploaded_archives_are_unpacked_by_our_own_checks(tmp_path, member):
    import io
    import json
    import tarfile

    import cloudpickle
    from test_errors import run_main_process

    from dask_batch.storage.store import FILES, JobStore

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(
            {"dotdot": "../../evil", "absolute": "/tmp/evil"}.get(member, "f")
        )
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            data = b"x" * (2048 if member == "too-big" else 4)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    store = JobStore(str(tmp_path / "jobs"))
    job_id = "20260101-000000-000-7a2b0000"
    store.put("alice", job_id, FILES, buffer.getvalue())
    payload = cloudpickle.dumps((len, ([1],), {}))
    env = {"DASK_BATCH__UPLOAD_LIMIT": "1 kiB"} if member == "too-big" else {}
    proc = run_main_process(
        store, job_id, payload, payload, tmp_path, has_files=True, env=env
    )
    assert proc.returncode == 1
    error = json.loads((tmp_path / "outcome.json").read_text())["error"]
    assert "could not be set up" in error["message"]
    assert not (tmp_path / "evil").exists()
    assert not pathlib.Path("/tmp/evil").exists()


# -- input checked at every entry point ----------------------------------------


@pytest.mark.parametrize(
    "job_id", ["../../etc", "20261126-081530-123-3F9A1C2B", "x" * 500, "", "a/b"]
)
def test_job_ids_are_checked_in_the_api_the_cli_and_the_store(
    batch_client, job_id, tmp_path
):
    from click.testing import CliRunner

    from dask_batch import JobNotFoundError
    from dask_batch.cli import main

    for method in (batch_client.status, batch_client.result, batch_client.logs):
        with pytest.raises(JobNotFoundError, match="not a dask-batch job id"):
            method(job_id)
    with pytest.raises(JobNotFoundError):
        batch_client.store.job_path(batch_client.user, job_id)
    # No gateway configured: a command that got past the id would start the
    # local default here.
    local = tmp_path / "local"
    with dask.config.set({"batch.local.directory": str(local)}):
        for command in (
            ["status", job_id],
            ["cancel", "20261126-081530-123-3f9a1c2b", job_id],
        ):
            result = CliRunner().invoke(
                main, ["--storage", batch_client.store.url, *command]
            )
            assert result.exit_code == 1, result.output
            assert "not a dask-batch job id" in result.output
    assert not local.exists()


@pytest.mark.parametrize("user", ["../bob", "bob/x", ".index", "a\nb", "a" * 200])
def test_user_names_that_cannot_name_a_folder_are_refused(batch_gateway, user):
    from dask_batch.core.names import InvalidNameError

    gateway = batch_gateway.gateway()
    with pytest.raises(InvalidNameError, match="cannot name a storage folder"):
        BatchClient(gateway=gateway, storage="memory://jobs", user=user)
    gateway.close()


def test_notebook_parameter_names_must_be_identifiers(batch_client, tmp_path):

    notebook = tmp_path / "n.ipynb"
    notebook.write_text("{}")
    for name in ("x = 1\nimport os", "class", "1x"):
        with pytest.raises(SubmitError, match="not a Python identifier"):
            batch_client.submit_notebook(notebook, {name: 1})
    assert batch_client.jobs() == []


def test_one_broken_record_or_index_entry_never_breaks_a_listing(batch_client):
    import gzip
    import json

    from dask_batch.core.records import new_job_id
    from dask_batch.testing import write_job_records

    store, user = batch_client.store, batch_client.user
    good = write_job_records(store, user, 3)
    broken = new_job_id()
    store.put(user, broken, SPEC, b"[]")
    # A pack entry with a field no record has, and a javascript: link.
    entry = store.get_json(user, good[0], STATE)
    planted = {
        "id": good[0], "user": user, "name": "job-0", "submitted": "2026-01-01",
        "state": entry["state"], "surprise": 1, "dashboard_link": "javascript:x()",
        "mlflow_run_id": "r1", "mlflow_url": "javascript:steal()",
    }  # fmt: skip
    pack = gzip.compress(json.dumps({"version": 1, "jobs": [planted]}).encode())
    store.backend.put_whole(f"{store.index_path(user)}/{good[0]}-1-abc.json.gz", pack)
    with pytest.warns(UserWarning, match=broken):
        listed = batch_client.jobs()
    assert sorted(r.id for r in listed) == sorted(good)
    assert "javascript:" not in listed._repr_html_()
    assert [r.mlflow_url for r in listed if r.mlflow_run_id == "r1"] == [""]


def test_the_local_default_is_private(tmp_path):
    import stat

    import dask_batch.local

    directory = tmp_path / "local"
    directory.mkdir(mode=0o755)
    info = dask_batch.testing._start_gateway(str(directory))
    try:
        with BatchClient(gateway=info.gateway(), storage=info.storage) as batch:
            batch.gateway.close()
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        for name in ("secrets.json", "settings.json", "server.json", "gateway.sqlite"):
            mode = stat.S_IMODE((directory / name).stat().st_mode)
            assert mode & 0o077 == 0, (name, oct(mode))
        assert batch.user
    finally:
        dask_batch.local.stop(str(directory))


# -- untrusted sizes never drive allocation or time ----------------------------

PLANTED_FRAME = """
import struct, sys
from dask_batch.core.pickling import RESULT_MAGIC
from dask_batch.storage.store import RESULT, JobStore
from dask_batch import StorageError

store = JobStore(sys.argv[1])
job = "20260101-000000-000-0000f4a3"
# 47 bytes that claim a 4-byte pickle and one 800 MB buffer.
planted = RESULT_MAGIC + struct.pack(">QI", 4, 1) + struct.pack(">Q", 800 * 2**20)
padding = b"\\0" * (47 - len(planted) - 5)
store.put("alice", job, RESULT, planted + b"\\x80\\x05N.x" + padding)
try:
    store.get_result("alice", job)
except StorageError as exc:
    print("refused:", exc)
with open("/proc/self/status") as f:
    print([line for line in f if line.startswith("VmHWM")][0].split()[1])
"""


def test_a_planted_result_frame_cannot_make_the_client_allocate(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", PLANTED_FRAME, str(tmp_path / "jobs")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    refused, peak_kib = proc.stdout.strip().splitlines()
    assert refused.startswith("refused:") and "truncated" in refused
    assert int(peak_kib) < 300 * 1024  # an 800 MB buffer was never made


def test_log_reads_are_bounded_and_follow_keeps_characters_whole(batch_client):
    from dask_batch import JobFailedError
    from dask_batch.testing import write_job_records

    store, user = batch_client.store, batch_client.user
    (job_id,) = write_job_records(store, user, 1)  # a FAILED job
    store.put_log_chunk(user, job_id, 1, 0, b"x" * 8 * 2**20)  # no newline
    store.put_log_chunk(user, job_id, 1, 1, "caf\u00e9 ".encode()[:4])
    store.put_log_chunk(user, job_id, 1, 2, "caf\u00e9 ".encode()[4:] + b"done\n")
    with pytest.raises(JobFailedError) as info:
        batch_client.result(job_id)
    assert len(info.value.log_tail) < 2000  # not the 8 MiB line
    with dask.config.set({"batch.logs-limit": "1 kiB"}):
        text = batch_client.logs(job_id)
    assert text.startswith(f"[dask-batch: the log of job {job_id} is longer")
    assert len(text) < 2048 and text.endswith("caf\u00e9 done\n")
    followed = "".join(batch_client.logs(job_id, follow=True))
    assert followed.endswith("caf\u00e9 done\n") and "\ufffd" not in followed


def test_the_cli_prints_no_terminal_control_sequences_from_storage(
    batch_client, configured_cli
):
    from dask_batch.testing import write_job_records

    store, user = batch_client.store, batch_client.user
    (job_id,) = write_job_records(store, user, 1)
    planted = b"\x1b]0;owned\x07\x1b[2J\x1b[31mred\x1b[0m\rbar\n"
    store.put_log_chunk(user, job_id, 1, 0, planted)
    invoke = configured_cli(DASK_BATCH__USER=user)
    result = invoke("--storage", store.url, "logs", job_id)
    assert result.output == "red\nbar\n"


# -- per-user storage identity, under moto's IAM enforcement --------------------

IAM_MOTO = """
import os, sys
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = sys.argv[1]
import logging
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("%s:%s" % server.get_host_and_port(), flush=True)
sys.stdin.read()  # until the test closes it
server.stop()
"""


def _user_policy(bucket: str, user: str) -> str:
    import json

    prefix = f"jobs/{user}"
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "s3:*",
                    "Resource": f"arn:aws:s3:::{bucket}/{prefix}/*",
                },
                {
                    "Effect": "Allow",
                    "Action": "s3:ListBucket",
                    "Resource": f"arn:aws:s3:::{bucket}",
                    "Condition": {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}},
                },
            ],
        }
    )


@pytest.fixture
def iam_s3():
    """A moto S3 with IAM enforced: ``(url, {user: storage options})``.

    Its first seven requests (bucket, two users, their policies and keys)
    are the only unauthenticated ones; after that only each user's own keys
    work, and only on their own prefix.
    """
    import boto3

    proc = subprocess.Popen(
        [sys.executable, "-c", IAM_MOTO, "7"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        endpoint = f"http://{proc.stdout.readline().strip()}"
        admin = {"aws_access_key_id": "x", "aws_secret_access_key": "x"}
        connect = {"endpoint_url": endpoint, "region_name": "us-east-1", **admin}
        s3, iam = boto3.client("s3", **connect), boto3.client("iam", **connect)
        bucket = "shared"
        s3.create_bucket(Bucket=bucket)
        options = {}
        for user in ("alice", "mallory"):
            iam.create_user(UserName=user)
            iam.put_user_policy(
                UserName=user,
                PolicyName="own-prefix",
                PolicyDocument=_user_policy(bucket, user),
            )
        for user in ("alice", "mallory"):
            key = iam.create_access_key(UserName=user)["AccessKey"]
            options[user] = {
                "key": key["AccessKeyId"],
                "secret": key["SecretAccessKey"],
                "client_kwargs": {"endpoint_url": endpoint},
            }
        yield f"s3://{bucket}/jobs", options
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        proc.stdout.close()


def try_other_prefix(victim_folder):
    """Main of Mallory's job: read and write under Alice's prefix."""
    import fsspec

    fs = fsspec.filesystem("s3")  # the job's own credentials
    outcomes = {}
    # (moto does not enforce the s3:prefix condition on ListBucket, so
    # listing is not checked here; S3 itself refuses it too.)
    for action, call in (
        ("read", lambda: fs.cat_file(f"{victim_folder}/spec.json")),
        ("write", lambda: fs.pipe_file(f"{victim_folder}/result.pkl", b"evil")),
    ):
        try:
            call()
            outcomes[action] = "allowed"
        except PermissionError:
            outcomes[action] = "denied"
    fs.pipe_file(victim_folder.replace("/alice/", "/mallory/") + "-own", b"mine")
    outcomes["own prefix"] = "allowed"
    return outcomes


def test_each_users_job_reaches_only_that_users_prefix(tmp_path, iam_s3):
    from dask_gateway import BasicAuth

    import dask_batch.local
    from dask_batch.client.gateway import BatchGateway
    from dask_batch.testing import _start_gateway

    url, options = iam_s3
    directory = str(tmp_path / "gateway")
    info = _start_gateway(
        directory,
        allowed_storage=[url],
        storage_options_by_user=options,
    )
    clients = {}
    try:
        for user in ("alice", "mallory"):
            gateway = BatchGateway(
                address=info.address,
                proxy_address=info.proxy_address,
                auth=BasicAuth(user, info.password),
            )
            clients[user] = BatchClient(
                gateway=gateway, storage=url, storage_options=options[user]
            )
        alice, mallory = clients["alice"], clients["mallory"]
        victim = alice.submit(add, 20, 22, workers=0)
        assert alice.result(victim.id, timeout=90) == 42
        folder = alice.store.job_path("alice", victim.id)
        attack = mallory.submit(try_other_prefix, folder, workers=0)
        assert mallory.result(attack.id, timeout=90) == {
            "read": "denied",
            "write": "denied",
            "own prefix": "allowed",
        }
        assert alice.result(victim.id) == 42
    finally:
        for client in clients.values():
            client.gateway.close()
        dask_batch.local.stop(directory)


def test_the_gateway_handler_checks_storage_and_mints_per_user_credentials():
    from types import SimpleNamespace

    from dask_batch.gateway_config import batch_cluster_options

    def mint(user_name, storage):
        if user_name == "broken":
            raise RuntimeError("token sk-live-123 expired")
        return {"key": f"key-of-{user_name}", "secret": "s"}

    options_for = batch_cluster_options(
        allowed_storage=["s3://bucket/jobs"],
        storage_options=mint,
        # A user-controlled environment option cannot replace minted ones.
        handler=lambda o, u: {"environment": {"DASK_BATCH__STORAGE_OPTIONS": "{}"}},
    )
    user = SimpleNamespace(name="alice")
    options = options_for(user)
    # The gateway names the authenticated user, and takes no other name.
    (field,) = (f for f in options.get_specification() if f["field"] == "batch_user")
    assert field["spec"]["options"] == ["alice"]
    with pytest.raises(ValueError, match="batch_user"):
        options.parse_options({"batch_user": "bob"})

    def request(storage, job_id="20261126-081530-123-3f9a1c2b", who=user):
        values = SimpleNamespace(
            batch_job_id=job_id,
            batch_storage=storage,
            batch_payload_digest="d",
            batch_secret_key="k",
        )
        return options.handler(values, who)["environment"]

    env = request("s3://bucket/jobs/team-a")  # below an allowed root
    assert env["DASK_BATCH_USER"] == "alice"
    assert env["DASK_BATCH__STORAGE_OPTIONS"] == repr(
        {"key": "key-of-alice", "secret": "s"}
    )
    for storage in ("s3://bucket/jobsX", "s3://other/jobs", "s3://bucket"):
        with pytest.raises(ValueError, match="not allowed on this gateway"):
            request(storage)
    with pytest.raises(ValueError, match="not a dask-batch job id"):
        request("s3://bucket/jobs", job_id="../x")
    with pytest.raises(ValueError, match="RuntimeError") as info:
        request("s3://bucket/jobs", who=SimpleNamespace(name="broken"))
    assert "sk-live" not in str(info.value)
    with pytest.raises(TypeError, match="allowed_storage"):
        batch_cluster_options()  # the roots must be named (None: any)


def test_the_runner_refuses_a_spec_rewritten_in_storage(tmp_path):
    from dask_batch.core.secrets import JobSecrets, seal
    from dask_batch.core.signing import job_keys, sign_spec
    from dask_batch.runtime.spec import read_signed_spec
    from dask_batch.storage.store import SECRETS, JobStore

    store = JobStore(str(tmp_path / "jobs"))
    job_id = "20260101-000000-000-5bec0001"
    keys = job_keys(os.urandom(32), job_id)
    spec = sign_spec(keys.job_key, {"id": job_id, "user": "alice", "timeout": 3600})
    store.put_json("alice", job_id, SPEC, spec)
    store.put(
        "alice", job_id, SECRETS, seal(JobSecrets({}, keys.job_key), keys.env_key)
    )
    read, secrets = read_signed_spec(store, "alice", job_id, keys.env_key)
    assert read == spec and secrets.job_key == keys.job_key
    spec["timeout"] = 1  # rewritten by someone who can write the storage
    store.put_json("alice", job_id, SPEC, spec)
    with pytest.raises(ResultIntegrityError, match="not signed with its key"):
        read_signed_spec(store, "alice", job_id, keys.env_key)


USER_PROCESS = """
import sys
from dask_batch import BatchClient, DaskBatchError

action, argument = sys.argv[1], sys.argv[2]
with BatchClient() as batch:
    if action == "submit":
        import operator
        if argument == "plant":
            from test_security import plant
            job = batch.submit(plant, sys.argv[3], workers=0)
        else:
            job = batch.submit(operator.add, 1, 2, workers=0)
        batch.wait(job.id, timeout=60)
        print(job.id)
    else:
        try:
            print("value:", batch.result(argument, timeout=60))
        except DaskBatchError as exc:
            print("refused:", type(exc).__name__)
"""


def test_two_people_on_two_machines_one_shared_storage(batch_gateway, tmp_path):
    """Each user's client in its own process with its own HOME (and secret)."""
    marker = tmp_path / "mallory-ran-code-in-alices-client"
    storage = tmp_path / "shared-jobs"

    def as_user(user, *args):
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DASK_", "XDG_CONFIG_HOME"))
        }
        env.update(batch_gateway.environment())
        env.update(
            HOME=str(tmp_path / f"home-{user}"),
            DASK_GATEWAY__AUTH__KWARGS__USERNAME=user,
            DASK_BATCH__STORAGE=str(storage),
            PYTHONPATH=os.pathsep.join([str(pathlib.Path(__file__).parent)]),
        )
        proc = subprocess.run(
            [sys.executable, "-c", USER_PROCESS, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().splitlines()[-1]

    victim = as_user("alice", "submit", "add")
    attack = as_user("mallory", "submit", "plant", str(marker))
    assert as_user("alice", "result", victim) == "value: 3"
    store = JobStore(str(storage))
    copy_job_folder(store, "mallory", attack, "alice", victim, keep=[SPEC])
    assert as_user("alice", "result", victim) == "refused: ResultIntegrityError"
    assert not marker.exists()


def secret_key_seen_by_workers_and_main():
    import os

    from distributed import get_client

    client = get_client()
    client.wait_for_workers(1, timeout=60)
    seen = client.run(lambda: os.environ.get("DASK_BATCH_SECRET_KEY"))
    return sorted(set(seen.values()), key=str), os.environ.get("DASK_BATCH_SECRET_KEY")


def test_the_env_key_reaches_the_scheduler_only(batch_client):
    job = batch_client.submit(secret_key_seen_by_workers_and_main, workers=1)
    assert job.status().mode == "server"
    workers, main = job.result(timeout=90)
    assert (workers, main) == ([None], None)


def test_a_secret_that_cannot_be_made_is_a_clear_error(tmp_path):
    from dask_batch.core.signing import user_secret

    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    with (
        dask.config.set({"batch.secret-file": str(blocked / "secret")}),
        pytest.raises(MissingSecretError, match=r"batch\.secret-file"),
    ):
        user_secret(create=True, job_id="20260101-000000-000-00000001")


def test_the_gateway_never_holds_a_jobs_env_key_in_plaintext(batch_gateway, tmp_path):
    """The local gateway has a runner key: the env key reaches the gateway
    sealed to it, and its database, its API (the cluster's options, as anyone
    who can list the cluster sees them) and its log hold only that."""
    from dask_batch.core.runner_key import is_sealed
    from dask_batch.core.signing import job_keys, user_secret

    storage = str(tmp_path / "jobs")
    gateway = batch_gateway.gateway()
    try:
        with BatchClient(gateway=gateway, storage=storage) as batch:
            job = batch.submit(abs, -7, env={"TOKEN": "tok-123"}, workers=0)
            assert job.result(timeout=90) == 7
            env_key = job_keys(user_secret(), job.id).env_key
            report = gateway.get_cluster(job.status().cluster_name)
            shown = report.options["batch_secret_key"]
            assert is_sealed(shown) and env_key not in shown
            # A retry on a new cluster, by a service with no secret, sends the
            # sealed value the gateway reported as it is.
    finally:
        gateway.close()
    database = os.path.join(batch_gateway.directory, "gateway.sqlite")
    for path in (database, os.path.join(batch_gateway.directory, "gateway.log")):
        with open(path, "rb") as f:
            data = f.read()
        assert env_key.encode() not in data, path
    with open(database, "rb") as f:
        assert shown.encode() in f.read()  # what it does hold


def test_a_gateway_with_a_runner_key_refuses_an_unsealed_env_key(tmp_path):
    from types import SimpleNamespace

    from dask_batch.core.runner_key import (
        RUNNER_KEY_OPTION,
        new_private_key,
        open_env_key,
        seal_env_key,
    )
    from dask_batch.gateway_config import batch_cluster_options

    key_file = tmp_path / "runner-key.pem"
    key_file.write_bytes(new_private_key())
    options = batch_cluster_options(
        allowed_storage=None, runner_key_file=str(key_file)
    )(SimpleNamespace(name="alice"))
    (field,) = (
        f for f in options.get_specification() if f["field"] == RUNNER_KEY_OPTION
    )
    (public,) = field["spec"]["options"]  # a choice of one: the public half
    sealed = seal_env_key(public, "the-env-key")
    assert open_env_key(key_file.read_bytes(), sealed) == "the-env-key"
    other = tmp_path / "other.pem"
    other.write_bytes(new_private_key())
    with pytest.raises(ValueError, match="not sealed to this gateway"):
        open_env_key(other.read_bytes(), sealed)

    def request(secret_key):
        values = SimpleNamespace(
            batch_job_id="20261126-081530-123-3f9a1c2b",
            batch_storage="/jobs",
            batch_payload_digest="d",
            batch_secret_key=secret_key,
        )
        return options.handler(values, SimpleNamespace(name="alice"))["environment"]

    env = request(sealed)
    assert env["DASK_BATCH_SECRET_KEY"] == sealed
    assert env["DASK_BATCH__RUNNER__KEY_FILE"] == str(key_file)
    with pytest.raises(ValueError, match="only sealed"):
        request("the-env-key")


def wait_for_path(path):
    import os
    import time

    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "released"


def read_helper():
    with open("helper.py") as f:  # the uploaded files are main's folder
        return f.read()


def test_uploaded_files_swapped_in_storage_are_never_unpacked(batch_client, tmp_path):
    import io
    import tarfile

    from dask_batch.storage.store import FILES

    project = tmp_path / "project"
    project.mkdir()
    (project / "helper.py").write_text("VALUE = 'mine'\n")
    gate = tmp_path / "gate"
    upstream = batch_client.submit(wait_for_path, str(gate), workers=0)
    job = batch_client.submit(read_helper, after=upstream, files=project, workers=0)
    # While it waits, someone who can write the storage swaps its code.
    planted = io.BytesIO()
    with tarfile.open(fileobj=planted, mode="w:gz") as tar:
        evil = b"VALUE = 'planted'\n"
        info = tarfile.TarInfo("helper.py")
        info.size = len(evil)
        tar.addfile(info, io.BytesIO(evil))
    batch_client.store.put(batch_client.user, job.id, FILES, planted.getvalue())
    gate.touch()
    record = batch_client.wait(job.id, timeout=120)
    assert record.state is JobState.FAILED
    assert "not those its submitter signed" in record.message
    assert job.id in record.message
    # Unchanged, the same job's files are unpacked and imported.
    again = batch_client.submit(read_helper, files=project, workers=0)
    assert again.result(timeout=120) == "VALUE = 'mine'\n"
