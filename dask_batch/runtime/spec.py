"""The job's spec, as its submitter signed it, and its decrypted secrets."""

from __future__ import annotations

from typing import Any

from dask_batch.core import secrets as _secrets
from dask_batch.core import signing as _signing
from dask_batch.core.exceptions import ResultIntegrityError
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
    if not isinstance(spec, dict) or not _signing.spec_is_signed(secrets.job_key, spec):
        raise ResultIntegrityError(
            f"the spec of job {job_id!r} is not signed with its key: it "
            "was changed in storage. Submit the job again.",
            job_id=job_id,
        )
    return spec, secrets
