"""Main's process of an array job: hands the elements to the workers.

An array job runs one main process beside the scheduler, as any job does;
its main is :func:`drive_array`. That process orchestrates only: it hands
chunks of elements to the job's workers as Dask tasks
(:mod:`~dask_batch.runtime.element_work`), at most as many at once as the
workers have threads (``max_parallel`` can only lower that), retries the
elements whose error ``retry_on`` names, and keeps the elements' states in
shards (:mod:`~dask_batch.core.elements`). Each shard's values are stored,
signed with the job key, as soon as its last element ends, and then dropped
from memory: the scheduler's host holds one process and a few shards'
values whatever the array's size.

Main's process; imports nothing from the client or service.
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import logging
import os
import sys
import tarfile
import time
from dataclasses import dataclass, field
from typing import Any

from dask_batch.core.elements import (
    ArrayShape,
    shard_result_name,
)
from dask_batch.core.records import JobState
from dask_batch.core.signing import load_signed_result, shard_key, spec_is_signed
from dask_batch.runtime.array_states import ElementStates
from dask_batch.runtime.element_work import ElementWork, run_chunk, same_work
from dask_batch.runtime.handoff import named_in
from dask_batch.storage.elements import read_shards
from dask_batch.storage.store import SPEC, JobStore

__all__: list[str] = []

logger = logging.getLogger("dask_batch.array")

# Elements per Dask task: enough that a trivial element costs little more
# than its own work, few enough that the states stay current.
MAX_CHUNK = 100
# Seconds between looks at the workers while no chunk ends.
WINDOW_CHECK = 1.0
# Work whose payload is at most this travels with every chunk's task.
INLINE_WORK_BYTES = 1 << 20
# Runs of one element lost with their worker before it counts as failed.
MAX_LOST_RUNS = 3
# Element logs being written at once (a failed element's traceback, a
# script's output); the loop waits when this many are in flight.
MAX_LOG_WRITES = 64


class ElementsFailed(Exception):
    """Some elements did not succeed (the job fails with ``TasksFailed``)."""


@dataclass
class ArrayWork:
    """An array job's payload: what its elements run.

    ``items`` are the function's arguments, one per element (empty for a
    script array, whose elements differ only by index).
    """

    kind: str
    func: Any = None
    items: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    script: tuple[str, bytes, list[str]] | None = None


@dataclass
class ArrayRuntime:
    """What main's process knows that the payload does not carry."""

    store: JobStore
    user: str
    job_id: str
    job_key: str
    env: dict[str, str] = field(repr=False)
    upstream_keys: dict[str, str] = field(repr=False)
    client: Any
    job: dict[str, Any]
    has_files: bool = False


def drive_array(work: ArrayWork, *, runtime: ArrayRuntime) -> dict[str, Any]:
    """Run every element of the array on the workers; a summary of the run.

    Raises ElementsFailed when an element did not succeed.
    """
    spec = runtime.store.get_json(runtime.user, runtime.job_id, SPEC)
    if not isinstance(spec, dict) or not spec_is_signed(runtime.job_key, spec):
        raise RuntimeError("the job's spec is not signed with its key")
    shape = ArrayShape.from_spec(spec)
    assert shape is not None
    driver = ArrayDriver(work, runtime, spec, shape)
    return driver.run()


class ArrayDriver:
    """The elements of one array, handed to the workers and kept in shards."""

    def __init__(
        self,
        work: ArrayWork,
        runtime: ArrayRuntime,
        spec: dict[str, Any],
        shape: ArrayShape,
    ) -> None:
        self.work, self.rt, self.shape = work, runtime, shape
        # An earlier run whose succeeded elements this one takes over
        # (resubmit), as the signed spec says.
        self.reuses = str(spec.get("reuses") or "")
        self.indices = list(shape.indices())
        limit = spec.get("max_parallel")
        self.max_parallel = limit if isinstance(limit, int) and limit > 0 else None
        self.retries = int(spec.get("retries") or 0)
        self.payload_bytes = int(spec.get("payload_bytes") or 0)
        self.retry_on = [str(n) for n in spec.get("retry_on") or []]
        self.states = ElementStates(
            runtime.store, runtime.user, runtime.job_id, runtime.job_key, shape
        )
        self.lost_runs: collections.Counter[int] = collections.Counter()
        self.logs = concurrent.futures.ThreadPoolExecutor(4, "dask-batch-logs")
        self.log_writes: collections.deque[concurrent.futures.Future[None]] = (
            collections.deque()
        )

    def _store_log(self, index: int, attempt: int, text: str) -> None:
        if not text:
            return
        while len(self.log_writes) >= MAX_LOG_WRITES:
            self.log_writes.popleft().result()
        self.log_writes.append(
            self.logs.submit(
                self.rt.store.put_log_chunk,
                self.rt.user,
                self.rt.job_id,
                attempt,
                0,
                text.encode(),
                task=str(index),
            )
        )

    # -- the run ---------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        states = self.states
        to_run = self._take_over_earlier()
        states.start()
        try:
            self._run_elements(to_run)
        finally:
            for write in self.log_writes:
                try:
                    write.result()
                except Exception:
                    logger.warning("dask-batch: an element's log was not stored")
            self.logs.shutdown()
            states.close()
        took = time.monotonic() - started
        print(
            f"dask-batch: array job {self.rt.job_id}: {self.shape.count} elements "
            f"in {took:.1f} s; {states.writes} storage writes of states and values, "
            f"{states.written} bytes ({states.writes / max(took, 1e-3):.1f} writes/s)",
            file=sys.stderr,
        )
        return self._outcome()

    def _outcome(self) -> dict[str, Any]:
        failed = self.states.counts["FAILED"]
        if not failed:
            return {"elements": self.shape.count, "shards": self.shape.shards}
        position, error = self.states.first_failure()
        first = self.indices[position]
        detail = f"{error.get('type', 'Error')}: {error.get('message', '')}"
        raise ElementsFailed(
            f"{failed} of {self.shape.count} elements failed; element {first}: "
            f"{detail}. See its log: dask batch logs {self.rt.job_id} --task {first}"
        )

    def _take_over_earlier(self) -> list[int]:
        """Positions to run: all, but those an earlier run already did."""
        earlier = self.reuses
        if not earlier:
            return list(range(self.shape.count))
        key = self.rt.upstream_keys[earlier]
        shards = read_shards(
            self.rt.store, self.rt.user, earlier, self.shape, range(self.shape.shards)
        )
        to_run = []
        for shard in shards:
            values: list[Any] | None = None
            if shard.result and any(s is JobState.SUCCEEDED for s in shard.states):
                values = load_signed_result(
                    self.rt.store,
                    self.rt.user,
                    earlier,
                    shard_key(key, shard.number),
                    name=shard_result_name(shard.number),
                    digest=shard.result.get("digest") or "",
                    signature=str(shard.result.get("hmac") or ""),
                    what=f"values of elements {shard.first}+ of job {earlier}",
                )
            for offset, state in enumerate(shard.states):
                position = shard.first + offset
                if values is not None and state is JobState.SUCCEEDED:
                    self.states.set(
                        position,
                        JobState.SUCCEEDED,
                        value=values[offset],
                        reused_from=earlier,
                    )
                else:
                    to_run.append(position)
        return to_run

    def _work(self) -> ElementWork:
        job = dict(self.rt.job)
        process_env = {k: v for k, v in os.environ.items() if k.startswith("FSSPEC_")}
        return ElementWork(
            kind=self.work.kind,
            job=job,
            func=self.work.func,
            kwargs=dict(self.work.kwargs),
            script=self.work.script,
            files=_pack_cwd() if self.rt.has_files else b"",
            env=dict(self.rt.env),
            process_env=process_env,
        )

    def _window(self) -> int:
        try:
            threads = sum(self.rt.client.nthreads().values())
        except Exception:
            threads = 0
        # Twice the slots keeps every thread busy while results travel back;
        # with no worker yet, one chunk asks an adaptive cluster to grow.
        window = max(2 * threads, 1)
        return min(window, self.max_parallel) if self.max_parallel else window

    def _chunk_size(self, remaining: int, window: int) -> int:
        if self.work.kind == "script":
            return 1
        return max(1, min(MAX_CHUNK, remaining // (window * 4)))

    def _run_elements(self, to_run: list[int]) -> None:
        from distributed import wait
        from distributed.client import FuturesCancelledError

        client = self.rt.client
        work = self._work_for_tasks(client)
        queue: collections.deque[tuple[int, int]] = collections.deque(
            (p, 1) for p in to_run
        )
        flying: dict[Any, list[tuple[int, int]]] = {}
        while queue or flying:
            window = self._window()
            while queue and len(flying) < window:
                size = self._chunk_size(len(queue), window)
                chunk = [queue.popleft() for _ in range(min(size, len(queue)))]
                attempt = chunk[0][1]
                # Same attempt in one chunk: retries go alone.
                while len(chunk) > 1 and chunk[-1][1] != attempt:
                    queue.appendleft(chunk.pop())
                elements = [(p, self.indices[p], self._item(p)) for p, _ in chunk]
                future = client.submit(run_chunk, work, elements, attempt, pure=False)
                flying[future] = chunk
                self.states.set(chunk[0][0], JobState.RUNNING)
            try:
                # A bounded wait: workers that join meanwhile widen the window.
                wait(list(flying), timeout=WINDOW_CHECK, return_when="FIRST_COMPLETED")
            except TimeoutError:
                continue
            except FuturesCancelledError:
                pass  # lost with a worker: settled below, as any that ended
            finished = [f for f in flying if f.status != "pending"]
            for future in finished:
                chunk = flying.pop(future)
                for retry in self._settle(future, chunk):
                    queue.appendleft(retry)

    def _lost_again(self, position: int) -> bool:
        """Whether an element lost with its worker may run again."""
        self.lost_runs[position] += 1
        return self.lost_runs[position] <= MAX_LOST_RUNS

    def _lost_entry(self, position: int, attempt: int) -> dict[str, Any]:
        error = {
            "type": "distributed.client.FutureCancelledError",
            "message": f"lost with its worker {MAX_LOST_RUNS + 1} times",
        }
        return {
            "position": position,
            "ok": False,
            "error": error,
            "log": "",
            "attempt": attempt,
        }

    def _work_for_tasks(self, client: Any) -> Any:
        """What each chunk's task is given: the work itself when its payload
        is small (each task stands alone: any worker can run it, and a worker
        lost is no loss), else a task that gives it (the scheduler runs it
        again when the worker holding it dies). Either way Dask carries it
        within the job's own cluster; nothing is unpickled from storage."""
        work = self._work()
        if self.payload_bytes <= INLINE_WORK_BYTES:
            return work
        return client.submit(same_work, work, pure=False)

    def _item(self, position: int) -> Any:
        return self.work.items[position] if self.work.items else None

    def _settle(
        self, future: Any, chunk: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """Record how a chunk went; the elements to try again."""
        again: list[tuple[int, int]] = []
        try:
            entries = future.result()
        except concurrent.futures.CancelledError:
            # Lost with its worker (Dask gave up on it): the elements did not
            # end, so they run again, a few times at most.
            again = [(p, a) for p, a in chunk if self._lost_again(p)]
            entries = [self._lost_entry(p, a) for p, a in chunk if (p, a) not in again]
        except Exception as exc:  # the chunk's worker died, or it was lost
            cls = type(exc)
            error = {
                "type": f"{cls.__module__}.{cls.__qualname__}",
                "message": str(exc)[:2000],
            }
            entries = [
                {"position": p, "ok": False, "error": error, "log": "", "attempt": a}
                for p, a in chunk
            ]
        finally:
            future.release()
        retries = list(again)
        for entry in entries:
            position, attempt = int(entry["position"]), int(entry["attempt"])
            index = self.indices[position]
            if (
                not entry["ok"]
                and attempt <= self.retries
                and named_in(self.retry_on, str(entry["error"].get("type", "")))
            ):
                retries.append((position, attempt + 1))
                self._store_log(index, attempt, entry.get("log", ""))
                continue
            fields: dict[str, Any] = {}
            if entry.get("started") is not None:
                fields.update(started=entry["started"], finished=entry["finished"])
            if attempt > 1:
                fields["attempts"] = attempt
            if entry["ok"]:
                self.states.set(
                    position, JobState.SUCCEEDED, value=entry["value"], **fields
                )
            else:
                self.states.set(
                    position, JobState.FAILED, errors=entry["error"], **fields
                )
            self._store_log(index, attempt, entry.get("log", ""))
        return list(reversed(retries))


def _pack_cwd() -> bytes:
    """Main's working directory (the uploaded files it checked), packed for
    the workers."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in sorted(os.listdir(".")):
            tar.add(name)
    return buffer.getvalue()
