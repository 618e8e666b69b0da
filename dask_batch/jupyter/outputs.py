"""A Notebook Job's outputs, from the job storage into the Jupyter root.

The job keeps the executed notebook (``<name>.output.ipynb``) and the
notebook as it ran (``<name>.input.ipynb``) as artifacts. They are fetched
with dask-batch's storage options and identity, written where the stock
backend writes them, and the HTML is made here when asked for. A job run
with its folder packaged also gets its other artifacts beside them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from typing import Any

from dask_batch.core.exceptions import DaskBatchError
from dask_batch.job_service import JobService


async def download_outputs(
    service: JobService,
    job: Any,
    folder: str,
    filenames: dict[str, Any],
    redownload: bool,
) -> list[str]:
    """Write ``job``'s outputs into ``folder`` under ``filenames`` (as
    jupyter-scheduler names them); returns the paths written."""
    stem = job.input_filename[: -len(".ipynb")]
    executed, ran = f"{stem}.output.ipynb", f"{stem}.input.ipynb"
    available = await service.artifacts(job.job_id)
    if executed not in available:
        raise DaskBatchError(
            f"job {job.job_id} kept no executed notebook ({executed}): it "
            "never ran its first cell. See its log: dask batch logs "
            f"{job.job_id}",
            job_id=job.job_id,
        )
    wanted = {executed, ran} & set(available)
    if job.package_input_folder:
        wanted = set(available)
    os.makedirs(folder, exist_ok=True)
    staging = await asyncio.to_thread(tempfile.mkdtemp, dir=folder, prefix=".fetch-")
    try:
        await service.download_artifacts(job.job_id, staging, wanted)
        return await asyncio.to_thread(
            _place, staging, folder, job, filenames, executed, ran, redownload
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)


def _place(
    staging: str,
    folder: str,
    job: Any,
    filenames: dict[str, Any],
    executed: str,
    ran: str,
    redownload: bool,
) -> list[str]:
    """Move what was fetched to its place; HTML made from the executed copy."""
    written = []

    def put(source: str, name: str) -> None:
        destination = os.path.join(folder, name)
        if os.path.exists(destination) and not redownload:
            return
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        os.replace(source, destination)
        written.append(destination)

    executed_path = os.path.join(staging, executed)
    if "html" in (job.output_formats or []):
        put(_as_html(executed_path, staging), filenames["html"])
    if os.path.exists(os.path.join(staging, ran)):
        put(os.path.join(staging, ran), filenames["input"])
    put(executed_path, filenames["ipynb"])
    if job.package_input_folder:  # what the notebook made beside it
        placed = {executed, ran, ".executed.html"}
        for root, _, files in os.walk(staging):
            for name in files:
                source = os.path.join(root, name)
                relative = os.path.relpath(source, staging)
                if relative not in placed:
                    put(source, relative)
    return written


def _as_html(notebook: str, staging: str) -> str:
    import nbconvert

    body, _ = nbconvert.HTMLExporter().from_filename(notebook)
    path = os.path.join(staging, ".executed.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(body)
    return path
