"""The ``dask batch`` group, and what every command shares: one-line
errors, the client, record output.
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

from dask_batch.core.exceptions import DaskBatchError
from dask_batch.core.names import check_job_id, strip_control
from dask_batch.core.records import JobRecord, JobState


def fail(message: str, code: int = 1) -> NoReturn:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    click.echo(f"Error: {strip_control(first)}", err=True)
    sys.exit(code)


def job_id_argument(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Check each job id before any client starts, so that a mistyped id
    fails at once and never starts the local gateway (:class:`BatchGroup`
    turns the error into its one line)."""
    if isinstance(value, tuple):
        return tuple(check_job_id(job_id) for job_id in value)
    return check_job_id(value)


class BatchGroup(click.Group):
    """Turns every known error into one line on stderr."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except DaskBatchError as exc:
            fail(str(exc))
        except TimeoutError as exc:
            fail(str(exc), code=124)
        except (OSError, ValueError) as exc:
            # Unreachable gateway, refused connection, bad value from the server.
            fail(f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            if type(exc).__module__.startswith("aiohttp"):
                fail(f"cannot reach the gateway: {exc}")
            raise


class CliContext:
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


def record_dict(record: JobRecord) -> dict[str, Any]:
    out = record.to_dict()
    duration = record.duration
    out["duration_seconds"] = None if duration is None else duration.total_seconds()
    return out


def echo_records(records: Any, as_json: bool) -> None:
    """A table of records, or a JSON list of them."""
    if as_json:
        click.echo(json.dumps([record_dict(r) for r in records], indent=1))
        return
    # In blocks of lines: a listing of 100,000 jobs never becomes one string.
    lines = records.text_lines()
    while block := list(itertools.islice(lines, 1000)):
        click.echo(strip_control("\n".join(block)))


def exit_status(record: JobRecord) -> int:
    """The job's exit status as a shell sees it: 0 only for SUCCEEDED."""
    if record.state is JobState.SUCCEEDED:
        return 0
    code = (record.error or {}).get("returncode")
    return code if isinstance(code, int) and 0 < code < 256 else 1


@click.group(
    cls=BatchGroup,
    name="batch",
    context_settings={"help_option_names": ["-h", "--help"]},
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
    context = CliContext(storage)
    ctx.obj = context
    ctx.call_on_close(context.close)
