"""Main starting with the cluster: main's process started early, or after the runner.

    python benchmarks/bench_start.py --trials 10   # the figures in docs/benchmarks.md
    python benchmarks/bench_start.py --smoke       # one quick pass (CI)

Two local gateways in server-side mode, the same but for
``batch.runner.start-main-early`` (true on one, false on the other), and
local job storage. Per trial, alternating: a bare cluster on the first
gateway (``new_cluster()`` until the gateway reports it running, then
stopped), and a job on each gateway (``submit()`` called -> main's first line
running). The ratios to the bare cluster are what the early start is for.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from bench_visibility import trials  # this directory is on sys.path when run
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


def main(argv=None):
    count, _ = trials(argv, __doc__.splitlines()[0], default=10)
    directory = tempfile.mkdtemp(prefix="dask-batch-bench-start-")
    dirs = {early: os.path.join(directory, f"early-{early}") for early in (1, 0)}
    infos = {}
    try:
        for early, path in dirs.items():
            flag = "true" if early else "false"
            infos[early] = _start_gateway(
                path, environment={"DASK_BATCH__RUNNER__START_MAIN_EARLY": flag}
            )
        clients = {
            early: BatchClient(
                gateway=info.gateway(), storage=os.path.join(directory, "jobs")
            )
            for early, info in infos.items()
        }
        figures: dict[str, list[float]] = {"bare": [], "early": [], "late": []}
        for batch in clients.values():  # warm-up: imports, caches
            job(batch)
        for _ in range(count):
            figures["bare"].append(bare(clients[1].gateway))
            figures["early"].append(job(clients[1]))
            figures["late"].append(job(clients[0]))
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
    for key, what in (("early", "start-main-early"), ("late", "main after runner")):
        print(
            f"| job, {what}: submit() -> main running | {median[key]:.3f} s | "
            f"{median[key] / median['bare']:.2f} |"
        )
    print(f"\nearly / late: {median['early'] / median['late']:.2f}")


if __name__ == "__main__":
    main()
