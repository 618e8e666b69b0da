"""A pipeline's or array's task states in storage, kept current while it runs.

``tasks.json`` holds every task's record and ``progress.json`` the job's
counts per state; both are rewritten at most every :data:`PUBLISH_INTERVAL`
seconds, and only when something changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from dask_batch.core.exceptions import DaskBatchError
from dask_batch.core.records import JobState, to_iso, utcnow
from dask_batch.core.tasks import (
    TASKS_DOC,
    TaskRecord,
    count_states,
    describe_counts,
    task_path,
)
from dask_batch.storage.store import PROGRESS, JobStore

logger = logging.getLogger("distributed.scheduler.dask_batch")

# Storage writes of tasks.json and the job's progress: at most one per
# interval, and always one after the last change.
PUBLISH_INTERVAL = 0.5


class TaskStatePublisher:
    """Writes the task records of one job when they change.

    Parameters
    ----------
    store : JobStore
    user, job_id : str
    records : dict
        The task records by name, changed in place by the task graph.
    """

    def __init__(
        self, store: JobStore, user: str, job_id: str, records: dict[str, TaskRecord]
    ) -> None:
        self.store, self.user, self.job_id = store, user, job_id
        self.records = records
        self._dirty = asyncio.Event()
        self._closing = asyncio.Event()

    def changed(self) -> None:
        """A record changed: publish at the next turn."""
        self._dirty.set()

    async def publish_periodically(self) -> None:
        while not self._closing.is_set():
            await self._dirty.wait()
            await self.publish()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closing.wait(), PUBLISH_INTERVAL)

    async def close(self, periodic: asyncio.Task[None]) -> None:
        """Stop ``periodic`` (:meth:`publish_periodically`), then publish last."""
        # The publisher finishes the write it is doing: an older state must
        # not land after the last one.
        self._closing.set()
        self._dirty.set()
        await periodic
        await self.publish()

    async def publish(self) -> None:
        """``tasks.json``, and the job's progress: counts per state."""
        self._dirty.clear()
        records = list(self.records.values())
        for record in records:
            if record.state is JobState.RUNNING:
                await self.read_progress(record)
        counts = count_states(records)
        done = sum(n for s, n in counts.items() if JobState(s).is_terminal)
        doc = {"tasks": [r.to_dict() for r in records]}
        progress = {
            "progress": done / len(records) if records else 1.0,
            "message": describe_counts(counts),
            "tasks": counts,
            "updated": to_iso(utcnow()),
        }
        try:
            await asyncio.to_thread(
                self.store.put_json, self.user, self.job_id, TASKS_DOC, doc
            )
            await asyncio.to_thread(
                self.store.put_json, self.user, self.job_id, PROGRESS, progress
            )
        except Exception:
            logger.warning("dask-batch: step states not stored", exc_info=True)
            self._dirty.set()

    async def read_progress(self, record: TaskRecord) -> None:
        """A running task's latest report, written by its main process."""
        try:
            doc = await asyncio.to_thread(
                self.store.get_json,
                self.user,
                self.job_id,
                task_path(record.name, PROGRESS),
            )
        except (FileNotFoundError, DaskBatchError):
            return  # none yet, or unreadable: the task's row shows no progress
        if isinstance(doc, dict):
            value = doc.get("progress")
            if isinstance(value, (int, float)) and 0 <= value <= 1:
                record.progress = float(value)
            record.progress_message = str(doc.get("message") or "")[:500]
