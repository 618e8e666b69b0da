"""The listing index: terminal job records packed together, for fast listings.

Layout, per user::

    {root}/{user}/.index/{newest job id}-{count}-{random}.json.gz
        {"version": 1, "jobs": [{"id", "name", "state", "submitted", ...}, ...]}

A terminal record never changes, so whoever writes a terminal state adds it to
the newest small pack, and listings fold the terminal records they had to read
one by one into a new pack: one GET per pack instead of six per job. Packs are
only a cache of what the job prefixes hold. A pack that is missing (merged
away by another client), damaged, or names a job whose prefix is gone is
skipped, and those jobs are read one by one again. Concurrent writers add
packs that overlap, which is harmless: a terminal record is the same in all of
them. Packs hold JSON only.

Shared by client and scheduler side: imports neither.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import posixpath
from collections.abc import Iterable
from typing import Any

from ._records import JobRecord
from ._store_parts import StoreParts

logger = logging.getLogger("dask_batch.store")

INDEX = ".index"
INDEX_SUFFIX = ".json.gz"
SMALL_PACK = 256  # packs that ending jobs extend; listings merge the rest


def index_entry(record: JobRecord) -> dict[str, Any]:
    """A record as a listing index entry: its dict, without empty fields."""
    required = ("id", "user", "name", "state", "submitted")
    return {
        k: v
        for k, v in record.to_dict().items()
        if k in required or v not in (None, "", [])
    }


def _pack_size(path: str) -> int:
    """Entries in an index pack, from its name ``{newest}-{count}-{random}``."""
    try:
        return int(posixpath.basename(path).rsplit("-", 2)[1])
    except (IndexError, ValueError):
        return SMALL_PACK  # not ours to extend


class ListingIndex(StoreParts):
    """The listing index methods of :class:`~dask_batch._store.JobStore`.

    A mixin: it reads and writes through the store's own objects, errors and
    listings, declared here for type checkers.
    """

    def index_path(self, user: str) -> str:
        return posixpath.join(self.user_path(user), INDEX)

    def index_packs(self, user: str) -> list[str]:
        """Paths of the user's index packs, oldest first."""
        names = self._names(self.index_path(user), "list the job index")
        return sorted(
            self.fs._strip_protocol(n) for n in names if n.endswith(INDEX_SUFFIX)
        )

    def read_index(
        self, user: str, packs: list[str] | None = None
    ) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Index entries of terminal jobs by id, and the packs they came from.

        Entries stay dicts (see :func:`index_entry`): a listing of the newest
        50 builds 50 records, not one per job ever run.
        """
        if packs is None:
            packs = self.index_packs(user)
        blobs = self.get_many(packs)
        entries: dict[str, dict[str, Any]] = {}
        read = []
        for path in packs:
            data = blobs.pop(path, None)
            if data is None:  # merged into a newer pack meanwhile
                continue
            try:
                pack = json.loads(gzip.decompress(data))["jobs"]
                entries.update((e["id"], e) for e in pack)
            except Exception as exc:  # damaged: its jobs are read one by one
                logger.warning("Ignoring damaged job index pack %s: %s", path, exc)
                continue
            read.append(path)
        return entries, read

    def write_index(
        self,
        user: str,
        entries: Iterable[dict[str, Any]],
        replaces: Iterable[str] = (),
    ) -> None:
        """Write a pack of index entries, then delete the packs it replaces.

        A pack is deleted only once a pack holding all its entries exists, so
        concurrent writers can duplicate entries but never lose one. With no
        entries (a merge whose jobs were all deleted) nothing is written.
        """
        ordered = sorted(entries, key=lambda e: e["id"])
        with self._errors("write the job index"):
            if ordered:
                newest = ordered[-1]["id"]
                name = f"{newest}-{len(ordered)}-{os.urandom(4).hex()}{INDEX_SUFFIX}"
                document = json.dumps({"version": 1, "jobs": ordered}).encode()
                path = posixpath.join(self.index_path(user), name)
                self.backend.put_whole(path, gzip.compress(document, 6))
            for old in replaces:
                # Gone already: another client merged it first, the same outcome.
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(old)

    def add_to_index(self, user: str, record: JobRecord) -> None:
        """Fold one job that just ended into the newest small pack.

        Whoever writes a terminal state calls this, so a listing finds every
        finished job in a few packs without reading its record.
        """
        small = [p for p in self.index_packs(user) if _pack_size(p) < SMALL_PACK]
        entries, read = self.read_index(user, small[-1:])
        entries[record.id] = index_entry(record)
        self.write_index(user, entries.values(), replaces=read)
