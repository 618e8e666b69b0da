"""Every benchmark runs once at tiny sizes (``--smoke``), so that none rots;
the figures are not kept (docs/benchmarks.md says how to get them). Each is
a test of its own so that the suite's workers share them out, and the soak's
fault scenarios are split in three parts for the same reason."""

from __future__ import annotations

import pathlib
import re
import sys

import pytest
from commands import run

BENCHMARKS = pathlib.Path(__file__).parent.parent / "benchmarks"


def scripts():
    """The scripts ``run_all.py`` runs, in its order, but the soak."""
    listed = re.findall(
        r'^\s+"(\w+\.py)",', (BENCHMARKS / "run_all.py").read_text(), re.M
    )
    assert "bench_core.py" in listed and "soak.py" in listed
    return [script for script in listed if script != "soak.py"]


def soak_parts(parts=3):
    names = re.findall(
        r"^def scenario_(\w+)\(", (BENCHMARKS / "soak.py").read_text(), re.M
    )
    assert len(names) >= parts
    return [names[i::parts] for i in range(parts)]


def smoke(*args):
    return run(sys.executable, *args, "--smoke", timeout=540)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("script", scripts())
def test_each_benchmark_runs(script):
    printed = smoke(BENCHMARKS / script)
    assert printed.strip(), f"{script} printed no figures"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenarios", soak_parts(), ids=lambda names: names[0])
def test_the_soak_runs_each_fault_once(scenarios):
    printed = smoke(BENCHMARKS / "soak.py", "--only", *scenarios)
    for scenario in scenarios:
        assert re.search(rf"^\| {scenario} \|", printed, re.M), printed[-2000:]
    assert "total problems: 0" in printed, printed[-3000:]
