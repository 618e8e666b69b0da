"""Pipelines and job arrays on a real local gateway (server-side mode)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from lab_server import notebook

from dask_batch import (
    JobFailedError,
    JobState,
    Step,
    SubmitError,
    TasksFailedError,
)
from dask_batch.testing import main_processes, most_at_once, wait_for


def load(n):
    import dask_batch

    dask_batch.report(1.0, "loaded")
    with open(dask_batch.artifacts_dir("numbers.json"), "w") as f:
        json.dump(list(range(n)), f)
    return list(range(n))


def total(upstream, scale=1):
    # Both branches of the diamond: the script's files, the notebook's path.
    import dask_batch

    job = dask_batch.current_job()
    with open(os.path.join(job.upstream["double"], "doubled.json")) as f:
        doubled = json.load(f)
    assert upstream["report"].endswith("report.output.ipynb"), upstream
    assert set(upstream) == {"double", "report"}
    return scale * sum(doubled)


DOUBLE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import dask_batch

    job = dask_batch.current_job()
    with open(os.path.join(job.upstream["load"], "numbers.json")) as f:
        numbers = json.load(f)
    with open(dask_batch.artifacts_dir("doubled.json"), "w") as f:
        json.dump([2 * n for n in numbers], f)
    print("doubled", len(numbers), "numbers with", sys.argv[1:], job.params)
    """
)


def write_notebook(path, source):
    notebook(str(path), source, "upstream = None\nfactor = 1")


@pytest.fixture
def diamond(tmp_path):
    """load -> (double.py, report.ipynb) -> total, as Steps."""
    script = tmp_path / "double.py"
    script.write_text(DOUBLE_SCRIPT)
    notebook = tmp_path / "report.ipynb"
    write_notebook(
        notebook,
        "import json, os\n"
        "numbers = json.load(open(os.path.join(upstream['load'], 'numbers.json')))\n"
        "print('mean', sum(numbers) * factor / len(numbers))",
    )
    return [
        Step(load, params={"n": 5}),
        Step(str(script), upstream=["load"], args=["--fast"], params={"k": 1}),
        Step(str(notebook), upstream=["load"], params={"factor": 2}),
        Step(total, upstream=["double", "report"]),
    ]


def test_a_pipeline_of_a_function_a_script_and_a_notebook(batch_client, diamond):
    job = batch_client.submit_pipeline(diamond, workers=0, name="diamond")
    values = job.result(timeout=240)
    assert values["load"] == [0, 1, 2, 3, 4]
    assert values["double"] is None
    assert values["total"] == 2 * 10
    record = batch_client.status(job.id)
    assert record.state is JobState.SUCCEEDED
    assert record.kind == "pipeline"
    assert record.task_counts == {"SUCCEEDED": 4}
    steps = {t.name: t for t in record.tasks}
    assert list(steps) == ["load", "double", "report", "total"]
    assert steps["total"].upstream == ["double", "report"]
    assert steps["load"].progress == 1.0
    # Independent steps ran at the same time... or at least not in a
    # fixed order: both started after load ended, before total started.
    for branch in ("double", "report"):
        assert steps["load"].finished <= steps[branch].started
        assert steps[branch].finished <= steps["total"].started
    log = batch_client.logs(job.id, task="double")
    assert "doubled 5 numbers with ['--fast'] {'k': 1}" in log
    assert "step 'total' SUCCEEDED" in batch_client.logs(job.id)
    artifacts = batch_client.artifacts(job.id)
    assert {"load/numbers.json", "double/doubled.json"} <= set(artifacts)
    assert "report/report.output.ipynb" in artifacts


def fails(message):
    raise ValueError(message)


def slow_ok(marker):
    import time

    deadline = time.monotonic() + 60
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "independent"


def never(upstream):
    raise AssertionError("a step below a failed step must not run")


def test_a_failing_step_stops_its_dependants_not_an_independent_branch(
    batch_client, tmp_path
):
    marker = tmp_path / "failed"
    steps = [
        Step(fails, name="broken", args=["bad input"]),
        Step(never, upstream=["broken"]),
        Step(slow_ok, args=[str(marker)]),
    ]
    job = batch_client.submit_pipeline(steps, workers=0)
    wait_for(
        lambda: any(t.state is JobState.FAILED for t in batch_client.tasks(job.id)),
        120,
        "the broken step to fail",
    )
    marker.touch()  # the independent branch was still going when it failed
    with pytest.raises(TasksFailedError) as raised:
        job.result(timeout=120)
    error = raised.value
    assert error.job_id == job.id
    assert set(error.failed) == {"broken", "never"}
    assert "ValueError: bad input" in error.failed["broken"]
    assert "upstream step 'broken' FAILED" in error.failed["never"]
    assert error.partial == {"slow_ok": "independent"}
    assert isinstance(error, JobFailedError)
    record = batch_client.status(job.id)
    assert record.state is JobState.FAILED
    assert record.task_counts == {"SUCCEEDED": 1, "FAILED": 1, "CANCELLED": 1}
    partial = job.client.result(job.id, partial=True)
    assert partial["slow_ok"] == "independent"
    assert isinstance(partial["broken"], JobFailedError)


def test_a_cycle_or_an_unknown_step_is_refused_before_anything_exists(
    batch_client,
):
    with pytest.raises(SubmitError, match="cycle"):
        batch_client.submit_pipeline(
            [Step(load, name="a", upstream=["b"]), Step(load, name="b", upstream=["a"])]
        )
    with pytest.raises(SubmitError, match="not a step of the pipeline"):
        batch_client.submit_pipeline([Step(load, upstream=["missing"])])
    with pytest.raises(SubmitError, match="is not allowed"):
        batch_client.submit_pipeline([Step(load, name="../escape")])
    assert batch_client.jobs() == []


def square_slowly(x):
    import time

    import dask_batch

    time.sleep(0.5)  # the elements' lifetimes overlap: the limit is what holds
    if x == 7:
        raise ValueError("seven is unlucky")
    assert dask_batch.current_job().array_index == x
    return x * x


def dask_batch_cli(env, *args, check=True, timeout=60):
    """``dask batch ARGS`` in a process of its own; its CompletedProcess."""
    done = subprocess.run(
        [sys.executable, "-m", "dask", "batch", *args],
        env=env,
        cwd="/",  # files named on the command line are found wherever it runs
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0 or not check, done.stderr
    return done


def test_an_array_of_20_runs_on_the_workers_at_most_4_at_once_and_names_its_failure(
    batch_client,
):
    job = batch_client.map(square_slowly, range(20), max_parallel=4, workers=2)
    seen = set()
    most = 0

    def ended():
        nonlocal most
        record = batch_client.status(job.id)
        if record.cluster_name:
            seen.add(record.cluster_name)
            # A scan of /proc is not a snapshot: one process may end and the
            # next start while it reads. Those found by two scans in a row
            # were all alive at the moment between them.
            together = set(main_processes(seen)) & set(main_processes(seen))
            most = max(most, len(together))
        return record.state.is_terminal

    wait_for(ended, 240, "the array to end", interval=0.02)
    # Beside the scheduler: the job's one main process, whatever the array.
    assert most == 1, most
    with pytest.raises(TasksFailedError) as raised:
        job.result()
    error = raised.value
    assert list(error.failed) == [7]
    assert "ValueError: seven is unlucky" in error.failed[7]
    assert "1 of 20 elements did not succeed" in str(error)
    assert error.partial == {i: i * i for i in range(20) if i != 7}
    values = job.client.result(job.id, partial=True)
    assert len(values) == 20
    assert values[:7] == [i * i for i in range(7)]
    assert isinstance(values[7], JobFailedError)
    record = batch_client.status(job.id)
    assert record.kind == "array" and record.elements == 20
    assert record.task_counts == {"SUCCEEDED": 19, "FAILED": 1}
    assert record.tasks is None  # the counts say how it went; tasks() pages
    tasks = batch_client.tasks(job.id)
    assert [t.index for t in tasks] == list(range(20))
    assert most_at_once(tasks) <= 4
    # The failed element's log is one command away: its traceback.
    assert "ValueError: seven is unlucky" in batch_client.logs(job.id, task="7")
    (failed,) = batch_client.tasks(job.id, state="FAILED")
    assert failed.index == 7 and "seven is unlucky" in failed.message
    assert [t.index for t in batch_client.tasks(job.id, offset=5, limit=3)] == [5, 6, 7]
    # One entry in the listing, with its counts.
    (listed,) = batch_client.jobs()
    assert listed.id == job.id and listed.task_counts == record.task_counts
    assert "19/20 succeeded, 1 failed" in listed.progress_message


def on_a_worker(x):
    from distributed import get_worker

    with open("/proc/self/comm") as f:
        name = f.read().strip()
    return get_worker().address, name  # get_worker raises outside a worker


def test_array_elements_run_in_the_workers_processes(batch_client):
    job = batch_client.map(on_a_worker, range(40), workers=2)
    values = job.result(timeout=180)
    assert len(values) == 40
    # In a worker's own process, never one started beside the scheduler.
    assert all(address.startswith("tls://") for address, _ in values)
    assert "dask-batch-main" not in {name for _, name in values}


def odd_fails_until(x, marker):
    if x % 2 and not os.path.exists(marker):
        raise ValueError(f"odd {x}")
    return x * 10


def test_resubmit_runs_only_the_failed_elements_and_result_has_every_value(
    batch_client, tmp_path
):
    marker = str(tmp_path / "fixed")
    job = batch_client.map(odd_fails_until, range(2500), marker=marker, workers=1)
    with pytest.raises(TasksFailedError) as raised:
        job.result(timeout=180)
    assert sorted(raised.value.failed) == list(range(1, 2500, 2))
    open(marker, "w").close()
    again = batch_client.resubmit(job.id)
    assert again.result(timeout=180) == [x * 10 for x in range(2500)]
    tasks = batch_client.tasks(again.id)
    # The even ones were taken over, the odd ones ran again.
    assert {t.reused_from for t in tasks[0::2]} == {job.id}
    assert {t.reused_from for t in tasks[1::2]} == {""}
    assert batch_client.status(again.id).task_counts == {"SUCCEEDED": 2500}


def test_a_stored_shard_moved_to_another_shards_place_is_refused(
    batch_client, tmp_path
):
    from dask_batch import ResultIntegrityError
    from dask_batch.core.elements import shard_doc_name, shard_result_name

    job = batch_client.map(abs, range(-2000, 0), workers=1)
    assert job.result(timeout=180)[0] == 2000
    store, user = batch_client.store, batch_client.user
    # Someone who can write the storage swaps shard 1 for shard 0: each is
    # signed with the job key, but with a key bound to its own shard.
    doc = store.get_json(user, job.id, shard_doc_name(1))
    store.put_json(user, job.id, shard_doc_name(0), {**doc, "shard": 0, "first": 0})
    store.put(
        user,
        job.id,
        shard_result_name(0),
        store.get(user, job.id, shard_result_name(1)),
    )
    with pytest.raises(ResultIntegrityError):
        job.result()
    # A shard document that does not fit its place reads as never run.
    store.put_json(user, job.id, shard_doc_name(0), doc)
    with pytest.raises(TasksFailedError) as raised:
        job.result()
    assert len(raised.value.failed) == 1000 and 1000 not in raised.value.failed


def flaky_once(marker_dir):
    import dask_batch

    marker = os.path.join(marker_dir, str(dask_batch.current_job().array_index))
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise ConnectionError("first try of this element")
    return "ok"


def test_retries_apply_to_each_element_and_the_timeout_to_the_array(
    batch_client, tmp_path
):
    job = batch_client.map(
        flaky_once,
        [str(tmp_path)] * 3,
        retries=1,
        retry_on=[ConnectionError],
        workers=1,
    )
    assert job.result(timeout=120) == ["ok"] * 3
    assert [t.attempt for t in batch_client.tasks(job.id)] == [2, 2, 2]
    assert "first try of this element" in batch_client.logs(job.id, task="0")
    slow = batch_client.map(slow_ok, [str(tmp_path / "never")], timeout=1, workers=1)
    with pytest.raises(JobFailedError, match="timed out"):
        slow.result(timeout=120)


def test_cancelling_an_array_cancels_every_element(batch_client, tmp_path):
    job = batch_client.map(
        slow_ok, [str(tmp_path / "never")] * 6, max_parallel=2, workers=1
    )
    wait_for(
        lambda: batch_client.status(job.id).task_counts.get("RUNNING") == 2,
        120,
        "two elements to run",
    )
    batch_client.cancel(job.id)
    record = batch_client.wait(job.id, timeout=120)
    assert record.state is JobState.CANCELLED
    tasks = wait_for(
        lambda: (
            (t := batch_client.tasks(job.id))
            and all(x.state is JobState.CANCELLED for x in t)
            and t
        ),
        60,
        "every element to be recorded CANCELLED",
    )
    assert len(tasks) == 6


ARRAY_SCRIPT = textwrap.dedent(
    """
    import os
    import dask_batch
    index = int(os.environ["DASK_BATCH_ARRAY_INDEX"])
    assert dask_batch.current_job().array_index == index
    print("element", index, "of", os.environ["DASK_BATCH_JOB_ID"])
    """
)


def test_dask_batch_submit_array_runs_a_script_per_index(batch_gateway, tmp_path):
    script = tmp_path / "fold.py"
    script.write_text(ARRAY_SCRIPT)
    env = {
        **os.environ,
        **batch_gateway.environment(),
        "DASK_BATCH__STORAGE": str(tmp_path / "jobs"),
    }
    done = dask_batch_cli(
        env,
        *("submit", str(script), "--array", "1,3-5%2", "--workers", "1", "--wait"),
        timeout=240,
    )
    job_id = done.stdout.split()[0]
    assert "4/4 succeeded" in dask_batch_cli(env, "status", job_id).stdout
    status = dask_batch_cli(env, "status", job_id, "--elements").stdout
    assert "4/4 succeeded" in status
    assert [line.split()[:2] for line in status.splitlines()[-4:]] == [
        [str(i), "SUCCEEDED"] for i in (1, 3, 4, 5)
    ]
    log = dask_batch_cli(env, "logs", job_id, "--task", "4").stdout
    assert f"element 4 of {job_id}" in log
    bad = dask_batch_cli(env, "submit", str(script), "--array", "0-3%0", check=False)
    assert bad.returncode != 0 and "limit" in bad.stderr


def make_data(size):
    import dask_batch

    with open(dask_batch.artifacts_dir("data.txt"), "w") as f:
        f.write("x" * size)
    return size


def measure(upstream, scale):
    import dask_batch

    folder = dask_batch.current_job().upstream["make_data"]
    with open(os.path.join(folder, "data.txt")) as f:
        return len(f.read()) * scale


def independent(tag):
    return tag


def resumable(scale):
    return [
        Step(make_data, params={"size": 3}),
        Step(measure, upstream=["make_data"], params={"scale": scale}),
        Step(independent, params={"tag": "same"}),
    ]


def test_a_resumed_pipeline_reruns_only_the_changed_step(batch_client):
    first = batch_client.submit_pipeline(resumable(1), workers=0)
    assert first.result(timeout=120) == {
        "make_data": 3,
        "measure": 3,
        "independent": "same",
    }
    again = batch_client.submit_pipeline(resumable(10), workers=0, resume=first)
    assert again.result(timeout=120) == {
        "make_data": 3,
        "measure": 30,
        "independent": "same",
    }
    steps = {t.name: t for t in batch_client.tasks(again.id)}
    assert steps["make_data"].reused_from == first.id
    assert steps["independent"].reused_from == first.id
    assert steps["measure"].reused_from == ""
    assert steps["measure"].attempt == 1
    assert "make_data/data.txt" in batch_client.artifacts(again.id)
    # Resuming the resumed run with nothing changed runs nothing.
    third = batch_client.submit_pipeline(resumable(10), workers=0, resume=again)
    assert third.result(timeout=120)["measure"] == 30
    assert all(t.reused_from == again.id for t in batch_client.tasks(third.id))


def test_a_resumed_pipeline_reruns_a_step_whose_stored_result_was_changed(
    batch_client,
):
    from dask_batch.core.tasks import task_path

    first = batch_client.submit_pipeline(resumable(1), workers=0)
    first.result(timeout=120)
    store = batch_client.store
    path = store.job_path(
        batch_client.user, first.id, task_path("make_data", "result.pkl")
    )
    data = store.fs.cat_file(path)
    store.fs.pipe_file(path, data[:-1] + bytes([data[-1] ^ 1]))
    again = batch_client.submit_pipeline(resumable(1), workers=0, resume=first)
    assert again.result(timeout=120)["make_data"] == 3
    steps = {t.name: t for t in batch_client.tasks(again.id)}
    assert steps["make_data"].reused_from == ""  # run again, not taken over
    assert steps["independent"].reused_from == first.id
    assert "cannot be taken over" in batch_client.logs(again.id)


PIPELINE_YAML = textwrap.dedent(
    """
    name: nightly
    max_parallel: 2
    options:
      workers: 0
    steps:
      - source: double.py
        name: double
        args: [--fast]
        params: {k: 1}
        upstream: [seed]
      - source: math:factorial
        name: seed
        args: [3]
      - source: report.ipynb
        upstream: [double]
        params: {factor: 3}
    """
)


def test_dask_batch_submit_runs_a_pipeline_yaml(batch_gateway, tmp_path):
    (tmp_path / "double.py").write_text(
        DOUBLE_SCRIPT.replace(
            'os.path.join(job.upstream["load"], "numbers.json")',
            '"/dev/null"',
        ).replace("json.load(f)", "[1, 2]")
    )
    write_notebook(
        tmp_path / "report.ipynb",
        "import json, os\n"
        "doubled = json.load(open(os.path.join(upstream['double'], 'doubled.json')))\n"
        "print('report', sum(doubled) * factor)",
    )
    (tmp_path / "pipeline.yaml").write_text(PIPELINE_YAML)
    env = {
        **os.environ,
        **batch_gateway.environment(),
        "DASK_BATCH__STORAGE": str(tmp_path / "jobs"),
    }
    # Sources are found beside the file, wherever the command runs.
    done = dask_batch_cli(
        env, "submit", str(tmp_path / "pipeline.yaml"), "--wait", timeout=240
    )
    job_id = done.stdout.split()[0]
    status = dask_batch_cli(env, "status", job_id).stdout
    assert "nightly" in status
    rows = [line.split()[:3] for line in status.splitlines()[-3:]]
    assert rows == [
        ["seed", "SUCCEEDED", "1"],
        ["double", "SUCCEEDED", "seed"],
        ["report", "SUCCEEDED", "double"],
    ]
    log = dask_batch_cli(env, "logs", job_id, "--task", "report").stdout
    assert "report 18" in log


def test_a_bad_pipeline_file_is_refused_with_what_to_fix(batch_client, tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("steps:\n  - source: a.py\n    upstrem: [b]\n")
    with pytest.raises(SubmitError, match=r"unknown keys.*upstrem"):
        batch_client.submit_pipeline(str(path))
    path.write_text("steps: 3\n")
    with pytest.raises(SubmitError, match="needs a list of steps"):
        batch_client.submit_pipeline(str(path))
    path.write_text("steps:\n  - source: missing.py\n")
    with pytest.raises(SubmitError, match=r"missing\.py"):
        batch_client.submit_pipeline(str(path))
    assert batch_client.jobs() == []


def test_fail_fast_stops_the_running_steps_at_the_first_failure(batch_client, tmp_path):
    steps = [
        Step(fails, name="broken", args=["stop everything"]),
        Step(slow_ok, name="long", args=[str(tmp_path / "never")]),
        Step(slow_ok, name="later", args=[str(tmp_path / "never")], upstream=["long"]),
    ]
    job = batch_client.submit_pipeline(steps, workers=0, fail_fast=True)
    with pytest.raises(TasksFailedError) as raised:
        job.result(timeout=120)
    failed = raised.value.failed
    assert "ValueError: stop everything" in failed["broken"]
    assert "fails fast" in failed["long"]  # stopped while it ran
    assert failed["later"].startswith("CANCELLED: not run")
    record = batch_client.status(job.id)
    assert record.task_counts == {"FAILED": 1, "CANCELLED": 2}
    # Well before slow_ok's own 60 s: it was stopped, not waited for.
    assert record.duration.total_seconds() < 45


def wait_on(path):
    import time

    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "released"


def test_a_scheduler_killed_during_an_array_leaves_every_element_one_final_state(
    batch_client, tmp_path
):
    import signal

    from dask_batch.testing import job_cluster_client

    gate = str(tmp_path / "gate")
    job = batch_client.map(wait_on, [gate] * 5, max_parallel=2, workers=1)
    wait_for(
        lambda: batch_client.status(job.id).task_counts.get("RUNNING") == 2,
        120,
        "two elements to run",
    )
    with job_cluster_client(batch_client, job.id) as client:
        pid = client.run_on_scheduler(os.getpid)
    os.kill(pid, signal.SIGKILL)
    record = wait_for(
        lambda: (r := batch_client.status(job.id)).state.is_terminal and r,
        90,
        "the job to be judged",
    )
    assert record.state is JobState.LOST
    tasks = batch_client.tasks(job.id)
    assert len(tasks) == 5 and all(t.state.is_terminal for t in tasks)
    assert sorted(t.state.value for t in tasks) == ["CANCELLED"] * 3 + ["LOST"] * 2
    assert all("the job ended LOST" in t.message for t in tasks)
    # The counts in the listing say the same, and sum to the elements.
    (listed,) = [r for r in batch_client.jobs() if r.id == job.id]
    assert listed.task_counts == {"LOST": 2, "CANCELLED": 3}
    assert record.task_counts == listed.task_counts


def wait_then_say(index_and_gate):
    import time

    index, gate = index_and_gate
    deadline = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    return index


def test_a_worker_killed_during_an_array_loses_no_element_and_runs_none_twice(
    batch_client, tmp_path
):
    from dask_batch.testing import job_cluster_client, kill_a_busy_worker

    gate = str(tmp_path / "gate")
    job = batch_client.map(wait_then_say, [(i, gate) for i in range(6)], workers=2)
    with job_cluster_client(batch_client, job.id) as client:
        # Both workers hold a waiting element: kill one of them.
        kill_a_busy_worker(client)
    open(gate, "w").close()
    # Its elements ran again elsewhere (Dask's own rescheduling): every value
    # once, in its place.
    assert job.result(timeout=180) == list(range(6))
    record = batch_client.status(job.id)
    assert record.task_counts == {"SUCCEEDED": 6}
    tasks = batch_client.tasks(job.id)
    assert [t.index for t in tasks] == list(range(6))
    assert all(t.state is JobState.SUCCEEDED and t.attempt == 1 for t in tasks)


def forked_mains(cluster_name):
    """The task processes a job's zygote forked (not the zygote itself)."""
    from dask_batch.testing import _cluster_of

    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "dask-batch-main":
                    continue
        except OSError:
            continue
        if _cluster_of(pid) == cluster_name:
            found.append(int(pid))
    return found


def test_main_killed_during_a_pipeline_step_fails_it_and_only_its_dependants(
    batch_client, tmp_path
):
    import signal

    gate = str(tmp_path / "gate")
    beside = tmp_path / "beside"
    beside.touch()  # the independent step returns at once
    steps = [
        Step(wait_on, name="victim", args=[gate]),
        Step(never, name="below", upstream=["victim"]),
        Step(slow_ok, name="beside", args=[str(beside)]),
    ]
    job = batch_client.submit_pipeline(steps, workers=0)

    def only_the_victim_runs():
        record = batch_client.status(job.id)
        states = {t.name: t.state for t in record.tasks or []}
        done = states.get("beside") is JobState.SUCCEEDED
        return done and states.get("victim") is JobState.RUNNING and record

    record = wait_for(only_the_victim_runs, 120, "the victim alone to run")
    (victim,) = wait_for(
        lambda: forked_mains(record.cluster_name), 30, "the victim's process"
    )
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(TasksFailedError) as info:
        job.result(timeout=120)
    assert set(info.value.failed) == {"victim", "below"}
    assert info.value.partial["beside"] == "independent"
    tasks = {t.name: t for t in batch_client.tasks(job.id)}
    assert tasks["victim"].state is JobState.FAILED
    assert "SIGKILL" in f"{tasks['victim'].message} {tasks['victim'].error}"
    assert tasks["below"].state is JobState.CANCELLED
    assert tasks["beside"].state is JobState.SUCCEEDED
    assert all(t.state.is_terminal for t in tasks.values())
