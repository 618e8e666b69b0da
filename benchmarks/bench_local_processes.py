"""The local gateway's schedulers and nannies: forked, or new interpreters.

    python benchmarks/bench_local_processes.py --trials 10 --many 20
    python benchmarks/bench_local_processes.py --smoke  # one quick pass (CI)

(The first is what docs/benchmarks.md records.)

Two local gateways in server-side mode that differ only in
``LoopbackLocalBackend.fork_processes``: forked from the gateway's zygote
(the default), or started as new interpreters (dask-gateway's LocalBackend);
local job storage. Per trial, alternating between them, one cluster at a
time: a bare cluster (``new_cluster()`` -> running, then stopped), a job
without workers (``submit()`` -> main running, then its cluster stopped), and
a job with one worker that runs a task there (``submit()`` -> result). The
whole machine's CPU time (``/proc/stat``) is read around each, so the
figures include every process a job starts. Then ``--many`` jobs without
workers at once on each, until every cluster is stopped.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

from bench_core import bare_many  # this directory is on sys.path
from bench_start import bare, job, jobs_many, trials_and_many

import dask_batch.local
from dask_batch import BatchClient
from dask_batch.testing import _start_gateway

WAYS = {
    "forked": {},
    "new interpreters": {"LoopbackLocalBackend.fork_processes": False},
}


def machine_cpu() -> float:
    """CPU seconds the whole machine has spent, every process included."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def measured(func, *args):
    """(seconds, machine CPU seconds) of ``func(*args)``."""
    cpu, t0 = machine_cpu(), time.perf_counter()
    func(*args)
    return time.perf_counter() - t0, machine_cpu() - cpu


def on_a_worker(x):
    from distributed import get_client

    return get_client().submit(lambda v: v + 1, x).result()


def job_with_a_worker(batch: BatchClient) -> None:
    submitted = batch.submit(on_a_worker, 1, workers=1)
    assert submitted.result(timeout=120) == 2


def main(argv=None):
    count, many, smoke = trials_and_many(argv, __doc__.splitlines()[0])
    directory = tempfile.mkdtemp(prefix="dask-batch-bench-processes-")
    dirs = {way: os.path.join(directory, way.replace(" ", "-")) for way in WAYS}
    kinds = ("bare cluster", "job, no worker", "job, one worker")
    figures = {(way, kind): [] for way in WAYS for kind in kinds}
    try:
        infos = {
            way: _start_gateway(dirs[way], gateway_config=config)
            for way, config in WAYS.items()
        }
        clients = {
            way: BatchClient(
                gateway=info.gateway(), storage=os.path.join(directory, "jobs")
            )
            for way, info in infos.items()
        }
        # Warm-up: imports, caches, the zygote (a smoke's figures don't count).
        if not smoke:
            for batch in clients.values():
                job(batch)
                job_with_a_worker(batch)
        for _ in range(count):
            for way, batch in clients.items():
                figures[way, "bare cluster"].append(measured(bare, batch.gateway))
                figures[way, "job, no worker"].append(measured(job, batch))
                figures[way, "job, one worker"].append(
                    measured(job_with_a_worker, batch)
                )
        at_once = {}
        for way, batch in clients.items():
            at_once[way, "bare"] = measured(bare_many, batch.gateway, many)
            at_once[way, "jobs"] = measured(jobs_many, batch, many)
        for batch in clients.values():
            batch.gateway.close()
    finally:
        for path in dirs.values():
            dask_batch.local.stop(path)

    print(f"## Forked or new interpreters ({count} trials, medians)\n")
    print(
        "| one at a time | forked: s | CPU-s | new interpreters: s | CPU-s "
        "| CPU ratio |\n|---|---|---|---|---|---|"
    )
    for kind in kinds:
        (fw, fc), (nw, nc) = (
            (
                statistics.median(w for w, _ in figures[way, kind]),
                statistics.median(c for _, c in figures[way, kind]),
            )
            for way in WAYS
        )
        print(
            f"| {kind} | {fw:.2f} | {fc:.2f} | {nw:.2f} | {nc:.2f} | {nc / fc:.1f}x |"
        )
    print(f"\n## {many} at once, until every cluster is stopped\n")
    print("| at once | forked: s | CPU-s | new interpreters: s | CPU-s |")
    print("|---|---|---|---|---|")
    for what in ("bare", "jobs"):
        (fw, fc), (nw, nc) = (at_once[way, what] for way in WAYS)
        label = f"{many} bare clusters" if what == "bare" else f"{many} jobs, no worker"
        print(f"| {label} | {fw:.1f} | {fc:.1f} | {nw:.1f} | {nc:.1f} |")


if __name__ == "__main__":
    main()
