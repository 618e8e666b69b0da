"""``dask batch submit``: a script, notebook, function, pipeline or array."""

from __future__ import annotations

import sys
from typing import Any

import click
import yaml

from dask_batch.cli.group import CliContext, exit_status, main
from dask_batch.cli.run_options import (
    notebook_parameters,
    run_options,
    submit_options,
)
from dask_batch.core.names import strip_control
from dask_batch.core.records import JobState
from dask_batch.workflows.ploomber_specs import is_ploomber_spec


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("target")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@run_options
@notebook_parameters
@click.option(
    "--array",
    metavar="INDICES",
    help="Run the script once per index, as one array job: 0-99, 0-99%10 (at "
    "most 10 at once), 1,3,5 or 0-10:2. Each reads DASK_BATCH_ARRAY_INDEX.",
)
@click.option(
    "--max-parallel",
    type=int,
    help="Pipeline steps that run at once (default: the file's, else "
    "batch.tasks.max-parallel).",
)
@click.option(
    "--fail-fast",
    is_flag=True,
    default=None,
    help="Stop a pipeline at its first failure.",
)
@click.option(
    "--resume",
    metavar="JOB_ID",
    help="Re-run only the pipeline steps that changed since that pipeline job.",
)
@click.option("--wait", is_flag=True, help="Wait for the job; exit with its status.")
@click.option("--follow", is_flag=True, help="Stream the log until the job ends.")
@click.pass_obj
def submit(
    obj: CliContext,
    target: str,
    args: tuple[str, ...],
    parameters: tuple[tuple[str, str], ...],
    array: str | None,
    max_parallel: int | None,
    fail_fast: bool | None,
    resume: str | None,
    wait: bool,
    follow: bool,
    **run_options: Any,
) -> None:
    """Submit TARGET as a batch job and print its id.

    TARGET is a script (train.py, run as __main__ with ARGS as sys.argv), a
    package.module:function (called with ARGS), a notebook (analysis.ipynb,
    executed with papermill; parameters with -p NAME VALUE), or a pipeline
    (pipeline.yaml: steps that run in dependency order on one cluster). A
    Ploomber spec (a YAML file with top-level tasks:) takes `ploomber build`'s
    options after it (--env--KEY VALUE, --force, --partially TASK).
    """
    options = submit_options(run_options)
    is_pipeline = target.endswith((".yaml", ".yml"))
    if not is_pipeline and (max_parallel or fail_fast or resume):
        raise click.UsageError(
            "--max-parallel, --fail-fast and --resume are for pipelines"
        )
    if array is not None and (is_pipeline or target.endswith(".ipynb")):
        raise click.UsageError("--array is for scripts and package.module:function")
    batch = obj.client
    if is_pipeline:
        if parameters or (args and not is_ploomber_spec(target)):
            raise click.UsageError("a pipeline takes its params from its file")
        job = batch.submit_pipeline(
            target,
            max_parallel=max_parallel,
            fail_fast=fail_fast,
            resume=resume,
            ploomber_args=list(args),
            submit_options=options,
        )
    elif target.endswith(".ipynb"):
        if args:
            raise click.UsageError("notebooks take -p NAME VALUE, not arguments")
        params = {k: yaml.safe_load(v) for k, v in parameters}
        job = batch.submit_notebook(target, params, submit_options=options)
    else:
        if parameters:
            raise click.UsageError("-p/--parameter is for notebooks")
        job = batch.submit_script(
            target, list(args), array=array, submit_options=options
        )
    click.echo(job.id)
    if follow:
        for text in job.logs(follow=True):
            click.echo(strip_control(text), nl=False)
    if wait or follow:
        record = job.wait()
        click.echo(f"{job.id} {record.state.value}", err=True)
        if record.state is not JobState.SUCCEEDED:
            message = strip_control(record.message or record.state.value)
            click.echo(f"Error: {message}", err=True)
        sys.exit(exit_status(record))
