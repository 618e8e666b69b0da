"""The job's secret values: env values for main and the result key, encrypted.

The client seals them into ``secrets.bin`` with a fresh Fernet key per job;
the key itself never goes to storage (it travels in the cluster request, or
over the scheduler's TLS connection), and main's process opens them. Shared
by client and main's process: imports neither.
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
    result_key : str or None
        ``batch.result-key``, with which main's process signs the result.
    """

    env: dict[str, str] = field(default_factory=dict)
    result_key: str | None = None

    def __bool__(self) -> bool:
        return bool(self.env or self.result_key)


def seal(secrets: JobSecrets) -> tuple[str, bytes]:
    """Encrypt ``secrets`` with a new key; return the key and the token."""
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    document = {"env": secrets.env, "result_key": secrets.result_key}
    return key, Fernet(key).encrypt(json.dumps(document).encode())


def unseal(key: str, token: bytes) -> JobSecrets:
    """Decrypt what :func:`seal` made; raises if the key or token is wrong."""
    from cryptography.fernet import Fernet

    document = json.loads(Fernet(key).decrypt(token))
    return JobSecrets(
        env={str(k): str(v) for k, v in dict(document.get("env") or {}).items()},
        result_key=document.get("result_key"),
    )
