"""Result throughput: a 1 GB NumPy result against raw fsspec pipe/cat.

    python benchmarks/bench_throughput.py          # the figures in docs/benchmarks.md
    python benchmarks/bench_throughput.py --smoke  # one quick pass (CI), no targets

Side by side on the same storage (a local directory, and a moto S3 server in
its own process), interleaved, each operation in a fresh process so that its
peak memory is its own:

- raw store: ``fs.pipe_file(path, data)`` of bytes already in memory;
- dask-batch store: what main's process does with a return value: pickle it
  (protocol 5, the array's memory is not copied) and stream it with its
  SHA-256 (``JobStore.put_pieces``);
- raw fetch: ``fs.cat_file(path)``;
- dask-batch fetch: what ``result()`` does: read into fresh buffers with the
  digest (``JobStore.get_result``), then unpickle onto those buffers.

Memory is the peak resident size during the operation minus the resident size
just before it, as a multiple of the result's size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from dask_batch._pickling import dumps_result, loads_result
from dask_batch._store import RESULT, JobStore


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_operation(op: str, storage: str, options: dict, size: int) -> dict:
    """One operation in this process; what the parent reads back."""
    store = JobStore(storage, options)
    path = store.job_path("bench", op.split("-")[1], RESULT)
    value = np.ones(size // 8)  # touched, so it is resident
    if op == "store-raw":
        data = value.tobytes()
        del value
    # Start each operation with no dirty pages: else a write pays for the
    # previous operation's writeback.
    os.sync()
    base = rss_mb()
    t0 = time.perf_counter()
    if op == "store-raw":
        store.fs.pipe_file(path, data)
    elif op == "store-batch":
        store.put_pieces("bench", "batch", RESULT, dumps_result(value))
    elif op == "fetch-raw":
        del value
        base = rss_mb()
        t0 = time.perf_counter()
        data = store.fs.cat_file(path)
        assert len(data) == size
    elif op == "fetch-batch":
        del value
        base = rss_mb()
        t0 = time.perf_counter()
        stream, buffers, _, _ = store.get_result("bench", "batch")
        back = loads_result(stream, buffers)
        assert back.nbytes == size
    elapsed = time.perf_counter() - t0
    return {"seconds": elapsed, "extra_mb": peak_mb() - base}


def measure(op, storage, options, size):
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--op",
            op,
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
    for i in range(repeat):
        # Alternate which goes first, so that neither always follows the other.
        first, second = ("raw", "batch") if i % 2 == 0 else ("batch", "raw")
        for op in (f"store-{first}", f"store-{second}"):
            results.setdefault(op, []).append(measure(op, storage, options, size))
        for op in (f"fetch-{first}", f"fetch-{second}"):
            results.setdefault(op, []).append(measure(op, storage, options, size))
    med = {
        op: statistics.median(r["seconds"] for r in runs)
        for op, runs in results.items()
    }
    mem = {op: max(r["extra_mb"] for r in runs) for op, runs in results.items()}
    mb = size / 2**20
    print(f"\n### {name}, {mb:.0f} MB result ({repeat} runs each, medians)\n")
    print("| operation | time | throughput | extra memory (x result) |")
    print("|---|---|---|---|")
    for op, seconds in sorted(med.items()):
        print(
            f"| {op} | {seconds:.2f} s | {mb / seconds:.0f} MB/s | {mem[op] / mb:.2f} |"
        )
    print(
        f"\nthroughput ratio dask-batch / raw: store "
        f"{med['store-raw'] / med['store-batch']:.2f}, fetch "
        f"{med['fetch-raw'] / med['fetch-batch']:.2f} (target >= 0.9)"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--local-only", action="store_true", help="skip S3")
    parser.add_argument("--op", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.op:
        options = json.loads(os.environ.get("BENCH_OPTIONS", "{}"))
        print(json.dumps(run_operation(args.op, args.storage, options, args.size)))
        return
    size = (8 if args.smoke else args.size_mb) * 2**20
    repeat = 1 if args.smoke else args.repeat

    sys.path.insert(0, os.path.dirname(__file__))
    from bench_scale import start_moto

    directory = tempfile.mkdtemp(prefix="dask-batch-bench-")
    compare("local directory", os.path.join(directory, "jobs"), {}, size, repeat)
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
