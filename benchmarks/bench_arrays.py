"""Arrays of 1,000 to 100,000 trivial elements on the workers.

    python benchmarks/bench_arrays.py --sizes 1000 10000 100000   # docs
    python benchmarks/bench_arrays.py --smoke                      # CI

One local gateway in server-side mode, local job storage, two workers of one
thread each. For each size, one array of ``abs`` over the elements
(``batch.map(abs, range(n), workers=2)``):

- submit: the call returns;
- all done: from submit to the job SUCCEEDED (its record final);
- peak memory beside the scheduler: the largest resident set, summed over
  the job's scheduler and main's process, sampled every 0.1 s;
- storage writes: shard states, shard values and counts, as main's process
  reports them in the job's log (objects and bytes, per second);
- ``status()``: the median of five calls once it has ended;
- cost per element: all done / elements, and its ratio to the smallest size.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import threading
import time

import dask_batch.local
from dask_batch import BatchClient
from dask_batch.testing import _start_gateway


def _environ(pid: str) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _rss(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _is_worker(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"worker" in f.read()
    except OSError:
        return True


def beside_scheduler(cluster: str) -> int:
    """Bytes resident in the cluster's processes that are not its workers."""
    marker = f"DASK_GATEWAY_CLUSTER_NAME={cluster}".encode()
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if marker in _environ(pid) and not _is_worker(pid):
            total += _rss(pid)
    return total


class PeakSampler(threading.Thread):
    def __init__(self, batch: BatchClient, job_id: str) -> None:
        super().__init__(daemon=True)
        self.batch, self.job_id = batch, job_id
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        cluster = ""
        while not self.done.wait(0.1):
            if not cluster:
                cluster = self.batch.status(self.job_id).cluster_name or ""
                continue
            self.peak = max(self.peak, beside_scheduler(cluster))


def one_array(batch: BatchClient, size: int) -> dict[str, float]:
    t0 = time.monotonic()
    job = batch.map(abs, range(size), workers=2)
    submitted = time.monotonic() - t0
    sampler = PeakSampler(batch, job.id)
    sampler.start()
    record = job.wait(timeout=3600)
    done = time.monotonic() - t0
    sampler.done.set()
    sampler.join()
    assert record.state.value == "SUCCEEDED", record.message
    assert record.task_counts == {"SUCCEEDED": size}, record.task_counts
    values = job.client.result(job.id, partial=True)
    assert len(values) == size and values[size - 1] == size - 1
    times = []
    for _ in range(5):
        start = time.monotonic()
        batch.status(job.id)
        times.append(time.monotonic() - start)
    log = batch.logs(job.id)
    found = re.search(r"in ([\d.]+) s; (\d+) storage writes .*?, (\d+) bytes", log)
    assert found, log[-2000:]
    ran, writes, written = float(found[1]), int(found[2]), int(found[3])
    return {
        "size": size,
        "submit": submitted,
        "done": done,
        "peak_mib": sampler.peak / 2**20,
        "writes_per_s": writes / ran,
        "kib_per_s": written / ran / 1024,
        "status": statistics.median(times),
        "per_element_ms": done / size * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--smoke", action="store_true", help="one small array")
    args = parser.parse_args()
    sizes = [500] if args.smoke else args.sizes
    with tempfile.TemporaryDirectory() as directory:
        info = _start_gateway(directory)
        try:
            with BatchClient(
                gateway=info.gateway(), storage=os.path.join(directory, "jobs")
            ) as batch:
                rows = [one_array(batch, size) for size in sizes]
        finally:
            dask_batch.local.stop(directory)
    base = rows[0]["per_element_ms"]
    print(
        "| elements | submit | all done | per element | vs smallest | "
        "peak beside scheduler | writes/s | KiB/s | status() |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']:,} | {r['submit']:.2f} s | {r['done']:.1f} s | "
            f"{r['per_element_ms']:.2f} ms | {r['per_element_ms'] / base:.2f}x | "
            f"{r['peak_mib']:.0f} MiB | {r['writes_per_s']:.1f} | "
            f"{r['kib_per_s']:.0f} | {r['status'] * 1000:.0f} ms |"
        )


if __name__ == "__main__":
    main()
