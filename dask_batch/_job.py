"""A handle on one batch job: :class:`Job`."""

from __future__ import annotations

import html
import os
from typing import TYPE_CHECKING, Any

from ._display import html_table

if TYPE_CHECKING:
    from ._client import BatchClient


class Job:
    """A handle on one batch job; cheap to create from an id.

    Methods mirror :class:`BatchClient`'s with the job id filled in.

    Examples
    --------
    >>> job = batch.submit(main)      # doctest: +SKIP
    >>> job.status().state            # doctest: +SKIP
    <JobState.RUNNING: 'RUNNING'>
    >>> job.result()                  # doctest: +SKIP
    42
    """

    def __init__(self, client: BatchClient, job_id: str) -> None:
        self.client = client
        self.id = job_id

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    def _repr_html_(self) -> str:
        if self.client.asynchronous:
            return f"<code>Job {html.escape(self.id)}</code>"
        return html_table([self.client.status(self.id)])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def status(self) -> Any:
        """The job's record; see :meth:`BatchClient.status`."""
        return self.client.status(self.id)

    def result(self, timeout: float | str | None = None, progress: bool = False) -> Any:
        """The value main returned; see :meth:`BatchClient.result`."""
        return self.client.result(self.id, timeout=timeout, progress=progress)

    def wait(self, timeout: float | str | None = None, progress: bool = False) -> Any:
        """Wait for the job to end; see :meth:`BatchClient.wait`."""
        return self.client.wait(self.id, timeout=timeout, progress=progress)

    def logs(self, *, follow: bool = False) -> Any:
        """Captured output of main; see :meth:`BatchClient.logs`."""
        return self.client.logs(self.id, follow=follow)

    def artifacts(self) -> Any:
        """Files main stored as artifacts; see :meth:`BatchClient.artifacts`."""
        return self.client.artifacts(self.id)

    def download_artifacts(self, destination: str | os.PathLike[str]) -> Any:
        """Download the artifacts; see :meth:`BatchClient.download_artifacts`."""
        return self.client.download_artifacts(self.id, destination)

    def cancel(self) -> Any:
        """Stop the job and its cluster; see :meth:`BatchClient.cancel`."""
        return self.client.cancel(self.id)
