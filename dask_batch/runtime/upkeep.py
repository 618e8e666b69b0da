"""While main runs: heartbeats, main's log and its artifacts, kept in storage.

The job runner starts these helpers beside main (or beside a pipeline's or
array's tasks) and stops them when it ends; :meth:`JobUpkeep.flush` stores
what is left once main is over, however it ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import dask.config
from dask.utils import parse_bytes, parse_timedelta

from dask_batch.core.records import to_iso, utcnow
from dask_batch.runtime.artifacts import ArtifactSync
from dask_batch.runtime.taskrun import LogUpload, note_in_log
from dask_batch.storage.store import HEARTBEAT, JobStore

logger = logging.getLogger("distributed.scheduler.dask_batch")


class JobUpkeep:
    """Heartbeats, log chunks and artifacts of one job, on their own periods.

    Parameters
    ----------
    store : JobStore
    user, job_id : str
    cluster_name : str or None
        Named in each heartbeat.
    log_path : str
        Main's log file beside the scheduler.
    artifacts_dir : str
        The local folder whose files are the job's artifacts.
    """

    def __init__(
        self,
        store: JobStore,
        user: str,
        job_id: str,
        cluster_name: str | None,
        log_path: str,
        artifacts_dir: str,
    ) -> None:
        self.store, self.user, self.job_id = store, user, job_id
        self.cluster_name = cluster_name
        self.log_path = log_path
        self.log = LogUpload(
            store,
            user,
            job_id,
            log_path,
            parse_bytes(dask.config.get("batch.runner.log-chunk-size")),
        )
        self.artifacts = ArtifactSync(
            store,
            user,
            job_id,
            artifacts_dir,
            parse_bytes(dask.config.get("batch.artifacts.limit")),
        )

    def start(self) -> list[asyncio.Task[None]]:
        """The helpers, running; hand them to :func:`stop` (or ``await_outcome``)."""
        return [
            asyncio.create_task(self._upload_logs_periodically()),
            asyncio.create_task(self._heartbeat_periodically()),
            asyncio.create_task(self._sync_artifacts_periodically()),
        ]

    @staticmethod
    async def stop(helpers: list[asyncio.Task[None]]) -> None:
        for helper in helpers:
            helper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await helper

    async def flush(self) -> None:
        """Store the artifacts and the rest of the log (main is over)."""
        await self.sync_artifacts()
        try:
            await asyncio.to_thread(self.log.upload)
        except Exception:
            logger.exception("dask-batch: final log upload of %s failed", self.job_id)

    async def sync_artifacts(self) -> None:
        """Copy artifacts_dir() to storage; what was refused goes to the log."""
        try:
            notes = await asyncio.to_thread(self.artifacts.sync)
        except Exception as exc:
            logger.warning("dask-batch: artifacts not synced", exc_info=True)
            notes = [f"dask-batch: job {self.job_id}: artifacts not stored: {exc}"]
        note_in_log(self.log_path, *notes)

    async def _heartbeat_periodically(self) -> None:
        interval = parse_timedelta(dask.config.get("batch.runner.heartbeat-interval"))
        beat = {"cluster_name": self.cluster_name}
        while True:
            try:
                await asyncio.to_thread(
                    self.store.put_json,
                    self.user,
                    self.job_id,
                    HEARTBEAT,
                    {"time": to_iso(utcnow()), **beat},
                )
            except Exception:
                logger.warning("dask-batch: heartbeat not stored", exc_info=True)
            await asyncio.sleep(interval)

    async def _sync_artifacts_periodically(self) -> None:
        interval = parse_timedelta(dask.config.get("batch.artifacts.sync-interval"))
        while True:
            await asyncio.sleep(interval)
            await self.sync_artifacts()

    async def _upload_logs_periodically(self) -> None:
        interval = parse_timedelta(dask.config.get("batch.runner.log-upload-interval"))
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self.log.upload)
            except Exception:
                logger.warning("dask-batch: log upload failed", exc_info=True)
