"""Arrays and pipelines: tasks sharing one cluster, against a job (a cluster) each.

    python benchmarks/bench_workflows.py --elements 100 --steps 10 --trials 3  # docs
    python benchmarks/bench_workflows.py --smoke                            # CI

One local gateway in server-side mode, local job storage, 0 workers.

1. An array of ``--elements`` tiny elements (``batch.map``, at most 4 and at
   most 8 at once) against as many separate jobs submitted at once: wall time
   from the first submit to every value in hand and every cluster stopped,
   and the clusters the gateway started for them.
2. A pipeline of ``--steps`` tiny steps, in a chain and side by side, against
   one job whose main calls the same functions in turn: what each step costs
   beyond the work itself, ``(pipeline - one main) / steps``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from bench_core import stopped_at  # this directory is on sys.path

import dask_batch.local
from dask_batch import BatchClient, Step
from dask_batch.testing import _start_gateway, gateway_clusters


def tiny(x):
    return x + 1


def all_in_one(count):
    return [tiny(i) for i in range(count)]


def ended(batch, job_ids):
    """Seconds since the epoch when the last of the jobs' clusters stopped."""
    names = [batch.status(j).cluster_name for j in job_ids]
    return max(stopped_at(batch.gateway, name) for name in names)


def array_run(batch, elements, max_parallel):
    before = gateway_clusters(batch.gateway)
    t0 = time.time()
    job = batch.map(tiny, range(elements), max_parallel=max_parallel, workers=1)
    assert job.result(timeout=1800) == [i + 1 for i in range(elements)]
    took = ended(batch, [job.id]) - t0
    return took, len(gateway_clusters(batch.gateway) - before)


def separate_jobs(batch, elements):
    before = gateway_clusters(batch.gateway)
    t0 = time.time()
    jobs = [batch.submit(tiny, i, workers=0) for i in range(elements)]
    assert [j.result(timeout=1800) for j in jobs] == [i + 1 for i in range(elements)]
    took = ended(batch, [j.id for j in jobs]) - t0
    return took, len(gateway_clusters(batch.gateway) - before)


def one_main(batch, steps):
    t0 = time.time()
    job = batch.submit(all_in_one, steps, workers=0)
    job.result(timeout=600)
    return ended(batch, [job.id]) - t0


def pipeline(batch, steps, chained):
    declared = [
        Step(
            tiny,
            name=f"s{i}",
            args=[i],
            upstream=[f"s{i - 1}"] if chained and i else [],
        )
        for i in range(steps)
    ]
    t0 = time.time()
    job = batch.submit_pipeline(declared, workers=0, max_parallel=steps)
    job.result(timeout=600)
    return ended(batch, [job.id]) - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    elements, steps, trials = (
        (4, 3, 1) if args.smoke else (args.elements, args.steps, args.trials)
    )
    directory = tempfile.mkdtemp(prefix="dask-batch-bench-workflows-")
    info = _start_gateway(directory)
    try:
        batch = BatchClient(
            gateway=info.gateway(), storage=os.path.join(directory, "jobs")
        )
        # Warm-up: imports, caches (a smoke's figures don't count).
        if not args.smoke:
            one_main(batch, 1)
        figures: dict[str, list[float]] = {}
        clusters: dict[str, int] = {}
        for _ in range(trials):
            for label, run in (
                ("array, 4 at once", lambda: array_run(batch, elements, 4)),
                ("array, 8 at once", lambda: array_run(batch, elements, 8)),
                ("separate jobs", lambda: separate_jobs(batch, elements)),
            ):
                took, started = run()
                figures.setdefault(label, []).append(took)
                clusters[label] = started
            for label, run in (
                ("one main", lambda: one_main(batch, steps)),
                ("pipeline, chain", lambda: pipeline(batch, steps, True)),
                ("pipeline, side by side", lambda: pipeline(batch, steps, False)),
            ):
                figures.setdefault(label, []).append(run())
        batch.gateway.close()
    finally:
        dask_batch.local.stop(directory)
    median = {k: statistics.median(v) for k, v in figures.items()}
    print(f"## {elements} tiny elements ({trials} trials, medians)\n")
    print("| how | wall time | clusters started | / separate jobs |")
    print("|---|---|---|---|")
    for label in ("array, 4 at once", "array, 8 at once", "separate jobs"):
        print(
            f"| {label} | {median[label]:.1f} s | {clusters[label]} | "
            f"{median[label] / median['separate jobs']:.2f} |"
        )
    print(f"\n## A pipeline of {steps} tiny steps ({trials} trials, medians)\n")
    print("| how | wall time | per step beyond one main |")
    print("|---|---|---|")
    print(f"| one main calling the {steps} functions | {median['one main']:.2f} s | |")
    for label in ("pipeline, chain", "pipeline, side by side"):
        extra = (median[label] - median["one main"]) / steps
        print(f"| {label} | {median[label]:.2f} s | {extra:+.3f} s |")


if __name__ == "__main__":
    main()
