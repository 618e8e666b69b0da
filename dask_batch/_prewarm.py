"""Main's process, started while the scheduler starts (server-side mode).

Importing the scheduler preload (which the scheduler does when it is built,
before it listens) starts ``python -m dask_batch._child`` at once: its
interpreter and imports (distributed, the job storage, cloudpickle) overlap
the scheduler's own start-up and the runner's checks, and it waits on stdin
for its :class:`~dask_batch._handoff.MainLaunch`. The runner adopts it for
main's first attempt; a job that must not run (cancelled before its cluster
came up, a spec that fails its check) closes its stdin, and it exits without
running anything.

Scheduler side: imports nothing from the client or CLI modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import IO, Any

from ._handoff import ENV_RUNNER_PID

# The runner's private folder: main.log, the outcome file, main's working
# directory and artifacts_dir() live in it.
LOG_FILE = "main.log"
ARTIFACTS_DIR = "artifacts"


def child_env() -> dict[str, str]:
    """Main's environment: the scheduler's, less what main must not hold."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{ENV_RUNNER_PID: str(os.getpid())})
    # main gets the decrypted values, not the key nor the gateway's token.
    for name in ("DASK_BATCH_SECRET_KEY", "DASK_GATEWAY_API_TOKEN"):
        env.pop(name, None)
    return env


def make_workdir(job_id: str) -> str:
    """The runner's private folder for one job, with its artifacts folder."""
    workdir = tempfile.mkdtemp(prefix=f"dask-batch-{job_id}-")
    os.mkdir(os.path.join(workdir, ARTIFACTS_DIR), 0o700)
    return workdir


def spawn_main(log_path: str) -> subprocess.Popen[bytes]:
    """Start main's process, waiting on stdin; its output goes to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "dask_batch._child"],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            # A group of its own: stopping main stops what it started (a
            # notebook's kernel, a project's command) with it.
            start_new_session=True,
        )


class MainProcess:
    """Main's process as the runner drives it.

    Parameters
    ----------
    popen : subprocess.Popen
        Started by :func:`spawn_main`, waiting for its launch on stdin.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def launch(self, data: bytes) -> None:
        """Hand main its launch; a process that died early is left to wait()."""
        stdin: IO[bytes] | None = self.popen.stdin
        assert stdin is not None
        with contextlib.suppress(BrokenPipeError):
            stdin.write(data)
        with contextlib.suppress(BrokenPipeError):
            stdin.close()

    async def wait(self) -> int:
        # A thread per wait: exact (no polling delay at main's end).
        return await asyncio.to_thread(self.popen.wait)

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal main's process group: main and whatever it started."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def discard(self) -> None:
        """Stop a process that was never launched (it exits on EOF)."""
        self.launch(b"")
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.popen.wait()


@dataclass
class Prewarmed:
    """A main's process started early for a job, and the runner's folder."""

    job_id: str
    workdir: str
    main: MainProcess


_prewarmed: Prewarmed | None = None


def start(job_id: str) -> None:
    """Start main's process for ``job_id`` now (once per scheduler process)."""
    global _prewarmed
    if _prewarmed is not None:
        return
    workdir = make_workdir(job_id)
    popen = spawn_main(os.path.join(workdir, LOG_FILE))
    _prewarmed = Prewarmed(job_id, workdir, MainProcess(popen))


def take(job_id: str) -> Prewarmed | None:
    """The process started for ``job_id``, handed over once; None if none."""
    global _prewarmed
    found, _prewarmed = _prewarmed, None
    if found is not None and found.job_id != job_id:
        discard(found)
        return None
    return found


def discard(prewarmed: Any = None) -> None:
    """Stop a prewarmed process nobody will launch, and remove its folder."""
    global _prewarmed
    if prewarmed is None:
        prewarmed, _prewarmed = _prewarmed, None
    if prewarmed is None:
        return
    import shutil

    prewarmed.main.discard()
    shutil.rmtree(prewarmed.workdir, ignore_errors=True)
