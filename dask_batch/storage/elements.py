"""An array job's shards in storage: element states and values.

Shard documents are written by the job's main process and read by anyone
who follows the job. They live where others may write, so each is checked
against the array's signed shape when read, and a shard that does not fit
reads as not written yet. Values are never taken from a shard document: a
shard's values are one signed object, unpickled only when its signature
checks with the job key (``dask_batch.core.signing``).
"""

from __future__ import annotations

import contextlib
import json

from dask_batch.core.elements import (
    ArrayShape,
    Shard,
    moment,
    shard_doc_name,
)
from dask_batch.core.records import JobState
from dask_batch.core.tasks import TaskRecord
from dask_batch.storage.store import JobStore

__all__: list[str] = []


def write_shard(store: JobStore, user: str, job_id: str, shard: Shard) -> int:
    """Store a shard's states; the bytes written."""
    data = json.dumps(shard.to_dict(), separators=(",", ":")).encode()
    store.put(user, job_id, shard_doc_name(shard.number), data)
    return len(data)


def read_shards(
    store: JobStore, user: str, job_id: str, shape: ArrayShape, numbers: range
) -> list[Shard]:
    """Shards ``numbers`` as stored; one not written (or not fitting) is
    all PENDING."""
    paths = {
        store.job_path(user, job_id, shard_doc_name(n)): n
        for n in numbers
        if 0 <= n < shape.shards
    }
    found = {
        store.strip_protocol(path): data
        for path, data in store.get_many(list(paths), job_id).items()
    }
    shards = []
    for path, number in paths.items():
        shard = Shard.empty(shape, number)
        data = found.get(store.strip_protocol(path))
        if data is not None:
            # One written by someone else reads as not started.
            with contextlib.suppress(KeyError, TypeError, ValueError):
                shard = Shard.from_dict(shape, number, json.loads(data))
        shards.append(shard)
    return shards


def element_records(
    shape: ArrayShape,
    shards: list[Shard],
    kind: str,
    target: str,
    positions: range | None = None,
) -> list[TaskRecord]:
    """The elements of ``shards`` (those at ``positions``) as task records."""
    indices = list(shape.indices())
    out = []
    for shard in shards:
        for offset, state in enumerate(shard.states):
            position = shard.first + offset
            if positions is not None and position not in positions:
                continue
            index = indices[position]
            error = shard.errors.get(position)
            message = ""
            if error and state is not JobState.SUCCEEDED:
                message = f"{error.get('type', 'Error')}: {error.get('message', '')}"
            reused = shard.reused_from.get(position, "")
            out.append(
                TaskRecord(
                    name=str(index),
                    state=state,
                    index=index,
                    kind=kind,
                    target=target,
                    started=moment(shard.started.get(position)),
                    finished=moment(shard.finished.get(position)),
                    attempt=shard.attempts.get(position, 1 if state.is_terminal else 0),
                    message=message or (f"reused from job {reused}" if reused else ""),
                    error=error if state is not JobState.SUCCEEDED else None,
                    reused_from=reused,
                )
            )
    return out
