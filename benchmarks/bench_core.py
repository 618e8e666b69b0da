"""Core benchmarks, side by side in one run on one local gateway.

    python benchmarks/bench_core.py              # the figures in docs/benchmarks.md
    python benchmarks/bench_core.py --smoke      # one quick pass (CI), no targets

Measures, for dask-batch in server-side and client-side mode and for the raw
workaround (``new_cluster(shutdown_on_close=False)`` + ``client.submit`` +
``fire_and_forget``):

- submit latency (the call returns) and submit-to-main-running;
- main-returned-to-cluster-STOPPED (dask-batch only: the raw workaround's
  cluster idles until the gateway's idle timeout);
- scheduler round trip (``run_on_scheduler``) while main sleeps vs while main
  burns CPU;
- the bare floor: ``new_cluster()`` until running, then a Python process that
  imports distributed (what main's process must do at least);
- the scheduler's resident memory with a job's runner against a bare
  scheduler (from a second gateway without dask-batch), and main's process;
- ``--many`` jobs submitted back to back against as many bare clusters
  (submitted, running, stopped: the gateway's floor) and the raw workaround
  (each cluster with the one worker main needs: on one small machine, many
  of them overload it).

Everything runs on 127.0.0.1; the gateway is a throw-away local one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import distributed
from common import cluster_environment  # this directory is on sys.path
from dask_gateway.client import ClusterStatus

import dask_batch.local
from dask_batch import BatchClient, JobState
from dask_batch.testing import job_cluster_client, wait_for


def started_at():
    """Main: report when it started running."""
    import time

    return time.time()


def sleep_then_burn(idle_s, burn_s):
    """Main: an idle phase, then a CPU-bound phase in pure Python."""
    import time

    time.sleep(idle_s)
    end = time.monotonic() + burn_s
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def stopped_at(gateway, name):
    def check():
        report = gateway.get_cluster(name)
        return report if report.status is ClusterStatus.STOPPED else None

    return wait_for(check, 60, f"cluster {name} to stop").stop_time.timestamp()


def bench_batch(batch, repeat):
    submit, running, stopping = [], [], []
    for _ in range(repeat):
        t0 = time.time()
        job = batch.submit(started_at, workers=0)
        submit.append(time.time() - t0)
        main_started = job.result(timeout=120)
        running.append(main_started - t0)
        # main returns at once, so the time it reports is also when it returned.
        stopping.append(
            stopped_at(batch.gateway, job.status().cluster_name) - main_started
        )
    return submit, running, stopping


# GatewayCluster holds a Gateway on its parent's loop whose __del__ calls
# close() synchronously: collected on that loop's thread, it deadlocks
# (dask-gateway 2026.3). Keep the raw workaround's clusters alive until exit.
_KEEP_ALIVE = []


def submit_raw(gateway):
    """The raw workaround: a cluster of its own, one worker, main submitted."""
    cluster = gateway.new_cluster(shutdown_on_close=False)
    cluster.scale(1)
    client = cluster.get_client(set_as_default=False)
    future = client.submit(started_at, pure=False)
    distributed.fire_and_forget(future)
    return cluster, client, future


def retire(cluster, client=None):
    """Stop a benchmark's cluster (the workaround never does: it idles)."""
    if client is not None:
        client.close()
    cluster.shutdown()
    _KEEP_ALIVE.append(cluster)


def bench_raw(gateway, repeat):
    submit, running = [], []
    for _ in range(repeat):
        t0 = time.time()
        cluster, client, future = submit_raw(gateway)
        submit.append(time.time() - t0)
        running.append(future.result(timeout=120) - t0)
        retire(cluster, client)
    return submit, running


def bench_bare(gateway, repeat):
    """Bare floor: ``new_cluster()`` until running, then a Python process start."""
    running = []
    for _ in range(repeat):
        t0 = time.time()
        cluster = gateway.new_cluster(shutdown_on_close=False)
        started = subprocess.run(
            [sys.executable, "-c", "import distributed, time; print(time.time())"],
            check=True,
            capture_output=True,
            text=True,
        )
        running.append(float(started.stdout) - t0)
        retire(cluster)
    return running


def scheduler_rss_mb(client):
    def rss():
        import psutil

        return psutil.Process().memory_info().rss

    return client.run_on_scheduler(rss) / 2**20


def main_rss_mb(client):
    """Resident memory of the scheduler's children: main's process."""

    def rss():
        import psutil

        return sum(c.memory_info().rss for c in psutil.Process().children())

    return client.run_on_scheduler(rss) / 2**20


def bench_runner_memory(batch, plain_gateway):
    """Scheduler RSS with a job's runner (main sleeping) against a bare
    scheduler from a gateway without dask-batch installed; and main's process."""
    cluster = plain_gateway.new_cluster(shutdown_on_close=False)
    try:
        with cluster.get_client(set_as_default=False) as client:
            bare = scheduler_rss_mb(client)
    finally:
        retire(cluster)
    job = batch.submit(time.sleep, 30, workers=0)
    wait_for(lambda: job.status().state is JobState.RUNNING, 60, "main to start")
    with job_cluster_client(batch, job.id) as client:
        with_runner = scheduler_rss_mb(client)
        main = main_rss_mb(client)
    job.cancel()
    return bare, with_runner, main


def wait_all(gateway, names, status):
    def check():
        return all(gateway.get_cluster(n).status is status for n in names)

    wait_for(check, 600, f"{len(names)} clusters to be {status.name}")


def bare_many(gateway, count):
    """``count`` bare clusters at once: submitted -> all running -> all stopped."""
    t0 = time.time()
    names = [gateway.submit() for _ in range(count)]
    wait_all(gateway, names, ClusterStatus.RUNNING)
    for name in names:
        gateway.stop_cluster(name)
    wait_all(gateway, names, ClusterStatus.STOPPED)
    return time.time() - t0


def bench_many(batch, gateway, count):
    """``count`` jobs back to back: dask-batch against the gateway's floor for
    as many clusters (submitted, running, stopped) and the raw workaround."""
    floor = bare_many(gateway, count)
    t0 = time.time()
    jobs = [batch.submit(started_at, workers=0) for _ in range(count)]
    for job in jobs:
        job.result(timeout=600)
    names = [job.status().cluster_name for job in jobs]
    last_stop = max(stopped_at(gateway, name) for name in names)
    batch_results, batch_stopped = time.time() - t0, last_stop - t0
    t0 = time.time()
    raw = [submit_raw(gateway) for _ in range(count)]
    for cluster, _, future in raw:
        future.result(timeout=1800)
        # Not what the workaround does (its clusters idle on), but many idle
        # clusters overload a small machine until the gateway fails them.
        gateway.stop_cluster(cluster.name)
    raw_results = time.time() - t0
    for cluster, client, _ in raw:
        client.close(timeout=10)
        _KEEP_ALIVE.append(cluster)
    return floor, batch_results, batch_stopped, raw_results


def round_trips(client, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.run_on_scheduler(os.getpid)
        out.append(time.perf_counter() - t0)
    return out


def bench_scheduler_health(batch, n, idle_s, burn_s):
    job = batch.submit(sleep_then_burn, idle_s, burn_s, workers=0)
    started = wait_for(
        lambda: job.status().state is JobState.RUNNING and job.status().started,
        60,
        "main to start",
    ).timestamp()
    with job_cluster_client(batch, job.id) as client:
        # main's process needs ~1 s to start; then it sleeps until idle_s.
        time.sleep(max(0.0, started + 1.5 - time.time()))
        idle = round_trips(client, n)
        time.sleep(max(0.0, started + idle_s + 1.5 - time.time()))
        burning = round_trips(client, n)
        assert time.time() < started + idle_s + burn_s, "burn phase ended too early"
    job.result(timeout=120)
    return idle, burning


def ms(values):
    return f"{statistics.median(values) * 1000:.1f} ms"


def s(values):
    return f"{statistics.median(values):.3f} s"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--round-trips", type=int, default=200)
    parser.add_argument("--many", type=int, default=50, help="jobs back to back")
    parser.add_argument("--smoke", action="store_true", help="one quick pass")
    args = parser.parse_args(argv)
    repeat = 1 if args.smoke else args.repeat
    n_trips = 5 if args.smoke else args.round_trips

    directory = tempfile.mkdtemp(prefix="dask-batch-bench-")
    plain_directory = tempfile.mkdtemp(prefix="dask-batch-bench-plain-")
    info = dask_batch.local.start(
        directory, environment=cluster_environment(args.smoke)
    )
    plain = dask_batch.local.start(
        plain_directory, server_side=False, environment=cluster_environment(args.smoke)
    )
    try:
        with (
            info.gateway() as gateway,
            info.gateway() as raw_gateway,
            plain.gateway() as plain_gateway,
        ):
            storage = os.path.join(directory, "jobs")
            server = BatchClient(gateway=gateway, storage=storage, mode="server")
            client_mode = BatchClient(gateway=gateway, storage=storage, mode="client")
            # Warm-up: imports, first connections (a smoke's figures don't count).
            if not args.smoke:
                server.submit(started_at, workers=0).result(timeout=120)

            rows = {}
            for _ in range(repeat):  # interleave the three so noise hits all
                for key, run in (
                    ("server", lambda: bench_batch(server, 1)),
                    ("client", lambda: bench_batch(client_mode, 1)),
                    ("raw", lambda: bench_raw(raw_gateway, 1)),
                    ("bare", lambda: [bench_bare(raw_gateway, 1)]),
                ):
                    for i, values in enumerate(run()):
                        rows.setdefault(key, [[], [], []])[i].extend(values)
            idle, burning = bench_scheduler_health(
                server,
                n_trips,
                idle_s=2 if args.smoke else 6,
                burn_s=3 if args.smoke else 8,
            )
            bare_rss, runner_rss, main_rss = bench_runner_memory(server, plain_gateway)
            many = 3 if args.smoke else args.many
            floor_all, batch_all, batch_stopped, raw_all = bench_many(
                server, raw_gateway, many
            )
    finally:
        dask_batch.local.stop(directory)
        dask_batch.local.stop(plain_directory)

    raw_submit, raw_running = rows["raw"][0], rows["raw"][1]
    bare_running = rows["bare"][0]
    print(f"\n## dask-batch core benchmarks ({repeat} runs each, medians)\n")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores\n")
    print("| measure | server-side | client-side | raw workaround |")
    print("|---|---|---|---|")
    print(
        f"| submit returns | {s(rows['server'][0])} | {s(rows['client'][0])} "
        f"| {s(raw_submit)} |"
    )
    print(
        f"| submit to main running | {s(rows['server'][1])} | {s(rows['client'][1])} "
        f"| {s(raw_running)} |"
    )
    print(
        f"| main returned to cluster STOPPED | {s(rows['server'][2])} "
        f"| {s(rows['client'][2])} | never (idle timeout) |"
    )
    print("\n| ratio | value | target |\n|---|---|---|")
    ratios = [
        (
            "raw time-to-running / server-side submit",
            statistics.median(raw_running) / statistics.median(rows["server"][0]),
            ">= 5",
        ),
        (
            "client-side submit / raw submit",
            statistics.median(rows["client"][0]) / statistics.median(raw_submit),
            "<= 1.1",
        ),
        (
            "server-side submit-to-running / bare new_cluster + process start",
            statistics.median(rows["server"][1]) / statistics.median(bare_running),
            "<= 1.2",
        ),
        (
            "run_on_scheduler burning / idle",
            statistics.median(burning) / statistics.median(idle),
            "<= 1.5",
        ),
        (
            f"{many} jobs, all clusters STOPPED: dask-batch / bare clusters",
            batch_stopped / floor_all,
            "",
        ),
        (
            f"{many} jobs, all results: dask-batch / raw workaround",
            batch_all / raw_all,
            "",
        ),
    ]
    for label, value, target in ratios:
        print(f"| {label} | {value:.2f} | {target} |")
    print(
        f"\nbare floor, new_cluster() running + `python -c 'import distributed'`: "
        f"{s(bare_running)}"
    )
    print(
        f"\nscheduler RSS: bare cluster (gateway without dask-batch) "
        f"{bare_rss:.0f} MB, with a job's runner {runner_rss:.0f} MB: runner "
        f"overhead {runner_rss - bare_rss:+.1f} MB (target < 50 MB); main's own "
        f"process (a child of the scheduler, main sleeping) {main_rss:.0f} MB"
    )
    print(
        f"\n{many} jobs back to back: dask-batch all results in {batch_all:.1f} s "
        f"({many / batch_all * 60:.0f} jobs/min), every cluster STOPPED at "
        f"{batch_stopped:.1f} s; the gateway's floor, {many} bare clusters "
        f"submitted, running and stopped, {floor_all:.1f} s: overhead per job "
        f"beyond cluster start and stop {(batch_stopped - floor_all) / many:+.2f} s; "
        f"raw workaround all results in {raw_all:.1f} s "
        f"({many / raw_all * 60:.0f} jobs/min; the benchmark stopped each "
        "cluster as its result came, the workaround leaves them idling)"
    )
    print(
        f"\nrun_on_scheduler round trip ({len(idle)} calls each): "
        f"idle {ms(idle)} (p90 {sorted(idle)[int(len(idle) * 0.9)] * 1000:.1f} ms), "
        f"main burning CPU {ms(burning)} "
        f"(p90 {sorted(burning)[int(len(burning) * 0.9)] * 1000:.1f} ms, "
        f"max {max(burning) * 1000:.1f} ms)"
    )


if __name__ == "__main__":
    main()
