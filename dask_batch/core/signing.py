"""Keys that make a job's stored bytes trustworthy to the user who submitted it.

Anyone who can write the job storage (another user on a shared bucket, a
job's own main in server-side mode) can rewrite any object in it, so nothing
read from storage is unpickled on the strength of storage permissions:

- Each user has a **secret**: ``batch.result-key`` if set, else 32 random
  bytes in ``<config dir>/dask-batch/secret`` (mode 0600), made on first
  submit. It never leaves the user's machines (``dask batch secret export``
  and ``import`` copy it between them).
- Per job, two keys are derived from it and the job id: the **job key**, which
  signs the payload, the spec and (in main's process) the result, and the
  **env key**, which encrypts ``secrets.bin`` (env values and the job key).
  Being bound to the job id, a signature copied from another job, or from an
  older job, does not verify.
- Only the env key travels to the job's scheduler (in a cluster option or
  over the scheduler's TLS connection); main's process decrypts the job key
  from ``secrets.bin``.

Shared by client and main's process: imports neither.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask.config

from dask_batch.core.exceptions import MissingSecretError, ResultIntegrityError
from dask_batch.core.pickling import load_pickle

SIGNATURE_PREFIX = "hmac-sha256:"


def secret_path() -> str:
    """Where the user's secret is kept: ``batch.secret-file`` or the config dir."""
    configured = dask.config.get("batch.secret-file", None)
    if configured:
        return os.path.abspath(os.path.expanduser(str(configured)))
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(
        os.path.expanduser("~"), ".config"
    )
    return os.path.join(base, "dask-batch", "secret")


def _bring_it(job_id: str | None) -> str:
    about = f"job {job_id!r}" if job_id else "this job"
    return (
        f"Copy it from the machine that submitted {about}: run `dask batch secret "
        "export` there and `dask batch secret import` here (or set the same "
        "`batch.result-key` on both)."
    )


def user_secret(*, create: bool = False, job_id: str | None = None) -> bytes:
    """The user's secret; made on first use when ``create`` (at submit).

    Raises MissingSecretError when there is none and ``create`` is False.
    """
    configured = dask.config.get("batch.result-key", None)
    if configured:
        return str(configured).encode()
    path = secret_path()
    try:
        with open(path) as f:
            return bytes.fromhex(f.read().strip())
    except (FileNotFoundError, NotADirectoryError):
        if not create:
            raise MissingSecretError(
                f"No dask-batch secret on this machine ({path}), so nothing "
                f"stored for {'job ' + repr(job_id) if job_id else 'a job'} can be "
                f"checked or loaded. {_bring_it(job_id)}",
                job_id=job_id,
            ) from None
    except ValueError:
        raise MissingSecretError(
            f"The dask-batch secret in {path} is damaged. {_bring_it(job_id)}",
            job_id=job_id,
        ) from None
    try:
        return write_secret(os.urandom(32).hex(), exclusive=True)
    except OSError as exc:
        raise MissingSecretError(
            f"Cannot make your dask-batch secret at {path} ({exc.strerror or exc}): "
            "set `batch.secret-file` to a private, writable path, or "
            "`batch.result-key` to a secret of your own.",
            job_id=job_id,
        ) from exc


def write_secret(text: str, *, exclusive: bool = False) -> bytes:
    """Store ``text`` (hex) as the user's secret, readable by the user alone."""
    secret = bytes.fromhex(text.strip())
    if len(secret) < 16:
        raise ValueError("a dask-batch secret has at least 16 bytes (32 hex digits)")
    path = secret_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex() + "\n")
    if exclusive:
        try:
            os.link(tmp, path)  # two first submits at once: one secret wins
        except FileExistsError:
            os.remove(tmp)
            return user_secret()
        os.remove(tmp)
    else:
        os.replace(tmp, path)
    return secret


@dataclass(frozen=True)
class JobKeys:
    """The keys of one job, derived from the user's secret and the job id.

    Attributes
    ----------
    job_key : str
        Signs the payload, the spec and the result (hex).
    env_key : str
        The Fernet key of ``secrets.bin``.
    """

    job_key: str
    env_key: str

    def __repr__(self) -> str:
        return "JobKeys(...)"


def _derive(secret: bytes, purpose: str, job_id: str) -> bytes:
    label = f"dask-batch/v1/{purpose}/{job_id}".encode()
    return hmac.new(secret, label, hashlib.sha256).digest()


def job_keys(secret: bytes, job_id: str) -> JobKeys:
    """The keys of ``job_id`` for the holder of ``secret``."""
    return JobKeys(
        job_key=_derive(secret, "job", job_id).hex(),
        env_key=base64.urlsafe_b64encode(_derive(secret, "env", job_id)).decode(),
    )


def project_key(secret: bytes, project: str) -> str:
    """The key that signs a Ploomber project's stored products (hex).

    The same for every job of the project, so that a later job checks what
    an earlier one stored; bound to the project's name.
    """
    return _derive(secret, "ploomber-project", project).hex()


def run_keys(schedule: JobKeys, job_id: str) -> JobKeys:
    """The keys of a schedule's run ``job_id``, from the schedule's keys.

    A service to which the owner delegated a schedule (its env key, which
    opens the schedule's job key) signs the runs it submits with these: bound
    to the run's id, so a run's signature never verifies for another job.
    """
    label = f"dask-batch/v1/run/{job_id}".encode()
    key = hmac.new(bytes.fromhex(schedule.job_key), label, hashlib.sha256).hexdigest()
    return JobKeys(job_key=key, env_key=schedule.env_key)


def shard_key(job_key: str, shard: int) -> str:
    """The key that signs the values of one shard of an array job.

    Bound to the shard's number: values copied from one shard's place to
    another's never verify, so no value is taken for another element's.
    """
    label = f"dask-batch/v1/shard/{int(shard)}".encode()
    return hmac.new(bytes.fromhex(job_key), label, hashlib.sha256).hexdigest()


def keys_for(secret: bytes, job_id: str, keys_from: str = "") -> JobKeys:
    """A job's keys: its own, or those of the schedule run it is (``keys_from``)."""
    if keys_from:
        return run_keys(job_keys(secret, keys_from), job_id)
    return job_keys(secret, job_id)


def sign(key: str, data: bytes) -> str:
    """The signature of ``data`` with a job key."""
    mac = hmac.new(bytes.fromhex(key), data, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + mac


def canonical(document: dict[str, Any]) -> bytes:
    """The bytes of a JSON document that its signature covers."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def sign_spec(key: str, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with a ``signature`` over everything else in it."""
    body = {k: v for k, v in spec.items() if k != "signature"}
    return {**body, "signature": sign(key, canonical(body))}


def spec_is_signed(key: str, spec: dict[str, Any]) -> bool:
    """Whether ``spec`` carries a valid signature with ``key``."""
    body = {k: v for k, v in spec.items() if k != "signature"}
    expected = sign(key, canonical(body))
    return hmac.compare_digest(str(spec.get("signature", "")), expected)


def loads_verified(
    job_id: str,
    what: str,
    data: bytes,
    signature: str,
    expected: str,
    buffers: Sequence[Any] = (),
) -> Any:
    """Unpickle ``data`` only if its ``signature`` is the ``expected`` one.

    ``signature`` is computed here, by the caller, with this job's key (which
    only the holder of the user's secret, or main's process, has);
    ``expected`` is the one recorded in storage. On the client and in main's
    process alike, bytes from storage are unpickled here and nowhere else.
    """
    if not expected or not hmac.compare_digest(signature, expected):
        raise ResultIntegrityError(
            f"The stored {what} of job {job_id!r} is not signed with this "
            "job's key: it was changed or copied in storage, or it was stored "
            "by another user. Not loading it.",
            job_id=job_id,
        )
    return _unpickle(data, buffers)


def load_signed_result(
    store: Any,
    user: str,
    job_id: str,
    job_key: str,
    *,
    name: str,
    digest: str | None,
    signature: str,
    what: str,
) -> Any:
    """Read a stored result (or a task's, at ``name``), check it, load it.

    Its bytes must hash to ``digest`` (None: a record from before digests
    were kept, checked by its signature alone) and carry ``signature`` with
    ``job_key``; a result that fails either is never unpickled. ``store`` is
    a :class:`~dask_batch.storage.store.JobStore`.
    """
    stream, buffers, found, computed = store.get_result(
        user, job_id, job_key, name=name
    )
    if digest is not None and found != digest:
        raise changed_in_storage(job_id)
    return loads_verified(job_id, what, stream, computed, signature, buffers)


def unsigned_result(job_id: str) -> ResultIntegrityError:
    """The error for a result whose record carries no signature."""
    return ResultIntegrityError(
        f"The result of job {job_id!r} carries no signature, so it is not "
        "loaded. Results are signed by every dask-batch release; an unsigned "
        "one was stored by a pre-release dask-batch, or its record was changed "
        "in storage. If you trust that job, run it again "
        f"(`dask batch status {job_id}` shows what it ran) and load the new "
        "job's result.",
        job_id=job_id,
    )


def changed_in_storage(job_id: str) -> ResultIntegrityError:
    """The error for a result whose bytes differ from its recorded digest."""
    return ResultIntegrityError(
        f"The stored result of job {job_id!r} does not match the digest its "
        "runner recorded: it was changed in storage. Not loading it.",
        job_id=job_id,
    )


def _unpickle(data: bytes, buffers: Sequence[Any]) -> Any:
    # Reached only through the signature check of loads_verified.
    return load_pickle(data, buffers)
