"""Copy ``artifacts_dir()``, main's local artifacts folder, to the job storage.

The runner syncs the folder while main runs (every
``batch.artifacts.sync-interval``, so a long job's checkpoints are safe) and
once more after main's process has ended, whatever ended it: a timeout, a
crash, a cancel. Only regular files are copied, each at a checked relative
path, and at most ``batch.artifacts.limit`` bytes in all: the folder is
written by user code running beside the scheduler, and a link in it must not
carry the scheduler's own files (its TLS key) to storage.

Scheduler side: imports nothing from the client or CLI modules.
"""

from __future__ import annotations

import logging
import os
import stat

from dask.utils import format_bytes

from dask_batch.core.names import InvalidNameError, check_relative_path
from dask_batch.storage.store import JobStore

logger = logging.getLogger("distributed.scheduler.dask_batch")


class ArtifactSync:
    """Copies new and changed files of one job's local artifacts folder.

    Parameters
    ----------
    store : JobStore
    user, job_id : str
    directory : str
        The folder main writes (``dask_batch.artifacts_dir()``).
    limit : int
        Largest total size of the files kept, in bytes.
    """

    def __init__(
        self, store: JobStore, user: str, job_id: str, directory: str, limit: int
    ) -> None:
        self.store = store
        self.user = user
        self.job_id = job_id
        self.directory = directory
        self.limit = limit
        self._copied: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns)
        self._refused: set[str] = set()

    def sync(self) -> list[str]:
        """Copy what changed since the last call.

        Returns
        -------
        list of str
            Notes for the job's log about files that were not copied (each
            said once): links, special files, bad names, files past the limit.
        """
        notes: list[str] = []
        kept = sum(size for size, _ in self._copied.values())
        for name, path, info in self._files(notes):
            seen = (info.st_size, info.st_mtime_ns)
            before = self._copied.get(name)
            if before == seen:
                continue
            others = kept - (before[0] if before else 0)
            if others + info.st_size > self.limit:
                self._note(
                    notes,
                    name,
                    f"artifact {name!r} ({format_bytes(info.st_size)}) not stored: "
                    f"the job's artifacts would exceed batch.artifacts.limit "
                    f"({format_bytes(self.limit)})",
                )
                continue
            self.store.put_artifact(self.user, self.job_id, name, path)
            self._copied[name] = seen
            kept = others + info.st_size
        return notes

    def adopt(self) -> None:
        """Count the folder's files as stored as they are now (copied there
        from storage), so that they are not uploaded again."""
        for name, _, info in self._files([]):
            self._copied[name] = (info.st_size, info.st_mtime_ns)

    def _files(self, notes: list[str]) -> list[tuple[str, str, os.stat_result]]:
        found = []
        for root, dirs, files in os.walk(self.directory):  # links are not followed
            for entry in sorted(dirs + files):
                path = os.path.join(root, entry)
                name = os.path.relpath(path, self.directory).replace(os.sep, "/")
                info = os.lstat(path)
                if stat.S_ISDIR(info.st_mode):
                    continue
                try:
                    name = check_relative_path(
                        name, what="artifact", job_id=self.job_id
                    )
                except InvalidNameError as exc:
                    self._note(notes, name, f"{exc}; not stored")
                    continue
                if not stat.S_ISREG(info.st_mode):
                    kind = "a link" if stat.S_ISLNK(info.st_mode) else "not a file"
                    self._note(
                        notes,
                        name,
                        f"artifact {name!r} is {kind}: not stored (write the "
                        "file itself into artifacts_dir())",
                    )
                    continue
                found.append((name, path, info))
        return found

    def _note(self, notes: list[str], name: str, message: str) -> None:
        if name not in self._refused:
            self._refused.add(name)
            notes.append(f"dask-batch: job {self.job_id}: {message}")
