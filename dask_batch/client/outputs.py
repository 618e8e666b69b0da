"""What a job leaves behind: its result (checked before loading), log and artifacts.

A result is unpickled only after its bytes match the digest (and, with
``batch.result-key``, the signature) that the job's runner recorded in the
final state; a failed, cancelled or lost job raises the matching
:class:`~dask_batch.JobError` instead.
"""

from __future__ import annotations

import asyncio
import codecs
import dataclasses
import hmac
import os
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from typing import Any

import dask.config
from dask.utils import format_bytes, parse_bytes

from dask_batch.client import arrays as _arrays
from dask_batch.client.reconcile import Reconciler
from dask_batch.core import signing as _signing
from dask_batch.core.exceptions import (
    JobCancelledError,
    JobFailedError,
    JobLostError,
    JobNotFoundError,
    ResultIntegrityError,
    SubmitError,
    TasksFailedError,
)
from dask_batch.core.names import InvalidNameError
from dask_batch.core.records import JobRecord, JobState
from dask_batch.core.tasks import (
    VALUE_KINDS,
    TaskRecord,
    TaskSpec,
    settle_tasks,
    task_path,
    task_specs,
)
from dask_batch.storage.store import RESULT, SPEC, JobStore
from dask_batch.storage.streams import RESULT_DIGEST_PREFIX, digest_signature

LOG_TAIL_LINES = 20
FOLLOW_POLL = 0.2  # seconds between storage polls while following a log


class JobOutputs:
    """Results, logs and artifacts of one user's jobs in a store.

    Parameters
    ----------
    store : JobStore
    user : str
    reconciler : Reconciler
        Waits for jobs to end, and reads their state while a log is followed.
    """

    def __init__(self, store: JobStore, user: str, reconciler: Reconciler) -> None:
        self.store = store
        self.user = user
        self.reconciler = reconciler

    async def result(
        self,
        job_id: str,
        timeout: float | str | None,
        progress: bool = False,
        partial: bool = False,
    ) -> Any:
        """Wait for the job; the value main returned, or the job's error."""
        record = await self.reconciler.wait(job_id, timeout, progress)
        return await self.outcome(record, partial=partial)

    async def outcome(self, record: JobRecord, *, partial: bool = False) -> Any:
        """The value main returned, for a terminal ``record``; else its error."""
        # A pipeline or array whose tasks ran: their values (or which failed).
        # One that failed before any task could run fails as any job does.
        ran = record.state is JobState.SUCCEEDED or (
            record.state is JobState.FAILED
            and (record.error or {}).get("type") == "TasksFailed"
        )
        if record.elements and ran:
            return await asyncio.to_thread(self._array_values, record, partial)
        if record.kind in VALUE_KINDS and ran:
            return await asyncio.to_thread(self._task_values, record, partial)
        if record.state is JobState.SUCCEEDED:
            return await asyncio.to_thread(self._load_result, record)
        job_id = record.id
        if record.state is JobState.FAILED:
            tail = await asyncio.to_thread(
                self.store.log_tail, self.user, job_id, LOG_TAIL_LINES
            )
            error = record.error or {"type": "JobFailed", "message": record.message}
            raise JobFailedError.from_error_record(job_id, error, tail)
        if record.state is JobState.CANCELLED:
            raise JobCancelledError(
                job_id,
                f"Job {job_id!r} was cancelled: {record.message or 'by request'}.",
            )
        raise JobLostError(
            job_id,
            f"Job {job_id!r} is LOST: {record.message}. Its result was never "
            "stored; submit it again.",
        )

    def _load_result(self, record: JobRecord) -> Any:
        """Read, check and load a SUCCEEDED job's result.

        The result is unpickled only if main's process signed it with this
        job's key, which only the holder of the user's secret can derive.
        """
        job_id = record.id
        if not record.result_hmac:
            raise _signing.unsigned_result(job_id)
        secret = _signing.user_secret(job_id=job_id)
        job_key = _signing.keys_for(secret, job_id, record.keys_from).job_key
        return _signing.load_signed_result(
            self.store,
            self.user,
            job_id,
            job_key,
            name=RESULT,
            digest=record.result_digest or None,
            signature=record.result_hmac,
            what="result",
        )

    def tasks(
        self,
        job_id: str,
        record: JobRecord | None = None,
        *,
        offset: int = 0,
        limit: int | None = None,
        state: JobState | None = None,
    ) -> list[TaskRecord]:
        """The steps or elements of a pipeline or array job, as they went.

        Those a job left unfinished when it ended end with it (``record``:
        the job's, read here if not given).
        """
        if record is None:
            record = self.store.read_record(self.user, job_id)
        if record.elements:
            shape = _arrays.array_shape(self.store, self.user, job_id)
            if shape is not None:
                return _arrays.read_element_page(
                    self.store, record, shape, offset, limit, state
                )
        tasks = settle_tasks(
            self.store.read_tasks(self.user, job_id), record.state, record.message
        )
        if state is not None:
            tasks = [t for t in tasks if t.state is state]
        return tasks[offset : None if limit is None else offset + limit]

    def _job_key(self, record: JobRecord) -> str:
        secret = _signing.user_secret(job_id=record.id)
        return _signing.keys_for(secret, record.id, record.keys_from).job_key

    def _array_values(self, record: JobRecord, partial: bool) -> Any:
        """An array's values in order: a list, or with ``partial`` an
        :class:`ArrayValues` that reads a shard at a time."""
        shape = _arrays.array_shape(self.store, self.user, record.id)
        assert shape is not None  # the record says it has elements
        values = _arrays.ArrayValues(self.store, record, shape, self._job_key(record))
        if partial:
            return values
        failed = _arrays.failed_elements(self.store, record, shape)
        if failed:
            succeeded = {
                index: value
                for index, value in zip(shape.indices(), values, strict=True)
                if index not in failed
            }
            raise TasksFailedError(record.id, failed, succeeded, "elements")
        return list(values)

    def reusable(self, earlier: str, tasks: list[TaskSpec]) -> list[TaskSpec]:
        """``tasks``, each marked to take over the outputs of ``earlier`` where
        the same task (same digest) SUCCEEDED there.

        The earlier job's spec must be signed with its key, and each result
        taken over must carry its signature: what a resumed pipeline reuses
        is what that job's own steps produced.
        """
        store = self.store
        found = store.read_record(self.user, earlier)  # JobNotFoundError if unknown
        spec = store.get_json(self.user, earlier, SPEC)
        secret = _signing.user_secret(job_id=earlier)
        key = _signing.keys_for(secret, earlier, found.keys_from).job_key
        if not isinstance(spec, dict) or not _signing.spec_is_signed(key, spec):
            raise ResultIntegrityError(
                f"the spec of job {earlier!r} is not signed with its key: it was "
                "changed in storage. Resume from another job, or run every step.",
                job_id=earlier,
            )
        before = {t.name: t for t in task_specs(spec, earlier)}
        if not before:
            raise SubmitError.not_submitted(
                earlier, "it is not a pipeline job, so there are no steps to reuse."
            )
        went = {r.name: r for r in store.read_tasks(self.user, earlier)}
        out = []
        for task in tasks:
            old, record = before.get(task.name), went.get(task.name)
            same = (
                old is not None
                and record is not None
                and old.digest == task.digest
                and record.state is JobState.SUCCEEDED
                and record.result_digest.startswith(RESULT_DIGEST_PREFIX)
                and hmac.compare_digest(
                    digest_signature(key, record.result_digest), record.result_hmac
                )
            )
            if same:
                assert record is not None
                reuse = {
                    "job": earlier,
                    "result_digest": record.result_digest,
                    "result_type": record.result_type,
                    "result_bytes": record.result_bytes,
                }
                task = dataclasses.replace(task, reuse=reuse)
            out.append(task)
        return out

    def _task_values(self, record: JobRecord, partial: bool) -> Any:
        """An array's values in order, or a pipeline's by step name.

        Each is unpickled only if its main process signed it with the job's
        key. Without ``partial``, a task that did not succeed raises
        TasksFailedError, which carries the others' values.
        """
        job_id = record.id
        tasks = self.tasks(job_id, record)
        is_array = record.kind == "array"
        job_key = ""
        values: dict[Any, Any] = {}
        failed: dict[Any, str] = {}
        for task in tasks:
            key = task.index if is_array else task.name
            if task.state is not JobState.SUCCEEDED:
                why = task.message or (task.error or {}).get("message", "")
                failed[key] = f"{task.state.value}: {why}"
                continue
            if not job_key:
                secret = _signing.user_secret(job_id=job_id)
                job_key = _signing.keys_for(secret, job_id, record.keys_from).job_key
            what = f"result of element {key}" if is_array else f"result of step {key!r}"
            values[key] = _signing.load_signed_result(
                self.store,
                self.user,
                job_id,
                job_key,
                name=task_path(task.name, RESULT),
                digest=task.result_digest,
                signature=task.result_hmac,
                what=what,
            )
        if failed and not partial:
            raise TasksFailedError(
                job_id, failed, values, "elements" if is_array else "steps"
            )
        if partial:
            for key, why in failed.items():
                values[key] = JobFailedError(job_id, f"task {key}", why)
        if is_array:
            return [values[t.index] for t in tasks]
        return {t.name: values[t.name] for t in tasks}

    async def logs(self, job_id: str, task: str = "") -> str:
        """The log so far, or its end when it is over ``batch.logs-limit``."""
        limit = parse_bytes(dask.config.get("batch.logs-limit"))
        data, _ = await self._read_logs(job_id, 0, limit + 1, task)
        if len(data) <= limit:
            return data.decode(errors="replace")
        # Start at a whole character: skip UTF-8 continuation bytes.
        start = 1
        while start < len(data) and data[start] & 0xC0 == 0x80:
            start += 1
        data = data[start:]
        return (
            f"[dask-batch: the log of job {job_id} is longer than batch.logs-limit "
            f"({format_bytes(limit)}); this is its end. "
            f"`dask batch logs --follow {job_id}` streams all of it.]\n"
            + data.decode(errors="replace")
        )

    async def _read_logs(
        self, job_id: str, index: int, limit: int | None = None, task: str = ""
    ) -> tuple[bytes, int]:
        """Log bytes from chunk ``index`` on, and the next chunk's index."""

        def read() -> tuple[bytes, int]:
            data, next_index = self.store.read_logs(
                self.user, job_id, index, limit, task=task
            )
            if next_index == 0 and not self.store.exists(self.user, job_id, SPEC):
                raise JobNotFoundError(job_id, self.store.url)
            return data, next_index

        return await asyncio.to_thread(read)

    async def _follow_step(
        self, job_id: str, index: int, task: str = ""
    ) -> tuple[bytes, int, bool]:
        """New log bytes, the next chunk index, and whether the job has ended."""
        ended = (await self.reconciler.status(job_id)).state.is_terminal
        # Read after the state: the runner stores the last log before the
        # final state, so nothing printed is missed once ended is seen.
        data, index = await self._read_logs(job_id, index, task=task)
        return data, index, ended

    def follow_sync(
        self, job_id: str, sync: Callable[..., Any], task: str = ""
    ) -> Iterator[str]:
        """:meth:`follow` for sync callers; ``sync`` runs a coroutine to its end."""
        stream = self.follow(job_id, task)
        try:
            while True:
                try:
                    yield sync(stream.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            sync(stream.aclose)

    async def follow(self, job_id: str, task: str = "") -> AsyncGenerator[str, None]:
        """Log text as it arrives, until the job ends."""
        # Chunks are cut by size: a character may start in one and end in
        # the next, so text is decoded across chunk boundaries.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        index, ended = 0, False
        while not ended:
            data, index, ended = await self._follow_step(job_id, index, task)
            text = decoder.decode(data, final=ended)
            if text:
                yield text
            elif not ended:
                await asyncio.sleep(FOLLOW_POLL)

    async def artifacts(self, job_id: str) -> dict[str, int]:
        """Artifact paths and sizes; JobNotFoundError for an unknown job."""
        await asyncio.to_thread(self.store.read_record, self.user, job_id)
        return dict(await asyncio.to_thread(self.store.artifacts, self.user, job_id))

    async def download_artifacts(
        self, job_id: str, destination: str, names: Iterable[str] | None = None
    ) -> list[str]:
        """Copy the artifacts (those in ``names`` only, if given) below
        ``destination``; return the local paths."""
        found = await self.artifacts(job_id)
        if names is not None:
            wanted = set(names)
            found = {n: size for n, size in found.items() if n in wanted}

        def download() -> list[str]:
            os.makedirs(destination, exist_ok=True)
            top = os.path.realpath(destination)
            written = []
            for name in found:
                local = os.path.join(top, *name.split("/"))
                os.makedirs(os.path.dirname(local), exist_ok=True)
                # A link already in the destination must not lead outside it.
                if not os.path.realpath(local).startswith(top + os.sep):
                    raise InvalidNameError(
                        f"artifact {name!r} of job {job_id!r} would be written "
                        f"outside {destination!r} (through a link there); "
                        "download into an empty directory.",
                        job_id=job_id,
                    )
                self.store.get_artifact(self.user, job_id, name, local)
                written.append(local)
            return written

        return list(await asyncio.to_thread(download))
