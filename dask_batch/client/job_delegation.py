"""Waiting jobs handed to a service that holds no user's secret.

When ``batch.service.url`` is set, a client that submits a job waiting for
others sends the job's env key to the hub service over its authenticated API
(as it does for schedules). The service checks that the key is that job's,
keeps it sealed with its own key beside the job (``service.bin``), and with
it starts the job once its upstream jobs SUCCEEDED, whether or not the
gateway still remembers their clusters. The new scheduler checks the job's
signed spec before main runs, as for any start.
"""

from __future__ import annotations

import json
from typing import Any

from dask_batch.core import secrets as _secrets
from dask_batch.core import signing as _signing
from dask_batch.core.exceptions import DaskBatchError
from dask_batch.storage.store import SECRETS, SPEC, JobStore

SEALED = "service.bin"


class JobDelegation:
    """The service's side: take a job's env key, and open it again.

    Parameters
    ----------
    key : str
        The service's Fernet key (the one it seals schedules with).
    """

    def __init__(self, key: str) -> None:
        from cryptography.fernet import Fernet

        self._fernet = Fernet(key)

    def accept(self, store: JobStore, user: str, job_id: str, env_key: str) -> None:
        """Keep ``env_key`` for ``job_id`` once it proves to be that job's.

        It must open the job's sealed secrets, and the job key inside must
        verify the job's signed spec: a key for anything else is refused.
        """
        try:
            secrets = _secrets.unseal(env_key, store.get(user, job_id, SECRETS))
            spec = store.get_json(user, job_id, SPEC)
        except Exception as exc:
            raise DaskBatchError(
                f"the key sent for job {job_id!r} does not open its secrets "
                f"({type(exc).__name__}); nothing was kept.",
                job_id=job_id,
            ) from None
        if not isinstance(spec, dict) or not _signing.spec_is_signed(
            secrets.job_key, spec
        ):
            raise DaskBatchError(
                f"job {job_id!r} is not signed with the key sent for it; "
                "nothing was kept.",
                job_id=job_id,
            )
        document = {"user": user, "job": job_id, "env_key": env_key}
        store.put(
            user, job_id, SEALED, self._fernet.encrypt(json.dumps(document).encode())
        )

    def env_key(self, store: JobStore, user: str, job_id: str) -> str | None:
        """The env key handed over for ``job_id`` (None: none, or not this job's)."""
        try:
            document: Any = json.loads(
                self._fernet.decrypt(store.get(user, job_id, SEALED))
            )
        except FileNotFoundError:
            return None
        except Exception:
            return None  # not sealed by this service: the gateway's way is tried
        if (
            not isinstance(document, dict)
            or document.get("user") != user
            or document.get("job") != job_id
        ):
            return None  # copied from another job or user in storage
        return str(document.get("env_key") or "") or None
