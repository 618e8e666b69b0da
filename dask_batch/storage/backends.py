"""What differs between kinds of storage, in one table.

The job store needs three things that each kind of fsspec filesystem gives in
its own way: a write that no reader sees half done, a create-only write (the
compare-and-set under terminal states and idempotency keys), and a fast
listing of a prefix. :func:`backend_for` picks the strategy for a filesystem;
nothing else in dask-batch asks what kind of filesystem it has.

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
from fsspec.implementations.local import LocalFileSystem


def _aside(path: str) -> str:
    """A unique temporary name beside ``path`` (same directory, same device)."""
    return f"{path}.{os.getpid()}-{os.urandom(4).hex()}.tmp"


class ObjectStoreBackend:
    """Object stores (S3, GCS, Azure): one PUT is atomic and conditional PUTs exist.

    An exception inside ``fs.open(path, "wb")`` still commits a truncated
    object on s3fs when the file is closed, so a failed streamed write is
    discarded (which aborts a multipart upload) instead of closed.
    """

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
    return ObjectStoreBackend(fs)
