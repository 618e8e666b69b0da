"""What ``secrets.bin`` holds: env values for main and the job key, encrypted.

The client seals them with the job's env key (see :mod:`dask_batch.core.signing`);
the env key never goes to storage (it travels in the cluster request, or over
the scheduler's TLS connection), and main's process opens them. Shared by
client and main's process: imports neither.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from dask_batch.core import signing as _signing

#: The env value that carries a Ploomber project's key (which signs its
#: stored products) to the job's main and tasks, sealed like any env value.
PLOOMBER_KEY_ENV = "DASK_BATCH_PLOOMBER_KEY"


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
    schedule : str
        Set in a schedule's own secrets (its id). A service that fires the
        schedule without being able to open them copies them to each run,
        and the run's key derives from ``job_key`` (see :func:`for_job`).
    """

    env: dict[str, str] = field(default_factory=dict)
    job_key: str = field(default="", repr=False)
    upstream_keys: dict[str, str] = field(default_factory=dict, repr=False)
    schedule: str = ""


def seal(secrets: JobSecrets, env_key: str) -> bytes:
    """Encrypt ``secrets`` with the job's env key."""
    from cryptography.fernet import Fernet

    document = {
        "env": secrets.env,
        "job_key": secrets.job_key,
        "upstream_keys": secrets.upstream_keys,
    }
    if secrets.schedule:
        document["schedule"] = secrets.schedule
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
        schedule=str(document.get("schedule") or ""),
    )


def for_job(secrets: JobSecrets, job_id: str, env_key: str) -> JobSecrets:
    """``secrets`` as job ``job_id`` uses them.

    A schedule's own secrets, copied to one of its runs by a service that
    cannot open them, give the run's env values and the run's key, derived
    from the schedule's and bound to the run's id (as the owner's client
    derives it to check the run's result). Any other secrets are the job's.
    """
    if not secrets.schedule or secrets.schedule == job_id:
        return secrets
    keys = _signing.run_keys(_signing.JobKeys(secrets.job_key, env_key), job_id)
    return JobSecrets(secrets.env, keys.job_key, schedule="")
