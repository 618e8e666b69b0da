"""Soak: run the fault scenarios in a loop and count what went wrong.

    python benchmarks/soak.py --trials 10      # the figures in docs/reliability.md
    python benchmarks/soak.py --smoke          # one trial of each (CI)

Each trial runs one scenario on a real local gateway (server-side mode) with a
moto S3 endpoint behind a cuttable loopback proxy, then checks: the final state
is the expected one, a successful job's result is there and right, every
cluster has stopped, and no main process is left. For arrays and pipelines it
also checks every element and step: exactly one final state, with a reason
when it did not succeed, run once when it did, and its value in its own place.
For schedules: one run per due time, whoever fired it. Prints a table of
scenarios x trials with the failures counted per kind. Not run in CI beyond
--smoke.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import dask

import dask_batch.local
from dask_batch import BatchClient, JobError, JobState, Step
from dask_batch.testing import (
    CuttableProxy,
    _gateway_environment,
    _start_gateway,
    gateway_clusters,
    job_cluster_client,
    kill_a_busy_worker,
    main_processes,
    wait_for,
)


def succeed(x):
    return x * 2


def fail():
    raise ValueError("expected failure")


def hard_exit():
    os._exit(3)


def kill_self(signame):
    os.kill(os.getpid(), getattr(signal, signame))


def sleep(seconds):
    time.sleep(seconds)
    return seconds


def chatty(lines):
    for i in range(lines):
        print(f"line {i}", flush=True)
        time.sleep(0.1)
    return lines


def wait_on(gate):
    deadline = time.monotonic() + 120
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    return gate


def index_after(index_and_gate):
    index, gate = index_and_gate
    wait_on(gate)
    return index


def steady(index):
    time.sleep(0.3)
    return index * 10


def never():
    return "must not run"


def running(batch, job):
    wait_for(lambda: batch.status(job.id).state is JobState.RUNNING, 60, "RUNNING")


def scenario_success(batch, ctx):
    job = batch.submit(succeed, 21, workers=0)
    return job, JobState.SUCCEEDED, 42


def scenario_raises(batch, ctx):
    return batch.submit(fail, workers=0), JobState.FAILED, None


def scenario_os_exit(batch, ctx):
    return batch.submit(hard_exit, workers=0), JobState.FAILED, None


def scenario_sigkill_main(batch, ctx):
    return batch.submit(kill_self, "SIGKILL", workers=0), JobState.FAILED, None


def scenario_sigsegv_main(batch, ctx):
    return batch.submit(kill_self, "SIGSEGV", workers=0), JobState.FAILED, None


def scenario_scheduler_killed(batch, ctx):
    job = batch.submit(sleep, 120, workers=0)
    running(batch, job)
    with job_cluster_client(batch, job.id) as client:
        pid = client.run_on_scheduler(os.getpid)
    os.kill(pid, signal.SIGKILL)
    return job, JobState.LOST, None


def scenario_cancel_pending(batch, ctx):
    job = batch.submit(sleep, 120, workers=0)
    batch.cancel(job.id)
    return job, JobState.CANCELLED, None


def scenario_cancel_running(batch, ctx):
    job = batch.submit(sleep, 120, workers=0)
    running(batch, job)
    batch.cancel(job.id)
    return job, JobState.CANCELLED, None


def scenario_cancel_racing_completion(batch, ctx):
    job = batch.submit(sleep, 0.5, workers=0)
    running(batch, job)
    time.sleep(0.4)  # aim the cancel at main's return
    record = batch.cancel(job.id)
    # Either may win; what must hold is that the winner stays.
    return job, record.state, None


def scenario_timeout(batch, ctx):
    return batch.submit(sleep, 120, timeout=2, workers=0), JobState.FAILED, None


def scenario_storage_outage(batch, ctx):
    proxy: CuttableProxy = ctx["proxy"]
    job = ctx["proxied"].submit(chatty, 60, workers=0)
    wait_for(lambda: "line 3" in ctx["proxied"].logs(job.id), 60, "first lines")
    proxy.cut()
    time.sleep(5)  # the outage
    proxy.restore()
    return job, JobState.SUCCEEDED, 60


# -- the new paths: arrays, pipelines, schedules ----------------------------------
def new_gate(ctx):
    return os.path.join(ctx["tmp"], f"gate-{os.urandom(4).hex()}")


def tasks_in_order(expected_states):
    """A check of a job's elements or steps against what must hold."""

    def check(client, job):
        wrong = Counter()
        tasks = {
            t.index if t.index is not None else t.name: t for t in client.tasks(job.id)
        }
        for key, task in tasks.items():
            allowed = expected_states.get(key, expected_states.get("*"))
            if not task.state.is_terminal or task.state.value not in allowed:
                wrong["tasks wrong"] += 1
                print(f"  task {key}: {task.state} not in {allowed}: {task.message}")
            elif task.state is JobState.SUCCEEDED and task.attempt != 1:
                wrong["tasks wrong"] += 1  # ran twice
            elif task.state is not JobState.SUCCEEDED and not task.message:
                wrong["tasks wrong"] += 1  # ended without a reason
        return wrong

    return check


def scenario_array_scheduler_killed(batch, ctx):
    job = batch.map(wait_on, [new_gate(ctx)] * 5, max_parallel=2, workers=1)
    wait_for(
        lambda: batch.status(job.id).task_counts.get("RUNNING") == 2, 120, "2 running"
    )
    with job_cluster_client(batch, job.id) as client:
        pid = client.run_on_scheduler(os.getpid)
    os.kill(pid, signal.SIGKILL)
    return job, JobState.LOST, None, tasks_in_order({"*": ("LOST", "CANCELLED")})


def scenario_array_worker_killed(batch, ctx):
    gate = new_gate(ctx)
    job = batch.map(index_after, [(i, gate) for i in range(6)], workers=2)
    with job_cluster_client(batch, job.id) as client:
        kill_a_busy_worker(client)
    open(gate, "w").close()
    values = list(range(6))
    return job, JobState.SUCCEEDED, values, tasks_in_order({"*": ("SUCCEEDED",)})


def scenario_pipeline_step_main_killed(batch, ctx):
    steps = [
        Step(kill_self, name="victim", args=["SIGKILL"]),
        Step(never, name="below", upstream=["victim"]),
        Step(steady, name="beside", args=[1]),
    ]
    job = batch.submit_pipeline(steps, workers=0)
    expected = {
        "victim": ("FAILED",),
        "below": ("CANCELLED",),
        "beside": ("SUCCEEDED",),
    }
    return job, JobState.FAILED, None, tasks_in_order(expected)


def outage(ctx, seconds):
    seconds = 10 if ctx["smoke"] else seconds
    proxy: CuttableProxy = ctx["proxy"]
    proxy.cut()
    time.sleep(seconds)  # the outage itself, not a wait for a condition
    proxy.restore()


def scenario_array_storage_outage(batch, ctx):
    proxied = ctx["proxied"]
    job = proxied.map(steady, range(8), max_parallel=2, workers=1)
    wait_for(
        lambda: proxied.status(job.id).task_counts.get("SUCCEEDED", 0) >= 1,
        120,
        "the first element",
    )
    outage(ctx, random.uniform(10, 30))
    values = [i * 10 for i in range(8)]
    return job, JobState.SUCCEEDED, values, tasks_in_order({"*": ("SUCCEEDED",)})


def scenario_pipeline_storage_outage(batch, ctx):
    proxied = ctx["proxied"]
    steps = [Step(steady, name=f"s{i}", args=[i]) for i in range(5)]
    job = proxied.submit_pipeline(steps, max_parallel=2, workers=0)
    running(proxied, job)
    outage(ctx, random.uniform(10, 30))
    values = {f"s{i}": i * 10 for i in range(5)}
    return job, JobState.SUCCEEDED, values, tasks_in_order({"*": ("SUCCEEDED",)})


def pair(a, b):
    return (a, b)


def scenario_gateway_restarted_while_a_job_waits(batch, ctx):
    """A gateway of its own, restarted with its database gone (it remembers
    no cluster) while a job waits for one that has ended meanwhile: the
    restarted gateway's keeper starts it from its signed spec."""
    directory = tempfile.mkdtemp(prefix="dask-batch-soak-restart-")
    gate = new_gate(ctx)
    info = _start_gateway(directory)
    try:
        with BatchClient(gateway=info.gateway(), storage=info.storage) as own:
            upstream = own.submit(wait_on, gate, workers=0)
            waiting = own.submit(pair, upstream, "b", workers=0)
            open(gate, "w").close()
            wait_for(lambda: own.status(upstream.id).state.is_terminal, 120, "upstream")
            own.gateway.close()
        dask_batch.local.stop(directory)
        os.remove(os.path.join(directory, "gateway.sqlite"))
        info = _start_gateway(directory)
        with BatchClient(gateway=info.gateway(), storage=info.storage) as own:
            wrong = check_job(own, "restart", waiting, JobState.SUCCEEDED, (gate, "b"))
            try:
                wait_for(lambda: not own.gateway.list_clusters(), 60, "clusters")
            except AssertionError:
                wrong["orphan clusters"] += 1
            own.gateway.close()
    finally:
        dask_batch.local.stop(directory)
    return [], wrong


FIRER = """
import sys, time
from dask_batch import BatchClient
from dask_batch.local import status
batch = BatchClient(gateway=status(sys.argv[1]).gateway(), storage=sys.argv[2])
print("firing", flush=True)
while True:
    batch.fire_schedules()
    time.sleep(0.05)
"""


def scenario_schedule_firer_killed(batch, ctx):
    """A firer (what the service runs) killed at a random moment of its
    firing, beside the local gateway's keeper and this client firing too."""
    schedule = batch.schedule(
        succeed, 1, cron="* * * * * */2", concurrency="allow", workers=0
    )
    firer = subprocess.Popen(
        [sys.executable, "-c", FIRER, ctx["directory"], batch.store.url],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, DASK_BATCH__SCHEDULES__CLAIM_TIMEOUT="3s"),
    )
    try:
        firer.stdout.readline()
        if random.random() < 0.5:
            # Aimed: the moment its claim of a due time shows, before the
            # run is recorded (the window a restarted service falls in).
            wait_for(
                lambda: any(
                    r.outcome == "starting" for r in batch.schedule_history(schedule.id)
                ),
                60,
                "the firer to claim a due time",
                interval=0.005,
            )
        else:
            deadline = time.monotonic() + random.uniform(2, 6)
            while time.monotonic() < deadline:  # this client fires too
                batch.fire_schedules()
        firer.send_signal(signal.SIGKILL)
        firer.wait(10)
        # After the claim timeout, whatever it claimed is taken over.
        with dask.config.set({"batch.schedules.claim-timeout": "3s"}):
            settle = time.monotonic() + 6
            while time.monotonic() < settle:
                batch.fire_schedules()
        batch.pause_schedule(schedule.id)
        history = batch.schedule_history(schedule.id)
    finally:
        firer.kill()
        firer.wait(10)
        firer.stdout.close()
    wrong = Counter()
    per_time = Counter(r.time for r in history if r.job_id)
    ids = [r.job_id for r in history if r.job_id]
    wrong["fired twice"] += (
        sum(n - 1 for n in per_time.values()) + len(ids) - len(set(ids))
    )
    wrong["fired twice"] += len({r.time for r in history}) != len(history)
    if any(r.outcome == "starting" for r in history):
        wrong["wrong states"] += 1  # a claim never settled
    taken = sum("taken over" in (r.message or "") for r in history)
    print(f"  {len(ids)} runs, {taken} taken over from the killed firer")
    batch.delete_schedule(schedule.id)
    return [(batch.status(i), JobState.SUCCEEDED, 2) for i in ids], wrong


SCENARIOS: dict[str, Callable[..., Any]] = {
    name[len("scenario_") :]: func
    for name, func in globals().items()
    if name.startswith("scenario_")
}


def trial(batch, ctx, scenario):
    """Run one scenario; return the counters of what went wrong."""
    outcome = SCENARIOS[scenario](batch, ctx)
    jobs, wrong = outcome if isinstance(outcome[0], list) else ([outcome], Counter())
    client = ctx["proxied"] if "storage_outage" in scenario else batch
    for job, expected, value, *checks in jobs:
        wrong += check_job(client, scenario, job, expected, value)
        for check in checks:
            wrong += check(client, job)
    try:
        wait_for(lambda: not client.gateway.list_clusters(), 60, "clusters to stop")
    except AssertionError:
        wrong["orphan clusters"] += 1
    try:
        names = gateway_clusters(client.gateway)
        wait_for(lambda: not main_processes(names), 30, "main processes to exit")
    except AssertionError:
        wrong["orphan processes"] += 1
    return wrong


def check_job(client, scenario, job, expected, value):
    wrong = Counter()
    try:
        got = client.result(job.id, timeout=180)
        if value is not None and got != value:
            wrong["lost results"] += 1
    except JobError:
        if expected is JobState.SUCCEEDED:
            wrong["lost results"] += 1
    record = wait_for(
        lambda: client.status(job.id).state.is_terminal and client.status(job.id),
        120,
        "a terminal state",
    )
    if record.state is not expected:
        wrong["wrong states"] += 1
        print(f"  {scenario}: {record.state} != {expected}: {record.message}")
    return wrong


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS))
    args = parser.parse_args(argv)
    trials = 1 if args.smoke else args.trials
    scenarios = args.only or list(SCENARIOS)

    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    from dask_batch.testing import S3Server

    s3 = S3Server(endpoint_url=f"http://{host}:{port}")
    proxy = CuttableProxy(host, port)
    import s3fs

    s3fs.S3FileSystem(**s3.storage_options).mkdir("soak")
    directory = tempfile.mkdtemp(prefix="dask-batch-soak-")
    gates = tempfile.mkdtemp(prefix="dask-batch-soak-gates-")
    _start_gateway(directory, environment=_gateway_environment(s3))
    info = dask_batch.local.status(directory)
    proxied_options = dict(s3.storage_options)
    proxied_options["client_kwargs"] = {"endpoint_url": proxy.url}
    table: dict[str, Counter] = {}
    started = time.monotonic()
    try:
        with info.gateway() as gateway:
            batch = BatchClient(
                gateway=gateway, storage=os.path.join(directory, "jobs")
            )
            # Client-side mode, so that the runner too goes through the proxy.
            proxied = BatchClient(
                gateway=gateway,
                storage="s3://soak/jobs",
                storage_options=proxied_options,
                mode="client",
            )
            ctx = {
                "proxy": proxy,
                "proxied": proxied,
                "tmp": gates,
                "directory": directory,
                "smoke": args.smoke,
            }
            for scenario in scenarios:
                table[scenario] = Counter()
                for _ in range(trials):
                    table[scenario] += trial(batch, ctx, scenario)
                    table[scenario]["trials"] += 1
                print(f"{scenario}: {dict(table[scenario])}", file=sys.stderr)
    finally:
        dask_batch.local.stop(directory)
        proxy.close()
        moto.stop()

    kinds = [
        "lost results",
        "orphan clusters",
        "orphan processes",
        "wrong states",
        "tasks wrong",
        "fired twice",
    ]
    print(
        f"\n## soak: {trials} trials per scenario, {time.monotonic() - started:.0f} s\n"
    )
    print("| scenario | trials | " + " | ".join(kinds) + " |")
    print("|---|---|" + "---|" * len(kinds))
    for scenario, counts in table.items():
        cells = " | ".join(str(counts[k]) for k in kinds)
        print(f"| {scenario} | {counts['trials']} | {cells} |")
    total = sum(sum(c[k] for k in kinds) for c in table.values())
    print(f"\ntotal problems: {total}")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
