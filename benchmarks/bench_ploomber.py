"""Ploomber projects as jobs: beside a plain `ploomber build`, in one run.

    python benchmarks/bench_ploomber.py            # the figures in docs/benchmarks.md
    python benchmarks/bench_ploomber.py --smoke    # once, a 2-task grid (CI)

On one local gateway (server-side mode, local storage), side by side:

- the small project of the tests (two function tasks and a script run as a
  notebook) built by `ploomber build` in a fresh copy, and submitted as a
  dask-batch job (submit to SUCCEEDED), one worker;
- the same project submitted again from another fresh copy: nothing has
  changed, so every task is taken from storage (goal: under the floor plus
  2 s);
- the floor: a trivial function job (submit to SUCCEEDED, one worker), the
  cost of a cluster that starts, runs main and stops;
- a grid of 16 tasks that each sleep 1 s, on 4 workers: how many ran at
  once (from the tasks' own start and end times) and the time of the build.

Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from common import cluster_environment  # this directory is on sys.path

import dask_batch.local
from dask_batch import BatchClient, JobState
from dask_batch.testing import most_at_once

HERE = os.path.dirname(os.path.abspath(__file__))
BASIC = os.path.join(HERE, "..", "tests", "data", "ploomber", "basic")
QUIET = {"PLOOMBER_STATS_ENABLED": "false", "PLOOMBER_VERSION_CHECK_DISABLED": "1"}

GRID_SPEC = """\
tasks:
  - source: tasks.nap
    name: nap-
    product: output/nap-[[n]].txt
    grid:
      n: [{numbers}]
"""
GRID_TASKS = """\
import time
from pathlib import Path


def nap(product, n):
    time.sleep(1)
    Path(str(product)).write_text(str(n))
"""


def one():
    return 1


def fresh(directory, name, source=BASIC):
    """A fresh checkout of the project, in a folder named after it."""
    folder = os.path.join(tempfile.mkdtemp(dir=directory), name)
    shutil.copytree(source, folder)
    return folder


def submitted(batch, spec, workers=1):
    """Seconds from submit to SUCCEEDED, and the job's tasks."""
    t0 = time.perf_counter()
    job = batch.submit_pipeline(spec, workers=workers)
    record = job.wait(timeout=600)
    elapsed = time.perf_counter() - t0
    if record.state is not JobState.SUCCEEDED:
        raise RuntimeError(f"{job.id}: {record.state}: {record.message}")
    return elapsed, batch.tasks(job.id)


def ploomber_build(folder):
    t0 = time.perf_counter()
    subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ploomber"), "build"],
        cwd=folder,
        env={**os.environ, **QUIET},
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    repeat = 1 if args.smoke else args.repeat
    grid = 2 if args.smoke else 16
    # Each worker imports Ploomber (seconds of CPU): the smoke starts two.
    grid_workers = 2 if args.smoke else 4

    directory = tempfile.mkdtemp(prefix="dask-batch-bench-ploomber-")
    info = dask_batch.local.start(
        directory, environment=cluster_environment(args.smoke)
    )
    runs = {k: [] for k in ("local", "job", "again", "floor")}
    try:
        storage = os.path.join(directory, "jobs")
        with BatchClient(gateway=info.gateway(), storage=storage) as batch:
            for i in range(repeat):
                # A project of its own per round: the first job makes all.
                name = f"basic{i}"
                runs["local"].append(ploomber_build(fresh(directory, name)))
                spec = os.path.join(fresh(directory, name), "pipeline.yaml")
                runs["job"].append(submitted(batch, spec)[0])
                spec = os.path.join(fresh(directory, name), "pipeline.yaml")
                seconds, tasks = submitted(batch, spec)
                if {t.reused_from for t in tasks} != {"storage"}:
                    raise RuntimeError(f"not all reused: {tasks}")
                runs["again"].append(seconds)
                t0 = time.perf_counter()
                batch.submit(one, workers=1).result(timeout=600)
                runs["floor"].append(time.perf_counter() - t0)
            naps = os.path.join(directory, "naps")
            os.makedirs(naps)
            numbers = ", ".join(str(n) for n in range(grid))
            with open(os.path.join(naps, "pipeline.yaml"), "w") as f:
                f.write(GRID_SPEC.format(numbers=numbers))
            with open(os.path.join(naps, "tasks.py"), "w") as f:
                f.write(GRID_TASKS)
            grid_seconds, grid_tasks = submitted(
                batch, os.path.join(naps, "pipeline.yaml"), workers=grid_workers
            )
            batch.gateway.close()
    finally:
        dask_batch.local.stop(directory)

    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"\n### A small Ploomber project, medians of {repeat}\n")
    print("| measure | seconds | ratio |")
    print("|---|---|---|")
    print(f"| `ploomber build` here (3 tasks) | {med['local']:.2f} | 1.00 |")
    print(
        f"| as a dask-batch job, submit to SUCCEEDED | {med['job']:.2f} | "
        f"{med['job'] / med['local']:.2f} |"
    )
    print(
        f"| floor: a trivial job, submit to SUCCEEDED | {med['floor']:.2f} | "
        f"{med['floor'] / med['local']:.2f} |"
    )
    print(
        f"| no change, from a fresh checkout (all from storage) | "
        f"{med['again']:.2f} | {med['again'] / med['local']:.2f} |"
    )
    print(
        f"\nno-change resubmit minus the floor: {med['again'] - med['floor']:+.2f} s "
        "(goal: under +2 s)"
    )
    print(
        f"\n{grid} tasks of 1 s on {grid_workers} workers: {grid_seconds:.1f} s "
        f"submit to SUCCEEDED, at most {most_at_once(grid_tasks)} at once"
    )


if __name__ == "__main__":
    main()
