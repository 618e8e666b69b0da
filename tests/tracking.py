"""A real MLflow tracking server for tests: ``mlflow server`` on 127.0.0.1.

SQLite backend store, a local artifact root served through the server
(``mlflow-artifacts:``), and MLflow's basic-auth app, so that every request
needs the credentials that dask-batch carries to jobs as encrypted env
values.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from dask_batch.testing import free_port, wait_for

ADMIN = "admin"

#: MLflow's own basic-auth settings, with its credential cache on: without it
#: the server checks the password's hash (scrypt, slow by design) on every
#: request, which made the server the busiest process of the MLflow tests.
#: Production servers that jobs log to want the same (docs/mlflow.md).
AUTH_CONFIG = """\
[mlflow]
default_permission = READ
database_uri = sqlite:///{database}
admin_username = {admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 600
"""


@dataclass(frozen=True)
class MlflowServer:
    url: str
    username: str
    password: str
    directory: str
    log_path: str

    def environment(self) -> dict[str, str]:
        """What a client process needs to log to this server."""
        return {
            "MLFLOW_TRACKING_URI": self.url,
            "MLFLOW_TRACKING_USERNAME": self.username,
            "MLFLOW_TRACKING_PASSWORD": self.password,
        }

    def client(self):
        """An ``MlflowClient`` of the admin (credentials from the environment)."""
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.url)

    def health(self) -> int:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                return int(answer.status)
        except (OSError, urllib.error.URLError):
            return 0

    def api(self, path: str, authenticated: bool = True) -> tuple[int, dict]:
        """GET an API path; (status, JSON body)."""
        request = urllib.request.Request(f"{self.url}/api/2.0/mlflow/{path}")
        if authenticated:
            token = base64.b64encode(f"{self.username}:{self.password}".encode())
            request.add_header("Authorization", f"Basic {token.decode()}")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, json.loads(answer.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, {}


@contextlib.contextmanager
def running_mlflow(
    directory: str, timeout: float = 90, auth: bool = True
) -> Iterator[MlflowServer]:
    """Start ``mlflow server`` in ``directory``; stop it (and its workers) after.

    ``auth=False`` leaves out the basic-auth app, which checks the password's
    (deliberately slow) hash on every request.
    """
    port = free_port()
    password = secrets.token_urlsafe(16)
    log_path = os.path.join(directory, "mlflow-server.log")
    env = dict(
        os.environ,
        MLFLOW_AUTH_ADMIN_PASSWORD=password,
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
        # The server's own job runner (GenAI evaluations, prompt optimisation)
        # is eight more processes that each import mlflow: a tracking server
        # of runs, as dask-batch uses it, needs none of them.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    if auth:
        env["MLFLOW_AUTH_CONFIG_PATH"] = os.path.join(directory, "basic_auth.ini")
        with open(env["MLFLOW_AUTH_CONFIG_PATH"], "w") as f:
            database = os.path.join(directory, "basic_auth.db")
            f.write(AUTH_CONFIG.format(database=database, admin=ADMIN))
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", f"sqlite:///{directory}/mlflow.db",
        "--artifacts-destination", os.path.join(directory, "artifacts"),
        *(["--app-name", "basic-auth"] if auth else []),
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        # A session of its own: the server starts its workers as children.
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=directory,
            start_new_session=True,
        )
    server = MlflowServer(
        f"http://127.0.0.1:{port}", ADMIN, password, directory, log_path
    )
    try:

        def up() -> bool:
            if proc.poll() is not None:
                with open(log_path) as f:
                    tail = f.read()[-3000:]
                raise AssertionError(f"mlflow server exited: {tail}")
            return server.health() == 200

        wait_for(up, timeout, "the MLflow server to answer /health", interval=0.2)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
