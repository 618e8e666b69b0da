"""Runtime environments and compute types: what the gateway offers.

Each choice of the gateway's environment option (``batch.jupyter.environment
-option``, else its first option with a list of choices, such as a profile or
an image) is a runtime environment; without one, there is one environment,
the gateway's defaults. Compute types are worker counts
(``batch.jupyter.worker-counts``).
"""

from __future__ import annotations

import re
from typing import Any

import dask.config
from jupyter_scheduler.environments import EnvironmentManager
from jupyter_scheduler.exceptions import SchedulerError
from jupyter_scheduler.models import RuntimeEnvironment

from dask_batch.core.exceptions import DaskBatchError
from dask_batch.jupyter.connection import Connection
from dask_batch.jupyter.models import DEFAULT_ENVIRONMENT

OUTPUT_FORMATS = {"ipynb": "Notebook", "html": "HTML"}
_COUNT = re.compile(r"^\s*(\d{1,4}) workers?\s*$")


def _label(count: int) -> str:
    return f"{count} worker" + ("" if count == 1 else "s")


def compute_types() -> list[str]:
    """The worker counts offered, as their labels ("2 workers")."""
    counts = dask.config.get("batch.jupyter.worker-counts", None) or [1]
    return [_label(int(n)) for n in counts]


def workers_of(compute_type: str | None, job_id: str) -> int | None:
    """The worker count a compute type names (None: ``batch.workers``)."""
    if not compute_type:
        return None
    match = _COUNT.match(compute_type)
    if match is None or compute_type not in compute_types():
        raise SchedulerError(
            f"job {job_id}: unknown compute type {compute_type!r}; choose one "
            f"of {', '.join(compute_types())}."
        )
    return int(match.group(1))


def _choice_field(options: Any) -> tuple[str, tuple[str, ...]] | None:
    """The gateway option whose choices are the environments, if any."""
    fields = dict(getattr(options, "_fields", {}))  # dask-gateway's Options
    wanted = dask.config.get("batch.jupyter.environment-option", None)
    for name, field in fields.items():
        choices = getattr(field, "options", None)
        if name.startswith("batch_"):
            continue  # dask-batch's own (its user, its runner key): no choice
        if choices and (wanted is None or name == wanted):
            return name, tuple(str(c) for c in choices)
    return None


class GatewayEnvironments(EnvironmentManager):
    """jupyter-scheduler's environment manager for dask-batch.

    Parameters
    ----------
    connection : Connection, optional
        Shared with the scheduler; default: one from dask config.
    """

    def __init__(self, connection: Connection | None = None) -> None:
        self.connection = connection or Connection()
        self._environments: list[RuntimeEnvironment] | None = None
        self._options: dict[str, dict[str, str]] = {}

    async def list_environments(self) -> list[RuntimeEnvironment]:
        if self._environments is None:
            try:
                gateway = await self.connection.gateway()
                options = await gateway.cluster_options(use_local_defaults=False)
            except DaskBatchError as exc:
                raise SchedulerError(str(exc)) from exc
            self._environments = self._describe(_choice_field(options))
        return self._environments

    def _describe(
        self, choice: tuple[str, tuple[str, ...]] | None
    ) -> list[RuntimeEnvironment]:
        types = compute_types()
        default = _label(int(dask.config.get("batch.workers", 1)))
        common = {
            "file_extensions": ["ipynb"],
            "output_formats": list(OUTPUT_FORMATS),
            "compute_types": types,
            "default_compute_type": default if default in types else types[0],
            "utc_only": False,
        }
        if choice is None:
            self._options = {DEFAULT_ENVIRONMENT: {}}
            return [
                RuntimeEnvironment(
                    name=DEFAULT_ENVIRONMENT,
                    label="Dask Gateway",
                    description="A cluster of your own on the Dask Gateway, "
                    "with the gateway's default options.",
                    metadata={},
                    **common,
                )
            ]
        field, choices = choice
        self._options = {c: {field: c} for c in choices}
        return [
            RuntimeEnvironment(
                name=c,
                label=c,
                description=f"A cluster of your own on the Dask Gateway, {field} {c}.",
                metadata={"cluster_option": field},
                **common,
            )
            for c in choices
        ]

    async def cluster_options(self, name: str | None, job_id: str) -> dict[str, str]:
        """The gateway cluster options of an environment's name."""
        await self.list_environments()
        if not name:
            return {}
        if name not in self._options:
            raise SchedulerError(
                f"job {job_id}: unknown runtime environment {name!r}; choose "
                f"one of {', '.join(self._options)}."
            )
        return dict(self._options[name])

    def manage_environments_command(self) -> str:
        return ""

    def output_formats_mapping(self) -> dict[str, str]:
        return dict(OUTPUT_FORMATS)
