"""Helpers for gateway admins: expose batch jobs as cluster options.

Used in ``dask_gateway_config.py`` (or the Helm chart's ``extraConfig``)::

    from dask_batch.gateway_config import batch_cluster_options
    from dask_gateway_server.options import Integer

    c.Backend.cluster_options = batch_cluster_options(
        Integer("worker_cores", 1, min=1, max=4),
        handler=lambda options, user: {"worker_cores": options.worker_cores},
        allowed_storage=["s3://my-bucket/batch-jobs"],
    )

Requires ``dask-gateway-server``; imported only by the gateway process.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from dask_gateway_server.options import Field, Options, String

from .preload import ENV_DIGEST, ENV_JOB_ID, ENV_SECRET_KEY, ENV_STORAGE, ENV_USER

__all__ = ["BATCH_OPTION_FIELDS", "batch_cluster_options"]

#: The cluster options dask-batch sets when it submits a job in server-side mode.
BATCH_OPTION_FIELDS = (
    "batch_job_id",
    "batch_storage",
    "batch_payload_digest",
    "batch_secret_key",
)

_JOB_ENV = frozenset({ENV_JOB_ID, ENV_STORAGE, ENV_USER, ENV_DIGEST, ENV_SECRET_KEY})
_JOB_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9]{3}-[0-9a-f]{8}$")


def batch_cluster_options(
    *fields: Field,
    handler: Callable[..., dict[str, Any]] | None = None,
    allowed_storage: Sequence[str] | None = None,
    environment: dict[str, str] | None = None,
) -> Options:
    """Cluster options that let dask-batch start jobs on the scheduler.

    Parameters
    ----------
    *fields : dask_gateway_server.options.Field
        The deployment's own options, offered as before.
    handler : callable, optional
        The deployment's own ``handler(options)`` or ``handler(options, user)``;
        its result is kept, and the batch variables are added to its
        ``environment``.
    allowed_storage : list of str, optional
        Storage roots jobs may use. A request for any other is refused by the
        gateway (so a user cannot point a scheduler at a prefix its
        credentials should not write). Default: any.
    environment : dict, optional
        Environment for every scheduler and worker. A handler that returns
        ``environment`` replaces ``c.ClusterConfig.environment`` (that is how
        dask-gateway merges handler results), so give the base environment
        here instead of there.

    Returns
    -------
    dask_gateway_server.options.Options

    Examples
    --------
    >>> c.Backend.cluster_options = batch_cluster_options()  # doctest: +SKIP
    """
    base_environment = dict(environment or {})
    own_handler = Options(handler=handler).handler if handler else None
    allowed = [s.rstrip("/") for s in allowed_storage] if allowed_storage else None

    def batch_handler(options: Any, user: Any) -> dict[str, Any]:
        out = dict(own_handler(options, user)) if own_handler else {}
        merged = {**base_environment, **(out.get("environment") or {})}
        # Only this handler may set the job variables: a user-controlled
        # environment option must not name another user or job.
        environment = {k: v for k, v in merged.items() if k not in _JOB_ENV}
        job_id = options.batch_job_id
        if job_id:
            if not _JOB_ID.match(job_id):
                raise ValueError(f"batch_job_id {job_id!r} is not a dask-batch job id")
            storage = options.batch_storage.rstrip("/")
            if not storage:
                raise ValueError(f"batch job {job_id!r} needs batch_storage")
            if allowed is not None and storage not in allowed:
                raise ValueError(
                    f"batch job {job_id!r}: storage {storage!r} is not allowed "
                    f"on this gateway; use one of {allowed}"
                )
            environment.update(
                {
                    ENV_JOB_ID: job_id,
                    ENV_STORAGE: storage,
                    ENV_USER: user.name,
                    ENV_DIGEST: options.batch_payload_digest,
                    ENV_SECRET_KEY: options.batch_secret_key,
                }
            )
        out["environment"] = environment
        return out

    return Options(
        *fields,
        String("batch_job_id", "", label="dask-batch job id"),
        String("batch_storage", "", label="dask-batch storage root"),
        String("batch_payload_digest", "", label="dask-batch payload digest"),
        String("batch_secret_key", "", label="dask-batch key of the job's env values"),
        handler=batch_handler,
    )
