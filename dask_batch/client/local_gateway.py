"""Start, find and stop the embedded local gateway (a real dask-gateway-server).

The client's side of it: the gateway's own process is
:mod:`dask_batch.service.local_server`, and :mod:`dask_batch.local` is the
public face, with the examples.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import dask.config
from dask.utils import parse_timedelta

from dask_batch import config as _config  # noqa: F401  (loads batch.* defaults)
from dask_batch.core.exceptions import DaskBatchError

__all__ = ["LocalGateway", "default_directory", "start", "status", "stop"]

SETTINGS_FILE = "settings.json"
SECRETS_FILE = "secrets.json"
SERVER_FILE = "server.json"
LOG_FILE = "gateway.log"


def default_directory() -> str:
    """Where the local gateway lives: ``batch.local.directory`` or the user data dir."""
    configured = dask.config.get("batch.local.directory", None)
    if configured:
        return os.path.abspath(os.path.expanduser(configured))
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "dask-batch")


@dataclass(frozen=True)
class LocalGateway:
    """A running local gateway.

    Attributes
    ----------
    directory : str
        Its home: database, logs, cluster directories, and ``jobs/``.
    address, proxy_address : str
        Where ``dask_gateway.Gateway`` reaches it.
    pid : int
        The gateway process.
    username, password : str
        Basic-auth credentials (the password is random, kept in the directory
        with mode 0600).
    """

    directory: str
    address: str
    proxy_address: str
    pid: int
    username: str
    password: str

    @property
    def storage(self) -> str:
        """The default job storage that goes with this gateway."""
        return os.path.join(self.directory, "jobs")

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, LOG_FILE)

    def gateway(self, **kwargs: Any) -> Any:
        """A ``dask_gateway.Gateway`` connected to this local gateway."""
        from dask_gateway import BasicAuth

        from dask_batch.client.gateway import BatchGateway

        return BatchGateway(
            address=self.address,
            proxy_address=self.proxy_address,
            auth=BasicAuth(self.username, self.password),
            **kwargs,
        )

    def environment(self) -> dict[str, str]:
        """Environment variables that point another process at this gateway.

        The ``gateway.*`` dask config keys (address, proxy, basic auth), for
        a ``dask batch`` command or a script started in a subprocess.
        """
        return {
            "DASK_GATEWAY__ADDRESS": self.address,
            "DASK_GATEWAY__PROXY_ADDRESS": self.proxy_address,
            "DASK_GATEWAY__AUTH__TYPE": "basic",
            "DASK_GATEWAY__AUTH__KWARGS__USERNAME": self.username,
            "DASK_GATEWAY__AUTH__KWARGS__PASSWORD": self.password,
        }

    def __repr__(self) -> str:
        return (
            f"LocalGateway(directory={self.directory!r}, address={self.address!r}, "
            f"pid={self.pid})"
        )


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _make_private(directory: str) -> None:
    """Create ``directory`` readable by its owner alone, or tighten it.

    It holds the gateway's database (with every job's env key), its password
    and, by default, every job's records: no other local user may look in.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    if os.stat(directory).st_mode & 0o077:
        os.chmod(directory, 0o700)


def write_private(path: str, obj: Any, mode: int = 0o600) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our own exited child, not yet reaped) is not alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


# A live gateway on a loaded 2-core host can take seconds to answer; a short
# timeout made status() report a running gateway as stopped (seen in CI).
_HEALTH_TIMEOUT = 10.0


def _healthy(address: str) -> bool:
    try:
        with urllib.request.urlopen(
            f"{address}/api/health", timeout=_HEALTH_TIMEOUT
        ) as resp:
            return bool(resp.status == 200)
    except Exception:
        return False


@contextlib.contextmanager
def _lock(directory: str) -> Any:
    _make_private(directory)
    lock_fd = os.open(os.path.join(directory, ".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(lock_fd, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _launch_failed(directory: str, launch_id: str) -> bool:
    try:
        return bool(
            read_json(os.path.join(directory, SERVER_FILE)).get("failed") == launch_id
        )
    except (OSError, ValueError):
        return False


def _info(directory: str, launch_id: str | None = None) -> LocalGateway | None:
    try:
        server = read_json(os.path.join(directory, SERVER_FILE))
        secret = read_json(os.path.join(directory, SECRETS_FILE))
    except (OSError, ValueError):
        return None
    if "pid" not in server or (launch_id and server.get("launch_id") != launch_id):
        return None
    if not pid_alive(server["pid"]) or not _healthy(server["address"]):
        return None
    return LocalGateway(
        directory=directory,
        address=server["address"],
        proxy_address=server["proxy_address"],
        pid=server["pid"],
        username=secret["username"],
        password=secret["password"],
    )


def status(directory: str | None = None) -> LocalGateway | None:
    """The local gateway if it is running and answering, else None.

    Parameters
    ----------
    directory : str, optional
        Default: :func:`default_directory`.
    """
    return _info(os.path.abspath(directory or default_directory()))


def start(
    directory: str | None = None,
    *,
    timeout: float | str | None = None,
    idle_timeout: float | None = None,
    server_side: bool = True,
    environment: dict[str, str] | None = None,
    gateway_config: dict[str, Any] | None = None,
    owner_pid: int | None = None,
    allowed_storage: list[str] | None = None,
    storage_options_by_user: dict[str, dict[str, Any]] | None = None,
) -> LocalGateway:
    """Start the local gateway in the background, or return the running one.

    Parameters
    ----------
    directory : str, optional
        Its home. Default: :func:`default_directory`.
    timeout : float or str, optional
        How long to wait for it to answer. Default ``batch.local.start-timeout``.
    idle_timeout : float, optional
        Idle timeout of its clusters in seconds (0: off). Default
        ``batch.local.idle-timeout``.
    server_side : bool
        Install the dask-batch preload and cluster options (default). False
        gives a plain gateway, on which dask-batch works in client-side mode.
    environment : dict, optional
        Extra environment for schedulers and workers.
    gateway_config : dict, optional
        Extra traitlets settings, ``{"Class.trait": value}``.
    owner_pid : int, optional
        Stop the gateway (and its clusters) when this process is gone. For
        test fixtures; by default the gateway outlives everyone.
    allowed_storage : list of str, optional
        Storage roots the gateway accepts jobs for (default: any).
    storage_options_by_user : dict, optional
        ``{user name: fsspec storage options}``: each user's jobs get their
        own storage credentials (server-side mode), as a deployment's
        ``storage_options`` hook gives them.

    Returns
    -------
    LocalGateway

    Examples
    --------
    >>> info = dask_batch.local.start()   # doctest: +SKIP
    """
    if importlib.util.find_spec("dask_gateway_server") is None:
        raise DaskBatchError(
            "The embedded local gateway needs dask-gateway-server: "
            "pip install 'dask-batch[local]'. Or point dask-batch at a running "
            "gateway with `gateway.address` (env DASK_GATEWAY__ADDRESS)."
        )
    directory = os.path.abspath(directory or default_directory())
    timeout_s = parse_timedelta(
        timeout if timeout is not None else dask.config.get("batch.local.start-timeout")
    )
    with _lock(directory):
        running = _info(directory)
        if running is not None:
            return running
        _ensure_secrets(directory)
        if idle_timeout is None:
            idle_timeout = float(dask.config.get("batch.local.idle-timeout"))
        launch_id = secrets.token_hex(8)
        write_private(
            os.path.join(directory, SETTINGS_FILE),
            {
                "launch_id": launch_id,
                "idle_timeout": idle_timeout,
                "server_side": server_side,
                "environment": environment or {},
                "gateway_config": gateway_config or {},
                "owner_pid": owner_pid,
                "allowed_storage": allowed_storage,
                "storage_options_by_user": storage_options_by_user,
            },
        )
        _launch(directory)
        return _wait_started(directory, launch_id, timeout_s)


def _ensure_secrets(directory: str) -> None:
    """The basic-auth password and database key, made once (mode 0600)."""
    secrets_path = os.path.join(directory, SECRETS_FILE)
    if os.path.exists(secrets_path):
        return
    from cryptography.fernet import Fernet

    write_private(
        secrets_path,
        {
            "username": getpass.getuser(),
            "password": secrets.token_hex(16),
            "db_key": Fernet.generate_key().decode(),
        },
        mode=0o600,
    )


def _launch(directory: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(directory, SERVER_FILE))
    log_fd = os.open(
        os.path.join(directory, LOG_FILE), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
    )
    with os.fdopen(log_fd, "ab") as log:
        # The server forks again and exits at once (--detach), so the
        # gateway is nobody's child: it outlives this process and is
        # never left a zombie.
        subprocess.run(
            [
                sys.executable,
                "-m",
                "dask_batch.service.local_server",
                "--detach",
                directory,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            check=True,
        )


def _wait_started(directory: str, launch_id: str, timeout_s: float) -> LocalGateway:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = _info(directory, launch_id)
        if info is not None:
            return info
        if _launch_failed(directory, launch_id):
            raise DaskBatchError(
                "The local gateway exited while starting; see "
                f"{os.path.join(directory, LOG_FILE)}."
            )
        time.sleep(0.05)
    raise DaskBatchError(
        f"The local gateway did not answer within {timeout_s:.0f} s; see "
        f"{os.path.join(directory, LOG_FILE)}."
    )


def stop(directory: str | None = None, *, timeout: float = 60) -> bool:
    """Stop the local gateway (and with it every cluster it runs).

    Parameters
    ----------
    directory : str, optional
        Default: :func:`default_directory`.
    timeout : float
        Seconds to wait for it to exit before killing it.

    Returns
    -------
    bool
        True if a running gateway was stopped.
    """
    directory = os.path.abspath(directory or default_directory())
    with _lock(directory):
        try:
            pid = read_json(os.path.join(directory, SERVER_FILE))["pid"]
        except (OSError, ValueError, KeyError):
            return False
        if not pid_alive(pid):
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return True
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        return True
