"""Following jobs: ``list``, ``status``, ``logs``, ``result``, ``cancel``,
``reconcile``, ``artifacts`` and the jobs page (``ui``).
"""

from __future__ import annotations

import json

import click

from dask_batch.cli.group import (
    CliContext,
    echo_records,
    fail,
    job_id_argument,
    main,
    record_dict,
)
from dask_batch.core.exceptions import JobFailedError
from dask_batch.core.names import strip_control
from dask_batch.core.records import JobState


@main.command(name="list")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in JobState], case_sensitive=False),
    help="Only jobs in this state. Repeatable.",
)
@click.option("--name", help="Only jobs with this name.")
@click.option("--since", help="Submitted since: a duration (2h, 3d) or ISO time.")
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines, for scripts.")
@click.pass_obj
def list_jobs(
    obj: CliContext,
    states: tuple[str, ...],
    name: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List your jobs, newest first."""
    records = obj.client.jobs(
        state=[s.upper() for s in states] or None, name=name, since=since, limit=limit
    )
    echo_records(records, as_json)


@main.command()
@click.argument("job_id", callback=job_id_argument)
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--elements",
    is_flag=True,
    help="List an array's elements too (its counts are always shown).",
)
@click.option(
    "--state",
    type=click.Choice([s.value for s in JobState], case_sensitive=False),
    help="With --elements: only the elements in this state.",
)
@click.pass_obj
def status(
    obj: CliContext, job_id: str, as_json: bool, elements: bool, state: str | None
) -> None:
    """Show a job's record (an array's counts by state; --elements lists them)."""
    record = obj.client.status(job_id)
    if elements and record.elements:
        record.tasks = obj.client.tasks(job_id, state=state and state.upper())
    if as_json:
        click.echo(json.dumps(record_dict(record), indent=1))
        return
    from dask_batch.client.display import (
        error_summary,
        format_duration,
        format_progress,
    )

    lines = [
        ("id", record.id),
        ("name", record.name),
        ("state", record.state.value),
        ("kind", f"{record.kind} {record.target}"),
        ("submitted", record.submitted.isoformat()),
        ("started", record.started.isoformat() if record.started else ""),
        ("finished", record.finished.isoformat() if record.finished else ""),
        ("duration", format_duration(record.duration)),
        ("progress", format_progress(record)),
        ("cluster", record.cluster_name or ""),
        ("dashboard", record.dashboard_link or ""),
        ("env", ", ".join(record.env_names)),
        ("mlflow", " ".join(filter(None, [record.mlflow_run_id, record.mlflow_url]))),
        ("after", ", ".join(record.after)),
        ("schedule", record.schedule),
        ("message", error_summary(record) or record.message),
    ]
    for key, value in lines:
        if value:
            click.echo(f"{key + ':':<11}{strip_control(value)}")
    if record.tasks:
        from dask_batch.client.display import task_lines

        click.echo("")
        for line in task_lines(record.tasks):
            click.echo(strip_control(line))


@main.command()
@click.argument("job_id", callback=job_id_argument)
@click.option(
    "-f", "--follow", is_flag=True, help="Stream new output until the job ends."
)
@click.option(
    "--task",
    default="",
    metavar="NAME",
    help="The log of one pipeline step (its name) or array element (its index).",
)
@click.pass_obj
def logs(obj: CliContext, job_id: str, follow: bool, task: str) -> None:
    """Print main's output (stdout, stderr, logging)."""
    if follow:
        for text in obj.client.logs(job_id, follow=True, task=task):
            click.echo(strip_control(text), nl=False)
    else:
        click.echo(strip_control(obj.client.logs(job_id, task=task)), nl=False)


@main.command()
@click.argument("job_id", callback=job_id_argument)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the value to FILE: str and bytes as they are, anything else pickled.",
)
@click.option("--timeout", help="Wait at most this long (e.g. 10m).")
@click.pass_obj
def result(
    obj: CliContext, job_id: str, output: str | None, timeout: str | None
) -> None:
    """Wait for a job and print (or save) the value main returned."""
    try:
        value = obj.client.result(job_id, timeout=timeout)
    except JobFailedError as exc:
        fail(f"Job {job_id!r} failed: {exc.remote_type}: {exc.remote_message}")
    if output is None:
        click.echo(value if isinstance(value, str) else repr(value))
        return
    if isinstance(value, str):
        data = value.encode()
    elif isinstance(value, bytes):
        data = value
    else:
        import cloudpickle

        data = cloudpickle.dumps(value)
    with open(output, "wb") as f:
        f.write(data)


@main.command()
@click.argument("job_id", callback=job_id_argument)
@click.option(
    "--failed/--all",
    "failed_only",
    default=True,
    show_default=True,
    help="Run only the failed elements of an array (or failed steps of a "
    "pipeline), or everything again.",
)
@click.pass_obj
def resubmit(obj: CliContext, job_id: str, failed_only: bool) -> None:
    """Run an ended job again as a new job; prints the new job's id."""
    job = obj.client.resubmit(job_id, failed_only=failed_only)
    click.echo(job.id)


@main.command()
@click.argument("job_ids", nargs=-1, required=True, callback=job_id_argument)
@click.pass_obj
def cancel(obj: CliContext, job_ids: tuple[str, ...]) -> None:
    """Cancel jobs and stop their clusters."""
    for job_id in job_ids:
        record = obj.client.cancel(job_id)
        click.echo(f"{job_id} {record.state.value}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="JSON, for scripts.")
@click.pass_obj
def reconcile(obj: CliContext, as_json: bool) -> None:
    """Retry or mark LOST every live job whose cluster is gone.

    Reads (list, status) only report a job that awaits a retry on a new
    cluster; this starts it, as `result` and `submit --wait` do for one job.
    """
    echo_records(obj.client.reconcile(), as_json)


@main.command()
@click.argument("job_id", callback=job_id_argument)
@click.option(
    "--download",
    type=click.Path(file_okay=False),
    help="Copy the artifacts into this directory.",
)
@click.pass_obj
def artifacts(obj: CliContext, job_id: str, download: str | None) -> None:
    """List (or download) the files a job stored as artifacts."""
    if download:
        for path in obj.client.download_artifacts(job_id, download):
            click.echo(path)
        return
    from dask.utils import format_bytes

    for path, size in obj.client.artifacts(job_id).items():
        click.echo(f"{format_bytes(size):>10}  {strip_control(path)}")


@main.command()
@click.option("--port", type=int, default=0, help="Port (default: a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address.")
@click.option("--no-browser", is_flag=True, help="Do not open a browser.")
@click.option(
    "--hub",
    is_flag=True,
    help="Run as a JupyterHub service: hub login, every user's jobs kept "
    "(see the admin guide).",
)
@click.pass_obj
def ui(obj: CliContext, port: int, host: str, no_browser: bool, hub: bool) -> None:
    """Serve the jobs web page; prints its URL with an access token.

    Ctrl-C stops it. Also runs as `python -m dask_batch.ui`.
    """
    from dask_batch.ui import run

    run(host, port, not no_browser, obj.storage, hub=hub)
