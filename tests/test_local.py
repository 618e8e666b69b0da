"""The embedded local gateway and configuration."""

from __future__ import annotations

import os
import subprocess
import sys

import dask
import pytest

import dask_batch.local
from dask_batch import BatchClient, JobState
from dask_batch.client.submission import check_scaling as _check_scaling


@pytest.fixture
def local_dir(tmp_path):
    directory = str(tmp_path / "local")
    with dask.config.set({"batch.local.directory": directory}):
        yield directory
    dask_batch.local.stop(directory)


def test_local_gateway_outlives_the_process_that_started_it(local_dir):
    code = "import dask_batch.local as l; print(l.start().pid)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, DASK_BATCH__LOCAL__DIRECTORY=local_dir),
        check=True,
    )
    pid = int(out.stdout)
    info = dask_batch.local.status()
    assert info is not None and info.pid == pid
    assert info.address.startswith("http://127.0.0.1:")
    # Reused, not started twice.
    assert dask_batch.local.start().pid == pid

    with BatchClient() as batch:
        assert batch.gateway.address == info.address
        assert batch.store.url == os.path.join(local_dir, "jobs")
        job = batch.submit(sum, [1, 2, 3])
        assert job.result(timeout=60) == 6
        assert batch.status(job.id).state is JobState.SUCCEEDED
    stored = os.listdir(os.path.join(local_dir, "jobs", batch.user))
    assert sorted(stored) == [".index", job.id]

    assert dask_batch.local.stop() is True
    assert dask_batch.local.status() is None
    assert dask_batch.local.stop() is False


def test_secrets_file_is_private(local_dir):
    dask_batch.local.start()
    mode = os.stat(os.path.join(local_dir, "secrets.json")).st_mode & 0o777
    assert mode == 0o600


def test_default_directory_follows_config_then_xdg(monkeypatch, tmp_path):
    with dask.config.set({"batch.local.directory": str(tmp_path / "x")}):
        assert dask_batch.local.default_directory() == str(tmp_path / "x")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with dask.config.set({"batch.local.directory": None}):
        assert dask_batch.local.default_directory() == str(
            tmp_path / "xdg" / "dask-batch"
        )


def test_workers_default_comes_from_config_and_arguments_win(monkeypatch):
    assert _check_scaling("j", None, None) == (1, None)  # documented default
    with dask.config.set({"batch.workers": 3}):
        assert _check_scaling("j", None, None) == (3, None)
        assert _check_scaling("j", 5, None) == (5, None)
        assert _check_scaling("j", None, (0, 4)) == (None, (0, 4))


def test_batch_env_vars_are_read(monkeypatch):
    monkeypatch.setenv("DASK_BATCH__WORKERS", "7")
    monkeypatch.setenv("DASK_BATCH__STORAGE", "memory://from-env")
    config = dask.config.collect(env=os.environ)
    assert config["batch"]["workers"] == 7
    assert config["batch"]["storage"] == "memory://from-env"


def test_storage_from_config_is_used(batch_gateway):
    gateway = batch_gateway.gateway()
    with dask.config.set({"batch.storage": "memory://configured"}):
        batch = BatchClient(gateway=gateway)
        assert batch.store.url == "memory://configured"
        assert BatchClient(gateway=gateway, storage="memory://arg").store.url == (
            "memory://arg"
        )
    gateway.close()


def test_no_storage_with_a_remote_gateway_is_a_clear_error(batch_gateway):
    from dask_batch import StorageError

    gateway = batch_gateway.gateway()
    with pytest.raises(StorageError, match=r"batch\.storage"):
        BatchClient(gateway=gateway)
    gateway.close()


def test_gateway_with_an_owner_stops_when_the_owner_dies(tmp_path):
    from dask_batch.testing import wait_for

    directory = str(tmp_path / "owned")
    owner = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        info = dask_batch.local.start(directory, owner_pid=owner.pid)
        assert dask_batch.local.status(directory) is not None
    finally:
        owner.stdin.close()
        owner.wait()
    wait_for(
        lambda: dask_batch.local.status(directory) is None,
        30,
        f"the gateway {info.pid} to stop after its owner exited",
    )


def waits_for(path):
    import os
    import time

    while not os.path.exists(path):
        time.sleep(0.05)
    return "done"


def test_every_socket_of_the_local_default_clusters_is_on_loopback(local_dir, tmp_path):
    import psutil

    from dask_batch.testing import job_cluster_client, main_processes, wait_for

    go = tmp_path / "go"
    with BatchClient() as batch:
        job = batch.submit(waits_for, str(go), workers=2)
        with job_cluster_client(batch, job.id) as client:
            client.wait_for_workers(2, timeout=60)
            pids = {client.run_on_scheduler(os.getpid), *client.run(os.getpid).values()}
        name = batch.status(job.id).cluster_name
        pids |= set(wait_for(lambda: main_processes([name]), 30, "main's process"))
        listening = {
            (pid, conn.laddr.ip, conn.laddr.port)
            for pid in pids
            for conn in psutil.Process(pid).net_connections(kind="inet")
            if conn.status == psutil.CONN_LISTEN
        }
        # Scheduler (comm, dashboard, gateway API) and workers (comm,
        # dashboard, nanny) all listen; each on 127.0.0.1 only.
        assert len(listening) >= 5, listening
        assert {ip for _, ip, _ in listening} == {"127.0.0.1"}, listening
        go.touch()
        assert job.result(timeout=60) == "done"
