"""The embedded local gateway process.

Started as ``python -m dask_batch.service.local_server DIR``.

A real dask-gateway-server on 127.0.0.1 (UnsafeLocalBackend, file-backed SQLite,
the dask-batch preload and cluster options), started detached by
:mod:`dask_batch.local` so that it outlives the process that asked for it.

Files in ``DIR``: ``settings.json`` (written by the starter: idle timeout,
server-side install, extra environment), ``secrets.json`` (password and
database key, mode 0600), ``server.json`` (addresses and pid, written once the
gateway answers), ``gateway.log``, ``gateway.sqlite``, ``clusters/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
import urllib.request
from typing import Any

import dask.config
from dask_gateway_server.app import DaskGateway
from dask_gateway_server.backends.jobqueue.slurm import SlurmBackend
from dask_gateway_server.backends.local import UnsafeLocalBackend
from dask_gateway_server.utils import run_main
from traitlets import Bool
from traitlets.config import Config

from dask_batch.client.local_gateway import (
    SECRETS_FILE,
    SERVER_FILE,
    SETTINGS_FILE,
    pid_alive,
    read_json,
    write_private,
)
from dask_batch.service.cluster_zygote import ClusterZygote, ZygoteUnavailable
from dask_batch.service.gateway_options import (
    WorkerEnvironmentWithoutJobKeys,
    batch_cluster_options,
    storage_options_table,
    write_runner_key,
)


class WorkersOnDefaultHost:
    """Workers listen on the backend's ``default_host`` too: dask-gateway
    gives them no ``--host``, so they would listen on every interface."""

    default_host: str

    def get_worker_command(self, *args: Any, **kwargs: Any) -> list[str]:
        command: list[str] = super().get_worker_command(*args, **kwargs)  # type: ignore[misc]
        return [*command, "--host", self.default_host]


class ProcessesFromZygote:
    """Start schedulers and nannies by forking a zygote that has their imports
    done (:mod:`dask_batch.service.cluster_zygote`), not as new interpreters;
    what it cannot start faithfully is started as LocalBackend does."""

    fork_processes: bool
    log: Any
    inherited_environment: list[str]
    _zygote: ClusterZygote | None = None

    _forked: set[int]
    _reaper: asyncio.Task[None] | None = None

    async def do_setup(self) -> None:
        await super().do_setup()  # type: ignore[misc]
        # The zygote's children are made to look like new interpreters
        # through /proc, and reaped through pidfds: Linux only.
        if self.fork_processes and sys.platform == "linux":
            self._forked = set()
            # Children of a zygote that died come to this process, not to
            # init (which in some containers never reaps): reaped here.
            if not become_subreaper():
                self.log.warning(
                    "Not a child subreaper: forked processes whose zygote "
                    "died are left to init to reap"
                )
            self._reaper = asyncio.ensure_future(self._reap_orphans())
            self._new_zygote()

    async def _reap_orphans(self) -> None:
        while True:
            for pid in list(self._forked):
                try:
                    reaped, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:  # the zygote's child still, or gone
                    if not pid_alive(pid):
                        self._forked.discard(pid)
                    continue
                if reaped:
                    self._forked.discard(pid)
            await asyncio.sleep(ORPHAN_REAP_INTERVAL)

    def _new_zygote(self) -> ClusterZygote:
        self._zygote = ClusterZygote()
        self._zygote.start(inherited=self.inherited_environment)
        return self._zygote

    async def start_process(
        self, cluster: Any, cmd: list[str], env: dict[str, str], name: str
    ) -> int:
        zygote = self._zygote
        if zygote is not None:
            if zygote.started and not zygote.alive:
                self.log.warning("The process zygote exited; starting a new one")
                zygote = self._new_zygote()
            workdir = cluster.state["workdir"]
            logs = self.get_logs_directory(workdir)  # type: ignore[attr-defined]
            log_path = os.path.join(logs, name + ".log")
            try:
                pid = await zygote.spawn(cmd, env, workdir, log_path)
            except ZygoteUnavailable as exc:
                if zygote.failed_to_start:
                    self._zygote = None  # new interpreters from now on
                if os.path.exists(log_path):
                    # The log is there: a process may have started, so a
                    # second one must not; the cluster fails.
                    job = (getattr(cluster, "options", None) or {}).get("batch_job_id")
                    raise RuntimeError(
                        f"Could not start {name} of cluster {cluster.name}"
                        + (f" (job {job})" if job else "")
                        + f": {exc}. The cluster failed; a job with retries "
                        "runs again, else submit it again."
                    ) from None
                self.log.info(
                    "Starting %s of cluster %s as a new interpreter: %s",
                    name,
                    cluster.name,
                    exc,
                )
            else:
                self._forked.add(pid)
                return pid
        started: int = await super().start_process(cluster, cmd, env, name)  # type: ignore[misc]
        return started

    async def do_cleanup(self) -> None:
        if self._zygote is not None:
            self._zygote.close()
        if self._reaper is not None:
            self._reaper.cancel()
        await super().do_cleanup()  # type: ignore[misc]


#: How often the gateway reaps forked processes whose zygote died (their
#: ends then wait this long at most to be seen).
ORPHAN_REAP_INTERVAL = 0.5


def become_subreaper() -> bool:
    """Make orphaned descendants of this process come to it, not to init
    (Linux); False if the kernel refused."""
    import ctypes

    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0)


class LoopbackLocalBackend(
    ProcessesFromZygote,
    WorkersOnDefaultHost,
    WorkerEnvironmentWithoutJobKeys,
    UnsafeLocalBackend,
):
    """UnsafeLocalBackend whose schedulers, workers and dashboards listen on
    127.0.0.1 only, whose workers do not get the job's env key, and whose
    processes are forked from a zygote."""

    default_host = "127.0.0.1"
    fork_processes = Bool(
        True,
        help="Fork schedulers and nannies from a process with their imports done.",
        config=True,
    )


class LoopbackSlurmBackend(
    WorkersOnDefaultHost, WorkerEnvironmentWithoutJobKeys, SlurmBackend
):
    """dask-gateway's SlurmBackend for a single-node Slurm on 127.0.0.1 (the
    test suite's): schedulers, workers and dashboards on 127.0.0.1."""

    default_host = "127.0.0.1"


def _free_ports(count: int) -> list[int]:
    """``count`` different ports free on 127.0.0.1 now.

    The sockets are held until all are chosen: closed one by one, the
    kernel may hand the same port out twice (the API and the proxy then
    collide, and the gateway exits at start).
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


RUNNER_KEY_FILE = "runner-key.pem"


def runner_key_file(directory: str) -> str:
    """The local gateway's runner key, made once (mode 0600): clients seal
    each job's env key to it, so the gateway's database never holds one.

    This process's own keeper opens the keys the gateway reports with it
    (``batch.runner.key-file``)."""
    path = os.path.join(directory, RUNNER_KEY_FILE)
    if not os.path.exists(path):
        write_runner_key(path)
    dask.config.set({"batch.runner.key-file": path})
    return path


def build_config(
    directory: str,
    settings: dict[str, Any],
    secrets: dict[str, Any],
    api_port: int,
    proxy_port: int,
) -> Config:
    c = Config()
    c.DaskGateway.address = f"127.0.0.1:{api_port}"
    c.Proxy.address = f"127.0.0.1:{proxy_port}"
    c.DaskGateway.backend_class = LoopbackLocalBackend
    c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
    c.SimpleAuthenticator.password = secrets["password"]
    c.DaskGateway.log_level = settings.get("log_level", "INFO")
    c.DBBackendBase.db_url = "sqlite:///" + os.path.join(directory, "gateway.sqlite")
    c.DBBackendBase.db_encrypt_keys = [secrets["db_key"]]
    c.LocalBackend.clusters_directory = os.path.join(directory, "clusters")
    c.LoopbackLocalBackend.fork_processes = dask.config.get(
        "batch.local.fork-processes"
    )
    c.LocalBackend.inherited_environment = [
        "PATH",
        "PYTHONPATH",
        "VIRTUAL_ENV",
        "LANG",
        "LC_ALL",
        "HOME",
        "TMPDIR",
    ]
    scheduler_cmd = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    if settings.get("server_side", True):
        scheduler_cmd += ["--preload", "dask_batch.preload"]
        table = settings.get("storage_options_by_user")
        c.Backend.cluster_options = batch_cluster_options(
            environment=settings.get("environment") or {},
            # Schedulers of another back end (Slurm) may run as other Unix
            # users, who cannot read this directory's key.
            runner_key_file=None
            if (settings.get("gateway_config") or {}).get("DaskGateway.backend_class")
            else runner_key_file(directory),
            # One user: any storage that user configures.
            allowed_storage=settings.get("allowed_storage"),
            storage_options=storage_options_table(table) if table else None,
        )
    else:
        c.ClusterConfig.environment = settings.get("environment") or {}
    c.ClusterConfig.scheduler_cmd = scheduler_cmd
    c.ClusterConfig.worker_cmd = [sys.executable, "-m", "distributed.cli.dask_worker"]
    c.ClusterConfig.idle_timeout = float(settings.get("idle_timeout", 0))
    c.ClusterConfig.worker_memory = settings.get("worker_memory", "1 G")
    c.ClusterConfig.scheduler_memory = settings.get("scheduler_memory", "1 G")
    for key, value in (settings.get("gateway_config") or {}).items():
        section, _, trait = key.rpartition(".")
        setattr(getattr(c, section), trait, value)
    return c


def _wait_healthy(url: str, deadline: float) -> None:
    # The proxy may answer a bare 404 until it has fetched its routes from
    # the gateway, so "up" means /api/health answers 200.
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:
            last = exc
        time.sleep(0.05)
    raise RuntimeError(f"gateway at {url} never became healthy: {last}")


async def _serve(
    gateway: DaskGateway,
    directory: str,
    settings: dict[str, Any],
    address: str,
    proxy_address: str,
) -> None:
    launch_id = settings.get("launch_id", "")
    server_file = os.path.join(directory, SERVER_FILE)
    ready = False
    try:
        await gateway.setup()
        # The proxy's own readiness event: no public way to wait for it.
        await gateway.backend.proxy._proxy_contacted  # noqa: SLF001
        await asyncio.to_thread(
            _wait_healthy, f"{address}/api/health", time.monotonic() + 30
        )
        write_private(
            server_file,
            {
                "address": address,
                "proxy_address": proxy_address,
                "pid": os.getpid(),
                "launch_id": launch_id,
                "started": time.time(),
            },
        )
        ready = True
        gateway.log.info("dask-batch local gateway ready at %s", address)
        keeper = asyncio.create_task(
            _keep_jobs(gateway, directory, address, proxy_address)
        )
        owner = settings.get("owner_pid")
        while owner is None or pid_alive(owner):
            await asyncio.sleep(1.0 if owner else 3600)
        gateway.log.warning("Owner process %d is gone, shutting down", owner)
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
    finally:
        if ready:
            os.remove(server_file)
        else:
            write_private(server_file, {"failed": launch_id})
        await gateway.cleanup()


async def _keep_jobs(
    gateway: DaskGateway, directory: str, address: str, proxy_address: str
) -> None:
    """Keep the jobs of the default storage with nobody looking.

    Every ``batch.local.keeper-interval``: jobs whose upstream jobs ended are
    started or cancelled, jobs whose cluster died are retried or recorded
    LOST, and due schedules submit their runs. This process runs as the
    user who started it, with that user's secret, as a client would.
    """
    from dask.utils import parse_timedelta
    from dask_gateway import BasicAuth

    from dask_batch.client.gateway import BatchGateway
    from dask_batch.service.local_keeper import LocalKeeper

    interval = parse_timedelta(dask.config.get("batch.local.keeper-interval"))
    if not interval:
        return
    secrets = read_json(os.path.join(directory, SECRETS_FILE))
    keeper = LocalKeeper(
        lambda: BatchGateway(
            address=address,
            proxy_address=proxy_address,
            auth=BasicAuth(secrets["username"], secrets["password"]),
            asynchronous=True,
        ),
        os.path.join(directory, "jobs"),
        interval,
        gateway.log,
    )
    await keeper.run()


def _detach() -> None:
    # Double fork: the starter's child exits now, the gateway is re-parented
    # to init and leads its own session, away from the starter's signals.
    if os.fork() > 0:
        os._exit(0)
    os.setsid()


def main(directory: str, detach: bool = False) -> None:
    # The database, logs and cluster directories are the owner's alone.
    os.umask(0o077)
    directory = os.path.abspath(directory)
    if detach:
        _detach()
    settings = read_json(os.path.join(directory, SETTINGS_FILE))
    launch_id = settings.get("launch_id", "")
    try:
        secrets = read_json(os.path.join(directory, SECRETS_FILE))
        api_port, proxy_port = _free_ports(2)
        config = build_config(directory, settings, secrets, api_port, proxy_port)
        gateway = DaskGateway(config=config)
        gateway.initialize([])
    except BaseException:
        write_private(os.path.join(directory, SERVER_FILE), {"failed": launch_id})
        raise
    from aiohttp import web

    # SIGTERM/SIGINT end the gateway through GracefulExit: a normal stop.
    with contextlib.suppress(KeyboardInterrupt, web.GracefulExit):
        run_main(
            _serve(
                gateway,
                directory,
                settings,
                # Clients talk to the proxy: HTTP API and scheduler TLS share
                # its port: with a separate Proxy.tcp_address that clients
                # are not told about, new_cluster() stalls and get_client()
                # times out.
                f"http://127.0.0.1:{proxy_port}{config.Proxy.get('prefix', '')}",
                f"gateway://127.0.0.1:{proxy_port}",
            )
        )


if __name__ == "__main__":
    args = sys.argv[1:]
    detach = "--detach" in args
    (directory,) = (a for a in args if a != "--detach")
    main(directory, detach=detach)
