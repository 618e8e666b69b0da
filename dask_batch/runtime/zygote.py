"""One process that forks the main processes of a pipeline's or array's tasks.

A task's main process started as a new interpreter spends ~0.35 s of CPU
importing what every main needs before it runs anything; an array of a
hundred tiny elements would spend most of its time there. So the runner
turns one main process (the one started while the scheduler started, or a
new one) into a *zygote*: it has those imports done, runs no thread, and
forks one main process per task on request. Each child sheds the zygote
(its own session, its own log as stdout and stderr, a watcher that ends it
with its parent) and runs its :class:`~dask_batch.runtime.handoff.MainLaunch`.

The protocol: the runner writes ``zygote FIFO`` as the first line of the
process's stdin, then one JSON line per task, ``{"log": path, "launch":
{...}}``; the zygote answers on the FIFO (a named pipe in the runner's
private folder) with ``start PID`` for each request, and ``exit PID CODE``
when a child ends. A child runs its launch only after its ``start`` line is
written, so the runner knows of every task that ran. When its stdin closes
(the task graph ended, or the scheduler died), the zygote kills what is left
of its children and exits.

Scheduler side: imports nothing from the client or CLI modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from dask_batch.runtime.forking import (
    MAIN_PROCESS_NAME,
    exit_with_parent,
    fork_held,
    name_process,
    run_to_exit,
    write_then_release,
)
from dask_batch.runtime.handoff import MainLaunch

#: What runs one launch in a forked main process.
RunLaunch = Callable[[MainLaunch], None]

#: The first line that turns a waiting main process into a zygote.
COMMAND = b"zygote"
#: What ``ps -o comm`` shows for a zygote (15 characters at most, as the kernel
#: keeps them; its children show "dask-batch-main").
ZYGOTE_NAME = "dask-batch-fork"


# -- in the zygote's process ----------------------------------------------------------
def serve(stdin: int, fifo_path: str, run_launch: RunLaunch) -> None:
    """Fork a main process per request line on ``stdin`` until it closes.

    Each runs ``run_launch`` with its launch (main's process passes in its own
    runner of launches: this module is also the runner's, and imports no
    part of main's process).
    """
    name_process(ZYGOTE_NAME)
    replies = os.open(fifo_path, os.O_WRONLY)
    children: dict[int, int] = {}  # pidfd -> pid
    pending = b""
    try:
        while True:
            ready, _, _ = select.select([stdin, *children], [], [])
            for fd in ready:
                if fd == stdin:
                    data = os.read(stdin, 1 << 20)
                    if not data:
                        return
                    *lines, pending = (pending + data).split(b"\n")
                    for line in lines:
                        pid, hold = _fork_child(
                            json.loads(line), replies, children, run_launch
                        )
                        children[os.pidfd_open(pid)] = pid
                        write_then_release(replies, f"start {pid}\n".encode(), hold)
                else:
                    pid = children.pop(fd)
                    os.close(fd)
                    _, status = os.waitpid(pid, 0)
                    code = os.waitstatus_to_exitcode(status)
                    os.write(replies, f"exit {pid} {code}\n".encode())
    finally:
        for pid in children.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        for pid in children.values():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        os.close(replies)


def _fork_child(
    request: dict[str, Any],
    replies: int,
    children: dict[int, int],
    run_launch: RunLaunch,
) -> tuple[int, int]:
    """The child's pid, and its hold (see :func:`fork_held`)."""
    launch = MainLaunch(**request["launch"])
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()  # else the child would write the zygote's buffer too
    zygote = os.getpid()
    # Held until the runner has its pid: a zygote that died first leaves no
    # task running that the runner would start again.
    pid, hold = fork_held()
    if pid:
        os.close(log)
        return pid, hold
    # pragma: no cover - the child's coverage is not collected

    def run() -> None:
        name_process(MAIN_PROCESS_NAME)
        os.setsid()  # a group of its own: stopping the task stops what it started
        for fd in (replies, *children):
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(devnull)
        os.close(log)
        threading.Thread(target=exit_with_parent, args=(zygote,), daemon=True).start()
        run_launch(launch)

    run_to_exit(run)
    raise AssertionError("unreachable")  # run_to_exit never returns


# -- in the runner -------------------------------------------------------------------
class ZygoteChild:
    """A task's main process forked by the zygote, as the runner drives it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ended: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def returncode(self) -> int | None:
        return self.ended.result() if self.ended.done() else None

    def launch(self, data: bytes) -> None:
        """Nothing to do: the zygote handed the child its launch."""

    async def wait(self) -> int:
        return await asyncio.shield(self.ended)

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


class Zygote:
    """The runner's side of a zygote: ask for children, learn when they end.

    Parameters
    ----------
    process : MainProcess
        A main process waiting for its first line on stdin.
    folder : str
        The runner's private folder, where the reply FIFO is made.
    """

    def __init__(self, process: Any, folder: str) -> None:
        self.process = process
        self.fifo = os.path.join(folder, "zygote.fifo")
        self._replies = -1
        self._buffer = b""
        self._starts: asyncio.Queue[int] = asyncio.Queue()
        self._children: dict[int, ZygoteChild] = {}
        self._lock = asyncio.Lock()
        self._exited: asyncio.Future[int] | None = None
        self._dead = False

    @classmethod
    async def open(cls, process: Any, folder: str) -> tuple[Zygote | None, str]:
        """A started zygote made of ``process``, or (None, why) if it is gone."""
        zygote = cls(process, folder)
        try:
            await zygote.start()
        except OSError as exc:
            await zygote.close()
            return None, str(exc)
        return zygote, ""

    async def start(self) -> None:
        """Make the process a zygote; OSError if it is gone already."""
        os.mkfifo(self.fifo, 0o600)
        # Opened before the zygote opens its end: its open() does not block.
        self._replies = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
        asyncio.get_running_loop().add_reader(self._replies, self._read)
        # A zygote that dies before it opens its end never sends EOF: its
        # exit is watched too.
        self._exited = asyncio.ensure_future(self.process.wait())
        self._write(COMMAND + b" " + self.fifo.encode() + b"\n")

    def _write(self, data: bytes) -> None:
        stdin = self.process.popen.stdin
        stdin.write(data)
        stdin.flush()

    def _drain(self) -> None:
        while self._replies >= 0 and not self._dead and self._read():
            pass

    def _read(self) -> bool:
        """Handle what the zygote wrote; False once nothing more is waiting."""
        try:
            data = os.read(self._replies, 65536)
        except BlockingIOError:
            return False
        if not data:  # the zygote is gone: so are its children
            self._gone()
            return False
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            kind, _, rest = line.decode().partition(" ")
            if kind == "start":
                self._starts.put_nowait(int(rest))
            elif kind == "exit":
                pid, code = (int(x) for x in rest.split())
                child = self._children.pop(pid, None)
                if child is not None and not child.ended.done():
                    child.ended.set_result(code)
        return True

    def _gone(self) -> None:
        if self._dead:
            return
        self._dead = True
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(self._replies)
        for child in self._children.values():
            if not child.ended.done():
                child.ended.set_result(-signal.SIGKILL)
        self._children.clear()
        self._starts.put_nowait(-1)

    async def fork(self, log_path: str, launch: MainLaunch) -> ZygoteChild:
        """A new main process running ``launch``, its output in ``log_path``."""
        async with self._lock:  # one request at a time: replies come in order
            if self._dead:
                raise RuntimeError("the task launcher exited")
            request = json.dumps(
                {"log": log_path, "launch": json.loads(launch.to_json())}
            )
            try:
                self._write(request.encode() + b"\n")
            except (BrokenPipeError, OSError) as exc:
                raise RuntimeError(f"the task launcher exited ({exc})") from None
            assert self._exited is not None, "start() first"
            started = asyncio.ensure_future(self._starts.get())
            await asyncio.wait(
                {started, self._exited}, return_when=asyncio.FIRST_COMPLETED
            )
            if not started.done():
                # A reply it wrote before it died still counts: that child
                # ran (and dies with it).
                self._drain()
                self._gone()
            pid = await started
            if pid < 0:
                raise RuntimeError("the task launcher exited")
            child = ZygoteChild(pid)
            if self._dead:
                child.ended.set_result(-signal.SIGKILL)
            else:
                self._children[pid] = child
            return child

    async def close(self) -> None:
        """End the zygote (it kills what is left of its children)."""
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            self.process.popen.stdin.close()
        if self._exited is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._exited), timeout=30)
            except asyncio.TimeoutError:
                self.process.signal_group(signal.SIGKILL)
                await self._exited
        if self._replies >= 0:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._replies)
            os.close(self._replies)
            self._replies = -1
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.fifo)
