"""The notebooks in notebooks/ run, top to bottom, against the local gateway."""

from __future__ import annotations

import pathlib

import papermill
import pytest

from dask_batch import local
from dask_batch.testing import _start_gateway

NOTEBOOKS = pathlib.Path(__file__).parent.parent / "notebooks"


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
    papermill.execute_notebook(
        str(NOTEBOOKS / f"{name}.ipynb"),
        str(tmp_path / f"{name}.out.ipynb"),
        cwd=str(NOTEBOOKS),
        kernel_name="python3",
        progress_bar=False,
    )


def test_report_notebook_also_runs_as_a_plain_notebook(tmp_path):
    papermill.execute_notebook(
        str(NOTEBOOKS / "report.ipynb"),
        str(tmp_path / "report.out.ipynb"),
        parameters={"n": 10},
        kernel_name="python3",
        progress_bar=False,
    )
