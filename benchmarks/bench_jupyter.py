"""JupyterLab's Notebook Jobs on dask-batch, beside jupyter-scheduler's own backend.

    python benchmarks/bench_jupyter.py            # the figures in docs/benchmarks.md
    python benchmarks/bench_jupyter.py --smoke    # once, 200 jobs (CI)

Real `jupyter server` processes on 127.0.0.1, driven through the REST API as
the Jobs panel calls it:

- ``POST /scheduler/jobs`` of a one-cell notebook: how long the request
  takes, and when the job is IN_PROGRESS and COMPLETED (polling ``GET``),
  on dask-batch (the embedded local gateway, server-side mode) and on the
  stock backend (a process per job in the server, its kernel started there);
- ``GET /scheduler/jobs?max_items=25``, the first page, with 10 and 10,000
  notebook jobs in the user's history, on local storage and on S3 (moto);
- the server's event loop while jobs are created and listed: the latency of
  ``GET /api/status`` (a handler that does no work) idle, and during a burst
  of 4 creates and 40 listings from 8 threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

import s3fs
from bench_scale import FilledMoto  # this directory is on sys.path
from common import cluster_environment  # this directory is on sys.path

import dask_batch.local
from dask_batch import BatchClient
from dask_batch.storage.store import JobStore
from dask_batch.testing import write_job_records

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from lab_server import JupyterServer, notebook

BODY = {
    "name": "bench",
    "input_uri": "one.ipynb",
    "runtime_environment_name": "dask-gateway",
    "output_formats": ["ipynb"],
    "compute_type": "0 workers",
    "parameters": {"n": "2"},
}


def timed(call):
    t0 = time.perf_counter()
    value = call()
    return time.perf_counter() - t0, value


def one_job(server, body):
    """Seconds to answer the POST, to IN_PROGRESS and to COMPLETED."""
    t0 = time.perf_counter()
    code, made = server.request("POST", "/scheduler/jobs", body)
    posted = time.perf_counter() - t0
    assert code == 200, made
    running = None
    while True:
        code, job = server.request("GET", f"/scheduler/jobs/{made['job_id']}")
        elapsed = time.perf_counter() - t0
        if running is None and job["status"] in ("IN_PROGRESS", "COMPLETED"):
            running = elapsed
        if job["status"] == "COMPLETED":
            return posted, running, elapsed
        # The stock backend files a new job as STOPPED until its process
        # starts: only FAILED (or no end) is an error.
        if job["status"] == "FAILED" or elapsed > 300:
            raise RuntimeError(f"{made['job_id']}: {job}")
        time.sleep(0.05)  # polling, as the panel's Reload would


def pings(server, stop, out):
    while not stop.is_set():
        out.append(timed(lambda: server.request("GET", "/api/status"))[0])


def event_loop(server, repeat):
    """Ping latencies idle and during a burst of creates and listings."""
    idle = []
    for _ in range(50 * repeat):
        idle.append(timed(lambda: server.request("GET", "/api/status"))[0])
    busy: list[float] = []
    stop = threading.Event()
    pinger = threading.Thread(target=pings, args=(server, stop, busy))
    pinger.start()
    work = [
        lambda: server.request("POST", "/scheduler/jobs", dict(BODY, name="burst"))
    ] * 4 + [lambda: server.request("GET", "/scheduler/jobs?max_items=25")] * 40
    threads = [
        threading.Thread(target=lambda part=work[i::8]: [w() for w in part])
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    pinger.join()
    return idle, busy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    repeat = 1 if args.smoke else args.repeat
    big = 200 if args.smoke else 10_000
    # A smoke checks that the benchmark runs, not its figures: one history
    # size (past the first page), so two jupyter servers fewer.
    counts = (big,) if args.smoke else (10, big)
    directory = tempfile.mkdtemp(prefix="dask-batch-bench-jupyter-")
    info = dask_batch.local.start(
        directory, environment=cluster_environment(args.smoke)
    )
    moto = FilledMoto()
    servers = {}
    try:
        user = BatchClient(gateway=info.gateway(), storage=directory).user
        for where in ("local", "s3"):
            for count in counts:
                if where == "local":
                    storage, options = os.path.join(directory, f"jobs-{count}"), None
                    store = JobStore(storage)
                    write_job_records(store, user, count, indexed=True, kind="notebook")
                else:
                    bucket = f"jupyter-{count}"
                    s3fs.S3FileSystem(**moto.options).mkdir(bucket)
                    storage, options = f"s3://{bucket}/jobs", moto.options
                    moto.fill(storage, user, count, indexed=True, kind="notebook")
                home = os.path.join(directory, f"{where}-{count}")
                servers[where, count] = JupyterServer(
                    home, os.path.join(home, "root"), info, storage, options
                )
        home = os.path.join(directory, "stock")
        stock = JupyterServer(home, os.path.join(home, "root"), info, None, stock=True)
        servers["stock", 0] = stock
        ours = servers["local", counts[0]]
        for server in (ours, stock):
            notebook(os.path.join(server.root, "one.ipynb"), "print(n * 2)", "n = 1")
        first_page = "/scheduler/jobs?sort_by=desc(create_time)&max_items=25"
        pages = {key: [] for key in servers if key[0] != "stock"}
        for key in pages:  # a first listing publishes the catalog head
            servers[key].request("GET", first_page)
        jobs = {"dask-batch": [], "stock": []}
        for _ in range(repeat):
            for key in pages:
                pages[key].append(
                    timed(lambda k=key: servers[k].request("GET", first_page))[0]
                )
            jobs["dask-batch"].append(one_job(ours, BODY))
            stock_body = dict(BODY, compute_type=None)
            environments = stock.request("GET", "/scheduler/runtime_environments")[1]
            stock_body["runtime_environment_name"] = environments[0]["name"]
            jobs["stock"].append(one_job(stock, stock_body))
        idle, busy = event_loop(ours, repeat)
    finally:
        for server in servers.values():
            server.stop()
        moto.close()
        dask_batch.local.stop(directory)

    print(f"\n### Notebook Jobs: one job, medians of {repeat}\n")
    print("| backend | POST answered | IN_PROGRESS | COMPLETED |")
    print("|---|---|---|---|")
    for name, runs in jobs.items():
        cols = [statistics.median(r[i] for r in runs) for i in range(3)]
        print(f"| {name} | " + " | ".join(f"{c:.2f} s" for c in cols) + " |")
    print(f"\n### First page of the Jobs panel, medians of {repeat}\n")
    ratio = len(counts) > 1  # a smoke lists one size: no ratio
    header = ["storage", *(f"{c:,} jobs" for c in counts)]
    if ratio:
        header.append("ratio")
    print("| " + " | ".join(header) + " |")
    print("|---" * len(header) + "|")
    for where in ("local", "s3"):
        times = [statistics.median(pages[where, count]) for count in counts]
        cells = [where, *(f"{t * 1000:.0f} ms" for t in times)]
        if ratio:
            cells.append(f"{times[-1] / times[0]:.2f}x")
        print("| " + " | ".join(cells) + " |")
    print("\n### The server's event loop: `GET /api/status`\n")
    print("| | requests | median | 95th percentile | max |")
    print("|---|---|---|---|---|")
    for name, values in (("idle", idle), ("during creates and listings", busy)):
        values = sorted(values)
        p95 = values[int(0.95 * (len(values) - 1))]
        print(
            f"| {name} | {len(values)} | {statistics.median(values) * 1000:.1f} ms | "
            f"{p95 * 1000:.1f} ms | {values[-1] * 1000:.1f} ms |"
        )


if __name__ == "__main__":
    main()
