"""The job's spec, as its submitter signed it, and its decrypted secrets."""

from __future__ import annotations

from typing import Any

import dask.config

from dask_batch.core import secrets as _secrets
from dask_batch.core import signing as _signing
from dask_batch.core.exceptions import ResultIntegrityError
from dask_batch.core.runner_key import is_sealed, open_env_key
from dask_batch.storage.store import SECRETS, SPEC, JobStore


def read_signed_spec(
    store: JobStore, user: str, job_id: str, env_key: str
) -> tuple[dict[str, Any], _secrets.JobSecrets]:
    """The job's spec, refused unless the submitter's job key signed it.

    The job key comes from ``secrets.bin``, opened with the env key the
    submitter sent; so scaling, the time limit and the memory limit are the
    submitter's, whoever can write the storage.
    """
    spec = store.get_json(user, job_id, SPEC)
    secrets = _secrets.unseal(env_key, store.get(user, job_id, SECRETS))
    secrets = _secrets.for_job(secrets, job_id, env_key)
    if not isinstance(spec, dict) or not _signing.spec_is_signed(secrets.job_key, spec):
        raise ResultIntegrityError(
            f"the spec of job {job_id!r} is not signed with its key: it "
            "was changed in storage. Submit the job again.",
            job_id=job_id,
        )
    return spec, secrets


def unsealed(value: str) -> str:
    """An env key as the gateway carries it, opened with the runner key
    (``batch.runner.key-file``) when it was sealed to one: by the job's
    scheduler, or by a service beside the gateway that reads the key.

    Raises OSError or ValueError when it cannot be opened here.
    """
    if not is_sealed(value):
        return value
    path = dask.config.get("batch.runner.key-file", None)
    if not path:
        raise ValueError("the env key is sealed and no runner key is configured")
    with open(str(path), "rb") as f:
        return open_env_key(f.read(), value)
