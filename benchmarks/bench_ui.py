"""The jobs page with 10,000 jobs: page and API latency, log latency, memory.

    python benchmarks/bench_ui.py              # the figures in docs/benchmarks.md
    python benchmarks/bench_ui.py --smoke      # one quick pass (CI), no targets

Runs `python -m dask_batch.ui` for real against a local gateway, on local
storage and on a moto S3 server (its own process), each filled with finished
jobs as runners leave them (records and index packs), and times side by side:

- `GET /api/v1/jobs` (the newest 50) and the jobs page `GET /`, beside the
  same listing made in-process with `BatchClient.jobs(limit=51)` (the floor:
  what the server itself must do);
- the delay from a line that main prints to the line being served by
  `GET /api/v1/jobs/{id}/logs?chunk=N`, polled as the page polls it;
- the server's resident memory after all of it (VmRSS, and its peak VmHWM).

Targets (issue 11): < 300 ms local and < 1 s on moto for the page and the
API with 10,000 jobs; a log line visible in < 1 s median; < 150 MB RSS.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from bench_scale import start_moto  # this directory is on sys.path when run
from bench_visibility import sizes, timed
from common import cluster_environment  # this directory is on sys.path

import dask_batch.local
from dask_batch import BatchClient
from dask_batch.testing import wait_for, write_job_records


def prints_timestamps(count, interval):
    import time

    for _ in range(count):
        print(f"at {time.time():.6f}", flush=True)
        time.sleep(interval)


class Server:
    def __init__(self, info, storage, options):
        env = dict(
            os.environ,
            **info.environment(),
            DASK_BATCH__STORAGE=storage,
            DASK_BATCH__STORAGE_OPTIONS=json.dumps(options),
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dask_batch.ui", "--no-browser"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        url = self.proc.stdout.readline().split(" ", 2)[2].strip()
        self.base, _, self.token = url.partition("/?token=")

    def get(self, path):
        request = urllib.request.Request(self.base + path)
        request.add_header("Authorization", f"token {self.token}")
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read(), dict(response.headers)

    def memory_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        return tuple(int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM"))

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


def log_delays(server, batch, lines, interval):
    """Seconds from each printed line to the API serving it."""
    job = batch.submit(prints_timestamps, lines, interval, workers=0)
    delays, chunk, seen = [], 0, 0
    deadline = time.monotonic() + 120
    while seen < lines and time.monotonic() < deadline:
        body, headers = server.get(f"/api/v1/jobs/{job.id}/logs?chunk={chunk}")
        now = time.time()
        chunk = int(headers["X-Next-Chunk"])
        for line in body.decode().splitlines():
            if line.startswith("at "):
                delays.append(now - float(line[3:]))
                seen += 1
        time.sleep(0.05)
    record = batch.wait(job.id, timeout=60)
    if len(delays) < lines:
        raise RuntimeError(f"only {len(delays)} of {lines} lines seen: {record}")
    return delays


def measure(label, info, storage, options, count, repeat, lines, interval):
    batch = BatchClient(
        gateway=info.gateway(), storage=storage, storage_options=options
    )
    write_job_records(batch.store, batch.user, count, indexed=True)
    server = Server(info, storage, options)
    try:
        server.get("/api/v1/jobs")  # warm: the first listing packs nothing new
        rows = {
            f"`BatchClient.jobs(limit=51)` in-process, {count} jobs (floor)": (
                timed(lambda: batch.jobs(limit=51), repeat)
            ),
            f"`GET /api/v1/jobs` (newest 50 of {count})": timed(
                lambda: server.get("/api/v1/jobs"), repeat
            ),
            f"jobs page `GET /` (newest 50 of {count})": timed(
                lambda: server.get("/"), repeat
            ),
        }
        delays = log_delays(server, batch, lines, interval)
        rss, peak = server.memory_mb()
    finally:
        server.close()
        batch.gateway.close()
    print(f"\n### {label}\n\n| measure | median |\n|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds * 1000:.0f} ms |")
    print(
        f"| log line printed -> served ({len(delays)} lines) | "
        f"{statistics.median(delays) * 1000:.0f} ms (max {max(delays) * 1000:.0f}) |"
    )
    print(f"| server memory after all of it | {rss:.0f} MB RSS, {peak:.0f} MB peak |")


def main(argv=None):
    count, repeat, smoke = sizes(argv, __doc__.splitlines()[0], jobs=10_000, repeat=7)
    lines, interval = (3, 0.2) if smoke else (40, 0.25)
    directory = tempfile.mkdtemp(prefix="dask-batch-bench-ui-")
    moto, options = start_moto()
    # Schedulers reach moto with the storage options of their own config.
    environment = {
        **(cluster_environment(smoke) or {}),
        "DASK_BATCH__STORAGE_OPTIONS": repr(options),
    }
    info = dask_batch.local.start(directory, environment=environment)
    try:
        measure(
            "local storage",
            info,
            os.path.join(directory, "bench-jobs"),
            {},
            count,
            repeat,
            lines,
            interval,
        )
        import s3fs

        s3fs.S3FileSystem(**options).mkdir("bench-ui")
        measure(
            "S3 (moto)",
            info,
            "s3://bench-ui/jobs",
            options,
            count,
            repeat,
            lines,
            interval,
        )
    finally:
        moto.terminate()
        moto.wait(timeout=30)
        dask_batch.local.stop(directory)
    wait_for(lambda: dask_batch.local.status(directory) is None, 30, "gateway stop")


if __name__ == "__main__":
    main()
