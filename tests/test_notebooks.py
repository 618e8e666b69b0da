"""The notebooks in notebooks/ run, top to bottom, against the local gateway."""

from __future__ import annotations

import pathlib

import papermill
import pytest

from dask_batch import local
from dask_batch.testing import _start_gateway

NOTEBOOKS = pathlib.Path(__file__).parent.parent / "notebooks"

# What each notebook shows when it worked (a value its cells compute).
EXPECTED = {
    "quickstart": "328350",  # sum of the squares below 100
    "grid_search": "best_params",
    "notebook_job": "sum of squares",
}


def outputs(path):
    """The text a notebook's cells printed or displayed."""
    import nbformat

    text = []
    for cell in nbformat.read(str(path), as_version=4).cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", ""))
            text.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(text)


@pytest.fixture(scope="module")
def notebook_gateway(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("notebooks-local"))
    info = _start_gateway(directory)
    yield info
    local.stop(directory)


@pytest.mark.parametrize("name", ["quickstart", "grid_search", "notebook_job"])
def test_notebook_runs(name, notebook_gateway, tmp_path, monkeypatch):
    # BatchClient() in the notebook finds this gateway as the local default.
    monkeypatch.setenv("DASK_BATCH__LOCAL__DIRECTORY", notebook_gateway.directory)
    executed = tmp_path / f"{name}.out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"),
        str(executed),
        cwd=str(NOTEBOOKS),
        kernel_name="python3",
        progress_bar=False,
    )
    assert EXPECTED[name] in outputs(executed)


def test_report_notebook_also_runs_as_a_plain_notebook(tmp_path):
    executed = tmp_path / "report.out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOKS / "report.ipynb"),
        str(executed),
        parameters={"n": 10},
        kernel_name="python3",
        progress_bar=False,
    )
    assert "squares 285" in outputs(executed)  # 0 + 1 + 4 + ... + 81
