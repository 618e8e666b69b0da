"""Helpers for gateway admins: expose batch jobs as cluster options.

Used in ``dask_gateway_config.py`` (or the Helm chart's ``extraConfig``)::

    from dask_batch.gateway_config import batch_cluster_options
    from dask_gateway_server.options import Integer

    c.Backend.cluster_options = batch_cluster_options(
        Integer("worker_cores", 1, min=1, max=4),
        handler=lambda options, user: {"worker_cores": options.worker_cores},
        allowed_storage=["s3://my-bucket/batch-jobs"],
        storage_options=mint_user_credentials,  # see the admin guide
        runner_key_file="/etc/dask-batch/runner-key.pem",  # write_runner_key()
    )

Requires ``dask-gateway-server``; imported only by the gateway process.
"""

from dask_batch.service.gateway_options import (
    BATCH_OPTION_FIELDS,
    USER_OPTION,
    WorkerEnvironmentWithoutJobKeys,
    batch_cluster_options,
    storage_options_table,
    write_runner_key,
)

__all__ = [
    "BATCH_OPTION_FIELDS",
    "USER_OPTION",
    "WorkerEnvironmentWithoutJobKeys",
    "batch_cluster_options",
    "storage_options_table",
    "write_runner_key",
]
