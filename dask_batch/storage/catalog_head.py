"""The catalog's head: one object that says what a LIST of the catalog would.

Where the store writes on a condition (S3's ``If-Match``), the names in a
user's ``.index`` folder (live markers and packs) are also kept in one
object, ``.index/head.json``, so that a listing reads the catalog with one
GET instead of a LIST. A LIST's cost depends on the store: S3 answers by the
keys it returns, but others (moto, some S3-compatible servers) walk every key
of the bucket, so a user's newest 50 would cost more as the bucket grows.

Every change to the folder changes the head too: read it, change it, write it
on the condition that it is the version read, and again if another writer
came in between. Changes are ordered so that a writer that dies midway
leaves a head that says too much, never too little: a job is added as live
before its marker is created, a pack after it is written, and packs it
replaces are deleted after it is taken out. Too much costs a listing a read
(a record that turns out to have ended, a pack that is gone, which sends the
listing down its full path, and that path repairs the head).

A head is only trusted when it says ``complete``: published from a complete
LIST of the folder, merged with the head read before that LIST, and written
on the condition that this head is unchanged. A writer that changed the
folder in between also changed the head, and the publication is dropped;
the next listing tries again. A writer that loses the race too often
deletes the head: listings then LIST, which is always right.

Names read from the head are checked like names listed from the folder.
Shared by client and scheduler side: imports neither.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from dask_batch.core.names import JOB_ID

HEAD = "head.json"
HEAD_VERSION = 1
HEAD_ATTEMPTS = 12  # conditional writes lost to other writers before giving up
HEAD_BACKOFF = 0.02  # seconds; doubled after each lost write (at most 1 s), jittered
HEAD_BACKOFF_MAX = 1.0


@dataclass
class Head:
    """What the head says: live job ids, pack names, and whether it is whole."""

    complete: bool = False
    live: set[str] = field(default_factory=set)
    packs: set[str] = field(default_factory=set)

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "version": HEAD_VERSION,
                "complete": self.complete,
                "live": sorted(self.live),
                "packs": sorted(self.packs),
            }
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes, is_pack: Callable[[str], bool]) -> Head:
        """Parse and check a head; ValueError if anything in it is not ours.

        ``is_pack`` tells whether a name is a pack's name.
        """
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("version") != HEAD_VERSION:
            raise ValueError("not a catalog head of this version")
        complete, live, packs = doc.get("complete"), doc.get("live"), doc.get("packs")
        if not isinstance(complete, bool):
            raise ValueError("'complete' is not true or false")
        if not isinstance(live, list) or not all(
            isinstance(i, str) and JOB_ID.match(i) for i in live
        ):
            raise ValueError("'live' is not a list of job ids")
        if not isinstance(packs, list) or not all(
            isinstance(n, str) and "/" not in n and is_pack(n) for n in packs
        ):
            raise ValueError("'packs' is not a list of pack names")
        return cls(complete, set(live), set(packs))
