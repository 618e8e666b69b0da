"""The job catalog: what a listing reads instead of every job's prefix.

Layout, per user, in one flat folder::

    {root}/{user}/.index/catalog.json     {"version": 2}: live markers are kept
                         live-{job id}    a job that has not ended (empty)
                         pack-{newest id}-{oldest id}-{count}-{random}.json.gz
                             {"version": 1, "jobs": [{"id", "name", "state", ...}]}
                         {newest id}-{count}-{random}.json.gz
                             a pack of the first layout (no oldest id)
                         head.json    on S3: these names in one object, read
                                      instead of a LIST (see catalog_head)

A submission creates its job's live marker. Whoever writes a terminal state
adds the record to the newest small pack and removes the marker. So one LIST
of this folder (a few dozen names, whatever the history) tells a listing
which jobs are live and which packs hold the ended ones, and the id range in
each pack's name tells which packs a window (``since=``, the newest 50) needs:
the cost of a listing follows the window, not the history.

Packs are a cache of terminal records, which never change. A pack is deleted
only after a pack holding all its entries was written, so concurrent writers
can duplicate entries but never lose one; a pack that is missing, damaged or
names a job whose prefix is gone is skipped. ``catalog.json`` is written by
the first full listing, which reads every prefix, creates the markers of live
jobs that lack one and rewrites first-layout packs: until then (stores from
before the catalog) listings read every prefix, as they always did.

Names read from this folder are checked (job ids, counts) before use, and
packs hold JSON only. Shared by client and scheduler side: imports neither.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import posixpath
import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dask_batch.core.exceptions import DaskBatchError
from dask_batch.core.names import JOB_ID
from dask_batch.core.records import JobRecord
from dask_batch.storage.catalog_head import (
    HEAD,
    HEAD_ATTEMPTS,
    HEAD_BACKOFF,
    HEAD_BACKOFF_MAX,
    Head,
)
from dask_batch.storage.parts import StoreParts

logger = logging.getLogger("dask_batch.store")

INDEX = ".index"
INDEX_SUFFIX = ".json.gz"
PACK_PREFIX = "pack-"
LIVE_PREFIX = "live-"
CATALOG = "catalog.json"
CATALOG_VERSION = 2
SMALL_PACK = 256  # packs that ending jobs extend; listings merge the rest
LARGE_PACK = 1024  # packs that merges leave alone: a window reads few entries
_ID_LENGTH = len("20261126-081530-123-3f9a1c2b")
_COUNT = re.compile(r"^[0-9]{1,9}$")  # ASCII digits: str.isdigit takes "²"
# Record fields that most jobs share (a few names, one user): kept once, they
# take a quarter less memory in a listing of 100,000 jobs.
_REPEATED_TEXTS = ("user", "name", "kind", "target", "mode", "message")


def index_entry(record: JobRecord) -> dict[str, Any]:
    """A record as a listing index entry: its dict, without empty fields."""
    required = ("id", "user", "name", "state", "submitted")
    return {
        k: v
        for k, v in record.to_dict().items()
        if k in required or (v not in (None, "", [], {}) and k != "tasks")
    }


@dataclass(frozen=True)
class Pack:
    """One index pack, as its name describes it.

    ``oldest`` is None for packs of the first layout, whose range is unknown
    until read: every listing reads them.
    """

    path: str
    newest: str
    oldest: str | None
    count: int

    def overlaps(self, since_id: str | None, until_id: str | None) -> bool:
        """Whether the pack may hold ids in ``[since_id, until_id]`` (prefixes)."""
        if since_id is not None and self.newest[: len(since_id)] < since_id:
            return False
        if until_id is not None and self.oldest is not None:
            return self.oldest[: len(until_id)] <= until_id
        return True


def parse_pack(path: str) -> Pack | None:
    """The pack named by ``path``, or None if the name is not one of ours."""
    name = posixpath.basename(path)
    if not name.endswith(INDEX_SUFFIX):
        return None
    stem = name[: -len(INDEX_SUFFIX)]
    new_layout = stem.startswith(PACK_PREFIX)
    if new_layout:
        stem = stem[len(PACK_PREFIX) :]
    parts = stem.rsplit("-", 2)
    if len(parts) != 3 or not _COUNT.match(parts[1]):
        return None
    ids, count = parts[0], int(parts[1])
    if new_layout:
        newest, oldest = ids[:_ID_LENGTH], ids[_ID_LENGTH + 1 :]
        if JOB_ID.match(newest) and JOB_ID.match(oldest) and oldest <= newest:
            return Pack(path, newest, oldest, count)
        return None
    return Pack(path, ids, None, count) if JOB_ID.match(ids) else None


@dataclass
class Catalog:
    """One LIST of a user's ``.index`` folder, parsed."""

    packs: list[Pack] = field(default_factory=list)
    live: set[str] = field(default_factory=set)
    complete: bool = False  # catalog.json exists: every live job has a marker


class ListingIndex(StoreParts):
    """The job catalog methods of :class:`~dask_batch.storage.store.JobStore`.

    A mixin: it reads and writes through the store's own objects, errors and
    listings, declared here for type checkers.
    """

    def index_path(self, user: str, name: str = "") -> str:
        base = posixpath.join(self.user_path(user), INDEX)
        return posixpath.join(base, name) if name else base

    def catalog(self, user: str) -> Catalog:
        """The user's catalog: packs, live job ids, and whether it is complete.

        From the head where the store keeps one and it is complete (one
        GET), else from a LIST of the folder, which then publishes the head.
        """
        tagged = self._read_head(user)
        if tagged is not None and tagged[0] is not None and tagged[0].complete:
            head = tagged[0]
            packs = [parse_pack(self.index_path(user, n)) for n in head.packs]
            out = Catalog([p for p in packs if p is not None], set(head.live), True)
        else:
            out = self._listed_catalog(user)
            if tagged is not None and out.complete:
                self._publish_head(user, out, *tagged)
        out.packs.sort(key=lambda p: p.newest, reverse=True)
        return out

    def _listed_catalog(self, user: str) -> Catalog:
        out = Catalog()
        for entry in self.list_names(self.index_path(user), "list the job index"):
            path = self.strip_protocol(entry).rstrip("/")
            name = posixpath.basename(path)
            if name == CATALOG:
                out.complete = True
            elif name.startswith(LIVE_PREFIX):
                job_id = name[len(LIVE_PREFIX) :]
                if JOB_ID.match(job_id):
                    out.live.add(job_id)
            elif (pack := parse_pack(path)) is not None:
                out.packs.append(pack)
        return out

    # -- the head (stores with conditional writes) -------------------------------
    def _read_head(self, user: str) -> tuple[Head | None, str | None] | None:
        """The head and its version tag; None where the store keeps no head.

        ``(None, None)``: there is none yet; ``(None, tag)``: it is damaged.
        """
        if not self.backend.tagged_writes:
            return None
        path = self.index_path(user, HEAD)
        with self.storage_errors("read the job index"):
            found = self._retrying(self.backend.get_tagged, path)
        if found is None:
            return None, None
        data, tag = found
        try:
            return Head.from_bytes(data, lambda n: parse_pack(n) is not None), tag
        except ValueError as exc:
            logger.warning("Ignoring the damaged job index head %s: %s", path, exc)
            return None, tag

    def _publish_head(
        self, user: str, listed: Catalog, read: Head | None, tag: str | None
    ) -> None:
        """Write a complete head from a LIST, unless a writer changed it since."""
        head = Head(complete=True, live=set(listed.live))
        head.packs = {posixpath.basename(p.path) for p in listed.packs}
        if read is not None:  # what writers added before the LIST saw it
            head.live |= read.live
            head.packs |= read.packs
        path = self.index_path(user, HEAD)
        try:
            with self.storage_errors("write the job index"):
                self._retrying(self.backend.put_tagged, path, head.to_bytes(), tag)
        except DaskBatchError as exc:  # a read-only user still gets listings
            logger.warning("Not publishing the job index head: %s", exc)

    def _change_head(self, user: str, change: Callable[[Head], None]) -> None:
        """Apply ``change`` to the head, however many writers race for it."""
        if not self.backend.tagged_writes:
            return
        path = self.index_path(user, HEAD)
        for attempt in range(HEAD_ATTEMPTS):
            head, tag = self._read_head(user) or (None, None)
            head = head or Head()  # none yet, or damaged: listings LIST
            change(head)
            with self.storage_errors("update the job index"):
                if self._retrying(self.backend.put_tagged, path, head.to_bytes(), tag):
                    return
            # Jitter, so that writers that collided do not collide again.
            pause = min(HEAD_BACKOFF * 2**attempt, HEAD_BACKOFF_MAX)
            time.sleep(random.uniform(0, pause))
        logger.warning(
            "The job index head of %s kept changing; removing it (listings "
            "list the folder until the next one publishes it again)",
            user,
        )
        with (
            self.storage_errors("update the job index"),
            contextlib.suppress(FileNotFoundError),
        ):
            self.fs.rm_file(path)

    def index_packs(self, user: str) -> list[Pack]:
        """The user's index packs, newest first."""
        return self.catalog(user).packs

    def read_packs(
        self, user: str, packs: Iterable[Pack]
    ) -> list[tuple[Pack, dict[str, JobRecord]]]:
        """Each pack that could be read, with its terminal records by job id.

        A pack is parsed and turned into records before the next one is read,
        so a listing of 100,000 jobs holds records, never all the JSON. A pack
        gone since it was listed (merged by another client) is left out; a
        damaged one (not gzip, not JSON, or an entry that is not a terminal
        record or lies outside the pack's range) is left out with a warning,
        and its jobs are read from their records by a full listing.
        """
        packs = list(packs)
        blobs = self.get_many([p.path for p in packs])
        out = []
        shared: dict[str, str] = {}  # one copy of the texts records repeat
        for pack in packs:
            data = blobs.pop(pack.path, None)
            if data is None:
                continue
            records: dict[str, JobRecord] = {}
            try:
                for entry in json.loads(gzip.decompress(data))["jobs"]:
                    record = JobRecord.from_dict(entry)
                    job_id = record.id
                    if not JOB_ID.match(job_id) or not record.state.is_terminal:
                        raise ValueError(f"an entry is not an ended job: {job_id!r}")
                    if job_id > pack.newest or (
                        pack.oldest is not None and job_id < pack.oldest
                    ):
                        raise ValueError(f"job {job_id} is outside the pack's range")
                    for name in _REPEATED_TEXTS:
                        text = getattr(record, name)
                        setattr(record, name, shared.setdefault(text, text))
                    records[job_id] = record
            except Exception as exc:
                logger.warning("Ignoring damaged job index pack %s: %s", pack.path, exc)
                continue
            out.append((pack, records))
        return out

    def read_index(
        self, user: str, packs: Iterable[Pack] | None = None
    ) -> dict[str, JobRecord]:
        """Terminal records by job id, from ``packs`` (default: all)."""
        if packs is None:
            packs = self.index_packs(user)
        records: dict[str, JobRecord] = {}
        for _, found in self.read_packs(user, packs):
            records.update(found)
        return records

    def write_index(
        self,
        user: str,
        entries: Iterable[dict[str, Any]],
        replaces: Iterable[Pack] = (),
        *,
        split: int = LARGE_PACK,
    ) -> None:
        """Write packs of index entries, then delete the packs they replace.

        Entries are sorted by id and cut into packs of ``split``, so that a
        pack covers a short stretch of time. A pack is deleted only once packs
        holding all its entries exist, so concurrent writers can duplicate
        entries but never lose one. With no entries (a merge whose jobs were
        all deleted) nothing is written.
        """
        ordered = sorted(entries, key=lambda e: e["id"])
        replaces = list(replaces)
        written: set[str] = set()
        with self.storage_errors("write the job index"):
            for first in range(0, len(ordered), split):
                chunk = ordered[first : first + split]
                newest, oldest = chunk[-1]["id"], chunk[0]["id"]
                name = (
                    f"{PACK_PREFIX}{newest}-{oldest}-{len(chunk)}-"
                    f"{os.urandom(4).hex()}{INDEX_SUFFIX}"
                )
                document = json.dumps({"version": 1, "jobs": chunk}).encode()
                path = self.index_path(user, name)
                self.backend.put_whole(path, gzip.compress(document, 6))
                written.add(name)
            gone = {posixpath.basename(p.path) for p in replaces}

            def swap_packs(head: Head) -> None:
                head.packs = (head.packs - gone) | written

            if written or gone:
                self._change_head(user, swap_packs)
            for old in replaces:
                # Gone already: another client merged it first, the same outcome.
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(old.path)

    def add_to_index(self, user: str, record: JobRecord) -> None:
        """Fold one job that just ended into the newest small pack.

        Whoever writes a terminal state calls this, so a listing finds every
        finished job in a few packs without reading its record; the job's
        live marker goes once the pack holding it exists.
        """
        small = [
            p
            for p in self.index_packs(user)
            if p.oldest is not None and p.count < SMALL_PACK
        ]
        read = self.read_packs(user, small[:1])
        records = {i: r for _, found in read for i, r in found.items()}
        records[record.id] = record
        entries = [index_entry(r) for r in records.values()]
        self.write_index(user, entries, replaces=[p for p, _ in read])
        self.forget_live(user, [record.id])

    def drop_from_index(self, user: str, job_id: str) -> None:
        """Rewrite the packs that hold ``job_id`` without it (a deleted job).

        As every rewrite, the new pack is written before the old one goes.
        """
        holding = [p for p in self.index_packs(user) if p.overlaps(job_id, job_id)]
        for pack, records in self.read_packs(user, holding):
            if job_id in records:
                rest = [index_entry(r) for i, r in records.items() if i != job_id]
                self.write_index(user, rest, replaces=[pack], split=len(rest) + 1)

    # -- live markers ------------------------------------------------------------
    def mark_live(self, user: str, job_id: str) -> None:
        """Create the marker that lists a job while it has not ended."""
        # The head first: a writer that dies in between leaves it saying more.
        self._change_head(user, lambda h: h.live.add(job_id))
        path = self.index_path(user, LIVE_PREFIX + job_id)
        with self.storage_errors("mark the job live in the job index", job_id):
            self.backend.put_whole(path, b"")

    def forget_live(self, user: str, job_ids: Iterable[str]) -> None:
        """Remove the live markers of jobs that ended or no longer exist."""
        job_ids = list(job_ids)
        for job_id in job_ids:
            path = self.index_path(user, LIVE_PREFIX + job_id)
            with (
                self.storage_errors("update the job index", job_id),
                contextlib.suppress(FileNotFoundError),
            ):
                self.fs.rm_file(path)
        if job_ids:
            self._change_head(user, lambda h: h.live.difference_update(job_ids))

    def mark_complete(self, user: str) -> None:
        """Record that every live job of ``user`` has its marker."""
        document = json.dumps({"version": CATALOG_VERSION}).encode()
        with self.storage_errors("write the job index"):
            self.backend.put_whole(self.index_path(user, CATALOG), document)
