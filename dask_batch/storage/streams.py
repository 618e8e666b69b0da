"""Large results through storage: streamed in pieces, hashed while they move.

A result is written from its own pieces (the frame, the pickle, the
out-of-band buffers of pickle protocol 5) and read into fresh buffers, never
joined into one blob, so either side needs about 1x the result in memory.

The digest is BLAKE3 of the stored bytes: one hashing thread, fed the chunks
in order while the next ones are written or read, keeps up with a local
disk's page cache (the hasher releases the GIL), where SHA-256 does not. The
HMAC with the user's ``batch.result-key`` is HMAC-SHA256 of that digest.

Shared by client and scheduler side: imports neither.
"""

from __future__ import annotations

import hashlib
import hmac
import mmap
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import blake3
import fsspec

from dask_batch.core.exceptions import ResultIntegrityError
from dask_batch.core.pickling import RESULT_MAGIC, ResultBuffer, read_result_frame
from dask_batch.storage.backends import ObjectStoreBackend

CHUNK = 16 * 2**20
RESULT_DIGEST_PREFIX = "blake3:"
# Buffers from this size on are populated anonymous maps (see fresh_buffer).
_POPULATE_FROM = 2**20


def chunks(view: memoryview) -> Iterable[memoryview]:
    """``view`` as flat byte slices of at most ``CHUNK`` bytes."""
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    for start in range(0, view.nbytes, CHUNK):
        yield view[start : start + CHUNK]


def fresh_buffer(size: int) -> ResultBuffer:
    """Writable memory for one out-of-band buffer of a result being read.

    Big ones are anonymous maps populated in one call (Linux MAP_POPULATE):
    bytearray's zero fill takes one page fault per 4 KiB, which on a VM costs
    more than reading the bytes from the page cache.
    """
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if size < _POPULATE_FROM or not populate:
        return bytearray(size)
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)


class StreamHasher:
    """Digest (and HMAC) of a stored result, hashed in a thread beside its I/O."""

    def __init__(self, hmac_key: str | None = None) -> None:
        self.key = hmac_key
        self.hasher = blake3.blake3()
        # One thread: updates must be applied in order.
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="dask-batch-hash")
        self.pending: list[Future[Any]] = []

    def update(self, piece: Any) -> None:
        """Hash one piece; its memory must not change until :meth:`result`."""
        for chunk in chunks(memoryview(piece)):
            self.pending.append(self.pool.submit(self.hasher.update, chunk))

    def result(self) -> tuple[str, str]:
        """The digest and the HMAC ("" without a key), once every piece is hashed."""
        try:
            for update in self.pending:
                update.result()
        finally:
            self.pool.shutdown(cancel_futures=True)
        value = self.hasher.digest()
        mac = hmac.new(self.key.encode(), value, hashlib.sha256) if self.key else None
        return (
            RESULT_DIGEST_PREFIX + value.hex(),
            mac.hexdigest() if mac is not None else "",
        )

    def close(self) -> None:
        """Stop hashing (after a failed transfer)."""
        self.pool.shutdown(cancel_futures=True)


def digest_signature(key: str, digest: str) -> str:
    """The HMAC that :class:`StreamHasher` gives a result with this digest."""
    value = bytes.fromhex(digest.removeprefix(RESULT_DIGEST_PREFIX))
    return hmac.new(key.encode(), value, hashlib.sha256).hexdigest()


def write_pieces(
    backend: ObjectStoreBackend,
    path: str,
    pieces: list[memoryview],
    hmac_key: str | None,
) -> tuple[str, str]:
    """Write ``pieces`` as one object at ``path``; return its digest and HMAC.

    Nobody sees a partial object: the backend commits the object only when
    every piece is written and hashed.
    """
    hasher = StreamHasher(hmac_key)
    try:
        with backend.open_whole(path) as f:
            for piece in pieces:
                hasher.update(piece)  # hashed in a thread while it is written
                for chunk in chunks(piece):
                    f.write(chunk)
            return hasher.result()
    finally:
        hasher.close()


def read_result(
    fs: fsspec.AbstractFileSystem, path: str, job_id: str, hmac_key: str | None
) -> tuple[bytes, list[ResultBuffer], str, str]:
    """Read a stored result into fresh buffers, hashing it on the way.

    Returns the pickle, its out-of-band buffers, the digest and the HMAC with
    ``hmac_key``. Nothing is unpickled here.
    """
    with fs.open(path, "rb") as f:
        size = getattr(f, "size", None)
        size = size if isinstance(size, int) else int(fs.size(path))
        if f.read(len(RESULT_MAGIC)) != RESULT_MAGIC:
            raise ResultIntegrityError(
                f"The stored result of job {job_id!r} does not match the digest "
                "its runner recorded (it is not in dask-batch's result format): "
                "it was changed in storage. Not loading it.",
                job_id=job_id,
            )

        def read(size: int) -> bytes:
            data = f.read(size)
            if len(data) != size:
                raise EOFError("the stored result is truncated")
            return bytes(data)

        try:
            frame, length, sizes = read_result_frame(read, size)
        except ValueError as exc:
            raise ResultIntegrityError(
                f"The stored result of job {job_id!r} is damaged ({exc}): it was "
                "changed in storage. Not loading it.",
                job_id=job_id,
            ) from None
        hasher = StreamHasher(hmac_key)
        try:
            hasher.update(frame)
            stream = read(length)
            hasher.update(stream)
            buffers = [fresh_buffer(size) for size in sizes]
            for buffer in buffers:
                for chunk in chunks(memoryview(buffer)):
                    if f.readinto(chunk) != chunk.nbytes:
                        raise EOFError("the stored result is truncated")
                    hasher.update(chunk)
            digest, signature = hasher.result()
        finally:
            hasher.close()
    return stream, buffers, digest, signature
