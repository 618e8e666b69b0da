"""Main's log in storage: appended in chunks while it runs, read back bounded.

Layout: ``{root}/{user}/{job_id}/logs/AAAANNNNNNNN``, the attempt then the
chunk number, so names sort as the output was written and attempts never
overwrite each other (a task of a pipeline or array: ``tasks/{task}/logs/``).
Chunks are never rewritten. Readers take at most what they were asked for
from the end, so a huge log costs no more than that.

Shared by client and scheduler side: imports neither.
"""

from __future__ import annotations

import posixpath

from dask_batch.core.tasks import task_path
from dask_batch.storage.parts import StoreParts

LOGS = "logs"
_TAIL_BYTES = 64 * 2**10  # read for the end of a failed job's log


def _logs_folder(task: str) -> str:
    return task_path(task, LOGS) if task else LOGS


class JobLogs(StoreParts):
    """The log methods of :class:`~dask_batch.storage.store.JobStore` (a mixin).

    Each takes ``task``: the log of one task of a pipeline or array job
    ("": the job's own log).
    """

    def put_log_chunk(
        self,
        user: str,
        job_id: str,
        attempt: int,
        index: int,
        data: bytes,
        *,
        task: str = "",
    ) -> None:
        # Names sort as numbers do: by cluster attempt, then by chunk.
        name = f"{_logs_folder(task)}/{attempt:04d}{index:08d}"
        self.put(user, job_id, name, data)

    def log_chunks(self, user: str, job_id: str, *, task: str = "") -> list[str]:
        """Paths of the stored log chunks, in order."""
        folder = self.job_path(user, job_id, _logs_folder(task))
        found = self.list_names(folder, "list the log", job_id)
        chunks = [p for p in found if posixpath.basename(p).isdigit()]
        return sorted(self.strip_protocol(p) for p in chunks)

    def read_logs(
        self,
        user: str,
        job_id: str,
        start: int = 0,
        limit: int | None = None,
        *,
        task: str = "",
    ) -> tuple[bytes, int]:
        """Log bytes from chunk ``start`` on, and the index of the next chunk.

        With ``limit``, at most that many bytes: the end of the log, read a
        chunk at a time from the last one.
        """
        chunks = self.log_chunks(user, job_id, task=task)[start:]
        if limit is None:
            blobs = self.get_many(chunks, job_id)
            return b"".join(blobs.get(p, b"") for p in chunks), start + len(chunks)
        return self._log_end(chunks, job_id, limit), start + len(chunks)

    def _log_end(self, chunks: list[str], job_id: str, limit: int) -> bytes:
        """The last ``limit`` bytes of ``chunks``, reading no more than that."""
        pieces: list[bytes] = []
        wanted = limit
        for path in reversed(chunks):
            if wanted <= 0:
                break
            with self.storage_errors("read the log", job_id):
                size = int(self.fs.size(path))
                first = max(0, size - wanted)
                pieces.append(bytes(self.fs.cat_file(path, start=first)))
            wanted -= size - first
        return b"".join(reversed(pieces))

    def log_tail(self, user: str, job_id: str, lines: int, *, task: str = "") -> str:
        """The last ``lines`` lines of the log, from at most its last 64 KiB."""
        data, _ = self.read_logs(user, job_id, limit=_TAIL_BYTES, task=task)
        text = data.decode(errors="replace")
        return "\n".join(line[-1000:] for line in text.splitlines()[-lines:])
