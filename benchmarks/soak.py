"""Soak: run the fault scenarios in a loop and count what went wrong.

    python benchmarks/soak.py --trials 10      # the figures in docs/reliability.md
    python benchmarks/soak.py --smoke          # one trial of each (CI)

Each trial runs one scenario on a real local gateway (server-side mode) with a
moto S3 endpoint behind a cuttable loopback proxy, then checks: the final state
is the expected one, a successful job's result is there and right, every
cluster has stopped, and no main process is left. Prints a table of scenarios x
trials with the failures counted per kind. Not run in CI beyond --smoke.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import dask_batch.local
from dask_batch import BatchClient, JobError, JobState
from dask_batch.testing import (
    CuttableProxy,
    _gateway_environment,
    _start_gateway,
    gateway_clusters,
    job_cluster_client,
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


SCENARIOS: dict[str, Callable[..., Any]] = {
    name[len("scenario_") :]: func
    for name, func in globals().items()
    if name.startswith("scenario_")
}


def trial(batch, ctx, scenario):
    """Run one scenario; return the counters of what went wrong."""
    wrong = Counter()
    job, expected, value = SCENARIOS[scenario](batch, ctx)
    client = ctx["proxied"] if scenario == "storage_outage" else batch
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
            ctx = {"proxy": proxy, "proxied": proxied}
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

    kinds = ["lost results", "orphan clusters", "orphan processes", "wrong states"]
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
