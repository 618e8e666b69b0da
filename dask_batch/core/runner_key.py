"""The job's env key, sealed so that only a job's scheduler can open it.

A job's env key opens its sealed secrets (the job key, the env values). It
reaches the job's scheduler as the ``batch_secret_key`` cluster option, and
dask-gateway keeps cluster options in its database and shows them to anyone
who can list the cluster. A gateway configured with a *runner key* (an X25519
key pair whose private half only schedulers can read: a file on the gateway's
host, a secret mounted in scheduler pods) offers its public half as the
``batch_runner_key`` option; clients then send the env key sealed to it.
The gateway's database, its API and its logs see only the sealed value.

Sealing is ECIES-style: an ephemeral X25519 key agreement with the runner
key, HKDF-SHA256 over the shared secret, and Fernet (AES-128-CBC with
HMAC-SHA256) over the env key.

Shared by the client, the gateway's options and the scheduler: no I/O here.
"""

from __future__ import annotations

import base64

__all__: list[str] = []

#: The cluster option that carries the runner key's public half.
RUNNER_KEY_OPTION = "batch_runner_key"
SEALED_PREFIX = "sealed-v1:"
_INFO = b"dask-batch/v1/env-key"


def _fernet_key(shared: bytes, ephemeral_public: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    derived = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=ephemeral_public, info=_INFO
    ).derive(shared)
    return base64.urlsafe_b64encode(derived)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def new_private_key() -> bytes:
    """A new runner key, as PEM (PKCS#8) bytes to keep in a private file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _private(pem: bytes) -> object:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, X25519PrivateKey):
        raise ValueError("the runner key is not an X25519 private key")
    return key


def public_key_text(pem: bytes) -> str:
    """The public half of a runner key, as the gateway offers it."""
    from cryptography.hazmat.primitives import serialization

    key = _private(pem)
    raw = key.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return "x25519:" + _b64(raw)


def seal_env_key(public_text: str, env_key: str) -> str:
    """``env_key`` sealed to the runner key whose public half is given."""
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )

    kind, _, encoded = public_text.partition(":")
    if kind != "x25519" or not encoded:
        raise ValueError(f"unknown runner key {public_text[:40]!r}")
    runner = X25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(encoded))
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    key = _fernet_key(ephemeral.exchange(runner), ephemeral_public)
    token = Fernet(key).encrypt(env_key.encode())
    return f"{SEALED_PREFIX}{_b64(ephemeral_public)}:{token.decode()}"


def is_sealed(value: str) -> bool:
    return value.startswith(SEALED_PREFIX)


def open_env_key(pem: bytes, value: str) -> str:
    """The env key that :func:`seal_env_key` sealed; raises ValueError if it
    was not sealed to this runner key or was changed."""
    from cryptography.fernet import Fernet, InvalidToken
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    if not is_sealed(value):
        raise ValueError("the env key is not sealed")
    encoded, _, token = value[len(SEALED_PREFIX) :].partition(":")
    try:
        ephemeral_public = base64.urlsafe_b64decode(encoded)
        ephemeral = X25519PublicKey.from_public_bytes(ephemeral_public)
        shared = _private(pem).exchange(ephemeral)  # type: ignore[attr-defined]
        return Fernet(_fernet_key(shared, ephemeral_public)).decrypt(token).decode()
    except (InvalidToken, ValueError, TypeError) as exc:
        raise ValueError(
            "the env key was not sealed to this gateway's runner key"
        ) from exc
