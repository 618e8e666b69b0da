"""Mains for scripts, ``module:function`` targets, notebooks and commands.

These run in main's process on the cluster (pickled by reference: dask_batch
is installed there), inside the job's working directory.
"""

from __future__ import annotations

import importlib
import os
import runpy
import subprocess
import sys
from typing import Any

from dask_batch.core.exceptions import DaskBatchError


class ScriptExit(DaskBatchError):
    """A script job called ``sys.exit`` with a non-zero status."""

    def __init__(self, code: Any) -> None:
        self.code = code
        super().__init__(f"the script exited with status {code!r}")


class NotebookCellError(DaskBatchError):
    """A cell of a notebook job raised."""


class CommandExit(DaskBatchError):
    """A command job (an MLflow project's entry point) exited with non-zero status."""

    def __init__(self, command: str, code: int) -> None:
        self.code = code
        how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
        super().__init__(f"the command {command!r} {how}")


def _cluster_env() -> dict[str, str]:
    """Env (dask config) with which ``distributed.Client()`` joins the job's cluster."""
    from distributed import default_client

    client = default_client()
    security = client.security
    env = {"DASK_SCHEDULER_ADDRESS": str(client.scheduler.address)}
    if security.tls_ca_file:
        env.update(
            DASK_DISTRIBUTED__COMM__TLS__CA_FILE=str(security.tls_ca_file),
            DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=str(security.tls_client_cert),
            DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=str(security.tls_client_key),
            DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION="True",
        )
    return env


def run_command(command: str) -> None:
    """Run a shell command in the working directory; its output is the job's log.

    ``python`` in the command is the Python that runs main, and
    ``distributed.Client()`` in it connects to the job's cluster. It runs in
    main's process group: stopping the job stops it and whatever it started.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    env = dict(os.environ, **_cluster_env())
    # `python` in the command is the job's own Python, as in an activated
    # environment, whatever the scheduler's PATH says.
    bin_dir = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(filter(None, [bin_dir, env.get("PATH", "")]))
    code = subprocess.run(command, shell=True, check=False, env=env).returncode
    if code != 0:
        raise CommandExit(command, code)


def run_script(filename: str, source: bytes, argv: list[str]) -> None:
    """Run a script as ``__main__`` with ``sys.argv = [filename, *argv]``."""
    name = os.path.basename(filename)
    with open(name, "wb") as f:
        f.write(source)
    sys.argv = [name, *argv]
    sys.path.insert(0, os.getcwd())  # as `python train.py` does
    try:
        # A relative path, so that sys.argv[0] is "train.py" as typed.
        runpy.run_path(name, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise ScriptExit(exc.code) from None


def run_function(target: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Import ``package.module:function`` on the cluster and call it."""
    module_name, _, function_name = target.partition(":")
    sys.path.insert(0, os.getcwd())  # uploaded files are importable
    module = importlib.import_module(module_name)
    func = module
    for part in function_name.split("."):
        func = getattr(func, part)
    return func(*args, **kwargs)  # type: ignore[operator]


def run_notebook(filename: str, source: bytes, parameters: dict[str, Any]) -> str:
    """Execute a notebook with papermill; keep the executed copy as an artifact
    (``<name>.output.ipynb``), and the notebook as it ran (``<name>.input.ipynb``).

    Returns the artifact path of the executed notebook. A failing cell fails
    the job with that cell's error; the executed notebook, with the failing
    cell's output, is kept either way.
    """
    import fsspec
    import papermill

    from dask_batch.runtime.context import artifacts_path, current_job

    job = current_job()
    if job is not None and job.task and "upstream" not in parameters:
        # A pipeline step, as in Ploomber: `upstream` maps each upstream step
        # to the folder of the files it kept.
        parameters = dict(parameters, upstream=dict(job.upstream))
    name = os.path.basename(filename)
    with open(name, "wb") as f:
        f.write(source)
    stem = name[: -len(".ipynb")] if name.endswith(".ipynb") else name
    output = f"{stem}.output.ipynb"
    # The notebook as it ran, beside what it made: the submitter's copy may
    # have changed since (JupyterLab's Notebook Jobs offer it as "Input").
    with fsspec.open(artifacts_path(f"{stem}.input.ipynb"), "wb") as dst:
        dst.write(source)
    try:
        papermill.execute_notebook(
            name,
            output,
            parameters=parameters,
            kernel_name="python3",
            language="python",
            progress_bar=False,
            log_output=True,
            cwd=os.getcwd(),
        )
    except papermill.PapermillExecutionError as exc:
        raise NotebookCellError(
            f"cell {exc.exec_count} of {name} raised {exc.ename}: {exc.evalue}"
        ) from None
    finally:
        if os.path.exists(output):
            with (
                open(output, "rb") as src,
                fsspec.open(artifacts_path(output), "wb") as dst,
            ):
                dst.write(src.read())
    return artifacts_path(output)
