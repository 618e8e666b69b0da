"""Listing flat in history: the newest 50 of one user at 1,000 to 100,000 jobs on S3.

    python benchmarks/bench_history.py            # the figures in docs/benchmarks.md
    python benchmarks/bench_history.py --smoke    # 100 and 300 jobs, once (CI)

Each size gets a bucket of its own on one moto S3 server (its own process,
filled straight into moto's memory by filled_moto.py), holding one user's
history as runners and listings leave it: finished jobs one every five
minutes up to now, the job catalog and its head. So the bucket grows with the
history, as a user's bucket does. Then, round after round so that a noisy
moment falls on every size, it times:

- ``jobs(limit=50)`` in process;
- `dask batch list` (the newest 50) in a new process, beside `dask --help`,
  dask's CLI start-up (the floor);
- the jobs page, ``GET /`` and ``GET /api/v1/jobs``, from a running
  ``python -m dask_batch.ui`` for that bucket;
- one LIST of the user's catalog folder: what every listing paid before the
  head, and what the store makes a LIST cost at that size.

Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import s3fs
from bench_scale import FilledMoto, dask_cli  # this directory is on sys.path
from bench_ui import Server
from bench_visibility import timed
from common import cluster_environment  # this directory is on sys.path

import dask_batch.local
from dask_batch import BatchClient


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,20000,50000,100000")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    sizes = [100, 300] if args.smoke else [int(s) for s in args.sizes.split(",")]
    repeat = 1 if args.smoke else args.repeat

    # Every request makes its listing: the page's own cache would answer
    # the second of two requests within a second.
    os.environ["DASK_BATCH__UI__LISTING_TTL"] = "0"
    directory = tempfile.mkdtemp(prefix="dask-batch-bench-history-")
    info = dask_batch.local.start(
        directory, environment=cluster_environment(args.smoke)
    )
    moto = FilledMoto()
    fs = s3fs.S3FileSystem(**moto.options)
    clients, servers = {}, {}
    measures = (
        "`jobs(limit=50)` in process",
        "`dask --help` (the floor)",
        "`dask batch list` (newest 50)",
        "jobs page `GET /`",
        "`GET /api/v1/jobs` (newest 50)",
        "one LIST of the catalog folder (before the head)",
    )
    runs = {count: {m: [] for m in measures} for count in sizes}
    try:
        for count in sizes:
            bucket = f"history-{count}"
            fs.mkdir(bucket)
            storage = f"s3://{bucket}/jobs"
            batch = BatchClient(
                gateway=info.gateway(), storage=storage, storage_options=moto.options
            )
            seconds = moto.fill(batch.store.url, batch.user, count, indexed=True)
            print(f"{count} jobs filled in {seconds:.1f} s", flush=True)
            assert len(batch.jobs(limit=50)) == 50  # publishes the catalog head
            env = dict(
                os.environ,
                **info.environment(),
                DASK_BATCH__STORAGE=storage,
                DASK_BATCH__STORAGE_OPTIONS=json.dumps(moto.options),
            )
            clients[count] = (batch, env)
            servers[count] = Server(info, storage, moto.options)
        for _ in range(repeat):
            for count, (batch, env) in clients.items():
                server, row = servers[count], runs[count]
                folder = batch.store.index_path(batch.user)
                row[measures[0]].append(timed(lambda b=batch: b.jobs(limit=50), 1))
                row[measures[1]].append(dask_cli(env, "--help")[0])
                row[measures[2]].append(dask_cli(env, "batch", "list")[0])
                row[measures[3]].append(timed(lambda s=server: s.get("/"), 1))
                row[measures[4]].append(
                    timed(lambda s=server: s.get("/api/v1/jobs"), 1)
                )
                row[measures[5]].append(
                    timed(lambda f=folder: fs.ls(f, refresh=True), 1)
                )
    finally:
        for server in servers.values():
            server.close()
        for batch, _ in clients.values():
            batch.close()
        moto.close()
        dask_batch.local.stop(directory)

    medians = {c: {m: statistics.median(runs[c][m]) for m in measures} for c in sizes}
    print(f"\n### Newest 50 of one user's history on S3 (moto), medians of {repeat}\n")
    print("| measure | " + " | ".join(f"{c:,} jobs" for c in sizes) + " | ratio |")
    print("|---" * (len(sizes) + 2) + "|")
    for m in measures:
        cells = [f"{medians[c][m] * 1000:.0f} ms" for c in sizes]
        ratio = medians[sizes[-1]][m] / medians[sizes[0]][m]
        print(f"| {m} | " + " | ".join(cells) + f" | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
