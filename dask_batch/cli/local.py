"""This machine: the user's secret and the embedded local gateway."""

from __future__ import annotations

import sys
from typing import Any

import click

from dask_batch.cli.group import fail, main
from dask_batch.core.exceptions import MissingSecretError


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
        fail(
            f"{secret_path()} already holds a different secret: jobs it signed "
            "could no longer be loaded here. Pass --force to replace it."
        )
    try:
        write_secret(text)
    except ValueError as exc:
        fail(f"not a dask-batch secret: {exc}")
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
