"""Main's process forked from the scheduler: it sheds the scheduler, and ends
like an interpreter would."""

from __future__ import annotations

import pytest

from dask_batch import JobState


def describe_process():
    import os
    import signal

    import dask.config

    with open(f"/proc/{os.getpid()}/comm") as f:
        name = f.read().strip()
    return {
        "name": name,
        "own_session": os.getsid(0) == os.getpid(),
        "wakeup_fd": signal.set_wakeup_fd(-1),
        "sigterm": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
        "secrets": sorted(
            n
            for n in ("DASK_BATCH_SECRET_KEY", "DASK_GATEWAY_API_TOKEN")
            if n in os.environ
        ),
        # dask reads DASK_* variables into its configuration.
        "secrets_in_config": sorted(
            k
            for k in ("batch_secret_key", "gateway_api_token")
            if dask.config.get(k, None) is not None
        ),
        # The environment the process began with, as the kernel shows it.
        "initial": {
            k: v
            for k, _, v in (
                e.partition(b"=")
                for e in open("/proc/self/environ", "rb").read().split(b"\0")
            )
            if k in (b"DASK_BATCH_SECRET_KEY", b"DASK_GATEWAY_API_TOKEN")
        },
        "parent_is_scheduler": "dask_scheduler"
        in open(f"/proc/{os.getppid()}/cmdline").read(),
    }


def test_main_is_forked_from_the_scheduler_and_sheds_its_state(batch_client):
    job = batch_client.submit(describe_process, workers=0)
    found = job.result(timeout=60)
    # Inherited from the scheduler's start, with the values overwritten.
    initial = found.pop("initial")
    assert initial.keys() == {b"DASK_BATCH_SECRET_KEY", b"DASK_GATEWAY_API_TOKEN"}
    assert all(set(v) == {ord("*")} for v in initial.values()), initial
    assert found == {
        "name": "dask-batch-main",  # what ps and main_processes() see
        "own_session": True,  # stopping main's group never reaches the scheduler
        "wakeup_fd": -1,  # the scheduler's signal wakeup fd is not main's
        "sigterm": True,
        "secrets": [],
        "secrets_in_config": [],
        "parent_is_scheduler": True,
    }


def leave_a_thread_and_an_atexit_handler():
    import atexit
    import threading
    import time

    atexit.register(print, "atexit handler ran", flush=True)

    def late():
        # Still running when main returns: only joining it lets it finish.
        time.sleep(1)
        print("thread finished", flush=True)

    threading.Thread(target=late).start()  # not a daemon
    # A pool kept alive past main: its idle threads end only when told to,
    # which an interpreter does at exit before it joins them.
    import builtins
    import concurrent.futures

    builtins.kept_pool = concurrent.futures.ThreadPoolExecutor(1)
    builtins.kept_pool.submit(print, "pool ran", flush=True).result()
    return "done"


def test_a_forked_main_ends_like_an_interpreter(batch_client):
    job = batch_client.submit(leave_a_thread_and_an_atexit_handler, workers=0)
    assert job.result(timeout=60) == "done"
    log = "".join(job.logs())
    assert "thread finished" in log
    assert "atexit handler ran" in log
    assert "pool ran" in log


@pytest.mark.parametrize("code", [0, 3])
def test_a_forked_main_that_exits_early_is_reported(batch_client, code):
    import os

    job = batch_client.submit(os._exit, code, workers=0)
    record = job.wait(timeout=60)
    assert record.state is JobState.FAILED
    assert f"exited with code {code}" in record.message


def test_a_tasks_main_process_sheds_the_zygote(batch_client):
    from dask_batch import Step

    steps = [Step(describe_process, name=name) for name in ("one", "two")]
    job = batch_client.submit_pipeline(steps, workers=0)
    for seen in job.result(timeout=120).values():
        # Forked by the zygote, itself the job's early main process: its own
        # session, no secret anywhere, named as a main process.
        assert seen["name"] == "dask-batch-main"
        assert seen["own_session"]
        assert seen["secrets"] == [] and seen["secrets_in_config"] == []
        assert all(set(v) <= {ord("*")} for v in seen["initial"].values())


def sleeps(seconds):
    import time

    time.sleep(seconds)
    return seconds


def marks_then_sleeps(mark, seconds):
    import pathlib
    import time

    pathlib.Path(mark).touch()
    time.sleep(seconds)
    return seconds


def children_of(pid):
    import os

    found = []
    for child in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{child}/stat") as f:
                # The name (field 2) may hold spaces: the parent's pid is the
                # second field after its closing parenthesis.
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(child))
        except (OSError, ValueError, IndexError):
            continue
    return found


def zygote_of(cluster_name):
    import os

    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "dask-batch-fork":
                    continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"DASK_GATEWAY_CLUSTER_NAME={cluster_name}".encode() in f.read():
                    return int(pid)
        except OSError:
            continue
    return None


def test_tasks_go_on_as_new_processes_when_the_zygote_dies(batch_client, tmp_path):
    import os
    import signal

    from dask_batch import Step, TasksFailedError
    from dask_batch.testing import wait_for

    marks = [tmp_path / f"s{i}" for i in range(5)]
    steps = [
        Step(marks_then_sleeps, name=f"s{i}", args=[str(marks[i]), seconds])
        for i, seconds in enumerate([30, 30, 0, 0, 0])
    ]
    job = batch_client.submit_pipeline(steps, max_parallel=2, workers=0)
    record = wait_for(
        lambda: (
            (r := batch_client.status(job.id)).task_counts.get("RUNNING") == 2 and r
        ),
        120,
        "two elements to run",
    )
    zygote = wait_for(lambda: zygote_of(record.cluster_name), 30, "the zygote")
    # A forked main runs its task only once the zygote has told the runner
    # its pid: both marks mean the runner knows both.
    wait_for(lambda: marks[0].exists() and marks[1].exists(), 60, "s0 and s1 to run")
    assert len(children_of(zygote)) == 2
    os.kill(zygote, signal.SIGKILL)
    with pytest.raises(TasksFailedError) as raised:
        job.result(timeout=120)
    # The two it had forked go with it; the rest run as new interpreters.
    assert sorted(raised.value.failed) == ["s0", "s1"]
    assert raised.value.partial == {"s2": 0, "s3": 0, "s4": 0}
    assert "start as new processes" in batch_client.logs(job.id)


# Stand-ins for a zygote that dies early: each reads its command line first.
EXITS_BEFORE_IT_OPENS_ITS_REPLIES = "import sys; sys.stdin.readline()"
EXITS_RIGHT_AFTER_IT_REPLIES = """
import os, sys
fifo = sys.stdin.readline().split()[1]
replies = os.open(fifo, os.O_WRONLY)
sys.stdin.readline()
os.write(replies, b"start 4242\\n")
"""


@pytest.mark.parametrize(
    "script", [EXITS_BEFORE_IT_OPENS_ITS_REPLIES, EXITS_RIGHT_AFTER_IT_REPLIES]
)
def test_a_zygote_that_dies_early_is_noticed(tmp_path, script):
    import asyncio
    import signal
    import subprocess
    import sys

    from dask_batch.runtime.handoff import MainLaunch
    from dask_batch.runtime.prewarm import MainProcess
    from dask_batch.runtime.zygote import Zygote

    launch = MainLaunch(
        job_id="20261127-000000-000-00000000",
        user="someone",
        name="x",
        storage_url=str(tmp_path),
        storage_options={},
        storage_retry_for=0,
        payload_signature="",
        scheduler_address="tcp://127.0.0.1:1",
        tls_ca_file=None,
        tls_cert=None,
        tls_key=None,
        outcome_path=str(tmp_path / "outcome.json"),
        workdir=str(tmp_path / "work"),
    )

    async def scenario():
        process = MainProcess(
            subprocess.Popen(
                [sys.executable, "-c", script],
                stdin=subprocess.PIPE,
                start_new_session=True,
            )
        )
        zygote = Zygote(process, str(tmp_path))
        await zygote.start()
        fork = asyncio.wait_for(zygote.fork(str(tmp_path / "log"), launch), 30)
        if script == EXITS_BEFORE_IT_OPENS_ITS_REPLIES:
            with pytest.raises(RuntimeError, match="exited"):
                await fork
        else:
            # It answered before it died: that child ran, and died with it,
            # whichever the runner noticed first.
            child = await fork
            assert child.pid == 4242
            assert await asyncio.wait_for(child.wait(), 30) == -signal.SIGKILL
            with pytest.raises(RuntimeError, match="exited"):
                await zygote.fork(str(tmp_path / "log"), launch)
        await zygote.close()
        assert not (tmp_path / "zygote.fifo").exists()

    asyncio.run(scenario())


@pytest.mark.parametrize("parent", ["replies", "dies", "cannot-reply"])
def test_a_held_child_runs_only_once_its_parent_has_replied(tmp_path, parent):
    import os

    from dask_batch.runtime.forking import fork_held, write_then_release

    mark = tmp_path / "ran"
    read_end, write_end = os.pipe()
    pid, hold = fork_held()
    if pid == 0:  # pragma: no cover - the child
        try:
            mark.touch()
        finally:
            os._exit(0)
    if parent == "replies":
        write_then_release(write_end, b"start\n", hold)
        assert os.read(read_end, 100) == b"start\n"
    elif parent == "dies":
        os.close(hold)  # what the parent's death does to it
    else:
        gone = os.dup(write_end)
        os.close(gone)  # a reply that cannot be written
        with pytest.raises(OSError):
            write_then_release(gone, b"start\n", hold)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == (0 if parent == "replies" else 70)
    assert mark.exists() is (parent == "replies")
    os.close(write_end)
    os.close(read_end)
