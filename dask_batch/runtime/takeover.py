"""A resumed pipeline's unchanged steps: their outputs taken over, checked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dask_batch.core.exceptions import ResultIntegrityError
from dask_batch.core.names import check_job_id
from dask_batch.core.tasks import TaskSpec
from dask_batch.runtime.taskrun import result_name
from dask_batch.storage.store import ARTIFACTS, JobStore


def take_over(
    store: JobStore,
    user: str,
    job_id: str,
    job_key: str,
    task: TaskSpec,
    local_dir: str,
    adopt_artifacts: Callable[[], None],
) -> dict[str, Any]:
    """Copy the outputs of ``task`` from the earlier job its spec names.

    The submitter checked the earlier result's signature and put its digest
    in this job's signed spec; the copy is read back and must match it, and
    is signed with this job's key. The earlier step's files are copied too,
    into storage and into ``local_dir`` for the steps below it; then
    ``adopt_artifacts`` tells the artifact sync they are stored already.
    Returns the task record's result fields.
    """
    assert task.reuse is not None
    earlier = check_job_id(task.reuse.get("job"))
    name = result_name(task.name)
    store.fs.copy(
        store.job_path(user, earlier, name), store.job_path(user, job_id, name)
    )
    _, _, found, signature = store.get_result(user, job_id, job_key, name=name)
    if found != task.reuse.get("result_digest"):
        raise ResultIntegrityError(
            f"the result of step {task.name!r} of job {earlier} changed "
            "after it was checked",
            job_id=job_id,
        )
    source = store.job_path(user, earlier, f"{ARTIFACTS}/{task.name}")
    if store.fs.exists(source):
        target = store.job_path(user, job_id, f"{ARTIFACTS}/{task.name}")
        store.fs.copy(source, target, recursive=True)
        store.fs.get(source + "/", local_dir + "/", recursive=True)
        adopt_artifacts()
    return {
        "result_digest": found,
        "result_hmac": signature,
        "result_type": str(task.reuse.get("result_type") or ""),
        "result_bytes": task.reuse.get("result_bytes"),
    }
