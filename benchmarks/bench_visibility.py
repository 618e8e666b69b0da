"""Visibility benchmarks: live log latency and listing many jobs.

    python benchmarks/bench_visibility.py            # the figures in docs/benchmarks.md
    python benchmarks/bench_visibility.py --smoke    # one quick pass (CI)

- log line printed in main -> seen by a follower (``job.logs(follow=True)``);
- ``jobs()`` and ``dask batch list`` with 1,000 job records in local storage,
  next to the bare start-up of the CLI process (``import dask_batch.cli``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import cluster_environment  # this directory is on sys.path

import dask_batch.local
from dask_batch import BatchClient
from dask_batch.storage.store import JobStore
from dask_batch.testing import write_job_records


def print_timestamps(lines, interval):
    import time

    for _ in range(lines):
        print(f"stamp {time.time():.6f}", flush=True)
        time.sleep(interval)


def log_latency(batch, lines, interval):
    job = batch.submit(print_timestamps, lines, interval, workers=0)
    latencies, buffer = [], ""
    for text in job.logs(follow=True):
        now = time.time()
        buffer += text
        *complete, buffer = buffer.split("\n")
        for line in complete:
            if line.startswith("stamp "):
                latencies.append(now - float(line.split()[1]))
    job.result(timeout=120)
    return latencies


def timed(func, repeat):
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def sizes(argv, description, *, jobs, repeat):
    """``(jobs, repeats, smoke)`` from ``--jobs``, ``--repeat``, ``--smoke``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--jobs", type=int, default=jobs)
    parser.add_argument("--repeat", type=int, default=repeat)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke:
        return 50, 1, True
    return args.jobs, args.repeat, False


def trials(argv, description, *, default):
    """``(trials, smoke)`` from ``--trials`` and ``--smoke`` (one trial)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--trials", type=int, default=default)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    return (1 if args.smoke else args.trials), args.smoke


def main(argv=None):
    count, repeat, smoke = sizes(argv, __doc__.splitlines()[0], jobs=1000, repeat=5)
    lines, interval = (5, 0.2) if smoke else (60, 0.25)

    directory = tempfile.mkdtemp(prefix="dask-batch-bench-")
    info = dask_batch.local.start(directory, environment=cluster_environment(smoke))
    try:
        with info.gateway() as gateway:
            batch = BatchClient(
                gateway=gateway, storage=os.path.join(directory, "jobs")
            )
            latencies = log_latency(batch, lines, interval)

            storage = os.path.join(directory, "many")
            write_job_records(JobStore(storage), batch.user, count)
            many = BatchClient(gateway=gateway, storage=storage)
            in_process_50 = timed(lambda: many.jobs(limit=50), repeat)
            in_process_all = timed(lambda: many.jobs(), repeat)
            env = dict(
                os.environ,
                **info.environment(),
                DASK_BATCH__STORAGE=storage,
            )
            cli = [sys.executable, "-m", "dask_batch.cli"]

            def run(command):
                subprocess.run(command, env=env, check=True, capture_output=True)

            cli_import = timed(
                lambda: run([sys.executable, "-c", "import dask_batch.cli"]), repeat
            )
            cli_50 = timed(lambda: run([*cli, "list"]), repeat)
            cli_all = timed(lambda: run([*cli, "list", "--limit", str(count)]), repeat)
    finally:
        dask_batch.local.stop(directory)

    lat = sorted(latencies)
    median, p90 = statistics.median(lat), lat[int(len(lat) * 0.9)]
    print(f"\n## dask-batch visibility benchmarks ({repeat} runs each, medians)\n")
    print(
        f"log line -> follower ({len(lat)} lines, one every {interval} s): median "
        f"{median * 1000:.0f} ms, p90 {p90 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms "
        "(target: median < 1 s)\n"
    )
    print(f"| listing, {count} jobs in local storage | time |\n|---|---|")
    print(f"| `jobs(limit=50)` in process | {in_process_50:.3f} s |")
    print(f"| `jobs()` (all {count}) in process | {in_process_all:.3f} s |")
    print(
        f"| `python -c 'import dask_batch.cli'` (start-up floor) | {cli_import:.3f} s |"
    )
    print(f"| `dask batch list` (newest 50) | {cli_50:.3f} s |")
    print(f"| `dask batch list --limit {count}` | {cli_all:.3f} s |")


if __name__ == "__main__":
    main()
