"""List a user's jobs, newest first, through the listing index.

Terminal records come from the index packs (one GET per pack); live ones are
read and checked against the gateway without starting anything (see
:mod:`dask_batch._reconcile`); records that became terminal are folded into
the index for the next listing.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Iterable
from typing import Any

from ._display import JobList
from ._exceptions import StorageError
from ._index import index_entry
from ._reconcile import Reconciler
from ._records import JobRecord, JobState, new_job_id, parse_job_time
from ._store import JobStore

logger = logging.getLogger("dask_batch")

LIST_PAGE = 200  # records read per storage round when listing
MAX_INDEX_PACKS = 8  # listing index packs before they are merged into one


def wanted_states(state: Any) -> set[JobState] | None:
    """The states a ``state=`` filter keeps (None: all)."""
    if isinstance(state, (str, JobState)):
        state = [state]
    return {JobState(str(s).upper()) for s in state} if state else None


def ids_between(ids: list[str], since: Any, until: Any) -> list[str]:
    """The ids submitted in ``[since, until]``: ids start with their UTC time."""
    since_t, until_t = parse_job_time(since), parse_job_time(until)
    if since_t is not None:
        ids = [i for i in ids if i >= new_job_id(since_t)[:19]]
    if until_t is not None:
        ids = [i for i in ids if i[:19] <= new_job_id(until_t)[:19]]
    return ids


class JobLister:
    """Lists one user's jobs from a store, checking live ones with a reconciler."""

    def __init__(self, store: JobStore, user: str, reconciler: Reconciler) -> None:
        self.store = store
        self.user = user
        self.reconciler = reconciler

    async def jobs(
        self,
        *,
        state: str | JobState | Iterable[str | JobState] | None = None,
        name: str | None = None,
        since: Any = None,
        until: Any = None,
        limit: int | None = None,
    ) -> JobList:
        """See :meth:`dask_batch.BatchClient.jobs`."""
        wanted = wanted_states(state)
        every_id = await asyncio.to_thread(self.store.job_ids, self.user)
        index, packs = await asyncio.to_thread(self.store.read_index, self.user)
        ids = ids_between(every_id, since, until)
        # Read newest first, a page at a time, until the limit is met: a
        # listing of the last 50 jobs reads 50 records, not thousands.
        page = max(limit or 0, LIST_PAGE)
        out: list[JobRecord] = []
        newly_final: list[dict[str, Any]] = []
        for first in range(0, len(ids), page):
            records = await self._records_page(ids[first : first + page], index)
            newly_final += [
                index_entry(r)
                for r in records
                if r.state.is_terminal and r.id not in index
            ]
            out += [
                r
                for r in records
                if (name is None or r.name == name)
                and (wanted is None or r.state in wanted)
            ]
            if limit is not None and len(out) >= limit:
                break
        await self._update_index(every_id, index, packs, newly_final)
        return JobList(out[:limit] if limit is not None else out)

    async def _records_page(
        self, ids: list[str], index: dict[str, dict[str, Any]]
    ) -> list[JobRecord]:
        """Records of ``ids``: terminal ones from the index, the rest read."""
        indexed: dict[str, JobRecord | Exception] = {}
        for job_id in ids:
            if job_id in index:
                try:
                    packed = JobRecord.from_dict(index[job_id])
                except (KeyError, TypeError, ValueError):
                    continue  # a damaged entry: the record itself is read
                if packed.id == job_id and packed.state.is_terminal:
                    indexed[job_id] = packed
        unknown = [i for i in ids if i not in indexed]
        records = await asyncio.to_thread(self.store.read_records, self.user, unknown)
        out: list[JobRecord] = []
        for job_id in ids:
            record = indexed[job_id] if job_id in indexed else records[job_id]
            if isinstance(record, Exception):
                warnings.warn(f"Skipping job {job_id!r}: {record}", stacklevel=5)
                continue
            out.append(record)
        live = [r for r in out if not r.state.is_terminal]
        if live:
            reports = await self.reconciler.launcher.reports(
                [r.cluster_name for r in live if r.cluster_name]
            )
            checked = {r.id: await self.reconciler.check(r, reports) for r in live}
            out = [checked.get(r.id, r) for r in out]
        return out

    async def _update_index(
        self,
        every_id: list[str],
        index: dict[str, dict[str, Any]],
        packs: list[str],
        newly_final: list[dict[str, Any]],
    ) -> None:
        """Fold records that became terminal into the listing index.

        A small pack per listing that found some; past ``MAX_INDEX_PACKS``
        all packs are merged into one, dropping jobs whose prefix is gone.
        Runners add a pack per 256 jobs that end, so packs are merged once
        they pile up even when this listing found nothing new.
        """
        if len(packs) + bool(newly_final) > MAX_INDEX_PACKS:
            existing = set(every_id)
            pack = [e for i, e in index.items() if i in existing] + newly_final
            replaces = packs
        elif newly_final:
            pack, replaces = newly_final, []
        else:
            return
        try:
            await asyncio.to_thread(self.store.write_index, self.user, pack, replaces)
        except StorageError as exc:
            # The index only saves reads; a read-only user still gets a listing.
            logger.warning("Not updating the job index: %s", exc)
