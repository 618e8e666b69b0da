"""jupyter-scheduler's job files manager: downloads from the job storage."""

from __future__ import annotations

from typing import Any

from jupyter_scheduler.job_files_manager import JobFilesManager


class ArtifactFiles(JobFilesManager):
    """ "Download" of a Notebook Job: its outputs from dask-batch's storage.

    Unlike the stock manager (a process that writes in the background and
    drops errors), the files are in place when the request answers, and a
    failure is the request's error, with its message.
    """

    async def copy_from_staging(self, job_id: str, redownload: Any = False) -> None:
        redo = str(redownload).lower() not in ("", "false", "0", "none")
        await self.scheduler.download(job_id, redo)
