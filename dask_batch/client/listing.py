"""List a user's jobs, newest first, through the job catalog.

A listing with a window (``limit=``, ``since=``) reads the catalog (one LIST
of the user's ``.index`` folder, see :mod:`dask_batch.storage.catalog`), the records of
the live jobs in the window, and only the index packs whose id range can hold
the window's jobs: its cost follows the window, not the history. A listing of
everything, or the first listing of a store from before the catalog, also
LISTs every job prefix: it is the reconciliation that keeps the catalog true
(markers of live jobs created, packs rewritten without jobs whose prefix is
gone). Live records are checked against the gateway without starting
anything (see :mod:`dask_batch.client.reconcile`), and records found terminal are
folded into the index for the next listing.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from dask_batch.client.display import JobList
from dask_batch.client.reconcile import Reconciler
from dask_batch.core.exceptions import DaskBatchError, JobNotFoundError
from dask_batch.core.records import JobRecord, JobState, new_job_id, parse_job_time
from dask_batch.storage.catalog import LARGE_PACK, Catalog, Pack, index_entry
from dask_batch.storage.store import JobStore

logger = logging.getLogger("dask_batch")

LIST_PAGE = 200  # records read per storage round when listing
MAX_INDEX_PACKS = 8  # small index packs before they are merged

Keep = Callable[[JobRecord], bool]  # listed or not


def wanted_states(state: Any) -> set[JobState] | None:
    """The states a ``state=`` filter keeps (None: all)."""
    if isinstance(state, (str, JobState)):
        state = [state]
    return {JobState(str(s).upper()) for s in state} if state else None


def id_bounds(since: Any, until: Any) -> tuple[str | None, str | None]:
    """``since``/``until`` as id prefixes: ids start with their UTC time."""
    since_t, until_t = parse_job_time(since), parse_job_time(until)
    return (
        None if since_t is None else new_job_id(since_t)[:19],
        None if until_t is None else new_job_id(until_t)[:19],
    )


def in_window(job_id: str, since_id: str | None, until_id: str | None) -> bool:
    return (since_id is None or job_id >= since_id) and (
        until_id is None or job_id[:19] <= until_id
    )


def ids_between(ids: list[str], since: Any, until: Any) -> list[str]:
    """The ids submitted in ``[since, until]``."""
    since_id, until_id = id_bounds(since, until)
    return [i for i in ids if in_window(i, since_id, until_id)]


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
        kind: str | None = None,
        schedule: str | None = None,
        before: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> JobList:
        """See :meth:`dask_batch.JobService.jobs`."""
        wanted = wanted_states(state)

        def keep(record: JobRecord) -> bool:
            return (
                (name is None or record.name == name)
                and (wanted is None or record.state in wanted)
                and (kind is None or record.kind == kind)
                and (schedule is None or record.schedule == schedule)
                and (before is None or record.id < before)
                and all(record.labels.get(k) == v for k, v in (labels or {}).items())
            )

        since_id, until_id = id_bounds(since, until)
        if before is not None and (until_id is None or before[:19] < until_id):
            until_id = before[:19]  # ids start with their time: a tighter window
        bounds = (since_id, until_id)
        catalog = await asyncio.to_thread(self.store.catalog, self.user)
        if catalog.complete and (limit is not None or since is not None):
            only_live = wanted is not None and not any(s.is_terminal for s in wanted)
            records = await self._windowed(catalog, bounds, keep, limit, only_live)
            if records is None:  # a pack is damaged, or was merged meanwhile
                catalog = await asyncio.to_thread(self.store.catalog, self.user)
                records = await self._everything(catalog, bounds, keep, limit)
        else:
            records = await self._everything(catalog, bounds, keep, limit)
        return JobList(records)

    # -- a window: the catalog, live records, and the packs that overlap ----------
    async def _windowed(
        self,
        catalog: Catalog,
        bounds: tuple[str | None, str | None],
        keep: Keep,
        limit: int | None,
        only_live: bool,
    ) -> list[JobRecord] | None:
        """The window's records; None if a pack it needs could not be read."""
        live_ids = [i for i in catalog.live if in_window(i, *bounds)]
        live = await self._read_live(live_ids)
        unread = [] if only_live else [p for p in catalog.packs if p.overlaps(*bounds)]
        packed: list[tuple[Pack, dict[str, JobRecord]]] = []
        ended: dict[str, JobRecord] = {}
        batch = len(unread) if limit is None else 1
        while True:
            round_, unread = unread[:batch], unread[batch:]
            found = await asyncio.to_thread(self.store.read_packs, self.user, round_)
            if len(found) < len(round_):
                return None  # its jobs are known to a full listing only
            packed += found
            for _, records in found:
                ended.update(records)
            batch *= 2  # the newest pack usually answers; else widen fast
            # Ids newer than every unread pack are settled: no pack left can
            # hold one of them.
            frontier = unread[0].newest if unread else None
            out = self._merge(ended, live, bounds, keep, limit, frontier)
            if not unread or (limit is not None and len(out) >= limit):
                break
        newly_final = [
            index_entry(r)
            for i, r in live.items()
            if r is not None and r.state.is_terminal and i not in ended
        ]
        # A marker goes only when the job's own record says it ended (or is
        # gone): a pack entry alone, which anyone who can write the folder
        # could forge, never hides a live job from the service's sweeps.
        stale = []
        for job_id in live_ids:
            if job_id not in live:
                continue  # a broken record: kept, and said so
            record = live[job_id]
            if record is None or (record.state.is_terminal and job_id in ended):
                stale.append(job_id)
        await self._maintain(catalog, packed, newly_final, stale)
        return out

    @staticmethod
    def _merge(
        ended: dict[str, JobRecord],
        live: dict[str, JobRecord | None],
        bounds: tuple[str | None, str | None],
        keep: Keep,
        limit: int | None,
        frontier: str | None,
    ) -> list[JobRecord]:
        """Packed and live records newer than ``frontier``, newest first."""
        ids = {i for i in ended if in_window(i, *bounds)}
        ids.update(i for i, r in live.items() if r is not None)
        out: list[JobRecord] = []
        for job_id in sorted(ids, reverse=True):
            if frontier is not None and job_id <= frontier:
                break
            # A packed record wins over a live one read a moment earlier.
            record = ended.get(job_id) or live.get(job_id)
            if record is not None and keep(record):
                out.append(record)
                if limit is not None and len(out) >= limit:
                    break
        return out

    # -- everything: every job prefix, the truth the catalog is checked against ----
    async def _everything(
        self,
        catalog: Catalog,
        bounds: tuple[str | None, str | None],
        keep: Keep,
        limit: int | None,
    ) -> list[JobRecord]:
        every_id = await asyncio.to_thread(self.store.job_ids, self.user)
        packed = await asyncio.to_thread(
            self.store.read_packs, self.user, catalog.packs
        )
        ended: dict[str, JobRecord] = {}
        for _, found in packed:
            ended.update(found)
        # Marked jobs are read even when packed: see the markers in _windowed.
        read = await self._read_live(
            [i for i in every_id if i not in ended or i in catalog.live]
        )
        out = []
        for job_id in every_id:
            record = ended.get(job_id) or read.get(job_id)
            if record is not None and in_window(job_id, *bounds) and keep(record):
                out.append(record)
                if limit is not None and len(out) >= limit:
                    break
        live = {i for i, r in read.items() if r is not None and not r.state.is_terminal}
        newly_final = [
            index_entry(r)
            for i, r in read.items()
            if r is not None and r.state.is_terminal and i not in ended
        ]
        await self._maintain(
            catalog,
            packed,
            newly_final,
            stale=sorted(catalog.live - live),
            existing=set(every_id),
            new_live=sorted(live - catalog.live),
        )
        return out

    # -- shared ----------------------------------------------------------------------
    async def _read_live(self, ids: list[str]) -> dict[str, JobRecord | None]:
        """Records of ``ids``, live ones checked with the gateway.

        None for a job that no longer exists; a broken record is left out
        with a warning.
        """
        out: dict[str, JobRecord | None] = {}
        for first in range(0, len(ids), LIST_PAGE):
            page = ids[first : first + LIST_PAGE]
            found = await asyncio.to_thread(self.store.read_records, self.user, page)
            live: list[JobRecord] = []
            for job_id in page:
                record = found[job_id]
                if isinstance(record, JobNotFoundError):
                    out[job_id] = None
                elif isinstance(record, Exception):
                    warnings.warn(f"Skipping job {job_id!r}: {record}", stacklevel=6)
                else:
                    out[job_id] = record
                    if not record.state.is_terminal:
                        live.append(record)
            if live:
                reports = await self.reconciler.launcher.reports(
                    [r.cluster_name for r in live if r.cluster_name]
                )
                for r in live:
                    out[r.id] = await self.reconciler.check(r, reports)
        return out

    async def _maintain(
        self,
        catalog: Catalog,
        packed: list[tuple[Pack, dict[str, JobRecord]]],
        newly_final: list[dict[str, Any]],
        stale: list[str],
        *,
        existing: set[str] | None = None,
        new_live: Iterable[str] = (),
    ) -> None:
        """Keep the catalog true: pack what ended, merge small packs, fix markers.

        ``existing`` (every job prefix, known to full listings only) marks a
        full listing: it rewrites packs holding jobs whose prefix is gone and
        packs of the first layout, creates the markers of live jobs that lack
        one, and marks the catalog complete. Only a saving: a failure is
        logged, and a read-only user still gets the listing.
        """
        store, user = self.store, self.user
        read = {p.path: found for p, found in packed}
        replaces = []
        if existing is not None:
            # First-layout packs, packs holding deleted jobs, and damaged packs
            # (whose jobs this listing read one by one).
            replaces = [
                p
                for p in catalog.packs
                if p.oldest is None
                or p.path not in read
                or not existing.issuperset(read[p.path])
            ]
        small = [p for p in catalog.packs if p.count < LARGE_PACK]
        if len(small) + bool(newly_final) > MAX_INDEX_PACKS:
            replaces += [p for p in small if p not in replaces]
        try:
            missing = [p for p in replaces if p.path not in read and existing is None]
            for p, found in await asyncio.to_thread(store.read_packs, user, missing):
                read[p.path] = found
            if existing is None:  # only packs whose entries are in hand
                replaces = [p for p in replaces if p.path in read]
            merged = {e["id"]: e for e in newly_final}
            for p in replaces:
                merged.update(
                    (i, index_entry(r)) for i, r in read.get(p.path, {}).items()
                )
            pack = [e for i, e in merged.items() if existing is None or i in existing]
            if pack or replaces:
                await asyncio.to_thread(store.write_index, user, pack, replaces)
            for job_id in new_live:
                await asyncio.to_thread(store.mark_live, user, job_id)
            # Only markers the catalog listed: a migration packs thousands of
            # jobs that never had one, and each removal is a request.
            ended = [
                i for i in stale + [e["id"] for e in newly_final] if i in catalog.live
            ]
            if ended:
                await asyncio.to_thread(store.forget_live, user, ended)
            if existing is not None and not catalog.complete:
                await asyncio.to_thread(store.mark_complete, user)
        except DaskBatchError as exc:
            logger.warning("Not updating the job index: %s", exc)
