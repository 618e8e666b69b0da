"""What differs between kinds of storage, in one table.

The job store needs four things that each kind of fsspec filesystem gives in
its own way: a write that no reader sees half done, a create-only write (the
compare-and-set under terminal states and idempotency keys), a fast listing
of a prefix, and, where the store has one, a write that succeeds only if the
object is unchanged since it was read (S3's ``If-Match``: the job catalog's
head, which spares listings a LIST). :func:`backend_for` picks the strategy
for a filesystem; nothing else in dask-batch asks what kind of filesystem it
has.

Shared by client and scheduler side: imports neither.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import posixpath
from collections.abc import Iterator
from typing import IO, Any

import fsspec
import fsspec.asyn
from fsspec.implementations.local import LocalFileSystem


def _aside(path: str) -> str:
    """A unique temporary name beside ``path`` (same directory, same device)."""
    return f"{path}.{os.getpid()}-{os.urandom(4).hex()}.tmp"


class ObjectStoreBackend:
    """Object stores (S3, GCS, Azure): one PUT is atomic and conditional PUTs exist.

    ``tagged_writes`` says whether :meth:`get_tagged` and :meth:`put_tagged`
    work; where they do not, the job catalog is read by listing its folder.

    An exception inside ``fs.open(path, "wb")`` still commits a truncated
    object on s3fs when the file is closed, so a failed streamed write is
    discarded (which aborts a multipart upload) instead of closed.
    """

    tagged_writes = False

    def __init__(self, fs: fsspec.AbstractFileSystem) -> None:
        self.fs = fs
        #: Passed to ``cat``/``cat_file`` for small objects (records, packs).
        #: s3fs first asks for an object's size to read big ones in parallel
        #: parts; for a missing object that HEAD falls back to a LIST. One
        #: GET is all a record needs.
        self.small_reads: dict[str, Any] = {}
        cat_file = getattr(fs, "_cat_file", None)
        if cat_file is not None:
            with contextlib.suppress(TypeError, ValueError):
                if "max_concurrency" in inspect.signature(cat_file).parameters:
                    self.small_reads = {"max_concurrency": 1}

    def put_whole(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(path, data)

    def put_create(self, path: str, data: bytes) -> None:
        """Write ``data`` unless ``path`` exists; FileExistsError if it does."""
        # If-None-Match: * on S3.
        self.fs.pipe_file(path, data, mode="create")

    def names(self, path: str) -> list[str]:
        """Paths directly below ``path``; FileNotFoundError if there is none."""
        return list(self.fs.ls(path, detail=False, refresh=True))

    def get_tagged(self, path: str) -> tuple[bytes, str] | None:
        """An object and the tag of that version of it; None if it is missing."""
        raise NotImplementedError

    def put_tagged(self, path: str, data: bytes, tag: str | None) -> bool:
        """Write ``path`` if it is still the version ``tag`` (None: still missing).

        False, and nothing written, if another writer came first.
        """
        raise NotImplementedError

    @contextlib.contextmanager
    def open_whole(self, path: str) -> Iterator[IO[bytes]]:
        """A file that becomes visible as a whole when the block ends cleanly."""
        f = self.fs.open(path, "wb")
        try:
            yield f
        except BaseException:
            f.discard()
            f.closed = True  # else closing at exit would commit the parts sent
            raise
        f.close()


class LocalBackend(ObjectStoreBackend):
    """A local or shared POSIX filesystem.

    A local write is visible while in progress, so whole writes go aside and
    are renamed into place (atomic); create-only writes are an atomic hard
    link, which fails if the name exists. ``os.listdir`` lists a directory
    without the ``stat`` that fsspec's ``ls`` makes of every entry.
    """

    def put_whole(self, path: str, data: bytes) -> None:
        tmp = _aside(path)
        try:
            self.fs.pipe_file(tmp, data)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)

    def put_create(self, path: str, data: bytes) -> None:
        tmp = _aside(path)
        self.fs.pipe_file(tmp, data)
        try:
            os.link(tmp, path)
        finally:
            os.remove(tmp)

    def names(self, path: str) -> list[str]:
        return [posixpath.join(path, name) for name in os.listdir(path)]

    @contextlib.contextmanager
    def open_whole(self, path: str) -> Iterator[IO[bytes]]:
        tmp = _aside(path)
        f = self.fs.open(tmp, "wb")
        try:
            yield f
            f.close()
            os.replace(tmp, path)
        except BaseException:
            f.close()
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise


def _lost_race(exc: BaseException) -> bool:
    """Whether a failed conditional PUT failed on its condition."""
    if isinstance(exc, (FileExistsError, FileNotFoundError)):
        return True  # If-None-Match: the object appeared; If-Match: it went
    response = getattr(exc.__cause__, "response", None) or {}
    code = response.get("Error", {}).get("Code")
    # 412, or 409 when S3 is given two conditional writes of a key at once.
    return code in ("PreconditionFailed", "ConditionalRequestConflict")


class S3Backend(ObjectStoreBackend):
    """S3 through s3fs: GET gives an ETag, and PUT takes ``If-Match`` on it."""

    tagged_writes = True

    def get_tagged(self, path: str) -> tuple[bytes, str] | None:
        return fsspec.asyn.sync(self.fs.loop, self._get_tagged, path)

    async def _get_tagged(self, path: str) -> tuple[bytes, str] | None:
        bucket, key, _ = self.fs.split_path(path)
        # fsspec's async filesystems name their coroutines with an underscore:
        # it is their async API, not a private one.
        call_s3 = self.fs._call_s3  # noqa: SLF001
        try:
            out = await call_s3("get_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        async with out["Body"] as body:
            data = await body.read()
        return data, str(out["ETag"])

    def put_tagged(self, path: str, data: bytes, tag: str | None) -> bool:
        bucket, key, _ = self.fs.split_path(path)
        condition = {"IfMatch": tag} if tag else {"IfNoneMatch": "*"}
        try:
            self.fs.call_s3(
                "put_object", Bucket=bucket, Key=key, Body=data, **condition
            )
        except OSError as exc:
            if _lost_race(exc):
                return False
            raise
        return True


class MemoryBackend(ObjectStoreBackend):
    """fsspec's in-memory filesystem (tests): one process, no partial writes."""

    def put_create(self, path: str, data: bytes) -> None:
        if self.fs.exists(path):
            raise FileExistsError(path)
        self.fs.pipe_file(path, data)

    @contextlib.contextmanager
    def open_whole(self, path: str) -> Iterator[IO[bytes]]:
        buffer = io.BytesIO()
        yield buffer
        self.fs.pipe_file(path, buffer.getvalue())


def backend_for(fs: fsspec.AbstractFileSystem) -> ObjectStoreBackend:
    """The strategy for ``fs``: local files, memory, or an object store."""
    protocols: Any = fs.protocol
    protocols = (protocols,) if isinstance(protocols, str) else tuple(protocols)
    if isinstance(fs, LocalFileSystem):
        return LocalBackend(fs)
    if "memory" in protocols:
        return MemoryBackend(fs)
    if "s3" in protocols and hasattr(fs, "_call_s3"):
        return S3Backend(fs)
    return ObjectStoreBackend(fs)
