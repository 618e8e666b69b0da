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
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from dask_batch.core.elements import (
    ArrayShape,
    Shard,
    shard_result_name,
)
from dask_batch.core.pickling import dumps_result
from dask_batch.core.records import JobState, to_iso, utcnow
from dask_batch.core.signing import load_signed_result, shard_key, spec_is_signed
from dask_batch.core.tasks import describe_counts
from dask_batch.runtime.element_work import ElementWork, load_work, run_chunk
from dask_batch.storage.elements import read_shards, write_shard
from dask_batch.storage.store import PROGRESS, SPEC, JobStore

__all__: list[str] = []

logger = logging.getLogger("dask_batch.array")

# Shard and progress writes: at most one round per interval.
PUBLISH_INTERVAL = 0.5
# Elements per Dask task: enough that a trivial element costs little more
# than its own work, few enough that the states stay current.
MAX_CHUNK = 100
# Seconds between looks at the workers while no chunk ends.
WINDOW_CHECK = 1.0
# Work that pickles to at most this travels with every chunk's task.
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


def _retry_wanted(error: dict[str, Any], retry_on: list[str]) -> bool:
    kind = str(error.get("type", ""))
    return any(name in (kind, kind.rsplit(".", 1)[-1]) for name in retry_on)


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
        self.retry_on = [str(n) for n in spec.get("retry_on") or []]
        self.shards = {n: Shard.empty(shape, n) for n in range(shape.shards)}
        self.counts = collections.Counter({"PENDING": shape.count})
        self.values: dict[int, dict[int, Any]] = collections.defaultdict(dict)
        self.stored: set[int] = set()  # shards whose values are stored
        self.lost_runs: collections.Counter[int] = collections.Counter()
        self.dirty: set[int] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        # Storage writes of states and values (not logs): reported at the end.
        self.writes = self.written = 0
        self.logs = concurrent.futures.ThreadPoolExecutor(4, "dask-batch-logs")
        self.log_writes: collections.deque[concurrent.futures.Future[None]] = (
            collections.deque()
        )

    # -- states ----------------------------------------------------------------
    def _set(self, position: int, state: JobState, **fields: Any) -> None:
        """Called with the lock held."""
        shard = self.shards[self.shape.shard_of(position)]
        before = shard.state(position)
        shard.set(position, state)
        self.counts[before.value] -= 1
        self.counts[state.value] += 1
        for name, value in fields.items():
            getattr(shard, name)[position] = value
        self.dirty.add(shard.number)

    def _progress(self) -> dict[str, Any]:
        counts = {
            s.value: self.counts[s.value] for s in JobState if self.counts[s.value]
        }
        done = sum(n for s, n in counts.items() if JobState(s).is_terminal)
        return {
            "progress": done / self.shape.count,
            "message": describe_counts(counts),
            "tasks": counts,
            "updated": to_iso(utcnow()),
        }

    # -- storage ---------------------------------------------------------------
    def publish(self) -> bool:
        """Store the shards that changed, the values of shards that ended, and
        the counts; False if storage refused any of it (kept for next time)."""
        with self.lock:
            if not self.dirty:
                return True  # nothing changed since the last round
            dirty, self.dirty = self.dirty, set()
            ended = [
                n for n in dirty if n not in self.stored and self.shards[n].all_ended()
            ]
        ok = True
        for number in sorted(ended):
            ok = self._store_values(number) and ok
        with self.lock:
            docs = [(n, self._copy(n)) for n in sorted(dirty)]
            progress = self._progress()
        for number, shard in docs:
            try:
                self.written += write_shard(
                    self.rt.store, self.rt.user, self.rt.job_id, shard
                )
                self.writes += 1
            except Exception:
                logger.warning("dask-batch: states of shard %d not stored", number)
                with self.lock:
                    self.dirty.add(number)
                ok = False
        try:
            self.rt.store.put_json(self.rt.user, self.rt.job_id, PROGRESS, progress)
            self.writes += 1
        except Exception:
            logger.warning("dask-batch: the array's counts were not stored")
            with self.lock:
                self.dirty.update(dirty)  # tried again next round
            ok = False
        return ok

    def _copy(self, number: int) -> Shard:
        shard = self.shards[number]
        return Shard(
            shard.number,
            shard.first,
            list(shard.states),
            dict(shard.attempts),
            dict(shard.errors),
            dict(shard.started),
            dict(shard.finished),
            dict(shard.reused_from),
            dict(shard.result),
        )

    def _store_values(self, number: int) -> bool:
        positions = self.shape.positions(number)
        with self.lock:
            found = self.values.get(number, {})
            values = [found.get(p) for p in positions]
        try:
            pieces = dumps_result(values)
            digest, signature = self.rt.store.put_pieces(
                self.rt.user,
                self.rt.job_id,
                shard_result_name(number),
                pieces,
                shard_key(self.rt.job_key, number),
            )
        except Exception:
            logger.warning("dask-batch: values of shard %d not stored", number)
            with self.lock:
                self.dirty.add(number)
            return False
        size = sum(memoryview(p).nbytes for p in pieces)
        self.writes, self.written = self.writes + 1, self.written + size
        with self.lock:
            self.shards[number].result = {
                "digest": digest,
                "hmac": signature,
                "bytes": size,
            }
            self.stored.add(number)
            self.values.pop(number, None)  # stored: no longer held here
            self.dirty.add(number)
        return True

    def _publish_periodically(self) -> None:
        while not self.stop.wait(PUBLISH_INTERVAL):
            self.publish()

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
        to_run = self._take_over_earlier()
        publisher = threading.Thread(
            target=self._publish_periodically, name="dask-batch-shards", daemon=True
        )
        publisher.start()
        try:
            self._run_elements(to_run)
        finally:
            self.stop.set()
            publisher.join()
            for write in self.log_writes:
                try:
                    write.result()
                except Exception:
                    logger.warning("dask-batch: an element's log was not stored")
            self.logs.shutdown()
        self._final_publish()
        took = time.monotonic() - started
        print(
            f"dask-batch: array job {self.rt.job_id}: {self.shape.count} elements "
            f"in {took:.1f} s; {self.writes} storage writes of states and values, "
            f"{self.written} bytes ({self.writes / max(took, 1e-3):.1f} writes/s)",
            file=sys.stderr,
        )
        return self._outcome()

    def _final_publish(self) -> None:
        with self.lock:
            self.dirty.update(self.shards)
        for _ in range(5):
            if self.publish():
                return
        raise RuntimeError(
            f"the states of array job {self.rt.job_id!r} could not be stored: "
            "storage refused every try"
        )

    def _outcome(self) -> dict[str, Any]:
        failed = self.counts["FAILED"]
        if not failed:
            return {"elements": self.shape.count, "shards": self.shape.shards}
        first, error = self._first_failure()
        detail = f"{error.get('type', 'Error')}: {error.get('message', '')}"
        raise ElementsFailed(
            f"{failed} of {self.shape.count} elements failed; element {first}: "
            f"{detail}. See its log: dask batch logs {self.rt.job_id} --task {first}"
        )

    def _first_failure(self) -> tuple[int, dict[str, Any]]:
        for shard in self.shards.values():
            for offset, state in enumerate(shard.states):
                if state is JobState.FAILED:
                    position = shard.first + offset
                    return self.indices[position], shard.errors.get(position, {})
        return -1, {}

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
                    with self.lock:
                        self.values[shard.number][position] = values[offset]
                        self._set(position, JobState.SUCCEEDED, reused_from=earlier)
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
                with self.lock:
                    self._set(chunk[0][0], JobState.RUNNING)
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
        """What each chunk's task is given: the work's pickle itself when it
        is small (each task stands alone: any worker can run it, and a worker
        lost is no loss), else a task that makes it (the scheduler computes
        it again when the worker holding it dies)."""
        data = cloudpickle.dumps(self._work())
        if len(data) <= INLINE_WORK_BYTES:
            return data
        return client.submit(load_work, data, pure=False)

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
                and _retry_wanted(entry["error"], self.retry_on)
            ):
                retries.append((position, attempt + 1))
                self._store_log(index, attempt, entry.get("log", ""))
                continue
            fields: dict[str, Any] = {}
            if entry.get("started") is not None:
                fields.update(started=entry["started"], finished=entry["finished"])
            if attempt > 1:
                fields["attempts"] = attempt
            with self.lock:
                if entry["ok"]:
                    self.values[self.shape.shard_of(position)][position] = entry[
                        "value"
                    ]
                    self._set(position, JobState.SUCCEEDED, **fields)
                else:
                    self._set(
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
