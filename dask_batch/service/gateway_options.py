"""The gateway side of dask-batch: batch jobs as cluster options.

Loaded by the gateway process through :mod:`dask_batch.gateway_config`;
imports only :mod:`dask_batch.core` and ``dask-gateway-server``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dask_gateway_server.options import Field, Options, Select, String

from dask_batch.core.cluster_env import (
    ENV_DIGEST,
    ENV_JOB_ID,
    ENV_RUNNER_KEY_FILE,
    ENV_SECRET_KEY,
    ENV_STORAGE,
    ENV_STORAGE_OPTIONS,
    ENV_USER,
    USER_OPTION,
)
from dask_batch.core.names import JOB_ID
from dask_batch.core.runner_key import (
    RUNNER_KEY_OPTION,
    is_sealed,
    new_private_key,
    public_key_text,
)

__all__ = [
    "BATCH_OPTION_FIELDS",
    "USER_OPTION",
    "WorkerEnvironmentWithoutJobKeys",
    "batch_cluster_options",
    "storage_options_table",
    "write_runner_key",
]

#: ``storage_options(user_name, storage) -> fsspec storage options``
StorageOptionsHook = Callable[[str, str], Mapping[str, Any]]

#: The cluster options dask-batch sets when it submits a job in server-side mode.
BATCH_OPTION_FIELDS = (
    "batch_job_id",
    "batch_storage",
    "batch_payload_digest",
    "batch_secret_key",
)

_JOB_ENV = frozenset({ENV_JOB_ID, ENV_STORAGE, ENV_USER, ENV_DIGEST, ENV_SECRET_KEY})


def batch_cluster_options(
    *fields: Field,
    allowed_storage: Sequence[str] | None,
    storage_options: StorageOptionsHook | None = None,
    handler: Callable[..., dict[str, Any]] | None = None,
    environment: dict[str, str] | None = None,
    runner_key_file: str | None = None,
) -> Callable[[Any], Options]:
    """Cluster options that let dask-batch start jobs on the scheduler.

    Parameters
    ----------
    *fields : dask_gateway_server.options.Field
        The deployment's own options, offered as before.
    allowed_storage : list of str, or None
        Required. Storage roots jobs may use (a job's storage must be one of
        them or below one). A request for any other is refused by the
        gateway, so a user cannot point a scheduler at a prefix its
        credentials should not write. None allows any root: only for a
        gateway with a single user, such as the embedded local one.
    storage_options : callable, optional
        ``storage_options(user_name, storage)`` returns the fsspec storage
        options that a job of this authenticated user gets (credentials
        that reach only ``{storage}/{user_name}/``: an STS session, a
        downscoped token). They reach the job's scheduler, workers and main
        as ``batch.storage-options`` (``DASK_BATCH__STORAGE_OPTIONS``) and
        replace any the deployment or the user set. Without it, every job
        uses the scheduler's own credentials (one identity for all users).
    handler : callable, optional
        The deployment's own ``handler(options)`` or ``handler(options, user)``;
        its result is kept, and the batch variables are added to its
        ``environment``.
    environment : dict, optional
        Environment for every scheduler and worker. A handler that returns
        ``environment`` replaces ``c.ClusterConfig.environment`` (that is how
        dask-gateway merges handler results), so give the base environment
        here instead of there.
    runner_key_file : str, optional
        A runner key (:func:`write_runner_key` makes one):
        a file that the gateway and its schedulers can read, and users
        cannot (a secret mounted in scheduler pods, a file on the host).
        Clients then send each job's env key sealed to its public half, so
        the gateway's database, API and logs never hold it in plaintext;
        only the job's scheduler opens it. Without it, the env key travels
        as given.

    Returns
    -------
    callable
        ``cluster_options(user) -> Options``, as ``c.Backend.cluster_options``
        takes it. Besides the fields above it offers ``batch_user``: a choice
        of one, the authenticated user's name, which is how clients learn
        whose records to file and read (with any auth type), and which no
        request can set to another name.

    Examples
    --------
    >>> c.Backend.cluster_options = batch_cluster_options(  # doctest: +SKIP
    ...     allowed_storage=["s3://my-bucket/batch-jobs"],
    ...     storage_options=mint_user_credentials,
    ... )
    """
    base_environment = dict(environment or {})
    runner_public = _runner_public(runner_key_file, base_environment)
    own_handler = Options(handler=handler).handler if handler else None
    allowed = [s.rstrip("/") for s in allowed_storage] if allowed_storage else None
    if allowed_storage is not None and not allowed:
        raise ValueError("allowed_storage is empty: name the storage roots of jobs")

    def batch_handler(options: Any, user: Any) -> dict[str, Any]:
        out = dict(own_handler(options, user)) if own_handler else {}
        merged = {**base_environment, **(out.get("environment") or {})}
        # Only this handler may set the job variables: a user-controlled
        # environment option must not name another user or job.
        environment = {k: v for k, v in merged.items() if k not in _JOB_ENV}
        if options.batch_job_id:
            if runner_public and not is_sealed(options.batch_secret_key):
                raise ValueError(
                    f"batch job {options.batch_job_id!r}: this gateway takes the "
                    "env key only sealed to its runner key; upgrade dask-batch "
                    "on the client"
                )
            environment.update(_job_environment(options, user.name, allowed))
            if storage_options is not None:
                environment[ENV_STORAGE_OPTIONS] = _minted(
                    storage_options, user.name, environment[ENV_STORAGE]
                )
        out["environment"] = environment
        return out

    def options_for(user: Any) -> Options:
        return Options(
            *fields,
            Select(
                USER_OPTION, [user.name], label="dask-batch user (set by the gateway)"
            ),
            String("batch_job_id", "", label="dask-batch job id"),
            String("batch_storage", "", label="dask-batch storage root"),
            String("batch_payload_digest", "", label="dask-batch payload signature"),
            String(
                "batch_secret_key", "", label="dask-batch key of the job's env values"
            ),
            *(
                [
                    Select(
                        RUNNER_KEY_OPTION,
                        [runner_public],
                        label="dask-batch runner key",
                    )
                ]
                if runner_public
                else []
            ),
            handler=batch_handler,
        )

    return options_for


def _runner_public(key_file: str | None, environment: dict[str, str]) -> str:
    """The runner key's public half ("" without one); its path goes into
    ``environment``, for the schedulers."""
    if not key_file:
        return ""
    with open(key_file, "rb") as f:
        public = public_key_text(f.read())
    environment[ENV_RUNNER_KEY_FILE] = key_file
    return public


def _job_environment(
    options: Any, user_name: str, allowed: list[str] | None
) -> dict[str, str]:
    """The preload's variables for a batch job, after checking the request."""
    job_id = options.batch_job_id
    if not JOB_ID.match(job_id):
        raise ValueError(f"batch_job_id {job_id!r} is not a dask-batch job id")
    storage = options.batch_storage.rstrip("/")
    if not storage:
        raise ValueError(f"batch job {job_id!r} needs batch_storage")
    within = allowed is None or any(
        storage == root or storage.startswith(root + "/") for root in allowed
    )
    if not within:
        raise ValueError(
            f"batch job {job_id!r}: storage {storage!r} is not allowed on this "
            f"gateway; use one of {allowed} (or a prefix below one)"
        )
    return {
        ENV_JOB_ID: job_id,
        ENV_STORAGE: storage,
        ENV_USER: user_name,
        ENV_DIGEST: options.batch_payload_digest,
        ENV_SECRET_KEY: options.batch_secret_key,
    }


def _minted(hook: StorageOptionsHook, user_name: str, storage: str) -> str:
    """The user's storage options, as dask config reads them from the environment."""
    try:
        minted = dict(hook(user_name, storage))
    except Exception as exc:
        # The hook's message may quote credentials: only its type is told.
        raise ValueError(
            f"could not get storage credentials for user {user_name!r} "
            f"({type(exc).__name__}); ask the gateway's admins"
        ) from None
    return repr(minted)


def write_runner_key(path: str) -> str:
    """Make a gateway's runner key at ``path`` (mode 0600; never replaced).

    Give it to ``batch_cluster_options(runner_key_file=...)``, and make it
    readable where job schedulers run (a Kubernetes secret mounted in the
    scheduler pods) and by the hub service; keep it from users. Returns the
    public half, which the gateway offers to clients.

    Examples
    --------
    >>> write_runner_key("/etc/dask-batch/runner-key.pem")   # doctest: +SKIP
    'x25519:...'
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    pem = new_private_key()
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return public_key_text(pem)


def storage_options_table(table: Mapping[str, Mapping[str, Any]]) -> StorageOptionsHook:
    """A ``storage_options`` hook from a fixed ``{user name: options}`` table.

    For small deployments and tests; a user missing from the table gets no
    batch jobs. Real deployments mint short-lived credentials instead (see
    the admin guide's recipes).
    """
    frozen = {user: dict(options) for user, options in table.items()}

    def storage_options(user_name: str, storage: str) -> Mapping[str, Any]:
        return frozen[user_name]

    return storage_options


class WorkerEnvironmentWithoutJobKeys:
    """A backend mixin: workers do not get the job's env key.

    dask-gateway gives a cluster's ``environment`` to its scheduler and its
    workers alike; only the scheduler (the preload) needs the key of the
    job's ``secrets.bin``. Put it before the backend class::

        class BatchSlurmBackend(WorkerEnvironmentWithoutJobKeys, SlurmBackend):
            pass

        c.DaskGateway.backend_class = BatchSlurmBackend

    For backends that build each worker's environment with
    ``get_worker_env(cluster)`` (the local, jobqueue and YARN backends); the
    Kubernetes controller builds one environment for both.
    """

    def get_worker_env(self, cluster: Any) -> dict[str, str]:
        env = dict(super().get_worker_env(cluster))  # type: ignore[misc]
        env.pop(ENV_SECRET_KEY, None)
        return env
