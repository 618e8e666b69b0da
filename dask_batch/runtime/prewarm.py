"""Main's process, started while the scheduler starts (server-side mode).

Importing the scheduler preload (which the scheduler does when it is built,
before it listens) starts main's process at once, and it waits on stdin for
its :class:`~dask_batch.runtime.handoff.MainLaunch`. The runner adopts it for main's
first attempt; a job that must not run (cancelled before its cluster came
up, a spec that fails its check) closes its stdin, and it exits without
running anything.

At that moment the scheduler's process is one thread that has imported
distributed, so main's process is forked from it (``batch.runner.fork-main``):
it starts with those imports done, where a new interpreter spends ~0.35 s of
CPU on them, which on a small machine running many jobs is most of what a
job costs beyond its cluster. The forked process drops what belongs to the
scheduler (signal handlers and their wakeup fd, atexit handlers, stdio, the
secret key) before it runs anything, and never returns into the scheduler's
code: it ends with ``os._exit`` after doing what an interpreter does at exit.
Where forking is not safe (other threads are running) or is turned off,
``python -m dask_batch.runtime.child`` is started instead, as later attempts are.

Scheduler side: imports nothing from the client or CLI modules.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import io
import logging
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from dataclasses import dataclass
from typing import IO, Any

import dask.config

from dask_batch.runtime.forking import (
    MAIN_PROCESS_NAME,
    initial_areas,
    name_process,
    run_to_exit,
)
from dask_batch.runtime.handoff import ARTIFACTS_DIR, ENV_RUNNER_PID

# The runner's private folder: main.log, the outcome file, main's working
# directory and artifacts_dir() live in it.
LOG_FILE = "main.log"


# Main gets the decrypted values, not the key nor the gateway's token.
WITHHELD = (
    "DASK_BATCH_SECRET_KEY",
    "DASK_BATCH__RUNNER__KEY_FILE",
    "DASK_GATEWAY_API_TOKEN",
)


def child_env() -> dict[str, str]:
    """Main's environment: the scheduler's, less what main must not hold."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{ENV_RUNNER_PID: str(os.getpid())})
    for name in WITHHELD:
        env.pop(name, None)
    return env


def _scrub_initial_environment(names: tuple[str, ...]) -> None:
    """Blank the values of ``names`` in the environment the process began with.

    A forked process keeps its parent's initial environment block, which the
    kernel shows as ``/proc/self/environ`` whatever ``os.environ`` says now;
    the withheld values are overwritten in this process's copy of it.
    """
    import ctypes

    _, (start, end) = initial_areas()
    block = ctypes.string_at(start, end - start)
    for name in names:
        key = name.encode() + b"="
        at = block.find(key)
        while at != -1:
            if at == 0 or block[at - 1] == 0:
                value = at + len(key)
                length = block.find(b"\0", value) - value
                ctypes.memset(start + value, ord("*"), max(length, 0))
            at = block.find(key, at + 1)


def make_workdir(job_id: str) -> str:
    """The runner's private folder for one job, with its artifacts folder."""
    workdir = tempfile.mkdtemp(prefix=f"dask-batch-{job_id}-")
    os.mkdir(os.path.join(workdir, ARTIFACTS_DIR), 0o700)
    return workdir


def spawn_main(log_path: str) -> subprocess.Popen[bytes]:
    """Start main's process, waiting on stdin; its output goes to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "dask_batch.runtime.child"],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
            # A group of its own: stopping main stops what it started (a
            # notebook's kernel, a project's command) with it.
            start_new_session=True,
        )


class ForkedProcess:
    """A forked child, with the part of ``subprocess.Popen`` the runner uses."""

    def __init__(self, pid: int, stdin: IO[bytes]) -> None:
        self.pid = pid
        self.stdin: IO[bytes] | None = stdin
        self.returncode: int | None = None
        self._reaping = threading.Lock()  # poll() and wait() may race

    def _reap(self, block: bool) -> None:
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            # Reaped by someone else (SIGCHLD ignored): gone, status unknown,
            # which subprocess.Popen reports as 0 too. The runner judges the
            # job by the outcome main wrote, or its absence.
            self.returncode = 0
            return
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)

    def poll(self) -> int | None:
        if self.returncode is None and self._reaping.acquire(blocking=False):
            try:
                if self.returncode is None:
                    self._reap(block=False)
            finally:
                self._reaping.release()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is not None and self.returncode is None:
            with contextlib.closing(_PidFd(self.pid)) as pidfd:
                if not pidfd.ready(timeout):
                    raise subprocess.TimeoutExpired(["main"], timeout)
        with self._reaping:
            if self.returncode is None:
                self._reap(block=True)
        assert self.returncode is not None
        return self.returncode


class _PidFd:
    """Waits for a process to end without reaping it (Linux pidfd)."""

    def __init__(self, pid: int) -> None:
        self.fd = os.pidfd_open(pid)

    def ready(self, timeout: float) -> bool:
        return bool(select.select([self.fd], [], [], timeout)[0])

    def close(self) -> None:
        os.close(self.fd)


def can_fork() -> bool:
    """Whether main's process may be forked from this one now."""
    return (
        hasattr(os, "pidfd_open")
        and threading.active_count() == 1
        and bool(dask.config.get("batch.runner.fork-main"))
    )


def fork_main(log_path: str) -> ForkedProcess:
    """Fork main's process from this one-threaded scheduler process.

    The child waits on stdin for its launch, as ``python -m dask_batch.runtime.child``
    does; its output goes to ``log_path``.
    """
    env = child_env()
    read_end, write_end = os.pipe()
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()  # else the child would write the parent's buffer too
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        _become_main(read_end, write_end, log, env)
    os.close(read_end)
    os.close(log)
    return ForkedProcess(pid, os.fdopen(write_end, "wb"))


def _become_main(read_end: int, write_end: int, log: int, env: dict[str, str]) -> None:
    """In the forked child: shed the scheduler, run main, and exit."""
    code = 1
    try:
        name_process(MAIN_PROCESS_NAME)
        os.setsid()  # a group of its own, as spawn_main gives
        # The scheduler's handlers write the signal to its event loop's
        # wakeup fd, which this process shares: main's signals are its own.
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        atexit._clear()  # noqa: SLF001  (the scheduler's handlers, not main's)
        os.dup2(read_end, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        for fd in (read_end, write_end, log):
            os.close(fd)
        os.environ.clear()
        os.environ.update(env)
        _scrub_initial_environment(WITHHELD)
        # dask read its configuration from the scheduler's environment, where
        # DASK_BATCH_SECRET_KEY became `batch_secret_key`: read it again from
        # main's, as a new interpreter would.
        dask.config.refresh()
        # Unbuffered, as PYTHONUNBUFFERED gives a new interpreter: the log
        # is read while main runs.
        sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", False)))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", False), write_through=True)
        sys.stderr = io.TextIOWrapper(
            io.FileIO(2, "w", False), write_through=True, errors="backslashreplace"
        )
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(sys.stderr)
        from dask_batch.runtime import child as _child

        sys.argv = [_child.__file__]
    except BaseException:
        traceback.print_exc()
        os._exit(code)
    run_to_exit(_child.main)


class MainProcess:
    """Main's process as the runner drives it.

    Parameters
    ----------
    popen : subprocess.Popen or ForkedProcess
        Started by :func:`spawn_main` or :func:`fork_main`, waiting for its
        launch on stdin.
    """

    def __init__(self, popen: subprocess.Popen[bytes] | ForkedProcess) -> None:
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
    log_path = os.path.join(workdir, LOG_FILE)
    popen = fork_main(log_path) if can_fork() else spawn_main(log_path)
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
