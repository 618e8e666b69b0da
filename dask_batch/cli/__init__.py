"""The ``dask batch`` command line (also installed as ``dask-batch``).

Parses arguments, calls :class:`~dask_batch.BatchClient`, renders: no logic of
its own. Every error is one line on stderr and a non-zero exit status. Text
that comes from storage (logs, messages, names) is printed without terminal
control sequences: a job's output must not drive the user's terminal.
"""

from __future__ import annotations

import atexit
import functools
import gc
import itertools
import json
import sys
from typing import Any, NoReturn

import click
import yaml

from dask_batch.core.exceptions import (
    DaskBatchError,
    JobFailedError,
    MissingSecretError,
)
from dask_batch.core.names import strip_control
from dask_batch.core.options import SubmitOptions
from dask_batch.core.records import JobRecord, JobState

__all__ = ["main"]


def _fail(message: str, code: int = 1) -> NoReturn:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    click.echo(f"Error: {strip_control(first)}", err=True)
    sys.exit(code)


class _Group(click.Group):
    """Turns every known error into one line on stderr."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except DaskBatchError as exc:
            _fail(str(exc))
        except TimeoutError as exc:
            _fail(str(exc), code=124)
        except (OSError, ValueError) as exc:
            # Unreachable gateway, refused connection, bad value from the server.
            _fail(f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            if type(exc).__module__.startswith("aiohttp"):
                _fail(f"cannot reach the gateway: {exc}")
            raise


class _Context:
    def __init__(self, storage: str | None) -> None:
        self.storage = storage
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from dask_batch.batch_client import BatchClient

            self._client = BatchClient(storage=self.storage)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


@functools.cache
def _quick_exit() -> None:
    """Spare the process the garbage collector's last pass over every object.

    At exit the interpreter collects once more, walking the objects of every
    module that distributed, dask_gateway and aiohttp brought in: ~0.1 s of a
    0.5 s `dask batch list`. Frozen objects are skipped by that pass; they
    are still freed, streams flushed and atexit handlers run as usual, and
    the client is closed before this runs.
    """
    atexit.register(gc.freeze)


def _key_value(values: tuple[str, ...], what: str) -> dict[str, Any]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=what)
        out[key] = yaml.safe_load(value) if value else ""
    return out


def _record_dict(record: JobRecord) -> dict[str, Any]:
    out = record.to_dict()
    duration = record.duration
    out["duration_seconds"] = None if duration is None else duration.total_seconds()
    return out


def _echo_records(records: Any, as_json: bool) -> None:
    """A table of records, or a JSON list of them."""
    if as_json:
        click.echo(json.dumps([_record_dict(r) for r in records], indent=1))
        return
    # In blocks of lines: a listing of 100,000 jobs never becomes one string.
    lines = records.text_lines()
    while block := list(itertools.islice(lines, 1000)):
        click.echo(strip_control("\n".join(block)))


def _exit_status(record: JobRecord) -> int:
    """The job's exit status as a shell sees it: 0 only for SUCCEEDED."""
    if record.state is JobState.SUCCEEDED:
        return 0
    code = (record.error or {}).get("returncode")
    return code if isinstance(code, int) and 0 < code < 256 else 1


@click.group(
    cls=_Group, name="batch", context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "--storage",
    envvar="DASK_BATCH__STORAGE",
    help="Job storage URL (default: batch.storage, or the local gateway's).",
)
@click.version_option(package_name="dask-batch")
@click.pass_context
def main(ctx: click.Context, storage: str | None) -> None:
    """Batch jobs on Dask Gateway: submit, follow, fetch results."""
    _quick_exit()
    context = _Context(storage)
    ctx.obj = context
    ctx.call_on_close(context.close)


_RUN_OPTION_DECORATORS = [
    click.option("--name", help="Display name (default: the target's name)."),
    click.option(
        "--workers", type=int, help="Workers to start (default batch.workers)."
    ),
    click.option(
        "--adapt", nargs=2, type=int, metavar="MIN MAX", help="Adaptive scaling."
    ),
    click.option(
        "--env",
        "env",
        multiple=True,
        metavar="KEY[=VALUE]",
        help="Environment variable for main; KEY alone copies it from here. "
        "Repeatable.",
    ),
    click.option(
        "--file",
        "files",
        multiple=True,
        type=click.Path(exists=True),
        help="File or directory uploaded as main's working directory. Repeatable.",
    ),
    click.option(
        "--cluster-option",
        "cluster_options",
        multiple=True,
        metavar="KEY=VALUE",
        help="Gateway cluster option (value parsed as YAML). Repeatable.",
    ),
    click.option(
        "--timeout", help="Run-time limit of main (e.g. 2h); the job FAILS past it."
    ),
    click.option(
        "--idempotency-key",
        help="Submitting again with the same key returns the first job.",
    ),
    click.option("--retries", type=int, default=0, help="Extra attempts allowed."),
    click.option(
        "--retry-on",
        "retry_on",
        multiple=True,
        metavar="EXCEPTION",
        help="Exception name of main to retry (e.g. ConnectionError). Repeatable.",
    ),
    click.option("--memory-limit", help="Address-space limit of main, e.g. 4GiB."),
    click.option(
        "--mlflow/--no-mlflow",
        "mlflow",
        default=None,
        help="Make the job an MLflow run (default: batch.mlflow.enabled).",
    ),
    click.option(
        "--mlflow-experiment",
        metavar="NAME",
        help="The MLflow experiment of the job's run (implies --mlflow).",
    ),
]


_notebook_parameters = click.option(
    "-p",
    "--parameter",
    "parameters",
    nargs=2,
    multiple=True,
    metavar="NAME VALUE",
    help="Notebook parameter (value parsed as YAML). Repeatable.",
)


def _run_options(command: Any) -> Any:
    """The options that say how a job runs (``SubmitOptions``), for every
    command that submits: ``submit`` and ``schedule add``."""
    for option in reversed(_RUN_OPTION_DECORATORS):
        command = option(command)
    return command


def _submit_options(params: dict[str, Any]) -> SubmitOptions:
    """The ``SubmitOptions`` from the parsed run options (popped from ``params``)."""
    adapt = params.pop("adapt")
    experiment = params.pop("mlflow_experiment")
    return SubmitOptions(
        name=params.pop("name"),
        workers=params.pop("workers"),
        adapt=(adapt[0], adapt[1]) if adapt else None,
        cluster_options=_key_value(params.pop("cluster_options"), "--cluster-option"),
        env=list(params.pop("env")) or None,
        files=list(params.pop("files")) or None,
        timeout=params.pop("timeout"),
        idempotency_key=params.pop("idempotency_key"),
        retries=params.pop("retries"),
        retry_on=list(params.pop("retry_on")),
        memory_limit=params.pop("memory_limit"),
        mlflow=experiment or params.pop("mlflow"),
    )


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("target")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@_run_options
@_notebook_parameters
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
    obj: _Context,
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
    (pipeline.yaml: steps that run in dependency order on one cluster).
    """
    options = _submit_options(run_options)
    is_pipeline = target.endswith((".yaml", ".yml"))
    if not is_pipeline and (max_parallel or fail_fast or resume):
        raise click.UsageError(
            "--max-parallel, --fail-fast and --resume are for pipelines"
        )
    if array is not None and (is_pipeline or target.endswith(".ipynb")):
        raise click.UsageError("--array is for scripts and package.module:function")
    batch = obj.client
    if is_pipeline:
        if args or parameters:
            raise click.UsageError("a pipeline takes its params from its file")
        job = batch.submit_pipeline(
            target,
            max_parallel=max_parallel,
            fail_fast=fail_fast,
            resume=resume,
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
        sys.exit(_exit_status(record))


@main.group()
def schedule() -> None:
    """Submit a job at each time of a cron expression."""


@schedule.command(name="add", context_settings={"ignore_unknown_options": True})
@click.argument("target")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "--cron",
    required=True,
    help="When, as a cron expression in quotes: minute hour day month weekday "
    "(and a sixth field for seconds); 0 2 followed by three stars is 02:00 "
    "every day.",
)
@click.option("--timezone", default="UTC", show_default=True, help="Of the cron times.")
@click.option(
    "--overlap",
    type=click.Choice(["skip", "queue"]),
    default="skip",
    show_default=True,
    help="A due time while the last run still goes: skip it, or queue it.",
)
@_run_options
@_notebook_parameters
@click.pass_obj
def schedule_add(
    obj: _Context,
    target: str,
    args: tuple[str, ...],
    cron: str,
    timezone: str,
    overlap: str,
    parameters: tuple[tuple[str, str], ...],
    **run_options: Any,
) -> None:
    """Run TARGET (a script, notebook or package.module:function) at each CRON time."""
    options = _submit_options(run_options)
    params = {k: yaml.safe_load(v) for k, v in parameters}
    if params and not target.endswith(".ipynb"):
        raise click.UsageError("-p/--parameter is for notebooks")
    added = obj.client.schedule(
        target,
        *args,
        cron=cron,
        timezone=timezone,
        overlap=overlap,
        submit_options=options,
        **params,
    )
    click.echo(added.id)
    click.echo(f"next run: {added.next_run.isoformat()}", err=True)


@schedule.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="JSON, for scripts.")
@click.pass_obj
def schedule_list(obj: _Context, as_json: bool) -> None:
    """Your schedules, with their next run and last outcome."""
    found = obj.client.schedules()
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in found], indent=1))
        return
    click.echo(f"{'id':<30}{'name':<18}{'cron':<16}{'state':<8}{'next run':<27}last")
    for item in found:
        last = item.history[0] if item.history else None
        click.echo(
            strip_control(
                f"{item.id:<30}{item.name[:17]:<18}{item.cron[:15]:<16}"
                f"{'paused' if item.paused else 'active':<8}"
                f"{item.next_run.isoformat() if item.next_run else '':<27}"
                + (f"{last.outcome} {last.job_id}".strip() if last else "")
            )
        )


@schedule.command(name="history")
@click.argument("schedule_id")
@click.pass_obj
def schedule_history(obj: _Context, schedule_id: str) -> None:
    """Each due time of a schedule: the job it submitted, or why it did not."""
    for run in obj.client.schedule_history(schedule_id):
        click.echo(
            strip_control(
                f"{run.time.isoformat()}  {run.outcome:<9} {run.job_id:<29} "
                f"{run.message}".rstrip()
            )
        )


@schedule.command(name="pause")
@click.argument("schedule_id")
@click.pass_obj
def schedule_pause(obj: _Context, schedule_id: str) -> None:
    """Stop submitting runs."""
    obj.client.pause_schedule(schedule_id)
    click.echo(f"{schedule_id} paused")


@schedule.command(name="resume")
@click.argument("schedule_id")
@click.pass_obj
def schedule_resume(obj: _Context, schedule_id: str) -> None:
    """Submit runs again from the next due time."""
    resumed = obj.client.resume_schedule(schedule_id)
    click.echo(f"{schedule_id} resumed; next run {resumed.next_run.isoformat()}")


@schedule.command(name="delete")
@click.argument("schedule_ids", nargs=-1, required=True)
@click.pass_obj
def schedule_delete(obj: _Context, schedule_ids: tuple[str, ...]) -> None:
    """Remove schedules (the jobs they submitted stay)."""
    for schedule_id in schedule_ids:
        obj.client.delete_schedule(schedule_id)
        click.echo(f"{schedule_id} deleted")


@schedule.command(name="fire")
@click.pass_obj
def schedule_fire(obj: _Context) -> None:
    """Submit the runs that are due now (where no service or local gateway does)."""
    for run in obj.client.fire_schedules():
        click.echo(f"{run.time.isoformat()}  {run.outcome:<9} {run.job_id}".rstrip())


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
    obj: _Context,
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
    _echo_records(records, as_json)


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def status(obj: _Context, job_id: str, as_json: bool) -> None:
    """Show a job's record."""
    record = obj.client.status(job_id)
    if as_json:
        click.echo(json.dumps(_record_dict(record), indent=1))
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
@click.argument("job_id")
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
def logs(obj: _Context, job_id: str, follow: bool, task: str) -> None:
    """Print main's output (stdout, stderr, logging)."""
    if follow:
        for text in obj.client.logs(job_id, follow=True, task=task):
            click.echo(strip_control(text), nl=False)
    else:
        click.echo(strip_control(obj.client.logs(job_id, task=task)), nl=False)


@main.command()
@click.argument("job_id")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the value to FILE: str and bytes as they are, anything else pickled.",
)
@click.option("--timeout", help="Wait at most this long (e.g. 10m).")
@click.pass_obj
def result(obj: _Context, job_id: str, output: str | None, timeout: str | None) -> None:
    """Wait for a job and print (or save) the value main returned."""
    try:
        value = obj.client.result(job_id, timeout=timeout)
    except JobFailedError as exc:
        _fail(f"Job {job_id!r} failed: {exc.remote_type}: {exc.remote_message}")
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
@click.argument("job_ids", nargs=-1, required=True)
@click.pass_obj
def cancel(obj: _Context, job_ids: tuple[str, ...]) -> None:
    """Cancel jobs and stop their clusters."""
    for job_id in job_ids:
        record = obj.client.cancel(job_id)
        click.echo(f"{job_id} {record.state.value}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="JSON, for scripts.")
@click.pass_obj
def reconcile(obj: _Context, as_json: bool) -> None:
    """Retry or mark LOST every live job whose cluster is gone.

    Reads (list, status) only report a job that awaits a retry on a new
    cluster; this starts it, as `result` and `submit --wait` do for one job.
    """
    _echo_records(obj.client.reconcile(), as_json)


@main.command()
@click.argument("job_id")
@click.option(
    "--download",
    type=click.Path(file_okay=False),
    help="Copy the artifacts into this directory.",
)
@click.pass_obj
def artifacts(obj: _Context, job_id: str, download: str | None) -> None:
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
def ui(obj: _Context, port: int, host: str, no_browser: bool, hub: bool) -> None:
    """Serve the jobs web page; prints its URL with an access token.

    Ctrl-C stops it. Also runs as `python -m dask_batch.ui`.
    """
    from dask_batch.ui import run

    run(host, port, not no_browser, obj.storage, hub=hub)


@main.group()
def secret() -> None:
    """Your dask-batch secret: it signs your jobs, so only you can load them.

    Results are loaded only on machines that hold the secret of the machine
    that submitted the job. Copy it with `dask batch secret export` there and
    `dask batch secret import` here; keep it as private as an SSH key.
    """


@secret.command(name="export")
def secret_export() -> None:
    """Print your secret (made now if this machine has none)."""
    from dask_batch.core.signing import user_secret

    click.echo(user_secret(create=True).hex())


@secret.command(name="import")
@click.argument("source", type=click.File("r"), default="-")
@click.option("--force", is_flag=True, help="Replace a different secret here.")
def secret_import(source: Any, force: bool) -> None:
    """Keep the secret read from SOURCE (default: standard input) as yours."""
    from dask_batch.core.signing import secret_path, user_secret, write_secret

    text = source.read().strip()
    try:
        current = user_secret().hex()
    except MissingSecretError:
        current = None
    if current is not None and current != text and not force:
        _fail(
            f"{secret_path()} already holds a different secret: jobs it signed "
            "could no longer be loaded here. Pass --force to replace it."
        )
    try:
        write_secret(text)
    except ValueError as exc:
        _fail(f"not a dask-batch secret: {exc}")
    click.echo(f"secret kept in {secret_path()}")


@secret.command(name="path")
def secret_where() -> None:
    """Print where your secret is kept."""
    from dask_batch.core.signing import secret_path

    click.echo(secret_path())


@main.group()
def local() -> None:
    """The embedded local gateway."""


def _local_info(info: Any) -> str:
    return f"running  {info.address}  pid {info.pid}  {info.directory}"


@local.command(name="start")
def local_start() -> None:
    """Start the local gateway (or show the running one)."""
    from dask_batch import local as local_gateway

    click.echo(_local_info(local_gateway.start()))


@local.command(name="stop")
def local_stop() -> None:
    """Stop the local gateway and every cluster it runs."""
    from dask_batch import local as local_gateway

    click.echo("stopped" if local_gateway.stop() else "not running")


@local.command(name="status")
def local_status() -> None:
    """Show whether the local gateway runs (exit status 1 if not)."""
    from dask_batch import local as local_gateway

    info = local_gateway.status()
    if info is None:
        click.echo("not running")
        sys.exit(1)
    click.echo(_local_info(info))
