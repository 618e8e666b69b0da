"""Run an ended job again from what it stored: ``resubmit``.

A new job gets the earlier one's payload, files, env values and options,
each checked with the earlier job's key first (its spec is signed, its
payload's signature is in that spec, its env values are sealed), so a
resubmit runs what its owner submitted, whoever can write the storage.
Nothing is unpickled here. With ``failed_only``, an array's new run takes
over the elements that succeeded (its main reads them, checked with the
earlier job's key), and a pipeline's takes over its succeeded steps, as
``resume=`` does.
"""

from __future__ import annotations

import hmac
from typing import Any

from dask_batch.client.submission import Submission
from dask_batch.core import secrets as _secrets
from dask_batch.core import signing as _signing
from dask_batch.core.exceptions import ResultIntegrityError, SubmitError
from dask_batch.core.records import JobRecord
from dask_batch.storage.store import FILES, PAYLOAD, SECRETS, SPEC, JobStore

__all__: list[str] = []

# What a spec gets at launch, or says of one run only: never carried over.
_NOT_CARRIED = (
    "signature",
    "payload_signature",
    "submitted",
    "gateway_address",
    "mode",
    "has_secrets",
    "mlflow",
    "after",
    "upstream_values",
    "idempotency_key",
    "schedule",
    "keys_from",
    "reuses",
)


def _changed(earlier: str, what: str) -> ResultIntegrityError:
    return ResultIntegrityError(
        f"the {what} of job {earlier!r} does not verify with its key: it was "
        "changed in storage, so it is not run again. Submit the job anew.",
        job_id=earlier,
    )


def resubmission(
    store: JobStore,
    user: str,
    record: JobRecord,
    job_id: str,
    *,
    failed_only: bool,
) -> Submission:
    """The new job ``job_id`` that runs ``record``'s job again; an array's
    spec names the earlier job whose succeeded elements it takes over
    (``reuses``)."""
    earlier = record.id
    if not record.state.is_terminal:
        raise SubmitError.not_submitted(
            job_id,
            f"job {earlier!r} is {record.state.value}: resubmit it once it has "
            f"ended, or cancel it first (dask batch cancel {earlier}).",
        )
    secret = _signing.user_secret(job_id=earlier)
    keys = _signing.keys_for(secret, earlier, record.keys_from)
    spec = store.get_json(user, earlier, SPEC)
    if not isinstance(spec, dict) or not _signing.spec_is_signed(keys.job_key, spec):
        raise _changed(earlier, "spec")
    payload = store.get(user, earlier, PAYLOAD)
    expected = _signing.sign(keys.job_key, payload)
    if not hmac.compare_digest(expected, str(spec.get("payload_signature", ""))):
        raise _changed(earlier, "payload")
    env: dict[str, str] = {}
    if spec.get("has_secrets"):
        try:
            sealed = store.get(user, earlier, SECRETS)
            env = dict(_secrets.unseal(keys.env_key, sealed).env)
        except Exception:
            raise _changed(earlier, "sealed env values") from None
    archive = store.get(user, earlier, FILES) if spec.get("files_bytes") else b""
    new: dict[str, Any] = {k: v for k, v in spec.items() if k not in _NOT_CARRIED}
    new["id"] = job_id
    if failed_only and "array" in spec:
        new["reuses"] = earlier
    return Submission(job_id, new, payload, env, archive)
