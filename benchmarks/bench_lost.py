"""How long until a job whose scheduler was SIGKILLed is reported LOST.

    python benchmarks/bench_lost.py --trials 3

Uses a local gateway with dask-gateway's default periods (cluster status
checks every 30 s, heartbeats every 15 s), polls ``status()`` once a second
from the moment of the kill, and prints the seconds to LOST per trial.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import time

import dask_batch.local
from dask_batch import BatchClient, JobState
from dask_batch.testing import job_cluster_client, wait_for


def sleeper(seconds):
    import time

    time.sleep(seconds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args(argv)
    directory = tempfile.mkdtemp(prefix="dask-batch-lost-")
    info = dask_batch.local.start(directory)  # the gateway's default periods
    seconds = []
    try:
        with info.gateway() as gateway:
            batch = BatchClient(
                gateway=gateway, storage=os.path.join(directory, "jobs")
            )
            for _ in range(args.trials):
                job = batch.submit(sleeper, 600, workers=0)
                wait_for(lambda job=job: job.status().last_seen, 60, "a heartbeat")
                with job_cluster_client(batch, job.id) as client:
                    pid = client.run_on_scheduler(os.getpid)
                killed = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                while job.status().state is not JobState.LOST:
                    time.sleep(1)
                seconds.append(time.monotonic() - killed)
                print(f"LOST after {seconds[-1]:.1f} s: {job.status().message}")
    finally:
        dask_batch.local.stop(directory)
    print(
        f"\nscheduler SIGKILLed -> LOST: median {statistics.median(seconds):.1f} s, "
        f"max {max(seconds):.1f} s over {len(seconds)} trials (target: < 60 s)"
    )


if __name__ == "__main__":
    main()
