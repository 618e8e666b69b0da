"""pytest fixtures for testing batch code against real servers.

Registered as a pytest plugin (entry point ``dask_batch``), so a project that
installs ``dask-batch[test]`` can use them directly:

- ``batch_s3_server``: a moto S3 server on 127.0.0.1 (session);
- ``batch_s3_storage``: ``(url, storage_options)`` of a fresh bucket per test;
- ``batch_gateway``: a real local dask-gateway-server with the dask-batch preload
  and cluster options (server-side mode), schedulers allowed to reach the S3
  server (session);
- ``batch_plain_gateway``: a gateway without them (client-side mode) (session);
- ``batch_client``: a :class:`~dask_batch.BatchClient` on ``batch_gateway`` with
  a fresh local storage directory.

Every server listens on 127.0.0.1 only, on ports picked at start. The
gateways' clusters are set up to be cheap, as a session runs hundreds of them
side by side (``TEST_CLUSTER_ENVIRONMENT``): their processes check their event
loops once a second rather than every 20 ms, and each nanny forks its worker
instead of starting a new interpreter. For example:

.. code-block:: python

    def test_training_job(batch_client):
        job = batch_client.submit(train, epochs=1)
        assert job.result(timeout=60)["loss"] < 1
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from dask_batch.runtime.forking import MAIN_PROCESS_NAME
from dask_batch.runtime.zygote import ZYGOTE_NAME

__all__ = [
    "CuttableProxy",
    "S3Server",
    "gateway_clusters",
    "job_cluster_client",
    "main_processes",
    "stop_process",
    "wait_for",
    "write_job_records",
]


def write_job_records(
    store: Any,
    user: str,
    count: int,
    *,
    days: float = 30,
    indexed: bool = False,
    pack_size: int | None = None,
    put: Callable[[dict[str, bytes]], Any] | None = None,
    kind: str = "function",
) -> list[str]:
    """Fill ``store`` with ``count`` finished jobs of ``user``.

    Jobs are spread over the last ``days`` days; every tenth FAILED, the rest
    SUCCEEDED, named ``job-0`` to ``job-6``. Written in one concurrent batch,
    with a complete job catalog as runners and listings leave it if
    ``indexed`` (packs of ``pack_size`` entries, or ``LARGE_PACK``), else
    as a store from before the catalog. The job objects are written by
    ``put`` (default: the store's filesystem), given ``{path: bytes}``.
    Jobs are of ``kind`` (``"notebook"``: a notebook ``report.ipynb``).
    Returns the ids, oldest first.
    """
    import datetime

    from dask_batch.core.records import JobRecord, new_job_id, to_iso, utcnow
    from dask_batch.storage.catalog import LARGE_PACK, index_entry
    from dask_batch.storage.store import SPEC, STATE, dumps_json

    start = utcnow() - datetime.timedelta(days=days)
    step = datetime.timedelta(days=days) / max(count, 1)
    objects: dict[str, bytes] = {}
    ids: list[str] = []
    entries: list[dict[str, Any]] = []
    for i in range(count):
        submitted = start + i * step
        job_id = new_job_id(submitted)
        ids.append(job_id)
        spec = {
            "id": job_id,
            "user": user,
            "name": f"job-{i % 7}",
            "submitted": to_iso(submitted),
            "kind": kind,
            "function": "report.ipynb" if kind == "notebook" else "train.main",
            "workers": 2,
        }
        state = {
            "state": "FAILED" if i % 10 == 0 else "SUCCEEDED",
            "started": to_iso(submitted + datetime.timedelta(seconds=5)),
            "finished": to_iso(submitted + datetime.timedelta(seconds=65)),
        }
        objects[store.job_path(user, job_id, SPEC)] = dumps_json(spec)
        objects[store.job_path(user, job_id, STATE)] = dumps_json(state)
        if indexed:
            entries.append(index_entry(JobRecord.from_documents(spec, state, None)))
    items = list(objects.items())
    for first in range(0, len(items), 20_000):  # bounded memory in flight
        (put or store.fs.pipe)(dict(items[first : first + 20_000]))
    if indexed:
        store.write_index(user, entries, split=pack_size or LARGE_PACK)
        store.mark_complete(user)
    return ids


def _cluster_of(pid: str) -> str | None:
    """The gateway cluster a live main process belongs to (None if not main)."""
    # Called for every process of the host, many times a second while a test
    # waits: the short comm first, and a forked process's environment (with
    # the zygote's reserved room, up to 128 KiB) searched, not split.
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
        if comm == ZYGOTE_NAME:
            return None  # a zygote only forks the main processes of tasks
        if comm != MAIN_PROCESS_NAME:
            if not comm.startswith("python"):
                return None
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"dask_batch.runtime.child" not in f.read():
                    return None
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(")")[-1].split()[0] == "Z":
                return None
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = b"\0" + f.read()
    except OSError:
        return None  # exited while we looked, or not ours to read
    prefix = b"\0DASK_GATEWAY_CLUSTER_NAME="
    start = environ.find(prefix)
    if start < 0:
        return ""
    start += len(prefix)
    end = environ.find(b"\0", start)
    return environ[start : end if end >= 0 else None].decode()


def main_processes(cluster_names: Collection[str] | None = None) -> list[int]:
    """PIDs of live main processes (``python -m dask_batch.runtime.child``, or
    forked from the scheduler and named ``dask-batch-main``).

    Only those of the given gateway clusters (main inherits the scheduler's
    ``DASK_GATEWAY_CLUSTER_NAME``), so that a check sees what its own test
    started and not another test run's jobs on the same machine; every one
    on the host if ``cluster_names`` is None.
    """
    found: dict[int, int] = {}  # pid -> parent pid
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        cluster = _cluster_of(pid)
        if cluster is not None and (cluster_names is None or cluster in cluster_names):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    found[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # exited while we looked
    # A process main forked for a helper command (a library looking for a
    # shared library, say) looks like main until it executes the command.
    return [pid for pid, parent in found.items() if parent not in found]


def stop_process(proc: Any, timeout: float = 30) -> None:
    """SIGTERM a ``subprocess.Popen``; SIGKILL it if it has not exited in
    ``timeout`` seconds. Returns once it is gone."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for servers that cannot take port 0.

    Picked below the kernel's ephemeral range: a port from that range, freed
    here and bound by the server seconds later, may meanwhile be taken by
    any outgoing connection or ``bind(0)`` on the machine (seen: a hub that
    exited with "Address already in use"). Below it, only another caller of
    this function could take it.
    """
    import random

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low = 10000 if ephemeral_low > 11000 else 1024
    # No range below (an ephemeral range from 1024): only the fallback.
    for _ in range(200 if ephemeral_low > low else 0):
        port = random.randrange(low, ephemeral_low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a crowded or empty low range: any free port
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_clusters(gateway: Any) -> set[str]:
    """Names of every cluster a ``dask_gateway.Gateway`` knows, stopped ones too."""
    every = ["pending", "running", "stopping", "stopped", "failed"]
    return {c.name for c in gateway.list_clusters(status=every)}


def wait_for(
    predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.05
) -> Any:
    """Poll ``predicate`` until it returns a true value; fail after ``timeout`` s.

    Returns the predicate's value. The failure names ``message`` and the last
    value seen, so a test says what it was waiting for.
    """
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(
        f"Timed out after {timeout} s waiting for {message} (last: {value!r})"
    )


def job_cluster_client(batch: Any, job_id: str, timeout: float = 60) -> Any:
    """A ``distributed.Client`` on a running job's cluster (for tests and benchmarks).

    A job can be RUNNING before the gateway has its scheduler's address (main
    starts as soon as the scheduler does): this waits for both.
    """
    import distributed

    name = wait_for(
        lambda: batch.status(job_id).cluster_name, timeout, f"job {job_id}'s cluster"
    )

    def running_report() -> Any:
        report = batch.gateway.get_cluster(name)
        return report if report.scheduler_address else None

    report = wait_for(running_report, timeout, f"the gateway to report {name} running")
    return distributed.Client(
        report.scheduler_address, security=report.security, set_as_default=False
    )


def most_at_once(tasks: Any) -> int:
    """The most tasks that were running at one moment, from their own
    ``started`` and ``finished`` times."""
    events = sorted(
        [(t.started, 1) for t in tasks] + [(t.finished, -1) for t in tasks],
        key=lambda e: (e[0], e[1]),
    )
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def kill_a_busy_worker(client: Any, workers: int = 2, timeout: float = 120) -> str:
    """SIGKILL one of a cluster's ``workers`` once each of them holds a task,
    and wait until the scheduler has dropped it; its address."""
    import signal

    client.wait_for_workers(workers, timeout=timeout)
    wait_for(
        lambda: sum(bool(keys) for keys in client.processing().values()) == workers,
        timeout,
        "a task on each worker",
    )
    victim, pid = next(iter(client.run(os.getpid).items()))
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: victim not in client.scheduler_info()["workers"],
        60,
        "the scheduler to notice the dead worker",
    )
    return str(victim)


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to a target; ``cut()`` drops every connection
    and refuses new ones until ``restore()``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.lock = threading.Lock()
        self.connections: list[socket.socket] = []
        self.refused = 0  # connections turned away while cut
        self.closed = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open.is_set():
                client.close()
                self.refused += 1
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        # OSError: the other side was cut, and this pump ends with it.
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):  # already closed
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def cut(self) -> None:
        self.open.clear()
        with self.lock:
            connections, self.connections = self.connections, []
        for s in connections:
            with contextlib.suppress(OSError):  # already closed
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def restore(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()
        self.thread.join(timeout=5)


@dataclass
class S3Server:
    """A running moto S3 server."""

    endpoint_url: str
    key: str = "testing"
    secret: str = "testing"

    @property
    def storage_options(self) -> dict[str, Any]:
        # No region: with one, moto refuses bucket creation (an invalid
        # location constraint).
        return {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint_url},
        }


@pytest.fixture(scope="session")
def batch_s3_server() -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 for the whole session."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Server(endpoint_url=f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def batch_s3_storage(
    batch_s3_server: S3Server, request: pytest.FixtureRequest
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(url, storage_options)`` of a new, empty bucket."""
    import s3fs

    bucket = f"test-{os.urandom(6).hex()}"
    fs = s3fs.S3FileSystem(**batch_s3_server.storage_options)
    fs.mkdir(bucket)
    yield f"s3://{bucket}/jobs", batch_s3_server.storage_options
    fs.rm(bucket, recursive=True)


#: What the testing plugin's gateways give their clusters, to make them cheap
#: (a test session runs hundreds side by side; a fixture's own environment
#: wins):
#:
#: - distributed checks each process's event loop every 20 ms, to warn when it
#:   has been blocked for seconds: 2 % of a core for each idle scheduler,
#:   nanny and worker. Once a second (0.35 % of a core) still warns.
#: - A nanny starts its worker as a new interpreter (``spawn``), which imports
#:   distributed again: ~0.6 s of CPU per worker. ``fork`` is distributed's
#:   own alternative; the nanny forks from a thread of its own, so that the
#:   child starts without the nanny's event loop.
TEST_CLUSTER_ENVIRONMENT = {
    "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s",
    "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD": "fork",
}


def _start_gateway(
    directory: str,
    gateway_config: dict[str, Any] | None = None,
    environment: dict[str, str] | None = None,
    **kwargs: Any,
) -> Any:
    from dask_batch import local

    return local.start(
        directory,
        gateway_config={
            # Notice dead schedulers within seconds, not a minute: a running
            # cluster is judged by its heartbeats alone. Not 2 x period
            # (4 s): on a loaded machine a busy scheduler's heartbeat can be
            # held that long, and the gateway then stops a healthy cluster
            # mid-job (seen in CI). Checked every 5 s (half the timeout).
            "DBBackendBase.cluster_status_period": 1.0,
            "DBBackendBase.cluster_heartbeat_period": 2,
            "DBBackendBase.cluster_heartbeat_timeout": 10,
            "DBBackendBase.worker_status_period": 2.0,
            "LocalBackend.sigint_timeout": 5,
            **(gateway_config or {}),
        },
        environment={**TEST_CLUSTER_ENVIRONMENT, **(environment or {})},
        # An interrupted test session must not leave a gateway running.
        owner_pid=os.getpid(),
        **kwargs,
    )


def _gateway_environment(s3: S3Server) -> dict[str, str]:
    # Server-side mode: the scheduler's own credentials (dask config via env),
    # as workload identity would provide on a cloud deployment.
    # A short artifacts sync interval: a test sees a running job's files.
    return {
        "DASK_BATCH__STORAGE_OPTIONS": repr(s3.storage_options),
        "DASK_BATCH__ARTIFACTS__SYNC_INTERVAL": "1s",
    }


@pytest.fixture(scope="session")
def batch_gateway(
    tmp_path_factory: pytest.TempPathFactory, batch_s3_server: S3Server
) -> Iterator[Any]:
    """A local gateway with the dask-batch preload and cluster options."""
    from dask_batch import local

    directory = str(tmp_path_factory.mktemp("gateway"))
    info = _start_gateway(directory, environment=_gateway_environment(batch_s3_server))
    try:
        yield info
    finally:
        local.stop(directory)


@pytest.fixture(scope="session")
def batch_plain_gateway(
    tmp_path_factory: pytest.TempPathFactory, batch_s3_server: S3Server
) -> Iterator[Any]:
    """A local gateway without dask-batch installed server-side, whose
    schedulers, nannies and workers are new interpreters (as on dask-gateway's
    own backends), not forked."""
    from dask_batch import local

    directory = str(tmp_path_factory.mktemp("plain-gateway"))
    info = _start_gateway(
        directory,
        gateway_config={"LoopbackLocalBackend.fork_processes": False},
        server_side=False,
        environment={
            **_gateway_environment(batch_s3_server),
            "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD": "spawn",
        },
    )
    try:
        yield info
    finally:
        local.stop(directory)


@pytest.fixture
def batch_client(batch_gateway: Any, tmp_path: Any) -> Iterator[Any]:
    """A BatchClient on ``batch_gateway`` with fresh local storage."""
    from dask_batch.batch_client import BatchClient

    with BatchClient(
        gateway=batch_gateway.gateway(), storage=str(tmp_path / "jobs")
    ) as client:
        try:
            yield client
        finally:
            client.gateway.close()  # passed in, so not closed by the client
