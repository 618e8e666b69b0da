"""What tracking a job in MLflow costs, beside the same job untracked, in one run.

    python benchmarks/bench_mlflow.py --trials 5   # the figures in docs/benchmarks.md
    python benchmarks/bench_mlflow.py --smoke      # one quick pass (CI)

Starts the test suite's MLflow tracking server (tests/tracking.py: SQLite,
proxied artifacts; without the basic-auth app, whose password hash on every
request would be what is measured) and a local gateway (server-side mode,
local job storage), and times per trial, alternating untracked and tracked jobs
(``mlflow=True``; main logs one metric in both, to a local file when
untracked, so main does the same work):

- ``submit()`` itself (the tracked one creates the run, its tags and params);
- submit() called -> main running (main's first line records the time);
- main returned -> the job's final state readable (the tracked job's runner
  first attaches the log and artifacts and sets the run's status).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from bench_visibility import trials  # noqa: E402
from tracking import running_mlflow  # noqa: E402

import dask_batch.local  # noqa: E402
from dask_batch import BatchClient  # noqa: E402
from dask_batch.testing import _start_gateway  # noqa: E402


def stamps(tracked: bool) -> dict[str, float]:
    import time

    started = time.time()
    if tracked:
        import mlflow

        mlflow.log_metric("score", 1.0)
    else:
        with open("score.txt", "w") as f:
            f.write("1.0")
    return {"started": started, "returned": time.time()}


def trial(batch: BatchClient, tracked: bool) -> tuple[float, float, float]:
    submitted = time.time()
    job = batch.submit(stamps, tracked, workers=0, mlflow=tracked)
    submit_seconds = time.time() - submitted
    while not batch.status(job.id).state.is_terminal:
        time.sleep(0.02)
    ended = time.time()
    times = job.result(timeout=300)
    return submit_seconds, times["started"] - submitted, ended - times["returned"]


def main(argv=None):
    count, smoke = trials(argv, __doc__.splitlines()[0], default=5)
    directory = tempfile.mkdtemp(prefix="dask-batch-bench-mlflow-")
    figures: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    with running_mlflow(directory, auth=False) as server:
        os.environ.update(server.environment())
        gateway_dir = os.path.join(directory, "gateway")
        info = _start_gateway(gateway_dir)
        try:
            with BatchClient(
                gateway=info.gateway(), storage=os.path.join(directory, "jobs")
            ) as batch:
                # Warm-up: imports, the experiment (a smoke's figures don't count).
                if not smoke:
                    for tracked in (False, True):
                        trial(batch, tracked)
                for _ in range(count):
                    for tracked in (False, True):
                        figures[tracked].append(trial(batch, tracked))
                batch.gateway.close()
        finally:
            dask_batch.local.stop(gateway_dir)
    print(f"MLflow tracking, {count} trial(s) each, medians (seconds):")
    print(f"{'':28}{'untracked':>10}{'tracked':>10}{'ratio':>8}")
    names = ["submit() call", "submit -> main running", "main returned -> final"]
    for index, name in enumerate(names):
        plain = statistics.median(f[index] for f in figures[False])
        tracked_ = statistics.median(f[index] for f in figures[True])
        print(f"{name:28}{plain:10.3f}{tracked_:10.3f}{tracked_ / plain:8.2f}")


if __name__ == "__main__":
    main()
