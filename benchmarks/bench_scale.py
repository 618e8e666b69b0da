"""Listing at scale: the newest 50 and the last hour at 1,000 to 100,000 jobs.

    python benchmarks/bench_scale.py            # the figures in docs/benchmarks.md
    python benchmarks/bench_scale.py --smoke    # 100 and 300 jobs, once (CI)

Fills local storage and a moto S3 server (its own process, see
filled_moto.py) with finished jobs, one every five minutes up to now, with
the job catalog as runners and listings leave it. Then, side by side for
each size:

- ``jobs(limit=50)`` and ``jobs(since="1h")``, in process: their cost must
  not grow with the history (the ratio to the smallest size);
- at the largest size, `dask batch list` in a new process (newest 50, and
  every job with ``--limit``) beside `dask --help` (dask's CLI start-up: the
  floor), with the peak resident memory of each, and a full ``jobs()``, which
  reads every job prefix (the reconciliation);
- the first listing of a store from before the catalog (``--cold-jobs``
  records without index or markers), which migrates it, and the next one.

Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench_visibility import timed  # this directory is on sys.path when run
from common import cluster_environment  # this directory is on sys.path

import dask_batch.local
from dask_batch import BatchClient
from dask_batch.testing import write_job_records

HERE = os.path.dirname(os.path.abspath(__file__))
JOB_EVERY_MINUTES = 5

# Runs `dask ...` (dask's own CLI, which loads every `dask_cli` entry point:
# distributed's scheduler, worker, ssh and spec commands, and ours) and reports
# its peak resident memory (kB) on stderr at exit: the high-water mark of its
# own memory (VmHWM). ru_maxrss would not do: a child started with vfork + exec
# inherits the parent's RSS as its maximum.
DASK_CLI_WITH_PEAK_RSS = (
    "import atexit, sys; atexit.register(lambda: sys.stderr.write("
    "'peak_rss_kb=' + [l.split()[1] for l in open('/proc/self/status') "
    "if l.startswith('VmHWM')][0] + '\\n')); "
    "from dask.cli import run_cli; run_cli()"
)


class FilledMoto:
    """filled_moto.py in its own process: a moto endpoint we can fill fast."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "filled_moto.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        url = self._answer()["url"]
        self.options = {
            "key": "bench",
            "secret": "bench",
            "client_kwargs": {"endpoint_url": url},
        }

    def fill(self, storage, user, count, *, indexed, kind="function"):
        order = dict(
            kind=kind,
            storage=storage,
            options=self.options,
            user=user,
            count=count,
            days=days_of(count),
            indexed=indexed,
        )
        self.proc.stdin.write(json.dumps(order) + "\n")
        self.proc.stdin.flush()
        return self._answer()["seconds"]

    def _answer(self):
        """The next JSON line on its stdout (moto prints a greeting first)."""
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError("filled_moto.py ended without answering")

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(30)


def start_moto():
    """A moto S3 server in its own process: the process and s3fs options.

    The other benchmarks' endpoint; stop it with ``terminate()``.
    """
    moto = FilledMoto()
    return moto.proc, moto.options


def days_of(count):
    return count * JOB_EVERY_MINUTES / 1440


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


def fill(kind, batch, moto, count, indexed):
    if kind == "local":
        t0 = time.perf_counter()
        write_job_records(
            batch.store, batch.user, count, days=days_of(count), indexed=indexed
        )
        return time.perf_counter() - t0
    return moto.fill(batch.store.url, batch.user, count, indexed=indexed)


def windows(kind, gateway, storage, options, moto, sizes, repeat):
    """Newest 50 and the last hour at each size: {size: (newest, hour)}.

    Every size is filled first and then timed in turn, repeat after repeat,
    so that all sizes meet the same storage: moto scans every key of the
    bucket for each LIST, whatever its prefix (see ``floor``).
    """
    clients = {}
    for count in sizes:
        url = f"{storage}/n{count}"
        b = BatchClient(gateway=gateway, storage=url, storage_options=options)
        seconds = fill(kind, b, moto, count, indexed=True)
        print(f"{kind}: {count} jobs filled in {seconds:.1f} s", flush=True)
        newest = b.jobs(limit=50)  # settles the packs once
        assert len(newest) == 50, len(newest)
        hour = b.jobs(since="1h")
        assert 0 < len(hour) <= 60 // JOB_EVERY_MINUTES + 1, len(hour)
        clients[count] = b
    store = clients[sizes[0]].store
    fs, tiny = store.fs, f"{store.root}-floor"
    fs.pipe_file(f"{tiny}/one", b"")
    runs = {count: ([], []) for count in sizes}
    floor = []
    try:
        for _ in range(repeat):
            floor.append(timed(lambda: fs.ls(tiny, refresh=True), 1))
            for count, b in clients.items():
                runs[count][0].append(timed(lambda b=b: b.jobs(limit=50), 1))
                runs[count][1].append(timed(lambda b=b: b.jobs(since="1h"), 1))
    finally:
        for b in clients.values():
            b.close()
    rows = {c: tuple(statistics.median(r) for r in runs[c]) for c in sizes}
    return rows, statistics.median(floor)


def largest(kind, gateway, info, storage, options, count, repeat):
    """The CLI and a full listing at ``count`` jobs (already filled)."""
    url = f"{storage}/n{count}"
    rows = {}
    env = dict(
        os.environ,
        **info.environment(),
        DASK_BATCH__STORAGE=url,
        DASK_BATCH__STORAGE_OPTIONS=json.dumps(options),
    )
    commands = {
        "`dask --help` (the floor)": ["--help"],
        "`dask batch list` (newest 50)": ["batch", "list"],
        f"`dask batch list --limit {count}`": ["batch", "list", "--limit", str(count)],
    }
    runs: dict[str, list[tuple[float, float]]] = {label: [] for label in commands}
    for _ in range(repeat):  # interleaved: a noisy moment falls on all of them
        for label, args in commands.items():
            runs[label].append(dask_cli(env, *args))
    for label in commands:
        rows[label] = (
            statistics.median(r[0] for r in runs[label]),
            max(r[1] for r in runs[label]),
        )
    with BatchClient(gateway=gateway, storage=url, storage_options=options) as b:
        t0 = time.perf_counter()
        assert len(b.jobs()) == count
        rows[f"`jobs()`, all {count} (reads every job prefix)"] = (
            time.perf_counter() - t0,
            None,
        )
    return rows


def migration(kind, gateway, storage, options, moto, count):
    url = f"{storage}/cold{count}"
    with BatchClient(gateway=gateway, storage=url, storage_options=options) as b:
        fill(kind, b, moto, count, indexed=False)
        t0 = time.perf_counter()
        assert len(b.jobs(limit=50)) == 50
        first = time.perf_counter() - t0
        second = timed(lambda: b.jobs(limit=50), 1)
    return first, second


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--cold-jobs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--local-only", action="store_true", help="skip S3")
    args = parser.parse_args(argv)
    sizes = [100, 300] if args.smoke else [int(s) for s in args.sizes.split(",")]
    cold = 50 if args.smoke else args.cold_jobs
    repeat = 1 if args.smoke else args.repeat

    directory = tempfile.mkdtemp(prefix="dask-batch-bench-")
    info = dask_batch.local.start(
        directory, environment=cluster_environment(args.smoke)
    )
    moto = None
    stores = {"local": (os.path.join(directory, "jobs"), {})}
    try:
        if not args.local_only:
            import s3fs

            moto = FilledMoto()
            s3fs.S3FileSystem(**moto.options).mkdir("bench-jobs")
            stores["S3 (moto)"] = ("s3://bench-jobs/jobs", moto.options)
        results = {}
        with info.gateway() as gateway:
            for kind, (storage, options) in stores.items():
                results[kind] = (
                    windows(kind, gateway, storage, options, moto, sizes, repeat),
                    largest(kind, gateway, info, storage, options, sizes[-1], repeat),
                    migration(kind, gateway, storage, options, moto, cold),
                )
        kinds = list(results)
        print("\n### Newest 50 and the last hour, by history\n")
        heads = [f"{k}: newest 50 | {k}: since 1h" for k in kinds]
        print("| jobs | " + " | ".join(heads) + " |")
        print("|---" * (1 + 2 * len(kinds)) + "|")
        for count in sizes:
            cells = []
            for kind in kinds:
                newest, hour = results[kind][0][0][count]
                cells += [f"{newest:.3f} s", f"{hour:.3f} s"]
            print(f"| {count:,} | " + " | ".join(cells) + " |")
        cells = []
        for kind in kinds:
            rows = results[kind][0][0]
            for column in (0, 1):
                cells.append(f"{rows[sizes[-1]][column] / rows[sizes[0]][column]:.2f}x")
        print(f"| ratio {sizes[-1]:,} / {sizes[0]:,} | " + " | ".join(cells) + " |")
        cells = [cell for k in kinds for cell in (f"{results[k][0][1]:.3f} s", "")]
        print(
            "| one LIST of a one-object prefix (the floor) | "
            + " | ".join(cells)
            + " |"
        )
        print(f"\n### At {sizes[-1]:,} jobs\n")
        print("| measure | " + " | ".join(kinds) + " |")
        print("|---" * (1 + len(kinds)) + "|")
        for label in results[kinds[0]][1]:
            cells = []
            for kind in kinds:
                seconds, peak = results[kind][1][label]
                cells.append(
                    f"{seconds:.3f} s" + (f", {peak:.0f} MB peak" if peak else "")
                )
            print(f"| {label} | " + " | ".join(cells) + " |")
        cells = [
            f"{results[k][2][0]:.3f} s, then {results[k][2][1]:.3f} s" for k in kinds
        ]
        print(
            f"| first listing of {cold:,} jobs from before the catalog (migrates), "
            "then the next | " + " | ".join(cells) + " |"
        )
    finally:
        if moto is not None:
            moto.close()
        dask_batch.local.stop(directory)


if __name__ == "__main__":
    main()
