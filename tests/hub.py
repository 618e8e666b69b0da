"""A real JupyterHub for tests: the hub, configurable-http-proxy, a dask-gateway
behind it with JupyterHubAuthenticator, and the dask-batch service, all on
127.0.0.1.

Users alice and bob may use the gateway and the jobs page (role
``batch-users``); carol is a hub user without that role; dora may also read
everyone's jobs (the admin scope). Everyone's password is ``PASSWORD``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dask_batch import local
from dask_batch.testing import _start_gateway, free_port, stop_process, wait_for

PASSWORD = "correct horse battery staple"
GATEWAY_SERVICE = "dask-gateway"
BATCH_SERVICE = "dask-batch"
ADMIN_SCOPE = "custom:dask-batch:all-jobs"


def http(url: str, *, token: str | None = None, method: str = "GET", body=None):
    """(status, body bytes) of one request; redirects are not followed."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, method=method, data=data)
    if token:
        request.add_header("Authorization", f"token {token}")
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError as error:
        return None, str(error).encode()


@dataclass
class Hub:
    """A running hub with its gateway and the dask-batch service."""

    url: str  # the hub's public address (its proxy)
    api_url: str  # the hub's own API, as services and sessions reach it
    admin_token: str = field(repr=False)  # a test-only service allowed to mint tokens
    gateway: Any  # the dask_batch.local.LocalGateway behind the hub
    storage: str
    storage_options: dict[str, Any]
    directory: str

    @property
    def gateway_via_hub(self) -> str:
        return f"{self.url}/services/{GATEWAY_SERVICE}"

    @property
    def service_url(self) -> str:
        return f"{self.url}/services/{BATCH_SERVICE}/"

    def token(self, user: str, scopes: list[str] | None = None) -> str:
        """A new API token of ``user`` (by default with the user's own scopes,
        as the hub's token page makes one)."""
        body: dict[str, Any] = {"note": "test", "expires_in": 3600}
        if scopes is not None:
            body["scopes"] = scopes
        status, data = http(
            f"{self.api_url}/users/{user}/tokens",
            token=self.admin_token,
            method="POST",
            body=body,
        )
        assert status == 201, data
        return str(json.loads(data)["token"])

    def session_environment(self, user: str) -> dict[str, str]:
        """The environment of ``user``'s hub session (notebook server), with
        the deployment's usual dask-gateway config."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
        env.update(
            JUPYTERHUB_USER=user,
            # A session's own token has the server role's scopes, plus the
            # gateway's, as the admin guide configures the server role.
            JUPYTERHUB_API_TOKEN=self.token(
                user,
                scopes=[
                    f"users:activity!user={user}",
                    f"access:services!service={GATEWAY_SERVICE}",
                ],
            ),
            JUPYTERHUB_API_URL=self.api_url,
            DASK_GATEWAY__ADDRESS=self.gateway_via_hub,
            DASK_GATEWAY__PROXY_ADDRESS=self.gateway.proxy_address,
            DASK_GATEWAY__AUTH__TYPE="jupyterhub",
            DASK_BATCH__STORAGE=self.storage,
            DASK_BATCH__STORAGE_OPTIONS=repr(self.storage_options),
        )
        return env

    def start_server(self, user: str) -> str:
        """Start ``user``'s single-user server; its URL once it is ready."""
        api = f"{self.api_url}/users/{user}"
        status, data = http(f"{api}/server", token=self.admin_token, method="POST")
        assert status in (201, 202), data

        def ready() -> bool:
            status, data = http(api, token=self.admin_token)
            assert status == 200, data
            server = json.loads(data).get("servers", {}).get("")
            return bool(server and server.get("ready"))

        wait_for(ready, 90, f"{user}'s single-user server")
        return f"{self.url}/user/{user}"

    def stop_server(self, user: str) -> None:
        api = f"{self.api_url}/users/{user}"
        status, data = http(f"{api}/server", token=self.admin_token, method="DELETE")
        assert status in (202, 204), data

        def stopped() -> bool:
            _, data = http(api, token=self.admin_token)
            return not json.loads(data).get("servers")

        wait_for(stopped, 60, f"{user}'s single-user server to stop")

    def home(self, user: str) -> str:
        """``user``'s home: the root folder of their single-user server."""
        path = os.path.join(self.directory, "homes", user)
        os.makedirs(path, exist_ok=True)
        return path

    def log(self) -> str:
        with open(os.path.join(self.directory, "hub.log"), errors="replace") as f:
            return f.read()


# The single-user image's Jupyter server config, as a deployment bakes it in.
SESSION_CONFIG = """
c.SchedulerApp.scheduler_class = "dask_batch.jupyter.DaskBatchScheduler"
c.SchedulerApp.environment_manager_class = "dask_batch.jupyter.GatewayEnvironments"
c.SchedulerApp.job_files_manager_class = "dask_batch.jupyter.ArtifactFiles"
# Extensions of other packages in the test environment (Ploomber's replaces
# the contents manager), not of a Notebook Jobs deployment.
c.ServerApp.jpserver_extensions = {
    "ploomber": False, "ploomber_extension": False,
    "jupyterlab_jupytext": False, "nbclassic": False,
}
c.ServerApp.allow_root = True  # the test machine runs everything as root
"""


def _hub_config(
    directory: str,
    ports: dict[str, int],
    gateway: Any,
    tokens: dict[str, str],
    storage: str,
    storage_options: dict[str, Any],
    service_interval: str,
) -> str:
    service_env = {
        "DASK_GATEWAY__ADDRESS": gateway.address,
        "DASK_GATEWAY__PROXY_ADDRESS": gateway.proxy_address,
        "DASK_BATCH__STORAGE": storage,
        "DASK_BATCH__STORAGE_OPTIONS": repr(storage_options),
        "DASK_BATCH__SERVICE__INTERVAL": service_interval,
        "DASK_BATCH__SERVICE__CATALOG_INTERVAL": "2s",
        "XDG_CONFIG_HOME": os.path.join(directory, "service-config"),
        # As a deployment mounts the gateway's runner key in the service: it
        # opens the env keys the gateway reports for upstream jobs' clusters.
        "DASK_BATCH__RUNNER__KEY_FILE": os.path.join(
            gateway.directory, "runner-key.pem"
        ),
    }
    # Each user's own single-user server (JupyterLab), as a deployment's
    # image has it: dask-gateway through the hub, dask-batch's storage and
    # service, and Notebook Jobs on dask-batch.
    session_env = {
        "DASK_GATEWAY__ADDRESS": gateway.address,
        "DASK_GATEWAY__PROXY_ADDRESS": gateway.proxy_address,
        "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
        "DASK_BATCH__STORAGE": storage,
        "DASK_BATCH__STORAGE_OPTIONS": repr(storage_options),
        "DASK_BATCH__SERVICE__URL": (
            f"http://127.0.0.1:{ports['public']}/services/{BATCH_SERVICE}/"
        ),
        "JUPYTER_CONFIG_DIR": os.path.join(directory, "session-config"),
    }
    os.makedirs(session_env["JUPYTER_CONFIG_DIR"], exist_ok=True)
    config = os.path.join(session_env["JUPYTER_CONFIG_DIR"], "jupyter_server_config.py")
    with open(config, "w") as f:
        f.write(SESSION_CONFIG)
    settings = {
        "ports": ports,
        "directory": directory,
        "gateway_url": gateway.address.removesuffix(f"/services/{GATEWAY_SERVICE}"),
        "tokens": tokens,
        "python": sys.executable,
        "service_env": service_env,
        "session_env": session_env,
    }
    return textwrap.dedent(
        f"""
        import json
        s = json.loads({json.dumps(json.dumps(settings))})
        p = s["ports"]
        c.JupyterHub.ip = "127.0.0.1"
        c.JupyterHub.port = p["public"]
        c.JupyterHub.hub_ip = "127.0.0.1"
        c.JupyterHub.hub_port = p["hub"]
        c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{{p['proxy_api']}}"
        c.ConfigurableHTTPProxy.auth_token = s["tokens"]["proxy"]
        c.ConfigurableHTTPProxy.pid_file = s["directory"] + "/proxy.pid"
        c.JupyterHub.db_url = "sqlite:///" + s["directory"] + "/hub.sqlite"
        c.JupyterHub.cookie_secret_file = s["directory"] + "/cookie_secret"
        c.JupyterHub.redirect_to_server = False
        c.JupyterHub.authenticator_class = "dummy"
        c.DummyAuthenticator.password = {PASSWORD!r}
        c.Authenticator.allowed_users = {{"alice", "bob", "carol", "dora"}}
        c.JupyterHub.custom_scopes = {{
            {ADMIN_SCOPE!r}: {{"description": "Read every user's dask-batch jobs"}},
        }}
        c.JupyterHub.spawner_class = "simple"
        c.SimpleLocalProcessSpawner.home_dir_template = (
            s["directory"] + "/homes/{{username}}"
        )
        c.Spawner.cmd = [s["python"], "-m", "jupyterhub.singleuser"]
        c.Spawner.environment = s["session_env"]
        c.Spawner.start_timeout = 90
        c.Spawner.http_timeout = 90
        c.Spawner.server_token_scopes = [
            "users:activity!user",
            "access:servers!server",
            "access:services!service={GATEWAY_SERVICE}",
            "access:services!service={BATCH_SERVICE}",
        ]
        c.JupyterHub.services = [
            {{
                "name": {GATEWAY_SERVICE!r},
                "url": s["gateway_url"],
                "api_token": s["tokens"]["gateway"],
                "display": False,
            }},
            {{
                "name": {BATCH_SERVICE!r},
                "url": f"http://127.0.0.1:{{p['service']}}",
                "command": [s["python"], "-m", "dask_batch.ui", "--hub"],
                "environment": s["service_env"],
                "oauth_no_confirm": True,
                "oauth_client_allowed_scopes": [{ADMIN_SCOPE!r}],
            }},
            {{"name": "test-admin", "api_token": s["tokens"]["admin"]}},
        ]
        c.JupyterHub.load_roles = [
            {{
                "name": "batch-users",
                "users": ["alice", "bob", "dora"],
                "scopes": [
                    "self",
                    "access:services!service={GATEWAY_SERVICE}",
                    "access:services!service={BATCH_SERVICE}",
                ],
            }},
            {{"name": "batch-admins", "users": ["dora"], "scopes": [{ADMIN_SCOPE!r}]}},
            {{
                "name": "dask-batch-service",
                "services": [{BATCH_SERVICE!r}],
                "scopes": ["tokens"],
            }},
            {{
                "name": "test-admin",
                "services": ["test-admin"],
                "scopes": ["tokens", "admin:users", "admin:servers"],
            }},
        ]
        """
    )


@contextlib.contextmanager
def running_hub(
    directory: str,
    s3_environment: dict[str, str],
    storage: str,
    storage_options: dict[str, Any],
    *,
    service_interval: str = "1s",
    gateway_periods: dict[str, Any] | None = None,
) -> Iterator[Hub]:
    """Start the gateway, then the hub (which starts its proxy and the
    dask-batch service); stop them all on exit.

    The gateway notices dead schedulers within seconds unless
    ``gateway_periods`` says otherwise (``{}``: dask-gateway's defaults).
    """
    ports = {k: free_port() for k in ("public", "hub", "proxy_api", "service")}
    tokens = {k: secrets.token_hex(32) for k in ("proxy", "gateway", "admin")}
    api_url = f"http://127.0.0.1:{ports['hub']}/hub/api"
    gateway_directory = os.path.join(directory, "gateway")
    hub_auth = {
        "DaskGateway.authenticator_class": (
            "dask_gateway_server.auth.JupyterHubAuthenticator"
        ),
        "JupyterHubAuthenticator.jupyterhub_api_url": api_url,
        "JupyterHubAuthenticator.jupyterhub_api_token": tokens["gateway"],
        "JupyterHubAuthenticator.jupyterhub_service_name": GATEWAY_SERVICE,
        "Proxy.prefix": f"/services/{GATEWAY_SERVICE}",
    }
    gateway_kwargs = {"environment": s3_environment, "allowed_storage": [storage]}
    if gateway_periods is None:
        gateway = _start_gateway(
            gateway_directory, gateway_config=hub_auth, **gateway_kwargs
        )
    else:
        gateway = local.start(
            gateway_directory,
            gateway_config={**gateway_periods, **hub_auth},
            owner_pid=os.getpid(),
            **gateway_kwargs,
        )
    hub_directory = os.path.join(directory, "hub")
    os.makedirs(hub_directory, exist_ok=True)
    config = os.path.join(hub_directory, "jupyterhub_config.py")
    with open(config, "w") as f:
        f.write(
            _hub_config(
                hub_directory,
                ports,
                gateway,
                tokens,
                storage,
                storage_options,
                service_interval,
            )
        )
    log = open(os.path.join(hub_directory, "hub.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterhub", "-f", config],
        cwd=hub_directory,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    hub = Hub(
        url=f"http://127.0.0.1:{ports['public']}",
        api_url=api_url,
        admin_token=tokens["admin"],
        gateway=gateway,
        storage=storage,
        storage_options=storage_options,
        directory=hub_directory,
    )
    try:

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the hub exited:\n{hub.log()[-4000:]}")
            health = f"{hub.gateway_via_hub}/api/health"
            return (
                http(f"{api_url}/")[0] == 200
                and http(health)[0] == 200
                and http(hub.service_url)[0] == 302  # to the hub's login
            )

        wait_for(up, 60, "the hub, its proxy, the gateway and the dask-batch service")
        yield hub
    finally:
        stop_process(proc, timeout=30)
        log.close()
        local.stop(gateway_directory)
