"""A job's outputs in storage: its result (streamed, hashed while it moves)
and its artifacts (checked names, no links followed).

A part of :class:`~dask_batch.storage.store.JobStore`.
"""

from __future__ import annotations

import logging
import os
import shutil

from dask_batch.core.names import InvalidNameError, check_relative_path
from dask_batch.core.pickling import ResultBuffer
from dask_batch.storage import streams as _streams
from dask_batch.storage.parts import StoreParts

logger = logging.getLogger("dask_batch.store")

RESULT = "result.pkl"
ARTIFACTS = "artifacts"


class StoredOutputs(StoreParts):
    """Results and artifacts, for :class:`~dask_batch.storage.store.JobStore`."""

    # -- results: streamed, hashed while they move ----------------------------------
    def put_pieces(
        self,
        user: str,
        job_id: str,
        name: str,
        pieces: list[memoryview],
        hmac_key: str | None = None,
    ) -> tuple[str, str]:
        """Write ``pieces`` as one object; return its digest and HMAC (or "")."""
        path = self.job_path(user, job_id, name)
        with self.storage_errors(f"write {name}", job_id):
            return self._retrying(
                _streams.write_pieces, self.backend, path, pieces, hmac_key
            )

    def get_result(
        self,
        user: str,
        job_id: str,
        hmac_key: str | None = None,
        *,
        name: str = RESULT,
    ) -> tuple[bytes, list[ResultBuffer], str, str]:
        """Read a stored result: the pickle, its buffers, digest and HMAC."""
        path = self.job_path(user, job_id, name)
        with self.storage_errors(
            "read the result", job_id, answers=(FileNotFoundError,)
        ):
            return self._retrying(_streams.read_result, self.fs, path, job_id, hmac_key)

    # -- artifacts ---------------------------------------------------------------------
    def artifacts(self, user: str, job_id: str) -> dict[str, int]:
        """Artifact paths (relative to the job's artifacts prefix) and sizes."""
        root = self.job_path(user, job_id, ARTIFACTS)
        try:
            with self.storage_errors(
                "list the artifacts", job_id, answers=(FileNotFoundError,)
            ):
                found = self.fs.find(root, detail=True)
        except FileNotFoundError:
            return {}
        out = {}
        for path, info in found.items():
            path = self.strip_protocol(path)
            if info.get("type") != "file":
                continue
            name = path[len(root) + 1 :] if path.startswith(root + "/") else path
            try:
                name = check_relative_path(name, what="artifact", job_id=job_id)
                if info.get("islink"):
                    raise InvalidNameError(
                        f"artifact {name!r} is a link", job_id=job_id
                    )
            except InvalidNameError as exc:
                # Put there by someone who can write the storage, not by main.
                logger.warning("Ignoring artifact of job %s: %s", job_id, exc)
                continue
            out[name] = int(info.get("size") or 0)
        return dict(sorted(out.items()))

    def put_artifact(self, user: str, job_id: str, name: str, local: str) -> None:
        """Copy the local file ``local`` to the artifact ``name``.

        The file is opened without following links: one swapped for a link
        after it was listed is refused.
        """
        name = check_relative_path(name, what="artifact", job_id=job_id)
        remote = self.job_path(user, job_id, f"{ARTIFACTS}/{name}")

        def copy() -> None:
            fd = os.open(local, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as source, self.fs.open(remote, "wb") as out:
                shutil.copyfileobj(source, out, 4 * 2**20)

        with self.storage_errors(f"store the artifact {name!r}", job_id):
            self._retrying(copy)

    def get_artifact(self, user: str, job_id: str, name: str, local: str) -> None:
        """Copy the artifact ``name`` to the local path ``local``."""
        name = check_relative_path(name, what="artifact", job_id=job_id)
        remote = self.job_path(user, job_id, f"{ARTIFACTS}/{name}")
        with self.storage_errors(f"download the artifact {name!r}", job_id):
            self.fs.get_file(remote, local)
