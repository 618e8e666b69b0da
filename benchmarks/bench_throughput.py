"""Result throughput: a 1 GB NumPy result against raw fsspec pipe/cat.

    python benchmarks/bench_throughput.py          # the figures in docs/benchmarks.md
    python benchmarks/bench_throughput.py --smoke  # one quick pass (CI), no targets

Side by side on the same storage (a local directory on disk, one in memory
(/dev/shm, where nothing but copying costs, so any overhead shows), and a moto
S3 server in its own process), interleaved, each operation in a fresh process
so that its peak memory is its own:

- raw store: ``fs.pipe_file(path, data)`` of bytes already in memory;
- dask-batch store: what main's process does with a return value: pickle it
  (protocol 5, the array's memory is not copied) and stream it with its
  BLAKE3 digest (``JobStore.put_pieces``);
- raw fetch: ``fs.cat_file(path)``;
- dask-batch fetch: what ``result()`` does: read into fresh buffers with the
  digest (``JobStore.get_result``), then unpickle onto those buffers.

Memory is the peak resident size during the operation minus the resident size
just before it, as a multiple of the result's size. Times are the median and
the best of the runs: on a shared VM the same write of a GiB to disk takes
0.25 s or 1.7 s from one run to the next, so the best run is the steadier
measure of what the code costs.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from dask_batch.core.pickling import dumps_result
from dask_batch.core.records import new_job_id
from dask_batch.storage.store import RESULT, JobStore


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak() -> None:
    """Start the high-water mark of resident memory afresh (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_mb() -> float:
    """Peak resident memory since :func:`reset_peak`: VmHWM, not ru_maxrss,
    which also counts the parent's memory for a child started by vfork."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    return kb / 1024


def run_operation(op: str, job: str, storage: str, options: dict, size: int) -> dict:
    """One operation in this process; what the parent reads back."""
    store = JobStore(storage, options)
    path = store.job_path("bench", job, RESULT)
    value = np.ones(size // 8)  # touched, so it is resident
    if op == "store-raw":
        data = value.tobytes()
        del value
    # Start each operation with no dirty pages: else a write pays for the
    # previous operation's writeback.
    os.sync()
    base = rss_mb()
    reset_peak()
    t0 = time.perf_counter()
    if op == "store-raw":
        store.fs.pipe_file(path, data)
    elif op == "store-batch":
        store.put_pieces("bench", job, RESULT, dumps_result(value))
    elif op == "fetch-raw":
        del value
        base = rss_mb()
        reset_peak()
        t0 = time.perf_counter()
        data = store.fs.cat_file(path)
        assert len(data) == size
    elif op == "fetch-batch":
        del value
        base = rss_mb()
        reset_peak()
        t0 = time.perf_counter()
        stream, buffers, _, _ = store.get_result("bench", job)
        back = pickle.loads(stream, buffers=buffers)
        assert back.nbytes == size
    elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "extra_mb": peak_mb() - base}


def measure(op, job, storage, options, size):
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--op",
            op,
            "--job",
            job,
            "--storage",
            storage,
            "--size",
            str(size),
        ],
        env=dict(os.environ, BENCH_OPTIONS=json.dumps(options)),
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(name, storage, options, size, repeat):
    results: dict[str, list[dict]] = {}
    store = JobStore(storage, options)
    for i in range(repeat):
        # Alternate which goes first, so that neither always follows the other.
        kinds = ("raw", "batch") if i % 2 == 0 else ("batch", "raw")
        for kind in kinds:
            # Each kind stores, fetches and deletes before the other starts: a
            # VM's disk slows down for writes on top of a recent GiB that is
            # still on it, which would penalise whichever went second. A new
            # path each run, as each job writes its own result (ext4 also
            # flushes a file renamed over an existing one).
            job = new_job_id()
            for step in ("store", "fetch"):
                op = f"{step}-{kind}"
                run = measure(op, job, storage, options, size)
                results.setdefault(op, []).append(run)
            store.fs.rm(store.job_path("bench", job), recursive=True)
    med = {
        op: statistics.median(r["seconds"] for r in runs)
        for op, runs in results.items()
    }
    best = {op: min(r["seconds"] for r in runs) for op, runs in results.items()}
    mem = {op: max(r["extra_mb"] for r in runs) for op, runs in results.items()}
    mb = size / 2**20
    print(f"\n### {name}, {mb:.0f} MB result ({repeat} runs each)\n")
    print(
        "| operation | median | best | throughput (median) | extra memory (x result) |"
    )
    print("|---|---|---|---|---|")
    for op, seconds in sorted(med.items()):
        print(
            f"| {op} | {seconds:.2f} s | {best[op]:.2f} s | {mb / seconds:.0f} MB/s "
            f"| {mem[op] / mb:.2f} |"
        )
    for label, times in (("medians", med), ("best runs", best)):
        print(
            f"\nthroughput ratio dask-batch / raw, {label}: store "
            f"{times['store-raw'] / times['store-batch']:.2f}, fetch "
            f"{times['fetch-raw'] / times['fetch-batch']:.2f} (target >= 0.9)"
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--local-only", action="store_true", help="skip S3")
    parser.add_argument("--op", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.op:
        options = json.loads(os.environ.get("BENCH_OPTIONS", "{}"))
        print(
            json.dumps(
                run_operation(args.op, args.job, args.storage, options, args.size)
            )
        )
        return
    size = (8 if args.smoke else args.size_mb) * 2**20
    repeat = 1 if args.smoke else args.repeat

    sys.path.insert(0, os.path.dirname(__file__))
    from bench_scale import start_moto

    directory = tempfile.mkdtemp(prefix="dask-batch-bench-")
    compare("local directory", os.path.join(directory, "jobs"), {}, size, repeat)
    if os.path.isdir("/dev/shm"):
        in_memory = tempfile.mkdtemp(prefix="dask-batch-bench-", dir="/dev/shm")
        try:
            compare("directory in memory (/dev/shm)", in_memory, {}, size, repeat)
        finally:
            shutil.rmtree(in_memory)
    if args.local_only:
        return
    moto, s3_options = start_moto()
    try:
        import s3fs

        s3fs.S3FileSystem(**s3_options).mkdir("bench-results")
        compare("S3 (moto)", "s3://bench-results/jobs", s3_options, size, repeat)
    finally:
        moto.terminate()
        moto.wait(30)


if __name__ == "__main__":
    main()
