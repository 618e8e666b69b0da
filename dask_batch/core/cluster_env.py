"""The names the gateway, the client and the job's scheduler agree on.

The gateway's options handler (:mod:`dask_batch.gateway_config`) turns a
job's cluster options into these environment variables of the scheduler,
where the preload (:mod:`dask_batch.preload`) reads them; the client reads
the user's name from :data:`USER_OPTION`.
"""

#: The option through which the gateway tells a client who it authenticated:
#: a choice of one, the user's own name, so no other name can be requested.
USER_OPTION = "batch_user"

ENV_JOB_ID = "DASK_BATCH_JOB_ID"
ENV_STORAGE = "DASK_BATCH_STORAGE"
ENV_USER = "DASK_BATCH_USER"
ENV_DIGEST = "DASK_BATCH_PAYLOAD_DIGEST"
ENV_SECRET_KEY = "DASK_BATCH_SECRET_KEY"
ENV_STORAGE_OPTIONS = "DASK_BATCH__STORAGE_OPTIONS"
#: Where the job's scheduler finds the runner key that opens a sealed env key
#: (``batch.runner.key-file``; see ``dask_batch.core.runner_key``).
ENV_RUNNER_KEY_FILE = "DASK_BATCH__RUNNER__KEY_FILE"
