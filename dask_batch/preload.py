"""Server-side install: a scheduler preload that starts batch jobs by itself.

Add it to the gateway's scheduler command::

    c.ClusterConfig.scheduler_cmd = [
        "python", "-m", "distributed.cli.dask_scheduler",
        "--preload", "dask_batch.preload",
    ]

and expose the batch cluster options with
:func:`dask_batch.gateway_config.batch_cluster_options`. The options' handler
puts the job id, the storage root and the authenticated user name in the
scheduler's environment (``DASK_BATCH_JOB_ID``, ``DASK_BATCH_STORAGE``,
``DASK_BATCH_USER``); a cluster without them is an ordinary cluster and this
preload leaves it alone. Storage credentials come from the scheduler's own
environment (``batch.storage-options`` in its Dask config, or the cloud SDK's
defaults such as workload identity), never from cluster options.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import dask.config

from dask_batch import config as _config  # noqa: F401  (loads batch.* defaults)
from dask_batch.core.cluster_env import (
    ENV_DIGEST,
    ENV_JOB_ID,
    ENV_SECRET_KEY,
    ENV_STORAGE,
    ENV_USER,
)
from dask_batch.runtime import prewarm as _prewarm
from dask_batch.runtime.plugin import JobRunnerPlugin
from dask_batch.runtime.spec import unsealed

logger = logging.getLogger("distributed.scheduler.dask_batch")


# The scheduler imports its preloads when it is built, well before it
# listens and starts its plugins: main's process starts now, and its imports
# overlap the scheduler's start-up (see dask_batch.runtime.prewarm).
if os.environ.get(ENV_JOB_ID) and dask.config.get("batch.runner.start-main-early"):
    try:
        _prewarm.start(os.environ[ENV_JOB_ID])
    except Exception:
        logger.exception("dask-batch: main's process not started early")


def _env_key(job_id: str) -> str:
    """The job's env key, opened with the gateway's runner key if it came
    sealed ("" if it cannot be opened: the runner then fails the job, saying
    its secrets cannot be read)."""
    try:
        return unsealed(os.environ.get(ENV_SECRET_KEY, ""))
    except (OSError, ValueError) as exc:
        logger.error(
            "dask-batch: job %s: its env key came sealed and cannot be opened "
            "with batch.runner.key-file (%s): %s",
            job_id,
            dask.config.get("batch.runner.key-file", None),
            exc,
        )
        return ""


def dask_setup(scheduler: Any) -> None:
    # A plain function, not a click command: the gateway passes its --dg-*
    # arguments to every preload.
    job_id = os.environ.get(ENV_JOB_ID)
    if not job_id:
        return
    missing = [k for k in (ENV_STORAGE, ENV_USER) if not os.environ.get(k)]
    if missing:
        logger.error(
            "dask-batch: job %s has no %s in the scheduler environment; "
            "check the gateway's batch_cluster_options handler",
            job_id,
            ", ".join(missing),
        )
        _prewarm.discard()
        return
    plugin = JobRunnerPlugin(
        job_id=job_id,
        user=os.environ[ENV_USER],
        storage_url=os.environ[ENV_STORAGE],
        storage_options=dask.config.get("batch.storage-options") or {},
        payload_signature=os.environ.get(ENV_DIGEST, ""),
        env_key=_env_key(job_id),
    )
    # start() runs after every preload, when the gateway service exists.
    scheduler.add_plugin(plugin)
