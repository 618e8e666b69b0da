"""The options that say how a job runs, shared by ``submit`` and
``schedule add``.
"""

from __future__ import annotations

from typing import Any

import click
import yaml

from dask_batch.core.options import SubmitOptions

RUN_OPTION_DECORATORS = [
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
    click.option(
        "--label",
        "labels",
        multiple=True,
        metavar="KEY=VALUE",
        help="Text filed with the job, shown in its status (not secret). Repeatable.",
    ),
]


notebook_parameters = click.option(
    "-p",
    "--parameter",
    "parameters",
    nargs=2,
    multiple=True,
    metavar="NAME VALUE",
    help="Notebook parameter (value parsed as YAML). Repeatable.",
)


def run_options(command: Any) -> Any:
    """The options that say how a job runs (``SubmitOptions``), for every
    command that submits: ``submit`` and ``schedule add``."""
    for option in reversed(RUN_OPTION_DECORATORS):
        command = option(command)
    return command


def key_value(values: tuple[str, ...], what: str) -> dict[str, Any]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=what)
        out[key] = yaml.safe_load(value) if value else ""
    return out


def submit_options(params: dict[str, Any]) -> SubmitOptions:
    """The ``SubmitOptions`` from the parsed run options (popped from ``params``)."""
    adapt = params.pop("adapt")
    experiment = params.pop("mlflow_experiment")
    return SubmitOptions(
        name=params.pop("name"),
        workers=params.pop("workers"),
        adapt=(adapt[0], adapt[1]) if adapt else None,
        cluster_options=key_value(params.pop("cluster_options"), "--cluster-option"),
        env=list(params.pop("env")) or None,
        files=list(params.pop("files")) or None,
        timeout=params.pop("timeout"),
        idempotency_key=params.pop("idempotency_key"),
        retries=params.pop("retries"),
        retry_on=list(params.pop("retry_on")),
        memory_limit=params.pop("memory_limit"),
        mlflow=experiment or params.pop("mlflow"),
        labels=_labels(params.pop("labels")) or None,
    )


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    """``--label`` items; values stay text (no YAML: a label is text)."""
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--label")
        out[key] = value
    return out
