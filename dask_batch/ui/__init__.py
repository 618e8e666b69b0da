"""The jobs web page: ``dask batch ui`` or ``python -m dask_batch.ui``.

Serves the user's jobs (the configured gateway and storage, or the embedded
local gateway) on 127.0.0.1 with a random token, as Jupyter does::

    $ dask batch ui
    Jobs page: http://127.0.0.1:8790/?token=...

The same application answers a JSON API under ``/api/v1/`` (see the docs'
UI page).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import secrets
import signal
import socket
import sys
import webbrowser
from collections.abc import Callable
from typing import Any

__all__ = ["serve", "serve_hub"]


async def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    open_browser: bool = False,
    storage: str | None = None,
    token: str | None = None,
    announce: Callable[[str], Any] = print,
) -> None:
    """Serve the jobs page until cancelled (Ctrl-C, SIGTERM).

    Parameters
    ----------
    host : str
        Address to listen on; loopback unless told otherwise.
    port : int
        0 picks a free port.
    open_browser : bool
        Open the page in a browser.
    storage : str, optional
        Job storage URL (default: as ``BatchClient``).
    token : str, optional
        Access token (default: a new random one).
    announce : callable
        Called with the page's URL once it is served.
    """
    import tornado.httpserver

    from dask_batch.batch_client import BatchClient
    from dask_batch.ui.app import make_app

    token = token or secrets.token_urlsafe(32)
    batch = BatchClient(storage=storage, asynchronous=True)
    try:
        await batch.identify()
        app = make_app(batch.service, token)
        listener = socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM
        )
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
        listener.setblocking(False)
        server = tornado.httpserver.HTTPServer(app)
        server.add_sockets([listener])
        bound = listener.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{bound}/?token={token}"
        announce(url)
        if open_browser:
            webbrowser.open(url)
        try:
            await asyncio.Event().wait()
        finally:
            server.stop()
            await server.close_all_connections()
    finally:
        await batch.close()


async def serve_hub(announce: Callable[[str], Any] = print) -> None:
    """Serve the page as a JupyterHub service, and keep every user's jobs.

    Configured by the hub's service environment (``JUPYTERHUB_*``: where to
    listen, the OAuth client, the API token) and by dask config: the gateway
    (``gateway.address``, ``gateway.proxy-address``; reached with tokens that
    the hub issues for each user), the shared job storage
    (``batch.storage``, ``batch.storage-options``: the service's own
    credentials) and ``batch.service.*``.
    """
    from urllib.parse import urlparse

    import dask.config
    import tornado.httpserver

    from dask_batch.client.hub import GatewayTokens, HubAPI
    from dask_batch.core.exceptions import DaskBatchError
    from dask_batch.service.hub import JobKeeper, UserClients
    from dask_batch.storage.store import JobStore
    from dask_batch.ui.hub import make_hub_app

    if importlib.util.find_spec("jupyterhub") is None:
        raise DaskBatchError(
            "The hub service needs JupyterHub's service library: "
            "pip install 'dask-batch[hub]'."
        )
    hub = HubAPI.from_environment()
    storage = dask.config.get("batch.storage", None)
    if not storage or not dask.config.get("gateway.address", None):
        raise DaskBatchError(
            "The hub service needs the shared job storage and the gateway: set "
            "batch.storage (DASK_BATCH__STORAGE) and gateway.address "
            "(DASK_GATEWAY__ADDRESS) in its environment."
        )
    options = dask.config.get("batch.storage-options", None) or {}
    tokens = GatewayTokens(hub, dask.config.get("batch.service.gateway-service-name"))
    clients = UserClients(tokens, storage, options)
    keeper = JobKeeper(JobStore(storage, options), clients)
    service_url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", ""))
    server = tornado.httpserver.HTTPServer(make_hub_app(clients))
    server.listen(service_url.port or 0, service_url.hostname or "127.0.0.1")
    keeping = asyncio.ensure_future(keeper.run())
    announce(f"{os.environ.get('JUPYTERHUB_SERVICE_PREFIX', '/')} on {service_url}")
    try:
        await asyncio.Event().wait()
    finally:
        keeping.cancel()
        server.stop()
        await server.close_all_connections()
        await clients.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m dask_batch.ui [--host H] [--port N] [--no-browser] [--hub]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dask_batch.ui")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--storage", default=None)
    parser.add_argument(
        "--hub",
        action="store_true",
        help="run as a JupyterHub service (hub login, every user's jobs kept)",
    )
    args = parser.parse_args(argv)
    run(args.host, args.port, not args.no_browser, args.storage, hub=args.hub)


def run(
    host: str, port: int, open_browser: bool, storage: str | None, hub: bool = False
) -> None:
    """Serve until Ctrl-C or SIGTERM, announcing the URL on stdout."""
    import logging

    def announce(url: str) -> None:
        print(f"Jobs page: {url}", flush=True)

    async def until_stopped() -> None:
        if hub:
            logging.basicConfig(
                level=logging.WARNING,
                format="[%(levelname)s %(asctime)s %(name)s] %(message)s",
            )
            logging.getLogger("dask_batch").setLevel(logging.INFO)
            task = asyncio.ensure_future(serve_hub(announce))
        else:
            task = asyncio.ensure_future(
                serve(
                    host=host,
                    port=port,
                    open_browser=open_browser,
                    storage=storage,
                    announce=announce,
                )
            )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    from dask_batch.core.exceptions import DaskBatchError

    try:
        asyncio.run(until_stopped())
    except DaskBatchError as exc:  # configuration: say what to fix, no traceback
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print("Jobs page stopped.", file=sys.stderr)
