"""The embedded local gateway forks schedulers and nannies from a zygote.

Each forked process must be what ``python -m MODULE ARGS`` would have
started: its own session, directory, environment (in ``/proc`` too),
configuration, command line and random state; the zygote reaps it when it
ends, and outlives the gateway until its last child has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import threading

import psutil
import pytest
from conftest import wait_until_nothing_left
from distributed import Client

from dask_batch.batch_client import BatchClient
from dask_batch.service.cluster_zygote import (
    ROOM_VARIABLE,
    ZYGOTE_NAME,
    ClusterZygote,
    ZygoteUnavailable,
)
from dask_batch.testing import _start_gateway, wait_for


def gone(pid):
    """Whether ``pid`` has ended and been reaped (a zombie still answers)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def parent_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def comm_of(pid):
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def initial_environment(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return [e.decode() for e in f.read().split(b"\0") if e]


class ZygoteInThread:
    """A ClusterZygote driven from an event loop of its own, as the gateway's."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.children = []

        async def started():
            zygote = ClusterZygote()
            zygote.start()  # no PYTHON* variable passed on: none in requests
            return zygote

        self.zygote = self.call(started())

    def call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(90)

    def spawn(self, cmd, env, cwd, log):
        pid = self.call(self.zygote.spawn(cmd, env, cwd, log))
        self.children.append(pid)
        return pid

    def close(self):
        async def closed():
            self.zygote.close()
            for pid in self.children:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
            await self.zygote.wait()  # it exits once its children have

        self.call(closed())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture
def zygote():
    z = ZygoteInThread()
    yield z
    z.close()


def plain_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(extra)
    return env


def scheduler_cmd(scheduler_file):
    return [
        sys.executable,
        "-m",
        "distributed.cli.dask_scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--dashboard-address",
        "127.0.0.1:0",
        "--scheduler-file",
        scheduler_file,
    ]


def test_a_forked_scheduler_is_what_python_m_would_start(zygote, tmp_path):
    # Defined here: cloudpickle sends a nested function by value.
    def what_a_scheduler_sees():
        import logging
        import random

        import dask.config
        import numpy

        main = sys.modules["__main__"]
        return {
            "cwd": os.getcwd(),
            "cluster": os.environ.get("DASK_GATEWAY_CLUSTER_NAME"),
            "room": ROOM_VARIABLE in os.environ,
            "allowed_failures": dask.config.get(
                "distributed.scheduler.allowed-failures"
            ),
            "tornado_log_level": logging.getLogger("tornado").level,
            "session_leader": os.getsid(0) == os.getpid(),
            "argv": sys.argv[1:],
            "main": main.__spec__.name,
            "random": random.random(),
            "numpy_random": float(numpy.random.random()),
        }

    seen, pids, cmds = {}, {}, {}
    for name, failures, tornado in (("one", "7", "info"), ("two", "9", "critical")):
        folder = tmp_path / name
        folder.mkdir()
        cmds[name] = scheduler_cmd(str(folder / "scheduler.json"))
        env = plain_env(
            DASK_GATEWAY_CLUSTER_NAME=name,
            DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=failures,
            DASK_LOGGING__TORNADO=tornado,
        )
        pids[name] = zygote.spawn(
            cmds[name], env, str(folder), str(folder / "scheduler.log")
        )
        wait_for((folder / "scheduler.json").exists, 30, f"scheduler {name} to start")
        with Client(scheduler_file=str(folder / "scheduler.json")) as client:
            seen[name] = client.run_on_scheduler(what_a_scheduler_sees)
        assert "found in sys.modules" not in (folder / "scheduler.log").read_text()

    for name, failures, level in (("one", 7, 20), ("two", 9, 50)):
        assert (
            seen[name]
            == {
                **seen[name],
                "cwd": str(tmp_path / name),
                "cluster": name,
                "room": False,
                "allowed_failures": failures,  # configuration read from its own env
                "tornado_log_level": level,  # and logging configured from it
                "session_leader": True,
                "argv": cmds[name][3:],
                "main": "distributed.cli.dask_scheduler",
            }
        )
        pid = pids[name]
        # What ps and the leftover checks read: the process's own.
        environ = initial_environment(pid)
        assert f"DASK_GATEWAY_CLUSTER_NAME={name}" in environ
        assert not any(e.startswith(ROOM_VARIABLE) for e in environ)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert f.read().rstrip(b"\0").decode() == " ".join(cmds[name])
        assert comm_of(parent_of(pid)) == ZYGOTE_NAME
    # Each forked process draws its own random numbers.
    assert seen["one"]["random"] != seen["two"]["random"]
    assert seen["one"]["numpy_random"] != seen["two"]["numpy_random"]

    # The gateway goes: the zygote stays for its children, reaps each as it
    # ends (the gateway's kill(pid, 0) would see a zombie as running), and
    # exits after the last.
    the_zygote = parent_of(pids["one"])
    zygote.loop.call_soon_threadsafe(zygote.zygote.close)
    os.kill(pids["one"], signal.SIGINT)
    wait_for(lambda: gone(pids["one"]), 30, "the first scheduler to be reaped")
    assert not gone(the_zygote), "the zygote left before its last child ended"
    os.kill(pids["two"], signal.SIGINT)
    wait_for(lambda: gone(pids["two"]), 30, "the second scheduler to be reaped")
    wait_for(lambda: gone(the_zygote), 30, "the zygote to exit after its children")


def test_the_zygote_refuses_what_it_would_not_start_faithfully(zygote, tmp_path):
    cmd = scheduler_cmd(str(tmp_path / "scheduler.json"))
    refused = {
        # Read by the interpreter at start-up only.
        "PYTHON* variables differ": (cmd, plain_env(PYTHONHASHSEED="1")),
        "is not imported in the zygote": (
            [sys.executable, "-m", "http.server"],
            plain_env(),
        ),
        "not this interpreter's": (["/usr/bin/python3", *cmd[1:]], plain_env()),
        "bigger than the zygote's reserved room": (
            cmd,
            plain_env(BIG="x" * 200_000),
        ),
    }
    for why, (command, env) in refused.items():
        log = tmp_path / "scheduler.log"
        with pytest.raises(ZygoteUnavailable, match=re.escape(why)):
            zygote.spawn(command, env, str(tmp_path), str(log))
        assert not log.exists(), why  # the exec path makes it, as it always did
    # Nor does it overwrite a log that exists (LocalBackend opens it O_EXCL).
    (tmp_path / "taken.log").write_text("someone else's")
    with pytest.raises(ZygoteUnavailable, match="cannot open the log"):
        zygote.spawn(cmd, plain_env(), str(tmp_path), str(tmp_path / "taken.log"))
    assert (tmp_path / "taken.log").read_text() == "someone else's"


@pytest.fixture(scope="module")
def zygote_gateway(tmp_path_factory):
    from dask_batch import local

    directory = str(tmp_path_factory.mktemp("zygote-gateway"))
    info = _start_gateway(directory)
    yield info
    local.stop(directory)


def waits_for_file(path):
    import pathlib
    import time

    while not pathlib.Path(path).exists():
        time.sleep(0.05)
    return "released"


def cluster_processes(cluster_name, module):
    """The pids of the cluster's processes that run ``python -m module``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if comm_of(pid) == "python" and (
                f"DASK_GATEWAY_CLUSTER_NAME={cluster_name}" in initial_environment(pid)
            ):
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if module.encode() in f.read():
                        found.append(int(pid))
    return found


def scheduler_of(cluster_name):
    schedulers = cluster_processes(cluster_name, "distributed.cli.dask_scheduler")
    return schedulers[0] if schedulers else None


def zygotes_of(gateway_pid):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if comm_of(pid) == ZYGOTE_NAME and parent_of(pid) == gateway_pid:
                found.append(int(pid))
    return found


def test_a_job_outlives_a_killed_zygote_and_the_next_job_gets_a_new_one(
    zygote_gateway, tmp_path
):
    release = tmp_path / "release"
    with BatchClient(gateway=zygote_gateway.gateway(), storage=str(tmp_path)) as batch:
        job = batch.submit(waits_for_file, str(release), workers=0)
        cluster = wait_for(
            lambda: job.status().cluster_name, 60, "the job's cluster to be named"
        )
        scheduler = wait_for(
            lambda: scheduler_of(cluster), 60, "the job's scheduler to start"
        )
        (first,) = zygotes_of(zygote_gateway.pid)
        assert parent_of(scheduler) == first  # forked, not a new interpreter

        os.kill(first, signal.SIGKILL)
        # Its orphan comes to the gateway (a child subreaper), not to an
        # init that may never reap it.
        wait_for(
            lambda: parent_of(scheduler) == zygote_gateway.pid,
            30,
            "the gateway to adopt the scheduler",
        )
        release.write_text("go")
        assert job.result(timeout=60) == "released"
        wait_for(lambda: gone(scheduler), 30, "the gateway to reap the scheduler")

        # The gateway notices the zygote is gone and starts a new one.
        second = batch.submit(sum, [1, 2], workers=0)
        assert second.result(timeout=60) == 3
        assert set(zygotes_of(zygote_gateway.pid)) - {first}
        wait_until_nothing_left(batch.gateway, "the two jobs")
        batch.gateway.close()


def test_with_forking_off_the_gateway_starts_new_interpreters(batch_plain_gateway):
    # The plain gateway has it off, which keeps dask-gateway's own path tested.
    with batch_plain_gateway.gateway() as gateway:
        name = gateway.submit()
        try:
            scheduler = wait_for(
                lambda: scheduler_of(name), 60, "the scheduler to start"
            )
            assert parent_of(scheduler) == batch_plain_gateway.pid
            assert zygotes_of(batch_plain_gateway.pid) == []
        finally:
            gateway.stop_cluster(name)


def worker_of(cluster_name):
    """The pid of the cluster's worker process: its nanny's child (a forked
    worker runs the nanny's command line too, but has no child of its own)."""
    for pid in cluster_processes(cluster_name, "distributed.cli.dask_worker"):
        with contextlib.suppress(psutil.NoSuchProcess):
            workers = [
                child.pid
                for child in psutil.Process(pid).children()
                # Started beside a spawned worker, for shared memory.
                if "multiprocessing.resource_tracker" not in " ".join(child.cmdline())
            ]
            if workers:
                return workers[0]
    return None


@pytest.mark.parametrize(
    "fixture, spawned",
    [("zygote_gateway", False), ("batch_plain_gateway", True)],
    ids=["testing-plugin-forks", "plain-spawns"],
)
def test_a_nanny_forks_its_worker_only_where_the_testing_plugin_asks(
    fixture, spawned, request
):
    # The testing plugin's clusters fork their workers (cheaper); the plain
    # gateway keeps distributed's default, a new interpreter per worker.
    info = request.getfixturevalue(fixture)
    with info.gateway() as gateway:
        name = gateway.submit()
        try:
            gateway.connect(name).scale(1)  # connect waits for the scheduler
            worker = wait_for(
                lambda: worker_of(name), 90, f"a worker of cluster {name} to start"
            )
            with open(f"/proc/{worker}/cmdline", "rb") as f:
                command = f.read()
            assert (b"multiprocessing.spawn" in command) is spawned, command
            assert (b"distributed.cli.dask_worker" in command) is not spawned, command
        finally:
            gateway.stop_cluster(name)
