"""The ``dask batch`` command line (also installed as ``dask-batch``).

Parses arguments, calls :class:`~dask_batch.BatchClient`, renders: no logic of
its own. Every error is one line on stderr and a non-zero exit status. Text
that comes from storage (logs, messages, names) is printed without terminal
control sequences: a job's output must not drive the user's terminal.
"""

from dask_batch.cli import jobs, local, schedule, submit  # noqa: F401  (commands)
from dask_batch.cli.group import main

__all__ = ["main"]
