"""A real single-node Slurm for tests, and a dask-gateway on it.

Debian's Slurm (``slurmctld``, ``slurmd``, ``munge``, installed by the README's
test command) is started here with its own configuration, key, sockets and
state in a private directory, bound to 127.0.0.1 on free ports: nothing of the
machine's own Slurm or munge set-up is used or changed. The gateway runs
dask-gateway's ``SlurmBackend`` (through ``sudo -nHu <user>``, as on a real
site), with schedulers, workers and dashboards on 127.0.0.1.

Jobs of a second Unix user (``JOB_USER``) run under that user's uid. The
project's interpreter must be executable by it: where the virtualenv's Python
lives under ``/root`` (mode 0700, as with pyenv installed by root), ``/root``
gets the traverse bit for others (``o+x``: no listing, no reading) for the
session, and its mode is restored afterwards.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dask_batch import local
from dask_batch.testing import _start_gateway, free_port, stop_process, wait_for

JOB_USER = "dask-batch-job"
PARTITION = "batch"
DAEMONS = ("munged", "slurmctld", "slurmd")


def missing() -> list[str]:
    """The programs this needs that the machine lacks."""
    needed = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "sudo", "runuser")
    return [p for p in needed if shutil.which(p) is None]


@dataclass
class Slurm:
    """A running Slurm and its gateway."""

    directory: str
    conf: str
    gateway: Any  # dask_batch.local.LocalGateway with SlurmBackend

    def run(self, *command: str) -> str:
        """A Slurm command (squeue, scancel, ...) against this Slurm."""
        done = subprocess.run(
            command,
            env={**os.environ, "SLURM_CONF": self.conf},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def job_ids(self) -> list[str]:
        """Slurm jobs not yet ended (pending, running, completing)."""
        out = self.run("squeue", "-h", "-o", "%i %t")
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def log(self, daemon: str) -> str:
        with open(os.path.join(self.directory, f"{daemon}.log"), errors="replace") as f:
            return f.read()


def _write(path: str, text: str, mode: int = 0o644) -> None:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def _configuration(directory: str, ports: dict[str, int]) -> str:
    host = socket.gethostname().split(".")[0]
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    memory_mb = int(fields["MemAvailable"].split()[0]) // 1024 * 85 // 100
    node = f"CPUs={os.cpu_count()} RealMemory={memory_mb} State=UNKNOWN"
    partition = "Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4"
    return f"""\
ClusterName=daskbatch
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ports["ctld"]}
SlurmdPort={ports["slurmd"]}
NodeName={host} NodeAddr=127.0.0.1 {node}
PartitionName={PARTITION} Nodes=ALL {partition}
# Daemons listen on 127.0.0.1 only (else on 0.0.0.0).
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
# A job's processes are found by process group: one that ignores SIGTERM is
# still killed by scancel (with proctrack/linuxproc it survives, re-parented).
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Start jobs as they come, not on the next scheduling pass (up to 4 s later).
SchedulerParameters=batch_sched_delay=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
KillWait=30
StateSaveLocation={directory}/state
SlurmdSpoolDir={directory}/spool
SlurmctldPidFile={directory}/slurmctld.pid
SlurmdPidFile={directory}/slurmd.pid
SlurmctldLogFile={directory}/slurmctld.log
SlurmdLogFile={directory}/slurmd.log
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={directory}/run/munge.socket
ReturnToService=2
MpiDefault=none
"""


def _ensure_job_user() -> None:
    try:
        pwd.getpwnam(JOB_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/sh", JOB_USER], check=True
        )


@contextlib.contextmanager
def _interpreter_reachable_by(user: str) -> Iterator[None]:
    """Let ``user`` execute this interpreter (see the module's docstring)."""
    changed: list[tuple[str, int]] = []
    path = os.path.realpath(sys.executable)
    parts = path.split(os.sep)
    for i in range(2, len(parts)):
        folder = os.sep.join(parts[:i])
        mode = os.stat(folder).st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(folder, mode | stat.S_IXOTH)
            changed.append((folder, mode))
    try:
        probe = subprocess.run(
            ["runuser", "-u", user, "--", sys.executable, "-c", "import dask_batch"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert probe.returncode == 0, (
            f"{user} cannot run {sys.executable} with dask_batch: {probe.stderr}"
        )
        yield
    finally:
        for folder, mode in reversed(changed):
            os.chmod(folder, stat.S_IMODE(mode))


def _start_daemons(directory: str, conf: str) -> list[subprocess.Popen]:
    munge_user = pwd.getpwnam("munge")
    keys, run = os.path.join(directory, "munge"), os.path.join(directory, "run")
    for folder, mode in ((keys, 0o700), (run, 0o755)):
        os.makedirs(folder)
        os.chown(folder, munge_user.pw_uid, munge_user.pw_gid)
        os.chmod(folder, mode)
    key = os.path.join(keys, "munge.key")
    subprocess.run(
        ["runuser", "-u", "munge", "--", "mungekey", "-c", "-k", key], check=True
    )
    commands = [
        [
            "runuser", "-u", "munge", "--", "munged", "--foreground",
            f"--socket={run}/munge.socket", f"--key-file={key}",
            f"--pid-file={run}/munged.pid", f"--log-file={directory}/munged.log",
            f"--seed-file={keys}/munged.seed",
        ],
        ["slurmctld", "-D", "-f", conf],
        ["slurmd", "-D", "-f", conf],
    ]  # fmt: skip
    started: list[subprocess.Popen] = []
    for command in commands:
        started.append(
            subprocess.Popen(
                command,
                env={**os.environ, "SLURM_CONF": conf},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        if command[0] == "runuser":  # munged first: Slurm's daemons need it
            wait_for(lambda: os.path.exists(f"{run}/munge.socket"), 10, "munged")
    return started


@contextlib.contextmanager
def running_slurm(
    s3_environment: dict[str, str], allowed_storage: list[str] | None = None
) -> Iterator[Slurm]:
    """Slurm (munged, slurmctld, slurmd) and a dask-gateway with SlurmBackend;
    every daemon, Slurm job and cluster is stopped on exit."""
    absent = missing()
    assert not absent, (
        f"Slurm tests need {absent}: apt-get install slurmctld slurmd "
        "slurm-client munge sudo (the README's test command does)"
    )
    directory = tempfile.mkdtemp(prefix="dask-batch-slurm-")
    os.chmod(directory, 0o755)  # job users reach the wrappers and the config
    for name in ("state", "spool"):
        os.makedirs(os.path.join(directory, name))
    staging = os.path.join(directory, "staging")
    os.makedirs(staging)
    os.chmod(staging, 0o1777)  # each user makes their own cluster folders
    conf = os.path.join(directory, "slurm.conf")
    _write(
        conf, _configuration(directory, {"ctld": free_port(), "slurmd": free_port()})
    )
    # The launcher runs sbatch/scancel as the job's user through sudo, which
    # drops SLURM_CONF: small wrappers put it back.
    commands = {}
    for command in ("sbatch", "scancel", "squeue"):
        wrapper = os.path.join(directory, command)
        _write(
            wrapper,
            f'#!/bin/sh\nSLURM_CONF={conf} exec {shutil.which(command)} "$@"\n',
            0o755,
        )
        commands[command] = wrapper
    _ensure_job_user()
    daemons = _start_daemons(directory, conf)
    slurm = Slurm(directory=directory, conf=conf, gateway=None)
    gateway_directory = os.path.join(directory, "gateway")
    try:
        wait_for(
            lambda: "idle" in slurm.run("sinfo", "-h", "-o", "%T"),
            30,
            "the Slurm node to be idle",
        )
        launcher = os.path.join(
            os.path.dirname(sys.executable), "dask-gateway-jobqueue-launcher"
        )
        with _interpreter_reachable_by(JOB_USER):
            slurm.gateway = _start_gateway(
                gateway_directory,
                gateway_config={
                    "DaskGateway.backend_class": (
                        "dask_batch.service.local_server.LoopbackSlurmBackend"
                    ),
                    "SlurmBackend.dask_gateway_jobqueue_launcher": launcher,
                    "SlurmBackend.submit_command": commands["sbatch"],
                    "SlurmBackend.cancel_command": commands["scancel"],
                    "SlurmBackend.status_command": commands["squeue"],
                    # exec: the scheduler is the batch step's own process,
                    # so scancel's SIGTERM reaches it and it can record the
                    # job's end (after sh exits, Slurm kills what is left).
                    "SlurmClusterConfig.scheduler_cmd": [
                        "exec",
                        sys.executable,
                        "-m",
                        "distributed.cli.dask_scheduler",
                        "--preload",
                        "dask_batch.preload",
                    ],
                    "SlurmClusterConfig.worker_cmd": [
                        "exec",
                        sys.executable,
                        "-m",
                        "distributed.cli.dask_worker",
                    ],
                    "SlurmClusterConfig.partition": PARTITION,
                    "SlurmClusterConfig.staging_directory": f"{staging}/{{username}}/",
                },
                environment=s3_environment,
                allowed_storage=allowed_storage,
            )
            yield slurm
    finally:
        with contextlib.suppress(Exception):  # reported by the tests' own checks
            local.stop(gateway_directory)
        for job_id in slurm.job_ids():
            slurm.run("scancel", job_id)
        for daemon in reversed(daemons):
            stop_process(daemon, timeout=20)
        shutil.rmtree(directory, ignore_errors=True)
