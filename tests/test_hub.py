"""dask-batch on a real JupyterHub: hub tokens inside and outside the hub, the
jobs page as a hub service with HubOAuth, and the service keeping jobs honest
with nobody looking. See hub.py for the deployment these tests run."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import (
    first_attempt_hangs,
    wait_for_skip_then_second_run,
    wait_until_nothing_left,
)
from cryptography.fernet import InvalidToken
from dask_gateway import JupyterHubAuth
from hub import PASSWORD, http, running_hub

from dask_batch import AuthenticationError, BatchClient, JobNotFoundError, JobState
from dask_batch.client.gateway import BatchGateway
from dask_batch.core.runner_key import SEALED_PREFIX, open_env_key
from dask_batch.core.secrets import unseal
from dask_batch.storage.store import STATE, JobStore
from dask_batch.testing import (
    job_cluster_client,
    wait_for,
    write_job_records,
)

DOCS = pathlib.Path(__file__).parent.parent / "docs" / "_static"

pytestmark = pytest.mark.xdist_group("hub")

INSIDE = textwrap.dedent(
    """
    import json, sys
    from dask_batch import BatchClient

    def add(a, b):
        return a + b

    with BatchClient() as batch:
        if sys.argv[1] == "submit":
            job = batch.submit(add, 2, 3, name="from-the-hub", workers=0)
            print(json.dumps({"user": batch.user, "id": job.id}))
        else:
            result = batch.result(sys.argv[2], timeout=120)
            print(json.dumps({"user": batch.user, "result": result}))
    """
)


def triple(n):
    return 3 * n


def sleeper(seconds):
    import time  # imported where the job runs

    time.sleep(seconds)
    return seconds


@pytest.fixture(scope="module")
def hub(tmp_path_factory, batch_s3_server):
    import s3fs

    from dask_batch.testing import _gateway_environment

    bucket = f"hub-{os.urandom(6).hex()}"
    s3fs.S3FileSystem(**batch_s3_server.storage_options).mkdir(bucket)
    directory = str(tmp_path_factory.mktemp("hub"))
    with running_hub(
        directory,
        _gateway_environment(batch_s3_server),
        f"s3://{bucket}/jobs",
        batch_s3_server.storage_options,
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_cluster_left(hub, request):
    """Every cluster a test started has stopped after it (as the suite checks
    for its basic-auth gateways): each user asks the hub's gateway."""
    yield
    for user in ("alice", "bob", "dora"):
        with BatchGateway(
            address=hub.gateway.address, auth=JupyterHubAuth(hub.token(user))
        ) as gateway:
            wait_until_nothing_left(
                gateway, f"{user} after {request.node.name}", 60, 30
            )


def laptop_client(hub, user, *, through_hub=False, token=None):
    """The seed's laptop form: a Gateway with a hub token, nothing else."""
    gateway = BatchGateway(
        address=hub.gateway_via_hub if through_hub else hub.gateway.address,
        proxy_address=hub.gateway.proxy_address,
        auth=JupyterHubAuth(token or hub.token(user)),
    )
    try:
        return BatchClient(
            gateway=gateway, storage=hub.storage, storage_options=hub.storage_options
        )
    except BaseException:
        gateway.close()
        raise


def close(*clients):
    for client in clients:
        client.gateway.close()


@pytest.fixture
def laptop(monkeypatch):
    """Outside the hub: no JUPYTERHUB_* variables, a different login name."""
    for name in list(os.environ):
        if name.startswith(("JUPYTERHUB_", "DASK_GATEWAY__", "DASK_BATCH__")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("USER", "laptop-login")
    monkeypatch.setenv("LOGNAME", "laptop-login")


def inside_the_hub(hub, user, *args):
    """Run INSIDE in ``user``'s hub session environment; its JSON answer."""
    done = subprocess.run(
        [sys.executable, "-c", INSIDE, *args],
        env=hub.session_environment(user),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_job_from_the_hub_is_fetched_from_a_laptop_and_back(hub, laptop):
    submitted = inside_the_hub(hub, "alice", "submit")
    assert submitted["user"] == "alice"
    # The laptop's login is "laptop-login": the name comes from the token.
    for through_hub in (False, True):
        alice = laptop_client(hub, "alice", through_hub=through_hub)
        try:
            assert alice.user == "alice"
            assert alice.result(submitted["id"], timeout=120) == 5
        finally:
            close(alice)
    alice = laptop_client(hub, "alice", through_hub=True)
    try:
        job = alice.submit(triple, 7, name="from-the-laptop", workers=0)
        fetched = inside_the_hub(hub, "alice", "result", job.id)
        assert fetched == {"user": "alice", "result": 21}
    finally:
        close(alice)


def cli(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "dask_batch.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_in_a_hub_session_and_on_a_laptop(hub, laptop):
    submitted = inside_the_hub(hub, "bob", "submit")
    assert inside_the_hub(hub, "bob", "result", submitted["id"])["result"] == 5
    env = hub.session_environment("bob")
    done = cli(env, "list")
    assert done.returncode == 0, done.stderr
    assert submitted["id"] in done.stdout
    # The laptop: only the gateway address, the auth type and a token.
    laptop_env = {
        k: v
        for k, v in env.items()
        if k not in ("JUPYTERHUB_USER", "JUPYTERHUB_API_URL")
    }
    laptop_env.update(USER="laptop-login", LOGNAME="laptop-login")
    done = cli(laptop_env, "status", submitted["id"])
    assert done.returncode == 0, done.stderr
    assert "SUCCEEDED" in done.stdout
    # alice, with bob's job id: not found, in her session and on her laptop.
    alice_env = hub.session_environment("alice")
    for stolen in (cli(alice_env, "status", submitted["id"]), cli(alice_env, "list")):
        assert submitted["id"] not in stolen.stdout
    done = cli(alice_env, "logs", submitted["id"])
    assert done.returncode != 0
    assert f"No job {submitted['id']!r}" in done.stderr


def test_users_see_only_their_own_jobs_everywhere(hub, laptop):
    alice, bob = laptop_client(hub, "alice"), laptop_client(hub, "bob")
    try:
        job = alice.submit(triple, 1, name="alices", workers=0)
        alice.wait(job.id, timeout=120)
        assert job.id not in [r.id for r in bob.jobs()]
        for call in (bob.status, bob.result, bob.logs, bob.artifacts, bob.cancel):
            with pytest.raises(JobNotFoundError):
                call(job.id)
        # The page's API, with each user's token.
        api = f"{hub.service_url}api/v1/jobs"
        alice_token, bob_token = hub.token("alice"), hub.token("bob")
        status, body = http(f"{api}/{job.id}", token=alice_token)
        assert status == 200, body
        assert json.loads(body)["user"] == "alice"
        for path in ("", "/logs", "/artifacts"):
            assert http(f"{api}/{job.id}{path}", token=bob_token)[0] == 404
        status, _ = http(f"{api}/{job.id}/cancel", token=bob_token, method="POST")
        assert status == 404
        listed = json.loads(http(api, token=bob_token)[1])["jobs"]
        assert job.id not in [j["id"] for j in listed]
        assert job.id in [
            j["id"] for j in json.loads(http(api, token=alice_token)[1])["jobs"]
        ]
        # dora holds the admin scope: she reads everyone's jobs, read-only.
        dora_token = hub.token("dora")
        assert http(f"{api}/{job.id}", token=dora_token)[0] == 200
        listed = json.loads(http(api, token=dora_token)[1])["jobs"]
        assert {"alice"} <= {j["user"] for j in listed}
        status, _ = http(f"{api}/{job.id}/cancel", token=dora_token, method="POST")
        assert status == 403
        # bob cannot make his records alice's.
        gateway = BatchGateway(
            address=hub.gateway.address,
            proxy_address=hub.gateway.proxy_address,
            auth=JupyterHubAuth(bob_token),
        )
        with pytest.raises(AuthenticationError, match="authenticates this client"):
            BatchClient(gateway=gateway, storage=hub.storage, user="alice")
        gateway.close()
    finally:
        close(alice, bob)


def test_a_token_without_the_gateway_scope_is_refused(hub, laptop):
    # carol is a hub user without access to the gateway or the page.
    with pytest.raises(AuthenticationError, match="access:services"):
        laptop_client(hub, "carol")
    assert http(f"{hub.service_url}api/v1/jobs", token=hub.token("carol"))[0] == 403
    # A token of alice's limited to reading her name does not reach either.
    narrow = hub.token("alice", scopes=["read:users:name!user=alice"])
    with pytest.raises(AuthenticationError, match=r"refused the credentials|could not"):
        laptop_client(hub, "alice", token=narrow)
    assert http(f"{hub.service_url}api/v1/jobs", token=narrow)[0] == 403
    # Not a token at all.
    with pytest.raises(AuthenticationError):
        laptop_client(hub, "alice", token="not-a-token")


def kill_scheduler(batch, job_id):
    with job_cluster_client(batch, job_id) as client:
        os.kill(client.run_on_scheduler(os.getpid), signal.SIGKILL)


def test_the_service_retries_or_loses_jobs_with_nobody_looking(hub, laptop, tmp_path):
    alice = laptop_client(hub, "alice")
    marker = tmp_path / "attempted"
    try:
        retried = alice.submit(first_attempt_hangs, str(marker), retries=1, workers=0)
        lost = alice.submit(sleeper, 300, name="no-retries", workers=0)
        wait_for(marker.exists, 60, "the first attempt to start")
        wait_for(lambda: alice.status(lost.id).state is JobState.RUNNING, 60, "RUNNING")
        clusters = {alice.status(j.id).cluster_name for j in (retried, lost)}
        for job in (retried, lost):
            kill_scheduler(alice, job.id)
    finally:
        close(alice)  # nobody is looking from here on
    store = JobStore(hub.storage, hub.storage_options)
    # A folder of someone who is no hub user, with a live job in it, does not
    # stop the service from keeping alice's jobs.
    (stray,) = write_job_records(store, "mallory", 1)
    store.put_json("mallory", stray, STATE, {"state": "RUNNING"})
    record = wait_for(
        lambda: (r := store.read_record("alice", retried.id)).state.is_terminal and r,
        120,
        "the service to retry the job on a new cluster, and the job to end",
    )
    assert record.state is JobState.SUCCEEDED, record.message
    assert record.attempt == 2
    assert record.cluster_name not in clusters
    record = wait_for(
        lambda: (r := store.read_record("alice", lost.id)).state.is_terminal and r,
        120,
        "the service to record the job without retries LOST",
    )
    assert record.state is JobState.LOST
    assert "never recorded an outcome" in record.message
    # Each act the service did for alice is an audit line, once the sweep
    # that did it has ended.
    acts = (
        f"dask-batch audit: user=alice act=retry-job id={retried.id} by=service",
        f"dask-batch audit: user=alice act=judge-lost id={lost.id} by=service",
    )
    try:
        wait_for(lambda: all(a in hub.log() for a in acts), 30, "the audit lines")
    except AssertionError as exc:
        # What the service said of these jobs, or warned of: which sweep saw
        # them, and whether another actor was first.
        said = [
            line
            for line in hub.log().splitlines()
            if "WARNING" in line or retried.id in line or lost.id in line
        ]
        raise AssertionError(f"{exc}; the service said: {said[-30:]}") from None
    log = hub.log()
    assert log.count(acts[0]) == 1
    assert "Could not check the jobs of user 'mallory'" in log
    assert log.count("Could not check the jobs of user 'mallory'") == 1
    # The writer of the LOST state folds the job into the catalog just after
    # the state itself is stored, so the record can say LOST a moment before.
    wait_for(
        lambda: lost.id in store.read_index("alice"),
        30,
        "the LOST job to be folded into alice's job catalog",
    )
    # A job deleted from storage by hand leaves alice's job catalog, which
    # windowed listings read, with nobody listing everything.
    store.fs.rm(store.job_path("alice", lost.id), recursive=True)
    wait_for(
        lambda: lost.id not in store.read_index("alice"),
        60,
        "the service's full listing to drop the deleted job from the catalog",
    )


def test_log_in_at_the_hub_open_the_service_and_cancel(hub, laptop, browser):
    alice, bob = laptop_client(hub, "alice"), laptop_client(hub, "bob")
    page = browser.new_page()
    try:
        done = alice.submit(triple, 2, name="finished", workers=0)
        running = alice.submit(sleeper, 300, name="training", workers=0)
        bobs = bob.submit(triple, 3, name="bobs-job", workers=0)
        alice.wait(done.id, timeout=120)
        page.goto(f"{hub.url}/hub/login")
        page.fill("#username_input", "alice")
        page.fill("#password_input", PASSWORD)
        page.click("#login_submit")
        page.wait_for_url("**/hub/home")
        # The service is in the hub's Services menu.
        page.click("a.dropdown-toggle:has-text('Services')")
        page.click("a.dropdown-item:has-text('dask-batch')")
        page.wait_for_selector(
            f'tr[data-id="{running.id}"] .state-RUNNING', timeout=60000
        )
        assert page.url.startswith(hub.service_url)
        names = page.locator("td.name").all_inner_texts()
        assert {"finished", "training"} <= set(names)
        assert "bobs-job" not in names
        assert page.inner_text("header .user") == "alice"
        DOCS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS / "hub-jobs.png"), full_page=True)
        page.click(f'tr[data-id="{running.id}"] td.name a')
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#cancel")
        page.wait_for_selector("#state.state-CANCELLED", timeout=30000)
        assert alice.status(running.id).state is JobState.CANCELLED
        assert alice.status(done.id).state is JobState.SUCCEEDED
        # bob's job, by its URL: not found, as an unknown job is.
        response = page.goto(f"{hub.service_url}jobs/{bobs.id}")
        assert response.status == 404
        assert bob.status(bobs.id).state is not JobState.CANCELLED
    finally:
        page.close()
        alice.cancel(running.id)
        bob.wait(bobs.id, timeout=120)
        close(alice, bob)


def test_on_a_plain_gateway_the_hub_names_the_tokens_user(hub, laptop, monkeypatch):
    """A gateway without batch_cluster_options (client-side mode) cannot name
    the user: the hub is asked, at JUPYTERHUB_API_URL or the hub the gateway
    is reached through; never the local login."""
    from dask_gateway.options import Options

    from dask_batch.client.connection import gateway_user

    async def no_batch_options():
        return Options()

    def user_of(address, token):
        gateway = BatchGateway(address=address, auth=JupyterHubAuth(token))
        try:
            return gateway.sync(gateway_user, gateway, no_batch_options)
        finally:
            gateway.close()

    token = hub.token("bob")
    assert user_of(hub.gateway_via_hub, token) == "bob"
    with pytest.raises(AuthenticationError, match="JUPYTERHUB_API_URL"):
        user_of(hub.gateway.address, token)
    monkeypatch.setenv("JUPYTERHUB_API_URL", hub.api_url)
    assert user_of(hub.gateway.address, token) == "bob"
    with pytest.raises(AuthenticationError, match="refused GET /user"):
        user_of(hub.gateway.address, "not-a-token")


def plus_one(x):
    return x + 1


def test_the_service_starts_a_waiting_job_without_the_users_secret(hub, laptop):
    alice = laptop_client(hub, "alice")
    try:
        upstream = alice.submit(sleeper, 1, workers=0)
        waiting = alice.submit(plus_one, upstream, workers=0)
        assert alice.status(waiting.id).message.startswith("waiting for")
    finally:
        close(alice)  # nobody is looking from here on
    store = JobStore(hub.storage, hub.storage_options)
    record = wait_for(
        lambda: (r := store.read_record("alice", waiting.id)).state.is_terminal and r,
        120,
        "the service to start the waiting job once its upstream job SUCCEEDED",
    )
    assert record.state is JobState.SUCCEEDED, record.message
    assert record.released is not None
    assert (
        f"dask-batch audit: user=alice act=start-waiting-job id={waiting.id} by=service"
    ) in hub.log()
    alice = laptop_client(hub, "alice")
    try:
        assert alice.result(waiting.id) == 2
    finally:
        close(alice)


def hold_until(path):
    import os
    import time

    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "held" + os.environ.get("RUN_SECRET", "")


def what_the_service_holds(hub, schedule_id):
    """The service's delegation of a schedule, opened with the service's key."""
    import json as _json

    from cryptography.fernet import Fernet

    from dask_batch.workflows.schedules import Delegation, Schedules

    config = os.path.join(hub.directory, "service-config")
    key_file = os.path.join(config, "dask-batch", "service-key")
    with open(key_file) as f:
        fernet = Fernet(f.read().strip())
    schedules = Schedules(JobStore(hub.storage, hub.storage_options), None, "alice")
    sealed = schedules.read_part(schedule_id, Delegation.SEALED)
    return _json.loads(fernet.decrypt(sealed)), schedules


def test_the_service_fires_a_schedule_handed_to_it(hub, laptop, tmp_path):
    import dask

    from dask_batch.workflows.schedules import Schedules

    gate = tmp_path / "gate"
    alice = laptop_client(hub, "alice")
    try:
        with dask.config.set({"batch.service.url": hub.service_url}):
            # Every two seconds: a run, then a due time while it still goes.
            schedule = alice.schedule(
                hold_until,
                str(gate),
                cron="* * * * * */2",
                workers=0,
                env={"RUN_SECRET": "-psst"},
            )
    finally:
        close(alice)  # nobody is looking from here on
    store = JobStore(hub.storage, hub.storage_options)
    schedules = Schedules(store, None, "alice")
    history = wait_for_skip_then_second_run(
        lambda: schedules.history(schedule.id), gate.touch, "the service"
    )
    alice = laptop_client(hub, "alice")
    try:
        alice.pause_schedule(schedule.id)
        runs = [r.job_id for r in history if r.job_id]
        for job_id in runs:
            # Signed by the service with keys derived from the schedule's:
            # the owner's client checks them with the owner's secret.
            assert alice.result(job_id, timeout=120) == "held-psst"
            record = alice.status(job_id)
            assert record.schedule == schedule.id == record.keys_from
        # One audit line per run the service submitted or skipped for her.
        log = hub.log()
        for job_id in runs:
            assert (
                f"dask-batch audit: user=alice act=fire-schedule id={schedule.id} "
                "by=service"
            ) in log and f"job={job_id}" in log
        assert "outcome=skipped" in log
        assert "act=issue-gateway-token id=alice by=service" in log
        # What the service holds fires runs (a job key to sign them, the env
        # key sealed to the gateway's runner key) and opens no env value.
        held, schedules = what_the_service_holds(hub, schedule.id)
        assert set(held) == {"user", "schedule", "env_key", "job_key"}
        assert held["env_key"].startswith(SEALED_PREFIX)
        sealed_secrets = schedules.read_part(schedule.id, "secrets.bin")
        for key in (held["env_key"], held["job_key"]):
            with pytest.raises((ValueError, InvalidToken)):
                unseal(key, sealed_secrets)
        # Only with the runner key, which the gateway's schedulers hold.
        runner_key = pathlib.Path(hub.gateway.directory, "runner-key.pem")
        env_key = open_env_key(runner_key.read_bytes(), held["env_key"])
        assert unseal(env_key, sealed_secrets).env == {"RUN_SECRET": "-psst"}
        alice.delete_schedule(schedule.id)
    finally:
        close(alice)


def shout(text):
    return text.upper()


def test_the_service_starts_a_waiting_job_whose_upstream_cluster_it_never_knew(
    hub, laptop, batch_gateway, tmp_path
):
    """The upstream job ran on another gateway (as after the hub's gateway
    forgot its cluster): only the key handed to the service at submit can
    start the waiting job with nobody looking."""
    import dask
    from dask_gateway import BasicAuth

    gate = tmp_path / "gate"
    elsewhere = BatchClient(
        gateway=BatchGateway(
            address=batch_gateway.address,
            proxy_address=batch_gateway.proxy_address,
            auth=BasicAuth("alice", batch_gateway.password),
        ),
        storage=hub.storage,
        storage_options=hub.storage_options,
    )
    alice = laptop_client(hub, "alice")
    try:
        upstream = elsewhere.submit(hold_until, str(gate), workers=0)
        with dask.config.set({"batch.service.url": hub.service_url}):
            waiting = alice.submit(shout, upstream, workers=0)
        assert alice.status(waiting.id).message.startswith("waiting for")
    finally:
        close(alice, elsewhere)  # nobody is looking from here on
    gate.touch()
    store = JobStore(hub.storage, hub.storage_options)
    record = wait_for(
        lambda: (r := store.read_record("alice", waiting.id)).state.is_terminal and r,
        120,
        "the service to start the waiting job with the key handed to it",
    )
    assert record.state is JobState.SUCCEEDED, record.message
    assert store.read_record("alice", upstream.id).state is JobState.SUCCEEDED
    alice = laptop_client(hub, "alice")
    try:
        assert alice.result(waiting.id) == "HELD"
    finally:
        close(alice)


def test_the_service_keeps_only_a_key_that_opens_the_job(hub, laptop):
    import urllib.error
    import urllib.request

    alice = laptop_client(hub, "alice")
    try:
        job = alice.submit(plus_one, 1, workers=0)
        alice.wait(job.id, timeout=120)
    finally:
        close(alice)
    from cryptography.fernet import Fernet

    request = urllib.request.Request(
        f"{hub.service_url.rstrip('/')}/api/v1/jobs/{job.id}/delegate",
        data=json.dumps({"env_key": Fernet.generate_key().decode()}).encode(),
        headers={"Authorization": f"token {hub.token('alice')}"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=30)
    info.value.close()
    assert info.value.code >= 400
    store = JobStore(hub.storage, hub.storage_options)
    assert not store.exists("alice", job.id, "service.bin")


def notebook_job(server, token, method, path, body=None):
    """One Notebook Jobs REST call to a single-user server, through the hub."""
    status, data = http(f"{server}{path}", token=token, method=method, body=body)
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        return status, data.decode(errors="replace")


def test_notebook_jobs_in_hub_sessions_are_each_users_own(hub, laptop):
    """Real single-user servers spawned by the hub, with Notebook Jobs on
    dask-batch: alice's job and definition are hers alone, her definition is
    handed to the service, and bob's server sees none of it."""
    from lab_server import notebook

    notebook(os.path.join(hub.home("alice"), "mine.ipynb"), "print(n * 2)", "n = 1")
    hub.home("bob")
    alice_server, bob_server = hub.start_server("alice"), hub.start_server("bob")
    alice, bob = hub.token("alice"), hub.token("bob")
    try:
        body = {
            "name": "mine",
            "input_uri": "mine.ipynb",
            "runtime_environment_name": "dask-gateway",
            "output_formats": ["ipynb"],
            "compute_type": "1 worker",
            "parameters": {"n": "21"},
        }
        status, made = notebook_job(
            alice_server, alice, "POST", "/scheduler/jobs", body
        )
        assert status == 200, made
        job_id = made["job_id"]
        definition = dict(body, schedule="0 5 * * *", timezone="Europe/Paris")
        status, made = notebook_job(
            alice_server, alice, "POST", "/scheduler/job_definitions", definition
        )
        assert status == 200, made
        definition_id = made["job_definition_id"]
        # Handed to the service with the session's token, as schedules are.
        held, _ = what_the_service_holds(hub, definition_id)
        assert held["user"] == "alice" and held["schedule"] == definition_id

        def completed():
            status, job = notebook_job(
                alice_server, alice, "GET", f"/scheduler/jobs/{job_id}"
            )
            assert status == 200, job
            return job["status"] == "COMPLETED"

        wait_for(completed, 180, f"alice's notebook job {job_id} to complete")
        status, _ = notebook_job(
            alice_server, alice, "GET", f"/scheduler/jobs/{job_id}/download_files"
        )
        assert status == 204
        outputs = pathlib.Path(hub.home("alice"), "jobs")
        (executed,) = outputs.glob("mine-*/mine-*.ipynb")
        assert '"42' in executed.read_text()
        # Bob sees none of it, from his own server; nor can he reach hers.
        status, listed = notebook_job(bob_server, bob, "GET", "/scheduler/jobs")
        assert status == 200 and listed["jobs"] == []
        status, listed = notebook_job(
            bob_server, bob, "GET", "/scheduler/job_definitions"
        )
        assert status == 200 and listed["job_definitions"] == []
        status, answer = notebook_job(
            bob_server, bob, "GET", f"/scheduler/jobs/{job_id}"
        )
        assert status == 500 and job_id in str(answer)
        assert notebook_job(alice_server, bob, "GET", "/scheduler/jobs")[0] in (
            302,
            403,
        )
        status, answer = notebook_job(
            alice_server, alice, "DELETE", f"/scheduler/job_definitions/{definition_id}"
        )
        assert status == 204
    finally:
        hub.stop_server("alice")
        hub.stop_server("bob")
