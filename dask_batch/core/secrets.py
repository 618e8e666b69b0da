"""What ``secrets.bin`` holds: env values for main and the job key, encrypted.

The client seals them with the job's env key (see :mod:`dask_batch.core.signing`);
the env key never goes to storage (it travels in the cluster request, or over
the scheduler's TLS connection), and main's process opens them. Shared by
client and main's process: imports neither.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True)
class JobSecrets:
    """What ``secrets.bin`` holds.

    Attributes
    ----------
    env : dict of str to str
        Environment variables for main.
    job_key : str
        The job's signing key: main's process checks the payload with it and
        signs the result.
    upstream_keys : dict of str to str
        The job keys of the jobs whose results main takes as arguments, by
        job id: main's process checks those results with them.
    """

    env: dict[str, str] = field(default_factory=dict)
    job_key: str = field(default="", repr=False)
    upstream_keys: dict[str, str] = field(default_factory=dict, repr=False)


def seal(secrets: JobSecrets, env_key: str) -> bytes:
    """Encrypt ``secrets`` with the job's env key."""
    from cryptography.fernet import Fernet

    document = {
        "env": secrets.env,
        "job_key": secrets.job_key,
        "upstream_keys": secrets.upstream_keys,
    }
    return Fernet(env_key).encrypt(json.dumps(document).encode())


def unseal(env_key: str, token: bytes) -> JobSecrets:
    """Decrypt what :func:`seal` made; raises if the key or token is wrong."""
    from cryptography.fernet import Fernet

    document = json.loads(Fernet(env_key).decrypt(token))
    return JobSecrets(
        env={str(k): str(v) for k, v in dict(document.get("env") or {}).items()},
        job_key=str(document.get("job_key") or ""),
        upstream_keys={
            str(k): str(v) for k, v in dict(document.get("upstream_keys") or {}).items()
        },
    )
