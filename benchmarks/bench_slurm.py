"""A job's start and end on Slurm, beside the local backend, in one run.

    python benchmarks/bench_slurm.py --trials 5   # the figures in docs/benchmarks.md
    python benchmarks/bench_slurm.py --smoke      # one quick pass (CI)

Needs root and Debian's Slurm (the README's test command installs it). Starts
the test suite's single-node Slurm with dask-gateway's SlurmBackend
(tests/slurm.py) and a local gateway (UnsafeLocalBackend), both with the
test suite's gateway periods (cluster status every 1 s) and the dask-batch
preload (server-side mode),
one moto S3 bucket for both, and times per trial, alternating the backends:

- submit() called -> main running (main's first line records the time);
- main returned -> the allocation gone: the gateway reports the cluster
  STOPPED, and on Slurm ``squeue`` lists no job of the cluster.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from bench_scale import start_moto  # noqa: E402
from bench_visibility import trials  # noqa: E402
from slurm import running_slurm  # noqa: E402

import dask_batch.local  # noqa: E402
from dask_batch import BatchClient  # noqa: E402
from dask_batch.testing import (  # noqa: E402
    S3Server,
    _gateway_environment,
    _start_gateway,
    stop_process,
)


def stamps():
    import time

    started = time.time()
    return {"started": started, "returned": time.time()}


def trial(batch: BatchClient, gone) -> tuple[float, float]:
    submitted = time.time()
    job = batch.submit(stamps, workers=0)
    times = job.result(timeout=300)
    name = batch.status(job.id).cluster_name
    while not gone(batch, name):
        time.sleep(0.02)
    return times["started"] - submitted, time.time() - times["returned"]


def stopped(batch: BatchClient, name: str) -> bool:
    return batch.gateway.get_cluster(name).status.name in ("STOPPED", "FAILED")


def main(argv=None):
    count, _ = trials(argv, __doc__.splitlines()[0], default=5)
    moto, options = start_moto()  # its own process
    s3 = S3Server(options["client_kwargs"]["endpoint_url"], "bench", "bench")
    import s3fs

    s3fs.S3FileSystem(**s3.storage_options).mkdir("bench-slurm")
    storage = ("s3://bench-slurm/jobs", s3.storage_options)
    local_dir = tempfile.mkdtemp(prefix="dask-batch-bench-local-")
    figures: dict[str, list[tuple[float, float]]] = {"local": [], "slurm": []}
    try:
        local = _start_gateway(local_dir, environment=_gateway_environment(s3))
        with running_slurm(_gateway_environment(s3)) as slurm:

            def slurm_gone(batch, name):
                return stopped(batch, name) and not slurm.job_ids()

            with (
                BatchClient(gateway=local.gateway(), storage=storage[0],
                            storage_options=storage[1]) as on_local,
                BatchClient(gateway=slurm.gateway.gateway(), storage=storage[0],
                            storage_options=storage[1]) as on_slurm,
            ):  # fmt: skip
                for _ in range(count):
                    figures["local"].append(trial(on_local, stopped))
                    figures["slurm"].append(trial(on_slurm, slurm_gone))
                    print(
                        f"local {figures['local'][-1][0]:.2f} s / "
                        f"{figures['local'][-1][1]:.2f} s, slurm "
                        f"{figures['slurm'][-1][0]:.2f} s / "
                        f"{figures['slurm'][-1][1]:.2f} s",
                        flush=True,
                    )
                for batch in (on_local, on_slurm):
                    batch.gateway.close()
    finally:
        dask_batch.local.stop(local_dir)
        stop_process(moto)
    print(f"\nmedians over {count} trials (submit -> main running / returned -> gone):")
    for backend, rows in figures.items():
        start = statistics.median(r[0] for r in rows)
        end = statistics.median(r[1] for r in rows)
        print(f"{backend:>6}: {start:.2f} s / {end:.2f} s")
    ratio = statistics.median(r[0] for r in figures["slurm"]) / statistics.median(
        r[0] for r in figures["local"]
    )
    print(f"slurm / local, submit -> main running: {ratio:.1f} x")


if __name__ == "__main__":
    main()
