"""An array job's element states in main's process, and their storage.

The hand-out loop records how each element went here; a thread stores the
shards that changed, the values of each shard whose last element ended
(signed with a key bound to the shard, then dropped from memory) and the
counts, at most every :data:`PUBLISH_INTERVAL` seconds. A write that storage
refuses is tried again at the next round.

Main's process; imports nothing from the client or service.
"""

from __future__ import annotations

import collections
import copy
import logging
import threading
from typing import Any

from dask_batch.core.elements import ArrayShape, Shard, shard_result_name
from dask_batch.core.pickling import dumps_result
from dask_batch.core.records import JobState, to_iso, utcnow
from dask_batch.core.signing import shard_key
from dask_batch.core.tasks import describe_counts
from dask_batch.storage.elements import write_shard
from dask_batch.storage.store import PROGRESS, JobStore

__all__: list[str] = []

logger = logging.getLogger("dask_batch.array")

# Shard and progress writes: at most one round per interval.
PUBLISH_INTERVAL = 0.5
# Rounds the last publish tries before the job fails for want of storage.
FINAL_TRIES = 5


class ElementStates:
    """The states of one array's elements, and the values not yet stored.

    Parameters
    ----------
    store : JobStore
    user, job_id : str
    job_key : str
        Signs each shard's values (with a key bound to the shard).
    shape : ArrayShape
    """

    def __init__(
        self, store: JobStore, user: str, job_id: str, job_key: str, shape: ArrayShape
    ) -> None:
        self.store, self.user, self.job_id = store, user, job_id
        self.job_key, self.shape = job_key, shape
        self.shards = {n: Shard.empty(shape, n) for n in range(shape.shards)}
        self.counts = collections.Counter({"PENDING": shape.count})
        self.values: dict[int, dict[int, Any]] = collections.defaultdict(dict)
        self.stored: set[int] = set()  # shards whose values are stored
        self.dirty: set[int] = set()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._publisher: threading.Thread | None = None
        # Storage writes of states and values (not logs): reported at the end.
        self.writes = self.written = 0

    # -- states ----------------------------------------------------------------
    def set(
        self, position: int, state: JobState, *, value: Any = None, **fields: Any
    ) -> None:
        """Record an element's state (and, for SUCCEEDED, its value)."""
        number = self.shape.shard_of(position)
        with self.lock:
            shard = self.shards[number]
            before = shard.state(position)
            shard.set(position, state)
            self.counts[before.value] -= 1
            self.counts[state.value] += 1
            for name, field_value in fields.items():
                getattr(shard, name)[position] = field_value
            if state is JobState.SUCCEEDED:
                self.values[number][position] = value
            self.dirty.add(number)

    def first_failure(self) -> tuple[int, dict[str, Any]]:
        """The position and error of the first FAILED element ((-1, {}): none)."""
        for shard in self.shards.values():
            for offset, state in enumerate(shard.states):
                if state is JobState.FAILED:
                    position = shard.first + offset
                    return position, shard.errors.get(position, {})
        return -1, {}

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
    def start(self) -> None:
        """Publish every interval, in a thread of its own, until :meth:`close`."""
        self._publisher = threading.Thread(
            target=self._publish_periodically, name="dask-batch-shards", daemon=True
        )
        self._publisher.start()

    def close(self) -> None:
        """Stop publishing every interval, then publish everything once more.

        Raises RuntimeError when storage refuses it every time.
        """
        self._stop.set()
        if self._publisher is not None:
            self._publisher.join()
        with self.lock:
            self.dirty.update(self.shards)
        for _ in range(FINAL_TRIES):
            if self.publish():
                return
        raise RuntimeError(
            f"the states of array job {self.job_id!r} could not be stored: "
            "storage refused every try"
        )

    def _publish_periodically(self) -> None:
        while not self._stop.wait(PUBLISH_INTERVAL):
            self.publish()

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
            docs = [(n, copy.deepcopy(self.shards[n])) for n in sorted(dirty)]
            progress = self._progress()
        for number, shard in docs:
            try:
                self.written += write_shard(self.store, self.user, self.job_id, shard)
                self.writes += 1
            except Exception:
                logger.warning("dask-batch: states of shard %d not stored", number)
                with self.lock:
                    self.dirty.add(number)
                ok = False
        try:
            self.store.put_json(self.user, self.job_id, PROGRESS, progress)
            self.writes += 1
        except Exception:
            logger.warning("dask-batch: the array's counts were not stored")
            with self.lock:
                self.dirty.update(dirty)  # tried again next round
            ok = False
        return ok

    def _store_values(self, number: int) -> bool:
        positions = self.shape.positions(number)
        with self.lock:
            found = self.values.get(number, {})
            values = [found.get(p) for p in positions]
        try:
            pieces = dumps_result(values)
            digest, signature = self.store.put_pieces(
                self.user,
                self.job_id,
                shard_result_name(number),
                pieces,
                shard_key(self.job_key, number),
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
