"""One process that forks the embedded local gateway's schedulers and workers.

Each cluster of the local gateway is a scheduler process (and a nanny per
worker). Started as a new interpreter, a scheduler spends ~0.5 s of CPU
importing distributed and dask-gateway's preload before it does anything;
for a short job on a small machine that is most of what its cluster costs.
So the gateway keeps one *zygote*: a process that has done those imports,
runs no thread, and forks each scheduler and nanny on request.

Each child becomes what ``python -m MODULE ARGS`` would have been: its own
session, the cluster's working directory, its log as stdout and stderr, the
request's environment (shown in ``/proc/PID/environ`` too) and command line
(``/proc/PID/cmdline``), dask's configuration read again from that
environment, and fresh random state; then it runs the module as ``__main__``.
A request the zygote cannot serve faithfully (another interpreter, a module
it has not imported, a ``PYTHON*`` variable of its own, an environment too
big for the room the zygote reserved) is refused, and the gateway starts a
new interpreter, as dask-gateway's LocalBackend does.

The protocol, one JSON object per line: the zygote writes ``{"ready": true}``
once its imports are done; each request on its stdin, ``{"cmd": [...],
"env": {...}, "cwd": ..., "log": ...}``, gets ``{"pid": N}`` or ``{"refused":
why}`` on its stdout. The zygote reaps its children as they end, so the
gateway's ``kill(pid, 0)`` sees them gone. When its stdin closes (the gateway
stopped or died) it keeps reaping until its last child has ended, then exits:
clusters outlive their gateway here as they do on dask-gateway's backends.

Gateway side (the local gateway's process); the child runs distributed's
own command-line modules.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import select
import sys
import threading
import types
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from dask_batch.runtime.forking import (
    fork_held,
    initial_areas,
    name_process,
    run_to_exit,
    write_then_release,
)

#: Modules the zygote imports, so that its children need not; a command
#: ``python -m MODULE`` is forked only for these. Preloads other than
#: dask-gateway's are left out: importing one may start work at once.
WARMED_MODULES = (
    "distributed.cli.dask_scheduler",
    "distributed.cli.dask_worker",
    "dask_gateway.scheduler_preload",
)
#: What ``ps -o comm`` shows for the zygote (15 characters at most).
ZYGOTE_NAME = "dask-batch-gw"
#: An environment variable of the zygote that only reserves room: a child
#: writes its own environment and command line over the zygote's initial
#: ones (what the kernel shows in ``/proc/PID/environ`` and ``cmdline``).
ROOM_VARIABLE = "DASK_BATCH_ZYGOTE_ROOM"
#: Bytes reserved (the kernel takes up to 128 KiB per variable): a cluster's
#: environment is a few KiB; a bigger one is started as a new interpreter.
ROOM = 120_000
#: Characters of a last argument of the zygote's that only reserves room for
#: its children's command lines.
ARG_ROOM = 16_000
#: How long the gateway waits for the zygote's imports, then for a reply.
READY_TIMEOUT = 60.0
REPLY_TIMEOUT = 30.0


class ZygoteUnavailable(RuntimeError):
    """The zygote cannot start this process; start a new interpreter."""


# -- in the zygote's process ----------------------------------------------------------
def _interpreter_variables(env: Mapping[str, str]) -> dict[str, str]:
    # Read by the interpreter at start-up only: a child forked from an
    # interpreter started with other values would not honour them.
    return {k: v for k, v in env.items() if k.startswith("PYTHON")}


def refusal(cmd: Sequence[str], env: Mapping[str, str]) -> str | None:
    """Why the zygote cannot start ``cmd`` with ``env`` faithfully (None: it can)."""
    if len(cmd) < 3 or cmd[0] != sys.executable or cmd[1] != "-m":
        return "not this interpreter's `python -m MODULE`"
    if cmd[2] not in WARMED_MODULES:
        return f"module {cmd[2]} is not imported in the zygote"
    if _interpreter_variables(env) != _interpreter_variables(os.environ):
        return "PYTHON* variables differ from the zygote's"
    (arg_start, arg_end), (env_start, env_end) = initial_areas()
    if len(_environment_block(env)) > env_end - env_start:
        return "environment bigger than the zygote's reserved room"
    if len(_title(cmd)) >= arg_end - arg_start:
        return "command line longer than the zygote's reserved room"
    return None


def _environment_block(env: Mapping[str, str]) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())


def _title(cmd: Sequence[str]) -> bytes:
    return " ".join(cmd).encode() + b"\0"


def _write_area(area: tuple[int, int], data: bytes, filler: bytes) -> None:
    import ctypes

    start, end = area
    size = end - start
    if len(data) > size:
        raise ValueError("does not fit")
    ctypes.memmove(start, data + filler * (size - len(data)), size)


def take_identity(cmd: Sequence[str], env: Mapping[str, str]) -> None:
    """Make ``env`` this process's environment, and ``cmd`` its command line,
    as ``/proc/PID/environ`` and ``/proc/PID/cmdline`` (and so ``ps``) show them.

    ``os.environ`` first, so that the C library's environment no longer
    points into the initial block (it copies what it is given); then the
    initial blocks are overwritten. The command line is written as
    setproctitle(3) does (one string; the area's last byte not NUL), so the
    kernel shows it without the room's padding.
    """
    os.environ.clear()
    os.environ.update(env)
    args, environment = initial_areas()
    _write_area(environment, _environment_block(env), b"\0")
    _write_area(args, _title(cmd), b" ")


def serve(stdin: int = 0, stdout: int = 1) -> None:
    """Import the warmed modules, then fork a child per request until stdin
    closes and the last child has ended."""
    name_process(ZYGOTE_NAME)
    os.close(os.pidfd_open(os.getpid()))  # Linux 5.3: else exit before "ready"
    for module in WARMED_MODULES:
        importlib.import_module(module)
    # Forking a process that runs other threads copies their locks held.
    if threading.active_count() > 1:
        raise SystemExit(
            f"dask-batch zygote: {threading.active_count()} threads after imports; "
            "not forking (the gateway starts new interpreters instead)"
        )
    # Its own environment, without the reserved room, is what `ps e` shows.
    own = {k: v for k, v in os.environ.items() if k != ROOM_VARIABLE}
    take_identity(sys.orig_argv[:-1], own)
    os.write(stdout, b'{"ready": true}\n')
    children: dict[int, int] = {}  # pidfd -> pid
    pending = b""
    open_stdin = True
    while open_stdin or children:
        watched = [stdin] if open_stdin else []
        ready, _, _ = select.select(watched + list(children), [], [])
        for fd in ready:
            if fd == stdin:
                data = os.read(stdin, 1 << 20)
                if not data:
                    open_stdin = False
                    continue
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    reply, hold = _answer(json.loads(line), stdin, stdout, children)
                    data = json.dumps(reply).encode() + b"\n"
                    write_then_release(stdout, data, hold)
            else:
                pid = children.pop(fd)
                os.close(fd)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)


def _answer(
    request: dict[str, Any], stdin: int, stdout: int, children: dict[int, int]
) -> tuple[dict[str, Any], int]:
    """The reply to ``request``, and the hold of the child it forked (-1: none)."""
    cmd, env = request["cmd"], request["env"]
    why = refusal(cmd, env)
    if why is not None:
        return {"refused": why}, -1
    try:
        # As dask-gateway's LocalBackend opens it: never an existing file.
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return {"refused": f"cannot open the log: {exc}"}, -1
    # Held until the gateway has its pid: a zygote that died first fails
    # that cluster, and must leave no scheduler running that nobody knows of.
    pid, hold = fork_held()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        _become(cmd, env, request["cwd"], log, [stdin, stdout, *children])
    os.close(log)
    children[os.pidfd_open(pid)] = pid
    return {"pid": pid}, hold


def _become(
    cmd: Sequence[str], env: Mapping[str, str], cwd: str, log: int, fds: list[int]
) -> None:
    """In the forked child: become ``python -m MODULE ARGS``; never returns."""

    def run() -> None:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        for fd in {devnull, log, *fds} - {0, 1, 2}:
            os.close(fd)
        os.chdir(cwd)
        name_process(os.path.basename(sys.executable)[:15])
        take_identity(cmd, env)
        import dask.config

        # Read at import from the zygote's environment: read them again
        # from this one's, as a new interpreter would.
        dask.config.refresh()
        # Logging levels too (``DASK_LOGGING__...``), as `import distributed` set
        # them in the zygote; its handlers are kept, not doubled.
        from distributed.config import initialize_logging

        initialize_logging(dask.config.config)
        # Python's random reseeds itself at a fork; NumPy's does not.
        numpy_random = sys.modules.get("numpy.random")
        if numpy_random is not None:
            numpy_random.seed()
        _run_as_main(cmd[2], cmd[3:])

    run_to_exit(run)


def _run_as_main(module: str, args: Sequence[str]) -> None:
    """Run ``module`` as ``python -m module args`` would, in a new ``__main__``.

    Not ``runpy.run_module``: it warns that the module was imported already,
    which here is the point.
    """
    spec = importlib.util.find_spec(module)
    if spec is None or spec.loader is None or spec.origin is None:
        raise SystemExit(f"No module named {module}")
    code = spec.loader.get_code(module)  # type: ignore[attr-defined]
    main = types.ModuleType("__main__")
    main.__dict__.update(
        __file__=spec.origin,
        __cached__=spec.cached,
        __loader__=spec.loader,
        __package__=spec.parent,
        __spec__=spec,
    )
    # multiprocessing's spawn (the nanny's worker) starts from __main__'s spec.
    sys.modules["__main__"] = main
    sys.argv = [spec.origin, *args]
    exec(code, main.__dict__)


# -- in the gateway ------------------------------------------------------------------
class ClusterZygote:
    """The gateway's side of a zygote: start one, ask it for processes.

    :meth:`start` it, then :meth:`spawn` each process; what it cannot start
    raises :class:`ZygoteUnavailable`. Runs in the gateway's event loop.
    """

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._ready: asyncio.Future[None] | None = None
        self._closed = False
        self._lock = asyncio.Lock()

    def start(self, inherited: Collection[str] = ()) -> None:
        """Start the zygote in the background; :meth:`spawn` waits for it.

        Its environment is this process's without the ``PYTHON*`` variables
        that are not ``inherited`` by the processes it starts: a request
        whose interpreter variables differ from the zygote's is refused.
        """
        env = {
            k: v
            for k, v in os.environ.items()
            if k in inherited or k not in _interpreter_variables(os.environ)
        }
        env[ROOM_VARIABLE] = "x" * ROOM
        self._ready = asyncio.ensure_future(self._start(env))

    async def _start(self, env: dict[str, str]) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            "x" * ARG_ROOM,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            # Away from the gateway's signals: its clusters outlive it.
            start_new_session=True,
        )
        reply = await self._reply(READY_TIMEOUT)
        if not reply.get("ready"):
            raise ZygoteUnavailable(f"unexpected first line {reply}")

    @property
    def started(self) -> bool:
        """Whether the zygote did its imports and said it was ready."""
        return bool(self._ready and self._ready.done() and not self._ready.exception())

    @property
    def failed_to_start(self) -> bool:
        """Whether the zygote never got ready (a new one would fail alike)."""
        return bool(self._ready and self._ready.done() and self._ready.exception())

    @property
    def alive(self) -> bool:
        """Whether the zygote still takes requests."""
        return (
            not self._closed
            and self._process is not None
            and self._process.returncode is None
        )

    async def _reply(self, timeout: float) -> dict[str, Any]:
        assert self._process is not None and self._process.stdout is not None
        try:
            line = await asyncio.wait_for(self._process.stdout.readline(), timeout)
        except asyncio.TimeoutError:
            self.close()
            raise ZygoteUnavailable(f"no answer in {timeout:.0f} s") from None
        if not line:
            self.close()
            raise ZygoteUnavailable("the zygote exited")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def spawn(
        self, cmd: Sequence[str], env: Mapping[str, str], cwd: str, log_path: str
    ) -> int:
        """A new process running ``cmd`` with ``env`` in ``cwd``, its output in
        ``log_path`` (a new file); its pid.

        Raises
        ------
        ZygoteUnavailable
            The zygote failed to start, is gone, or refused this request.
        """
        if self._ready is None:
            raise ZygoteUnavailable("not started")
        try:
            await asyncio.shield(self._ready)
        except (OSError, ValueError, ZygoteUnavailable) as exc:
            raise ZygoteUnavailable(f"the zygote did not start: {exc}") from None
        async with self._lock:  # one request at a time: replies come in order
            if not self.alive:
                raise ZygoteUnavailable("the zygote exited")
            assert self._process is not None and self._process.stdin is not None
            request = {"cmd": list(cmd), "env": dict(env), "cwd": cwd, "log": log_path}
            try:
                self._process.stdin.write(json.dumps(request).encode() + b"\n")
                await self._process.stdin.drain()
            except (BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                raise ZygoteUnavailable(f"the zygote exited ({exc})") from None
            reply = await self._reply(REPLY_TIMEOUT)
        if "pid" not in reply:
            raise ZygoteUnavailable(str(reply.get("refused", reply)))
        return int(reply["pid"])

    async def wait(self) -> int | None:
        """Wait for the zygote to exit; its exit code (None if never started)."""
        if self._process is None:
            return None
        return await self._process.wait()

    def close(self) -> None:
        """Take no more requests: the zygote exits once its children have."""
        self._closed = True
        if self._process is not None and self._process.stdin is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._process.stdin.close()


if __name__ == "__main__":
    serve()
