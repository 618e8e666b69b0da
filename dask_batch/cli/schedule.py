"""``dask batch schedule ...``: cron schedules."""

from __future__ import annotations

import json
from typing import Any

import click
import yaml

from dask_batch.cli.group import CliContext, main
from dask_batch.cli.run_options import notebook_parameters, run_options, submit_options
from dask_batch.core.names import strip_control


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
    "--concurrency",
    type=click.Choice(["allow", "forbid", "replace"]),
    help="A due time while the last run still goes: run beside it, skip it "
    "(forbid, the default), or cancel it for the new run.",
)
@click.option(
    "--overlap",
    type=click.Choice(["skip", "queue", "allow", "replace"]),
    default="skip",
    show_default=True,
    help="The same choice by its older names; queue runs it when the last ends.",
)
@click.option(
    "--starting-deadline",
    metavar="DURATION",
    help="How late (e.g. 10m) a missed due time may still start after an outage.",
)
@run_options
@notebook_parameters
@click.pass_obj
def schedule_add(
    obj: CliContext,
    target: str,
    args: tuple[str, ...],
    cron: str,
    timezone: str,
    concurrency: str | None,
    overlap: str,
    starting_deadline: str | None,
    parameters: tuple[tuple[str, str], ...],
    **run_options: Any,
) -> None:
    """Run TARGET (a script, notebook or package.module:function) at each CRON time."""
    options = submit_options(run_options)
    params = {k: yaml.safe_load(v) for k, v in parameters}
    if params and not target.endswith(".ipynb"):
        raise click.UsageError("-p/--parameter is for notebooks")
    added = obj.client.schedule(
        target,
        *args,
        cron=cron,
        timezone=timezone,
        concurrency=concurrency,
        overlap=overlap,
        starting_deadline=starting_deadline,
        submit_options=options,
        **params,
    )
    click.echo(added.id)
    click.echo(f"next run: {added.next_run.isoformat()}", err=True)


@schedule.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="JSON, for scripts.")
@click.pass_obj
def schedule_list(obj: CliContext, as_json: bool) -> None:
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
def schedule_history(obj: CliContext, schedule_id: str) -> None:
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
def schedule_pause(obj: CliContext, schedule_id: str) -> None:
    """Stop submitting runs."""
    obj.client.pause_schedule(schedule_id)
    click.echo(f"{schedule_id} paused")


@schedule.command(name="resume")
@click.argument("schedule_id")
@click.pass_obj
def schedule_resume(obj: CliContext, schedule_id: str) -> None:
    """Submit runs again from the next due time."""
    resumed = obj.client.resume_schedule(schedule_id)
    click.echo(f"{schedule_id} resumed; next run {resumed.next_run.isoformat()}")


@schedule.command(name="delete")
@click.argument("schedule_ids", nargs=-1, required=True)
@click.pass_obj
def schedule_delete(obj: CliContext, schedule_ids: tuple[str, ...]) -> None:
    """Remove schedules (the jobs they submitted stay)."""
    for schedule_id in schedule_ids:
        obj.client.delete_schedule(schedule_id)
        click.echo(f"{schedule_id} deleted")


@schedule.command(name="fire")
@click.pass_obj
def schedule_fire(obj: CliContext) -> None:
    """Submit the runs that are due now (where no service or local gateway does)."""
    for run in obj.client.fire_schedules():
        click.echo(f"{run.time.isoformat()}  {run.outcome:<9} {run.job_id}".rstrip())
