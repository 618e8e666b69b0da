"""What a process forked from a running one needs: a name, and a clean exit.

Used in main's processes forked from the scheduler and from a zygote; imports
nothing else of dask-batch.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

# What `ps -o comm` and /proc/PID/comm show for a forked main's process (its
# command line stays the scheduler's).
MAIN_PROCESS_NAME = "dask-batch-main"


def name_process(name: str) -> None:
    """Set this process's name as the kernel shows it (Linux; else nothing)."""
    with contextlib.suppress(Exception):
        import ctypes

        pr_set_name = 15
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_name, name.encode(), 0, 0, 0)


def initial_areas() -> tuple[tuple[int, int], tuple[int, int]]:
    """(start, end) of this process's initial argument and environment blocks:
    what the kernel shows as ``/proc/PID/cmdline`` and ``/proc/PID/environ``,
    which a forked process keeps from its parent."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields 48 to 51 of proc(5): arg_start, arg_end, env_start, env_end.
    arg_start, arg_end, env_start, env_end = (int(fields[n - 3]) for n in range(48, 52))
    return (arg_start, arg_end), (env_start, env_end)


def fork_held() -> tuple[int, int]:
    """``os.fork()``, with the child held until :func:`write_then_release`.

    Returns ``(pid, hold)`` in the parent and ``(0, -1)`` in the child once it
    is released. A zygote releases a child only after it has told its driver
    the pid: a zygote that dies in between (or closes ``hold``) leaves no
    child running that nobody knows of, since the child then exits unrun.
    """
    held, hold = os.pipe()
    pid = os.fork()
    if pid:
        os.close(held)
        return pid, hold
    os.close(hold)
    released = os.read(held, 1)
    os.close(held)
    if not released:
        os._exit(70)
    return 0, -1


def write_then_release(fd: int, data: bytes, hold: int) -> None:
    """Write ``data`` (the reply that names the child) to ``fd``, then let the
    child of :func:`fork_held` go on; if the write fails, the child exits
    unrun. ``hold`` -1: no child, only the write."""
    try:
        os.write(fd, data)
        if hold >= 0:
            os.write(hold, b"1")
    finally:
        if hold >= 0:
            os.close(hold)


def run_to_exit(func: Any) -> None:
    """In a forked process: run ``func`` as an interpreter runs a program,
    then exit with its status; never returns into the code that forked."""
    code = 1
    try:
        try:
            func()
            code = 0
        except SystemExit as exc:
            if isinstance(exc.code, int) or exc.code is None:
                code = exc.code or 0
            else:  # sys.exit("message"), as an interpreter prints it
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        # What the interpreter does at exit, which has no public twin:
        # threading's exit hooks (they stop idle executor threads, which a
        # plain join would wait on forever) and the wait for other
        # non-daemon threads, then the atexit handlers, then flush.
        threading._shutdown()  # type: ignore[attr-defined]  # noqa: SLF001
        atexit._run_exitfuncs()  # noqa: SLF001
        logging.shutdown()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(int(code))


def exit_with_parent(parent: int) -> None:
    # The gateway signals the scheduler only; if the scheduler dies without
    # closing its plugins (SIGKILL), main must not live on as an orphan. The
    # runner passes its pid: it may have died before this process got here.
    while os.getppid() == parent:
        time.sleep(0.5)
    # The runner started this process as the leader of its own group: take
    # what main started (a kernel, a command) down too.
    if os.getpgid(0) == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os._exit(70)
