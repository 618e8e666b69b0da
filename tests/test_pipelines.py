"""Pipelines and job arrays on a real local gateway (server-side mode)."""

from __future__ import annotations

import json
import os
import textwrap

import nbformat
import pytest

from dask_batch import (
    JobFailedError,
    JobState,
    Step,
    SubmitError,
    TasksFailedError,
)
from dask_batch.testing import wait_for


def load(n):
    import dask_batch

    dask_batch.report(1.0, "loaded")
    with open(dask_batch.artifacts_dir("numbers.json"), "w") as f:
        json.dump(list(range(n)), f)
    return list(range(n))


def total(upstream, scale=1):
    # Both branches of the diamond: the script's files, the notebook's path.
    import dask_batch

    job = dask_batch.current_job()
    with open(os.path.join(job.upstream["double"], "doubled.json")) as f:
        doubled = json.load(f)
    assert upstream["report"].endswith("report.output.ipynb"), upstream
    assert set(upstream) == {"double", "report"}
    return scale * sum(doubled)


DOUBLE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import dask_batch

    job = dask_batch.current_job()
    with open(os.path.join(job.upstream["load"], "numbers.json")) as f:
        numbers = json.load(f)
    with open(dask_batch.artifacts_dir("doubled.json"), "w") as f:
        json.dump([2 * n for n in numbers], f)
    print("doubled", len(numbers), "numbers with", sys.argv[1:], job.params)
    """
)


def write_notebook(path, source):
    notebook = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("upstream = None\nfactor = 1")
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell(source)]
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(notebook, str(path))


@pytest.fixture
def diamond(tmp_path):
    """load -> (double.py, report.ipynb) -> total, as Steps."""
    script = tmp_path / "double.py"
    script.write_text(DOUBLE_SCRIPT)
    notebook = tmp_path / "report.ipynb"
    write_notebook(
        notebook,
        "import json, os\n"
        "numbers = json.load(open(os.path.join(upstream['load'], 'numbers.json')))\n"
        "print('mean', sum(numbers) * factor / len(numbers))",
    )
    return [
        Step(load, params={"n": 5}),
        Step(str(script), upstream=["load"], args=["--fast"], params={"k": 1}),
        Step(str(notebook), upstream=["load"], params={"factor": 2}),
        Step(total, upstream=["double", "report"]),
    ]


def test_a_pipeline_of_a_function_a_script_and_a_notebook(batch_client, diamond):
    job = batch_client.submit_pipeline(diamond, workers=0, name="diamond")
    values = job.result(timeout=240)
    assert values["load"] == [0, 1, 2, 3, 4]
    assert values["double"] is None
    assert values["total"] == 2 * 10
    record = batch_client.status(job.id)
    assert record.state is JobState.SUCCEEDED
    assert record.kind == "pipeline"
    assert record.task_counts == {"SUCCEEDED": 4}
    steps = {t.name: t for t in record.tasks}
    assert list(steps) == ["load", "double", "report", "total"]
    assert steps["total"].upstream == ["double", "report"]
    assert steps["load"].progress == 1.0
    # Independent steps ran at the same time... or at least not in a
    # fixed order: both started after load ended, before total started.
    for branch in ("double", "report"):
        assert steps["load"].finished <= steps[branch].started
        assert steps[branch].finished <= steps["total"].started
    log = batch_client.logs(job.id, task="double")
    assert "doubled 5 numbers with ['--fast'] {'k': 1}" in log
    assert "step 'total' SUCCEEDED" in batch_client.logs(job.id)
    artifacts = batch_client.artifacts(job.id)
    assert {"load/numbers.json", "double/doubled.json"} <= set(artifacts)
    assert "report/report.output.ipynb" in artifacts


def fails(message):
    raise ValueError(message)


def slow_ok(marker):
    import time

    deadline = time.monotonic() + 60
    while not os.path.exists(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "independent"


def never(upstream):
    raise AssertionError("a step below a failed step must not run")


def test_a_failing_step_stops_its_dependants_not_an_independent_branch(
    batch_client, tmp_path
):
    marker = tmp_path / "failed"
    steps = [
        Step(fails, name="broken", args=["bad input"]),
        Step(never, upstream=["broken"]),
        Step(slow_ok, args=[str(marker)]),
    ]
    job = batch_client.submit_pipeline(steps, workers=0)
    wait_for(
        lambda: any(
            t.state is JobState.FAILED for t in batch_client.tasks(job.id)
        ),
        120,
        "the broken step to fail",
    )
    marker.touch()  # the independent branch was still going when it failed
    with pytest.raises(TasksFailedError) as raised:
        job.result(timeout=120)
    error = raised.value
    assert error.job_id == job.id
    assert set(error.failed) == {"broken", "never"}
    assert "ValueError: bad input" in error.failed["broken"]
    assert "upstream step 'broken' FAILED" in error.failed["never"]
    assert error.partial == {"slow_ok": "independent"}
    assert isinstance(error, JobFailedError)
    record = batch_client.status(job.id)
    assert record.state is JobState.FAILED
    assert record.task_counts == {"SUCCEEDED": 1, "FAILED": 1, "CANCELLED": 1}
    partial = job.client.result(job.id, partial=True)
    assert partial["slow_ok"] == "independent"
    assert isinstance(partial["broken"], JobFailedError)


def test_a_cycle_or_an_unknown_step_is_refused_before_anything_exists(
    batch_client,
):
    with pytest.raises(SubmitError, match="cycle"):
        batch_client.submit_pipeline(
            [Step(load, name="a", upstream=["b"]), Step(load, name="b", upstream=["a"])]
        )
    with pytest.raises(SubmitError, match="not a step of the pipeline"):
        batch_client.submit_pipeline([Step(load, upstream=["missing"])])
    with pytest.raises(SubmitError, match="is not allowed"):
        batch_client.submit_pipeline([Step(load, name="../escape")])
    assert batch_client.jobs() == []
