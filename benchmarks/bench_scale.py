"""Listing at scale: jobs() and `dask batch list` with 10,000 job records.

    python benchmarks/bench_scale.py              # the figures in docs/benchmarks.md
    python benchmarks/bench_scale.py --smoke      # one quick pass (CI), no targets

Fills local storage and a moto S3 server (its own process, as a real endpoint
would be) with finished jobs, then times, side by side:

- a first listing of records without the index, which reads every record one
  by one (6 small objects per job) and packs them into the listing index, and
  the listing after it;
- listings of 10,000 jobs as runners leave them (records and index packs);
- `dask batch list` in a new process (newest 50, and all jobs), with that
  process's peak resident memory, beside `dask --help`: dask's CLI imports
  distributed to load its own subcommands before it runs ours, a floor that
  `dask batch list` cannot go under; and the stand-alone `dask-batch list`.

Runners add each job that ends to the index, so the 10,000 jobs are written
with the index as runners leave it. Records without it (jobs from before the
index) are timed apart, on ``--cold-jobs`` jobs on S3: per-job reads cost
~6 ms a piece on moto, minutes for 10,000 jobs.
Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench_visibility import timed  # this directory is on sys.path when run

import dask_batch.local
from dask_batch import BatchClient
from dask_batch.testing import wait_for, write_job_records

# Runs `dask ...` (dask's own CLI, which loads every `dask_cli` entry point:
# distributed's scheduler, worker, ssh and spec commands, and ours) and reports
# its peak resident memory (kB) on stderr at exit: the high-water mark of its
# own memory (VmHWM). ru_maxrss would not do: a child started with vfork + exec
# inherits the parent's RSS as its maximum, which made an earlier run report
# this benchmark's own 220 MB.
DASK_CLI_WITH_PEAK_RSS = (
    "import atexit, sys; atexit.register(lambda: sys.stderr.write("
    "'peak_rss_kb=' + [l.split()[1] for l in open('/proc/self/status') "
    "if l.startswith('VmHWM')][0] + '\\n')); "
    "from dask.cli import run_cli; run_cli()"
)


def start_moto():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def answers():
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                return True
        except OSError:
            return False

    wait_for(answers, 60, f"moto to answer on {url}")
    return proc, {
        "key": "bench",
        "secret": "bench",
        "client_kwargs": {"endpoint_url": url},
    }


def dask_cli(env, *args):
    """Seconds and peak RSS (MB) of one `dask *args` in a new process."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", DASK_CLI_WITH_PEAK_RSS, *args],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - t0
    peak_kb = int(done.stderr.rsplit("peak_rss_kb=", 1)[1].split()[0])
    return elapsed, peak_kb / 1024


def measure(name, gateway, info, storage, options, count, cold_count, repeat):
    rows = {}
    # Records without the index (jobs that ended before it existed): the
    # first listing reads each one and packs them.
    cold = BatchClient(
        gateway=gateway, storage=f"{storage}-cold", storage_options=options
    )
    write_job_records(cold.store, cold.user, cold_count)
    t0 = time.perf_counter()
    assert len(cold.jobs()) == cold_count
    rows[f"first listing, {cold_count} jobs without index (per-job reads)"] = (
        time.perf_counter() - t0
    )
    rows[f"second listing, {cold_count} jobs (packed by the first)"] = timed(
        cold.jobs, repeat
    )

    batch = BatchClient(gateway=gateway, storage=storage, storage_options=options)
    t0 = time.perf_counter()
    write_job_records(batch.store, batch.user, count, indexed=True)
    fill = time.perf_counter() - t0
    assert len(batch.jobs()) == count
    rows[f"`jobs()`, all {count} (index as runners leave it)"] = timed(
        batch.jobs, repeat
    )
    rows[f"`jobs(limit=50)`, newest of {count}"] = timed(
        lambda: batch.jobs(limit=50), repeat
    )
    env = dict(
        os.environ,
        **info.environment(),
        DASK_BATCH__STORAGE=batch.store.url,
        DASK_BATCH__STORAGE_OPTIONS=json.dumps(options),
    )
    # Interleaved, so that a noisy moment of the VM falls on all of them.
    commands = {
        "`dask --help` (dask's CLI start-up: the floor)": ["--help"],
        "`dask batch list` (newest 50)": ["batch", "list"],
        f"`dask batch list --limit {count}`": ["batch", "list", "--limit", str(count)],
    }
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label in commands}
    for _ in range(repeat):
        for label, args in commands.items():
            runs[label].append(dask_cli(env, *args))
    for label in commands:
        rows[label] = statistics.median(r[0] for r in runs[label])
    rows["`dask-batch list` (newest 50; the stand-alone command)"] = timed(
        lambda: subprocess.run(
            [sys.executable, "-m", "dask_batch.cli", "list"],
            env=env,
            check=True,
            capture_output=True,
        ),
        repeat,
    )
    peak = max(r[1] for r in runs[f"`dask batch list --limit {count}`"])
    print(f"\n### {name}: {count} jobs (filled in {fill:.1f} s)\n")
    print("| measure | time |\n|---|---|")
    for label, seconds in rows.items():
        print(f"| {label} | {seconds:.3f} s |")
    print(f"| peak RSS of `dask batch list --limit {count}` | {peak:.0f} MB |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--cold-jobs", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--local-only", action="store_true", help="skip S3")
    args = parser.parse_args(argv)
    count = 30 if args.smoke else args.jobs
    cold_count = 10 if args.smoke else args.cold_jobs
    repeat = 1 if args.smoke else args.repeat

    directory = tempfile.mkdtemp(prefix="dask-batch-bench-")
    info = dask_batch.local.start(directory)
    moto = None
    try:
        with info.gateway() as gateway:
            local_root = os.path.join(directory, "jobs")
            measure("local", gateway, info, local_root, {}, count, count, repeat)
            if args.local_only:
                return
            import s3fs

            moto, s3_options = start_moto()
            s3fs.S3FileSystem(**s3_options).mkdir("bench-jobs")
            measure(
                "S3 (moto)",
                gateway,
                info,
                "s3://bench-jobs/jobs",
                s3_options,
                count,
                cold_count,
                repeat,
            )
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(30)
        dask_batch.local.stop(directory)


if __name__ == "__main__":
    main()
