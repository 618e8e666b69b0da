"""Every benchmark, one after the other, with the machine and the date.

    python benchmarks/run_all.py           # the figures in docs/benchmarks.md
    python benchmarks/run_all.py --smoke   # one quick pass of each (as CI's tests)

The machine is shared and noisy: each script compares dask-batch with its
baseline side by side within its own run, so read the ratios.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import version

SCRIPTS = [
    "bench_core.py",  # submit, submit-to-running, STOPPED, scheduler health, many jobs
    "bench_visibility.py",  # log latency, listing 1,000 jobs
    "bench_scale.py",  # listing 10,000 jobs, local and S3
    "bench_history.py",  # the newest 50 of 1,000 to 100,000 jobs on S3: flat
    "bench_ui.py",  # the jobs page with 10,000 jobs, log latency, server memory
    "bench_hub.py",  # the hub service: gateway noticing -> retry, nobody looking
    "bench_slurm.py",  # start and end of a job on Slurm beside the local backend
    "bench_mlflow.py",  # what tracking a job in MLflow costs, beside untracked
    "bench_start.py",  # main started early vs after the runner, vs a bare cluster
    "bench_local_processes.py",  # local clusters forked vs new interpreters
    "bench_workflows.py",  # arrays vs a job each, pipeline cost per step
    "bench_arrays.py",  # 1,000 to 100,000 elements on the workers
    "bench_ploomber.py",  # a Ploomber project as a job beside `ploomber build`
    "bench_jupyter.py",  # Notebook Jobs beside jupyter-scheduler's own backend
    "bench_load.py",  # the API at 100 requests/s, 20 browsers on live logs
    "bench_throughput.py",  # 1 GB result against raw pipe/cat
    "bench_imports.py",  # what a gateway imports to load dask-batch
    "soak.py",  # faults, repeated
]


def machine() -> str:
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    packages = ", ".join(
        f"{p} {version(p)}"
        for p in (
            "dask",
            "distributed",
            "dask-gateway",
            "fsspec",
            "s3fs",
            "moto",
            "blake3",
        )
    )
    return (
        f"{datetime.date.today()}, {os.cpu_count()} cores, "
        f"{mem_kb / 2**20:.0f} GiB, {platform.platform()}, "
        f"Python {platform.python_version()}, {packages}"
    )


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    print(f"# dask-batch benchmarks\n\n{machine()}\n", flush=True)
    took = {}
    for script in SCRIPTS:
        print(f"\n## {script}\n", flush=True)
        started = time.monotonic()
        subprocess.run(
            [sys.executable, os.path.join(here, script), *sys.argv[1:]], check=True
        )
        took[script] = time.monotonic() - started
    print("\n## How long each took\n")
    for script, seconds in sorted(took.items(), key=lambda item: -item[1]):
        print(f"- {script}: {seconds:.0f} s")


if __name__ == "__main__":
    main()
