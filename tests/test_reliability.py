"""Nothing lost, nothing orphaned, nobody else's jobs (issue 4)."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import textwrap
import time

import dask
import pytest
from conftest import child_processes, cluster_status, first_attempt_hangs
from dask_gateway import BasicAuth
from dask_gateway.client import ClusterStatus

from dask_batch import (
    AuthenticationError,
    BatchClient,
    CorruptRecordError,
    JobFailedError,
    JobNotFoundError,
    JobState,
    SubmitError,
    local,
)
from dask_batch.client.gateway import BatchGateway
from dask_batch.testing import (
    CuttableProxy,
    _start_gateway,
    gateway_clusters,
    main_processes,
    wait_for,
)


def sleeper(seconds):
    import time

    print("sleeping", flush=True)
    time.sleep(seconds)
    return seconds


def test_timeout_stops_main_and_its_cluster(batch_client):
    job = batch_client.submit(sleeper, 120, timeout="3s", workers=0)
    with pytest.raises(JobFailedError, match="timed out") as info:
        job.result(timeout=60)
    assert info.value.remote_type == "JobTimeout"
    record = job.status()
    assert record.state is JobState.FAILED and record.timeout == 3
    wait_for(
        lambda: (
            cluster_status(batch_client, record.cluster_name) is ClusterStatus.STOPPED
        ),
        15,
        "the timed-out job's cluster to stop",
    )


@pytest.mark.parametrize("timeout", ["-1", 0, "soon", "nan"])
def test_bad_timeout_fails_at_submit(batch_client, timeout):
    with pytest.raises(SubmitError, match="timeout must be a positive duration"):
        batch_client.submit(len, [], timeout=timeout)
    assert batch_client.jobs() == []


def test_oversize_payload_fails_at_submit_naming_the_limit(batch_client):
    with (
        dask.config.set({"batch.payload-limit": "1 KiB"}),
        pytest.raises(SubmitError, match=r"batch\.payload-limit \(1.00 kiB\)"),
    ):
        batch_client.submit(len, b"x" * 10_000)
    assert batch_client.jobs() == []


def test_retried_submission_with_an_idempotency_key_gives_one_job(batch_client):
    import datetime

    # Other tests' clusters may still be stopping: count only the new ones.
    started = datetime.datetime.now()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        jobs = list(
            pool.map(
                lambda _: batch_client.submit(
                    sleeper, 0, idempotency_key="nightly-2026-11-26", workers=0
                ),
                range(4),
            )
        )
    assert len({j.id for j in jobs}) == 1
    assert jobs[0].result(timeout=60) == 0
    again = batch_client.submit(sleeper, 0, idempotency_key="nightly-2026-11-26")
    assert again.id == jobs[0].id
    assert [r.id for r in batch_client.jobs()] == [jobs[0].id]
    every = ["pending", "running", "stopping", "stopped", "failed"]
    new = [
        c
        for c in batch_client.gateway.list_clusters(status=every)
        if c.start_time >= started
    ]
    assert [c.options["batch_job_id"] for c in new] == [jobs[0].id]


def test_running_job_heartbeats(batch_client):
    job = batch_client.submit(sleeper, 120, workers=0)
    record = wait_for(
        lambda: job.status().last_seen and job.status(), 30, "a heartbeat"
    )
    assert record.state is JobState.RUNNING
    age = time.time() - record.last_seen.timestamp()
    assert 0 <= age < 30
    job.cancel()


@pytest.mark.parametrize(
    ("how", "message"),
    [("SIGKILL", "killed by SIGKILL"), ("SIGSEGV", "killed by SIGSEGV")],
)
def test_main_killed_by_a_signal_fails_with_it(batch_client, how, message):
    def die(signame):
        import os
        import signal

        print("about to die", flush=True)
        os.kill(os.getpid(), getattr(signal, signame))

    job = batch_client.submit(die, how, workers=0)
    with pytest.raises(JobFailedError, match=message) as info:
        job.result(timeout=60)
    assert "about to die" in info.value.log_tail


def test_worker_death_is_recovered_as_dask_does(batch_client):
    def survive_a_worker_death():
        import os
        import signal

        import distributed

        client = distributed.get_client()
        client.wait_for_workers(2)
        victim = sorted(client.scheduler_info()["workers"])[0]
        futures = client.map(lambda x: x + 1, range(20), pure=False)
        client.gather(futures)
        # Local backend: the worker is a process on this machine.
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        return sum(client.gather(client.map(lambda x: x * 2, range(20), pure=False)))

    job = batch_client.submit(survive_a_worker_death, workers=2)
    assert job.result(timeout=120) == 380


def test_gateway_restart_mid_job_never_leaves_it_running(tmp_path):
    directory = str(tmp_path / "restarting")
    info = _start_gateway(directory)
    try:
        gateway = info.gateway()
        with BatchClient(gateway=gateway, storage=str(tmp_path / "jobs")) as batch:
            job = batch.submit(sleeper, 120, workers=0)
            wait_for(
                lambda: batch.status(job.id).state is JobState.RUNNING, 30, "RUNNING"
            )
            wait_for(lambda: child_processes(batch), 10, "main's process")
            names = gateway_clusters(batch.gateway)
        gateway.close()
        local.stop(directory)  # stops its clusters: main is terminated
        wait_for(lambda: not main_processes(names), 15, "main to be terminated")
        info = _start_gateway(directory)
        gateway = info.gateway()
        with BatchClient(gateway=gateway, storage=str(tmp_path / "jobs")) as batch:
            record = batch.status(job.id)
            assert record.state in (JobState.FAILED, JobState.LOST)
            assert "stopped" in record.message
        gateway.close()
    finally:
        local.stop(directory)


@pytest.fixture
def proxied_s3(batch_s3_server, batch_s3_storage):
    """``(url, storage_options, proxy)``: a fresh bucket reached through a
    loopback proxy that the test can cut."""
    url, _ = batch_s3_storage
    host, port = batch_s3_server.endpoint_url.rsplit("/", 1)[-1].split(":")
    proxy = CuttableProxy(host, int(port))
    options = dict(batch_s3_server.storage_options)
    options["client_kwargs"] = {"endpoint_url": proxy.url}
    yield url, options, proxy
    proxy.close()


def test_storage_outage_is_ridden_out_without_losing_a_log_line(
    batch_plain_gateway, proxied_s3
):
    url, options, proxy = proxied_s3
    gateway = batch_plain_gateway.gateway()
    try:
        with BatchClient(
            gateway=gateway, storage=url, storage_options=options
        ) as batch:

            def count(n):
                import time

                for i in range(n):
                    print(f"line {i}", flush=True)
                    time.sleep(0.1)
                return n

            job = batch.submit(count, 100, workers=0)
            wait_for(lambda: "line 5" in batch.logs(job.id), 30, "the first lines")
            proxy.cut()
            # The outage lasts until the runner has met it again and again.
            wait_for(lambda: proxy.refused >= 5, 60, "the runner to meet the outage")
            proxy.restore()
            assert job.result(timeout=120) == 100
            lines = batch.logs(job.id).split("\n")
            assert [x for x in lines if x.startswith("line ")] == [
                f"line {i}" for i in range(100)
            ]
    finally:
        gateway.close()


def square_slowly(x):
    import time

    time.sleep(0.5)
    return x * x


def add_up(upstream):
    return sum(upstream.values())


def test_a_storage_outage_during_an_array_and_a_pipeline_loses_no_task(
    batch_plain_gateway, proxied_s3
):
    from dask_batch import Step

    url, options, proxy = proxied_s3
    gateway = batch_plain_gateway.gateway()
    try:
        with BatchClient(
            gateway=gateway, storage=url, storage_options=options
        ) as batch:
            array = batch.map(square_slowly, range(8), max_parallel=2, workers=1)
            steps = [Step(square_slowly, name=f"s{i}", args=[i]) for i in range(4)] + [
                Step(add_up, name="sum", upstream=[f"s{i}" for i in range(4)])
            ]
            pipeline = batch.submit_pipeline(steps, max_parallel=2, workers=0)
            wait_for(
                lambda: batch.status(array.id).task_counts.get("SUCCEEDED", 0) >= 1,
                120,
                "the first element to succeed",
            )
            proxy.cut()
            cut_at = time.monotonic()
            # An outage of 10 s at least (the fault, not a wait for a state),
            # met by the runners again and again.
            wait_for(
                lambda: proxy.refused >= 10 and time.monotonic() - cut_at >= 10,
                60,
                "a 10 s outage that the runners met",
            )
            proxy.restore()
            assert array.result(timeout=180) == [i * i for i in range(8)]
            assert pipeline.result(timeout=180)["sum"] == 0 + 1 + 4 + 9
            for job in (array, pipeline):
                tasks = batch.tasks(job.id)
                assert {t.state for t in tasks} == {JobState.SUCCEEDED}
                assert all(t.attempt == 1 for t in tasks)  # each ran once
    finally:
        gateway.close()


@pytest.fixture(scope="module")
def crowded_gateway(tmp_path_factory, batch_s3_server):
    """A gateway with dask-gateway's default heartbeat period and timeout
    (15 s, 30 s).

    Twenty clusters and thirty Python processes starting at once on two cores
    can hold a scheduler's heartbeat past the 10 s the other fixtures allow,
    which is load, not a fault.
    """
    directory = str(tmp_path_factory.mktemp("crowded-gateway"))
    info = _start_gateway(
        directory,
        gateway_config={
            "DBBackendBase.cluster_heartbeat_period": 15,
            "DBBackendBase.cluster_heartbeat_timeout": 30,
        },
    )
    yield info
    local.stop(directory)


def test_twenty_concurrent_submissions_from_threads_and_processes(
    crowded_gateway, tmp_path
):
    storage = str(tmp_path / "jobs")
    # The processes reach the gateway as a second machine would: through the
    # gateway.* config in their environment.
    script = textwrap.dedent(
        """
        import sys
        from dask_batch import BatchClient

        with BatchClient(storage=sys.argv[1]) as batch:
            print(batch.submit(abs, -int(sys.argv[2]), workers=0).id)
        """
    )
    env = {**os.environ, **crowded_gateway.environment()}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, storage, str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(10)
    ]
    gateway = crowded_gateway.gateway()
    with BatchClient(gateway=gateway, storage=storage) as batch:
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            jobs = list(
                pool.map(lambda i: batch.submit(abs, -i, workers=0), range(10, 20))
            )
        ids = [j.id for j in jobs]
        # Every pipe is drained and closed before anything is asserted.
        outputs = [(proc, *proc.communicate(timeout=120)) for proc in procs]
        for proc, out, err in outputs:
            assert proc.returncode == 0, err
            ids.append(out.strip())
        assert len(set(ids)) == 20
        results = sorted(batch.result(i, timeout=180) for i in ids)
        assert results == list(range(20))
        assert sorted(r.id for r in batch.jobs()) == sorted(ids)
    gateway.close()


def test_users_see_read_and_cancel_only_their_own_jobs(batch_gateway, tmp_path):
    storage = str(tmp_path / "shared-bucket")

    def client_for(user):
        gateway = BatchGateway(
            address=batch_gateway.address,
            proxy_address=batch_gateway.proxy_address,
            auth=BasicAuth(user, batch_gateway.password),
        )
        return BatchClient(gateway=gateway, storage=storage)

    alice, bob = client_for("alice"), client_for("bob")
    try:
        assert (alice.user, bob.user) == ("alice", "bob")
        # The gateway says who bob is: he cannot file or read as alice.
        with (
            dask.config.set({"batch.user": "alice"}),
            pytest.raises(AuthenticationError, match="authenticates this"),
        ):
            client_for("bob")
        job = alice.submit(sleeper, 120, workers=0)
        wait_for(lambda: alice.status(job.id).state is JobState.RUNNING, 30, "RUNNING")
        assert bob.jobs() == []
        for call in (bob.status, bob.logs, bob.cancel, bob.artifacts):
            with pytest.raises(JobNotFoundError):
                call(job.id)
        assert alice.status(job.id).state is JobState.RUNNING
        # The gateway agrees: bob cannot stop alice's cluster either.
        with pytest.raises(Exception, match=r"403|Forbidden|lacks permissions"):
            bob.gateway.stop_cluster(alice.status(job.id).cluster_name)
        assert alice.cancel(job.id).state is JobState.CANCELLED
    finally:
        alice.gateway.close()
        bob.gateway.close()


def test_corrupt_record_errors_clearly_and_listing_skips_it(batch_client):
    good = batch_client.submit(sleeper, 0, workers=0)
    bad = batch_client.submit(sleeper, 0, workers=0)
    good.result(timeout=60)
    bad.result(timeout=60)
    batch_client.store.put(batch_client.user, bad.id, "final.json", b"{garbage")
    with pytest.raises(CorruptRecordError, match=bad.id):
        batch_client.status(bad.id)
    # Listings read the index, which holds the record as it was when the job
    # ended; a record that must be read (no index yet) is skipped instead.
    assert {r.id for r in batch_client.jobs()} == {good.id, bad.id}
    store = batch_client.store
    store.fs.rm(store.index_path(batch_client.user), recursive=True)
    with pytest.warns(UserWarning, match=f"Skipping job '{bad.id}'"):
        listed = batch_client.jobs()
    assert [r.id for r in listed] == [good.id]


def test_result_changed_in_storage_is_refused(batch_client):
    # The payload side (main's process checks its digest) is in test_errors.py.
    from dask_batch import DaskBatchError
    from dask_batch.storage.store import RESULT

    job = batch_client.submit(sleeper, 0, workers=0)
    job.result(timeout=60)
    import cloudpickle

    batch_client.store.put(batch_client.user, job.id, RESULT, cloudpickle.dumps("evil"))
    with pytest.raises(DaskBatchError, match="does not match the digest"):
        job.result(timeout=10)


def test_scheduler_killed_is_lost_with_last_seen(batch_client):
    from dask_batch.testing import job_cluster_client

    job = batch_client.submit(sleeper, 120, workers=0)
    wait_for(lambda: job.status().last_seen, 30, "a heartbeat")
    with job_cluster_client(batch_client, job.id) as client:
        pid = client.run_on_scheduler(os.getpid)
    os.kill(pid, signal.SIGKILL)
    record = wait_for(
        lambda: job.status().state is JobState.LOST and job.status(), 60, "LOST"
    )
    assert "last seen" in record.message


def test_retries_run_main_again_on_a_new_cluster_after_a_cluster_failure(
    batch_client, tmp_path
):
    from dask_batch.testing import job_cluster_client

    marker = tmp_path / "attempted"
    job = batch_client.submit(first_attempt_hangs, str(marker), retries=1, workers=0)
    wait_for(marker.exists, 30, "the first attempt to start")
    first_cluster = job.status().cluster_name
    with job_cluster_client(batch_client, job.id) as client:
        pid = client.run_on_scheduler(os.getpid)
    os.kill(pid, signal.SIGKILL)
    # Any client looking at the job notices the failure and retries it.
    assert job.result(timeout=120) == "second attempt"
    record = job.status()
    assert record.state is JobState.SUCCEEDED
    assert record.attempt == 2
    assert [a["attempt"] for a in record.attempts] == [1]
    assert first_cluster in record.attempts[0]["error"]
    assert record.cluster_name != first_cluster


def test_reads_never_start_a_cluster_and_reconcile_does(batch_client, tmp_path):
    from dask_batch.testing import job_cluster_client

    marker = tmp_path / "attempted"
    job = batch_client.submit(first_attempt_hangs, str(marker), retries=1, workers=0)
    wait_for(marker.exists, 30, "the first attempt to start")
    with job_cluster_client(batch_client, job.id) as client:
        pid = client.run_on_scheduler(os.getpid)
    os.kill(pid, signal.SIGKILL)
    record = wait_for(
        lambda: (r := job.status()).message.startswith("awaiting retry") and r,
        60,
        "the job to await its retry",
    )
    clusters = gateway_clusters(batch_client.gateway)
    for _ in range(3):
        assert job.status().message.startswith("awaiting retry")
    assert [r.id for r in batch_client.jobs()] == [job.id]
    assert "RUNNING" in job._repr_html_()
    assert record.state is JobState.RUNNING
    assert record.attempt == 1
    assert gateway_clusters(batch_client.gateway) == clusters
    # Reconciling is what starts the retry, once.
    (retried,) = batch_client.reconcile()
    assert retried.id == job.id
    assert retried.attempt == 2
    assert len(gateway_clusters(batch_client.gateway)) == len(clusters) + 1
    assert job.result(timeout=120) == "second attempt"
    assert len(gateway_clusters(batch_client.gateway)) == len(clusters) + 1


def flaky(marker):
    import pathlib

    path = pathlib.Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise ConnectionError("flaky network")
    return "ok"


def test_user_exceptions_are_retried_only_when_named(batch_client, tmp_path):
    job = batch_client.submit(
        flaky, str(tmp_path / "a"), retries=2, retry_on=[ConnectionError], workers=0
    )
    assert job.result(timeout=60) == "ok"
    record = job.status()
    assert (record.attempt, record.attempts[0]["error"]) == (
        2,
        "builtins.ConnectionError",
    )
    assert "attempt 2" in job.logs()

    not_named = batch_client.submit(flaky, str(tmp_path / "b"), retries=2, workers=0)
    with pytest.raises(JobFailedError, match="flaky network"):
        not_named.result(timeout=60)
    assert not_named.status().attempt == 1


@pytest.mark.parametrize(("retries", "retry_on"), [(-1, ()), (1, [42])])
def test_bad_retry_settings_fail_at_submit(batch_client, retries, retry_on):
    with pytest.raises(SubmitError, match="retr"):
        batch_client.submit(len, [], retries=retries, retry_on=retry_on)


def hog_memory(gib):
    blocks = []
    for _ in range(gib * 8):
        blocks.append(bytearray(2**27))  # 128 MiB at a time
    return len(blocks)


def test_main_past_its_memory_limit_fails_and_the_host_is_spared(batch_client):
    # 8 GiB: a host of 24 GiB survives it even if the limit were not applied.
    job = batch_client.submit(hog_memory, 8, memory_limit="3 GiB", workers=0)
    with pytest.raises(JobFailedError, match="MemoryError"):
        job.result(timeout=120)


@pytest.mark.parametrize("limit", ["lots", "1 MiB", -5])
def test_bad_memory_limit_fails_at_submit(batch_client, limit):
    with pytest.raises(SubmitError, match="memory_limit"):
        batch_client.submit(len, [], memory_limit=limit)


def test_results_rewritten_with_their_digest_are_refused(batch_client):
    import blake3

    from dask_batch import ResultIntegrityError
    from dask_batch.core.pickling import dumps_result
    from dask_batch.storage.store import FINAL, RESULT

    with dask.config.set({"batch.result-key": "k-" + os.urandom(8).hex()}):
        job = batch_client.submit(sleeper, 0, workers=0)
        assert job.result(timeout=60) == 0
        # An attacker with write access rewrites the result and its digest.
        forged = b"".join(dumps_result("forged"))
        store, user = batch_client.store, batch_client.user
        final = store.get_json(user, job.id, FINAL)
        final["result_digest"] = "blake3:" + blake3.blake3(forged).hexdigest()
        store.put(user, job.id, RESULT, forged)
        store.put_json(user, job.id, FINAL, final)
        with pytest.raises(
            ResultIntegrityError, match="not signed with this job's key"
        ):
            job.result(timeout=10)
    # Signing is on by default: without batch.result-key the user's secret
    # file is the key, and the forgery is refused all the same.
    from dask_batch.core.signing import user_secret

    user_secret(create=True)
    with pytest.raises(ResultIntegrityError, match="not signed with this job's key"):
        job.result(timeout=10)


@pytest.fixture(scope="module")
def impatient_gateway(tmp_path_factory, batch_s3_server):
    """Client-side gateway whose runners give up on storage after 3 s."""
    directory = str(tmp_path_factory.mktemp("impatient-gateway"))
    info = _start_gateway(
        directory,
        server_side=False,
        environment={
            "DASK_BATCH__RUNNER__STORAGE_RETRY_FOR": "3s",
            "DASK_BATCH__RUNNER__TERMINATE_GRACE": "1s",
        },
    )
    yield info
    local.stop(directory)


@pytest.mark.timeout(300)  # the waits below add up past the default 180 s
def test_storage_down_past_the_bound_still_stops_the_cluster(
    impatient_gateway, proxied_s3
):
    url, options, proxy = proxied_s3
    # Fail each storage call fast, so that the runner's 3 s bound is what counts.
    options["config_kwargs"] = {
        "retries": {"max_attempts": 1},
        "connect_timeout": 1,
        "read_timeout": 2,
    }
    gateway = impatient_gateway.gateway()
    try:
        with BatchClient(
            gateway=gateway, storage=url, storage_options=options
        ) as batch:
            job = batch.submit(sleeper, 2, workers=0)
            wait_for(
                lambda: batch.status(job.id).state is JobState.RUNNING, 30, "RUNNING"
            )
            proxy.cut()  # for good: main's result and the final state cannot be stored
            # Measured on an idle 2-core machine: 38 s from the cut to the
            # stop. Main's process gives up on its result and its error, the
            # runner on the artifacts, the log and the final state: each after
            # the 3 s bound and s3fs's own five tries inside each call. The
            # deadline leaves room for a loaded machine (CI saw over 60 s).
            wait_for(
                lambda: [c.name for c in gateway.list_clusters()] == [],
                120,
                "the cluster to stop although storage is down",
            )
            wait_for(lambda: not child_processes(batch), 15, "main to exit")
            proxy.restore()
            # LOST once the gateway has the cluster STOPPED (not STOPPING).
            record = wait_for(
                lambda: (
                    batch.status(job.id).state is JobState.LOST and batch.status(job.id)
                ),
                30,
                "the job to be reported LOST",
            )
            assert "never recorded an outcome" in record.message
    finally:
        gateway.close()
