"""An array job's elements and values, read a shard at a time.

The elements of an array job are kept in shards (``dask_batch.core.elements``):
reading one element, a page of them, or the values of a 100,000-element
array never loads more than the shards it needs.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from typing import Any, overload

from dask_batch.core import signing as _signing
from dask_batch.core.elements import ArrayShape, shard_result_name
from dask_batch.core.exceptions import (
    CorruptRecordError,
    JobFailedError,
    ResultIntegrityError,
)
from dask_batch.core.records import JobRecord, JobState
from dask_batch.core.tasks import TaskRecord, settle_tasks
from dask_batch.storage.elements import element_records, read_shards
from dask_batch.storage.store import SPEC, JobStore

__all__ = ["ArrayValues"]

# Shards whose values ArrayValues keeps loaded (the most recently read).
CACHED_SHARDS = 2
# Shard documents read at once when elements are listed.
SHARDS_PER_READ = 8


def array_shape(store: JobStore, user: str, job_id: str) -> ArrayShape | None:
    """The array a job's spec declares; None for other jobs (and for arrays
    of earlier releases, which list their elements as tasks)."""
    spec = store.get_json(user, job_id, SPEC)
    if not isinstance(spec, dict):
        return None
    try:
        return ArrayShape.from_spec(spec)
    except ValueError as exc:
        raise CorruptRecordError(
            f"The array declared by job {job_id!r} cannot be read ({exc}): "
            "its spec was changed in storage.",
            job_id=job_id,
        ) from None


def _settled_shards(
    store: JobStore, record: JobRecord, shape: ArrayShape, first: int
) -> Iterator[tuple[int, TaskRecord]]:
    """``(position, element)`` from shard ``first`` on, a few shards per read,
    each element settled to one final state when the job has ended."""
    for start in range(first, shape.shards, SHARDS_PER_READ):
        numbers = range(start, min(start + SHARDS_PER_READ, shape.shards))
        shards = read_shards(store, record.user, record.id, shape, numbers)
        for shard in shards:
            records = element_records(shape, [shard], "", record.target)
            settled = settle_tasks(records, record.state, record.message)
            yield from enumerate(settled, shard.first)


def read_element_page(
    store: JobStore,
    record: JobRecord,
    shape: ArrayShape,
    offset: int = 0,
    limit: int | None = None,
    state: JobState | None = None,
) -> list[TaskRecord]:
    """Elements ``offset`` to ``offset + limit`` in order (counted among
    those in ``state``, if given)."""
    out: list[TaskRecord] = []
    skipped = 0
    first = 0 if state is not None else shape.shard_of(min(offset, shape.count))
    for position, task in _settled_shards(store, record, shape, first):
        if state is None and position < offset:
            continue
        if state is not None:
            if task.state is not state:
                continue
            if skipped < offset:
                skipped += 1
                continue
        out.append(task)
        if limit is not None and len(out) >= limit:
            break
    return out


class ArrayValues(Sequence[Any]):
    """The values of an array job's elements, in order, loaded a shard at a time.

    ``len()``, indexing, slicing and iteration work as on a list; only the
    shards they touch are read (and checked with the job key before their
    values are unpickled). An element that did not succeed reads as a
    :class:`~dask_batch.JobFailedError` saying why.
    """

    def __init__(
        self,
        store: JobStore,
        record: JobRecord,
        shape: ArrayShape,
        job_key: str,
    ) -> None:
        self._store, self._record, self._shape = store, record, shape
        self._job_key = job_key
        self._cache: collections.OrderedDict[int, list[Any]] = collections.OrderedDict()

    def __len__(self) -> int:
        return self._shape.count

    @overload
    def __getitem__(self, item: int) -> Any: ...

    @overload
    def __getitem__(self, item: slice) -> list[Any]: ...

    def __getitem__(self, item: int | slice) -> Any:
        if isinstance(item, slice):
            return [self[i] for i in range(*item.indices(len(self)))]
        position = item + len(self) if item < 0 else item
        if not 0 <= position < len(self):
            raise IndexError(f"array job {self._record.id!r} has {len(self)} elements")
        number = self._shape.shard_of(position)
        values = self._shard(number)
        return values[position - self._shape.positions(number).start]

    def __iter__(self) -> Iterator[Any]:
        for number in range(self._shape.shards):
            yield from self._shard(number)

    def __repr__(self) -> str:
        return f"<ArrayValues of job {self._record.id}: {len(self)} elements>"

    def _shard(self, number: int) -> list[Any]:
        if number in self._cache:
            self._cache.move_to_end(number)
            return self._cache[number]
        values = shard_values(
            self._store, self._record, self._shape, number, self._job_key
        )
        self._cache[number] = values
        while len(self._cache) > CACHED_SHARDS:
            self._cache.popitem(last=False)
        return values


def shard_values(
    store: JobStore, record: JobRecord, shape: ArrayShape, number: int, job_key: str
) -> list[Any]:
    """One shard's values; a failed element's is the error saying why."""
    job_id = record.id
    (shard,) = read_shards(store, record.user, job_id, shape, range(number, number + 1))
    values: list[Any] = [None] * len(shard.states)
    if shard.result and any(s is JobState.SUCCEEDED for s in shard.states):
        loaded = _signing.load_signed_result(
            store,
            record.user,
            job_id,
            _signing.shard_key(job_key, number),
            name=shard_result_name(number),
            digest=shard.result.get("digest") or "",
            signature=str(shard.result.get("hmac") or ""),
            what=f"values of elements {shard.first} and after",
        )
        if not isinstance(loaded, list) or len(loaded) != len(shard.states):
            raise ResultIntegrityError(
                f"the values of shard {number} of job {job_id!r} do not fit its "
                "elements. Resubmit the job.",
                job_id=job_id,
            )
        values = loaded
    elif any(s is JobState.SUCCEEDED for s in shard.states):
        raise ResultIntegrityError(
            f"the values of elements {shard.first} and after of job {job_id!r} "
            "were never stored. Resubmit the job: "
            f"dask batch resubmit {job_id} --failed",
            job_id=job_id,
        )
    settled = settle_tasks(
        element_records(shape, [shard], "", record.target), record.state, record.message
    )
    for offset, task in enumerate(settled):
        if task.state is not JobState.SUCCEEDED:
            why = task.message or "not run"
            values[offset] = JobFailedError(
                job_id, f"element {task.index}", f"{task.state.value}: {why}"
            )
    return values


def failed_elements(
    store: JobStore, record: JobRecord, shape: ArrayShape
) -> dict[int, str]:
    """Each element that did not succeed, by index, with why."""
    return {
        int(task.index or 0): f"{task.state.value}: {task.message or 'not run'}"
        for _, task in _settled_shards(store, record, shape, 0)
        if task.state is not JobState.SUCCEEDED
    }
