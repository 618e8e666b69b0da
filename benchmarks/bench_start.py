"""Main starting with the cluster: main's process forked early, spawned early, or late.

    python benchmarks/bench_start.py --trials 10 --many 20   # docs/benchmarks.md
    python benchmarks/bench_start.py --smoke                 # one quick pass (CI)

Three local gateways in server-side mode that differ only in how main's
process starts: forked from the scheduler at preload time (the default),
spawned at preload time (``batch.runner.fork-main: false``), or spawned after
the runner's checks (``batch.runner.start-main-early: false``); local job
storage. Per trial, alternating: a bare cluster (``new_cluster()`` until the
gateway reports it running, then stopped), and a job on each gateway
(``submit()`` called -> main's first line running), one cluster at a time.

Then ``--many`` at once, on the first two gateways and as bare clusters:
all submitted together, until every cluster is STOPPED (a job's cluster
stops itself once main's result is stored; bare clusters are stopped as
soon as all run). What a job costs beyond its cluster is the difference,
per job.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from bench_core import bare_many, stopped_at  # this directory is on sys.path
from bench_visibility import trials
from dask_gateway.client import ClusterStatus

import dask_batch.local
from dask_batch import BatchClient
from dask_batch.testing import _start_gateway


def started_at() -> float:
    import time

    return time.time()


def bare(gateway) -> float:
    t0 = time.time()
    cluster = gateway.new_cluster(shutdown_on_close=False)
    took = time.time() - t0
    cluster.shutdown()
    while gateway.get_cluster(cluster.name).status is not ClusterStatus.STOPPED:
        time.sleep(0.02)
    return took


def job(batch: BatchClient) -> float:
    t0 = time.time()
    job = batch.submit(started_at, workers=0)
    started = job.result(timeout=120)
    while batch.gateway.get_cluster(job.status().cluster_name).status not in (
        ClusterStatus.STOPPED,
        ClusterStatus.FAILED,
    ):
        time.sleep(0.02)  # one cluster at a time: nothing else on the machine
    return started - t0


def jobs_many(batch: BatchClient, count) -> float:
    """``count`` jobs at once: submitted -> every result -> every cluster stopped."""
    t0 = time.time()
    jobs = [batch.submit(started_at, workers=0) for _ in range(count)]
    for j in jobs:
        j.result(timeout=600)
    names = [j.status().cluster_name for j in jobs]
    return max(stopped_at(batch.gateway, name) for name in names) - t0


# How main's process starts, as the three gateways are configured.
WAYS = {
    "forked": {},
    "spawned": {"DASK_BATCH__RUNNER__FORK_MAIN": "false"},
    "late": {"DASK_BATCH__RUNNER__START_MAIN_EARLY": "false"},
}
WHAT = {
    "forked": "main's process forked from the scheduler early (default)",
    "spawned": "main's process spawned early (`fork-main: false`)",
    "late": "main's process spawned after the runner's checks",
}


def trials_and_many(argv, description):
    """``(trials, many, smoke)`` from ``--trials``, ``--smoke`` (one trial)
    and ``--many`` (clusters at once: 2 at smoke size)."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--many", type=int, default=20)
    known, rest = parser.parse_known_args(argv)
    count, smoke = trials(rest, description, default=10)
    return count, (2 if smoke else known.many), smoke


def main(argv=None):
    count, many, smoke = trials_and_many(argv, __doc__.splitlines()[0])
    directory = tempfile.mkdtemp(prefix="dask-batch-bench-start-")
    dirs = {way: os.path.join(directory, way) for way in WAYS}
    try:
        infos = {
            way: _start_gateway(dirs[way], environment=env) for way, env in WAYS.items()
        }
        clients = {
            way: BatchClient(
                gateway=info.gateway(), storage=os.path.join(directory, "jobs")
            )
            for way, info in infos.items()
        }
        figures: dict[str, list[float]] = {"bare": [], **{w: [] for w in WAYS}}
        # Warm-up: imports, caches (a smoke's figures don't count).
        if not smoke:
            for batch in clients.values():
                job(batch)
        for _ in range(count):
            figures["bare"].append(bare(clients["forked"].gateway))
            for way, batch in clients.items():
                figures[way].append(job(batch))
        at_once = {
            "bare": bare_many(clients["forked"].gateway, many),
            "forked": jobs_many(clients["forked"], many),
            "spawned": jobs_many(clients["spawned"], many),
        }
        for batch in clients.values():
            batch.gateway.close()
    finally:
        for path in dirs.values():
            dask_batch.local.stop(path)
    median = {k: statistics.median(v) for k, v in figures.items()}
    print(f"## Main starting with the cluster ({count} trials, medians)\n")
    print("| measure | median | / bare cluster |")
    print("|---|---|---|")
    print(f"| bare cluster: new_cluster() -> running | {median['bare']:.3f} s | 1.00 |")
    for way in WAYS:
        print(
            f"| job, {WHAT[way]}: submit() -> main running | {median[way]:.3f} s | "
            f"{median[way] / median['bare']:.2f} |"
        )
    print(f"\n## {many} at once, until every cluster is stopped\n")
    print("| measure | seconds | per job beyond a bare cluster |")
    print("|---|---|---|")
    print(f"| {many} bare clusters | {at_once['bare']:.1f} s | |")
    for way in ("forked", "spawned"):
        extra = (at_once[way] - at_once["bare"]) / many
        print(f"| {many} jobs, {WHAT[way]} | {at_once[way]:.1f} s | {extra:+.3f} s |")


if __name__ == "__main__":
    main()
