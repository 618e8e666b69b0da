"""What a gateway pays to load dask-batch: ``import dask_batch.gateway_config``.

    python benchmarks/bench_imports.py            # --repeat 15
    python benchmarks/bench_imports.py --smoke

Side by side in one run, each in a new interpreter (``python -X importtime``):
the gateway's own ``dask_gateway_server.options`` alone (the baseline every
gateway imports anyway), and ``dask_batch.gateway_config``. Prints the
medians, their ratio, and which dask-batch modules came along; any module of
the client, workflows, page or CLI floors is named as a failure of the floors.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

FLOORS_NOT_FOR_THE_GATEWAY = ("client", "workflows", "ui", "cli", "runtime")


def import_time(module: str) -> tuple[float, list[str]]:
    """Cumulative import time of ``module`` in a new interpreter, and the
    dask-batch modules it brought in."""
    err = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    rows = [line.split("|") for line in err.splitlines() if line.count("|") == 2]
    total = next(int(r[1]) for r in reversed(rows) if r[2].strip() == module)
    names = sorted(
        {r[2].strip() for r in rows if r[2].strip().startswith("dask_batch")}
    )
    return total / 1e6, names


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    repeat = 2 if args.smoke else args.repeat
    baseline, ours, modules = [], [], []
    for _ in range(repeat):  # interleaved: the machine's noise hits both
        baseline.append(import_time("dask_gateway_server.options")[0])
        seconds, modules = import_time("dask_batch.gateway_config")
        ours.append(seconds)
    base, mine = statistics.median(baseline), statistics.median(ours)
    print(f"dask_gateway_server.options   {base:.3f} s (median of {repeat})")
    print(f"dask_batch.gateway_config     {mine:.3f} s ({mine / base:.2f}x)")
    print(f"dask-batch modules imported: {len(modules)}: {', '.join(modules)}")
    wrong = [
        m
        for m in modules
        if m.split(".")[1:2] and m.split(".")[1] in FLOORS_NOT_FOR_THE_GATEWAY
    ]
    if wrong:
        sys.exit(f"the gateway imports code it never runs: {', '.join(wrong)}")


if __name__ == "__main__":
    main()
