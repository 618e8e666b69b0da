"""Job records in object storage, through fsspec.

Layout, one prefix per user and job::

    {root}/{user}/{job_id}/spec.json      what was submitted (written once)
                           payload.pkl    cloudpickled (main, args, kwargs)
                           cluster.json   the cluster the gateway accepted
                           state.json     state, times, message, error
                           final.json     the terminal state: created once, never
                                          replaced (a conditional PUT)
                           heartbeat.json when the runner was last alive
                           result.pkl     main's return value: a frame, the pickle
                                          and its out-of-band buffers (protocol 5)
                           error.json     the exception main raised
                           logs/AAAANNNNNNNN  stdout and stderr of main, in chunks
                                          (attempt, chunk)
                                          appended while it runs (never rewritten)
                           progress.json  the latest dask_batch.report() of main
                           secrets.bin    env values for main, encrypted
                           files.tar.gz   files uploaded as main's working directory
                           artifacts/...  files main wrote to artifacts_path()
    {root}/{user}/.index/{newest}-{count}-{random}.json.gz
                                          packs of terminal records, for listing

A terminal record never changes, so listing folds the terminal records it had
to read one by one into a new index pack and reads packs from then on: one GET
per pack instead of six per job. Packs are only a cache of what the job
prefixes hold. A pack that is missing (merged away by another client),
damaged, or names a job whose prefix is gone is skipped, and those jobs are
read one by one again. Concurrent writers add packs that overlap, which is
harmless: a terminal record is the same in all of them.

Every object is serialised in memory and written with one ``pipe_file`` so that
no reader ever sees half a record (an exception inside ``fs.open(..., "wb")``
still commits a truncated object on s3fs). A terminal state is never
overwritten. Shared by client and scheduler side: imports neither.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import hmac
import json
import logging
import mmap
import os
import posixpath
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import blake3
import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import get_protocol

from ._exceptions import CorruptRecordError, JobNotFoundError, StorageError
from ._pickling import RESULT_MAGIC, ResultBuffer, read_result_frame
from ._records import JobRecord, JobState, to_iso, utcnow

logger = logging.getLogger("dask_batch.store")

SPEC = "spec.json"
STATE = "state.json"
FINAL = "final.json"
HEARTBEAT = "heartbeat.json"
CLUSTER = "cluster.json"
PAYLOAD = "payload.pkl"
RESULT = "result.pkl"
ERROR = "error.json"
LOGS = "logs"
PROGRESS = "progress.json"
INDEX = ".index"
INDEX_SUFFIX = ".json.gz"
SMALL_PACK = 256  # packs that ending jobs extend; listings merge the rest
SECRETS = "secrets.bin"
FILES = "files.tar.gz"
ARTIFACTS = "artifacts"


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def result_hmac(key: str, data: bytes) -> str:
    """HMAC-SHA256 of a result with the user's ``batch.result-key``."""
    return hmac.new(key.encode(), data, hashlib.sha256).hexdigest()


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


_CHUNK = 16 * 2**20
RESULT_DIGEST_PREFIX = "blake3:"


def _chunks(view: memoryview) -> Iterable[memoryview]:
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    for start in range(0, view.nbytes, _CHUNK):
        yield view[start : start + _CHUNK]


_POPULATE_FROM = 2**20


def _fresh_buffer(size: int) -> ResultBuffer:
    """Writable memory for one out-of-band buffer of a result being read.

    Big ones are anonymous maps populated in one call (Linux MAP_POPULATE):
    bytearray's zero fill takes one page fault per 4 KiB, which on a VM costs
    more than reading the bytes from the page cache (measured: a GiB read
    into a bytearray 0.78-1.08 s, into a populated map 0.46-0.61 s).
    """
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if size < _POPULATE_FROM or not populate:
        return bytearray(size)
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)


class _StreamHasher:
    """Digest (and HMAC) of a stored result, hashed beside its I/O.

    The digest is BLAKE3 of the result's bytes: ~4 GB/s on one core where
    SHA-256 does 1.7 (with SHA-NI), so one hashing thread, fed the chunks in
    order while the next ones are written or read, keeps up with a local
    disk's page cache (the hasher releases the GIL). The HMAC, with the
    user's key, is HMAC-SHA256 of that digest.
    """

    def __init__(self, hmac_key: str | None = None):
        self.key = hmac_key
        self.hasher = blake3.blake3()
        # One thread: updates must be applied in order.
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="dask-batch-hash")
        self.pending: list[Future[Any]] = []

    def update(self, piece: Any) -> None:
        """Hash one piece; its memory must not change until :meth:`result`."""
        for chunk in _chunks(memoryview(piece)):
            self.pending.append(self.pool.submit(self.hasher.update, chunk))

    def result(self) -> tuple[str, str]:
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

    @classmethod
    def of(cls, pieces: Iterable[Any], hmac_key: str | None) -> tuple[str, str]:
        hasher = cls(hmac_key)
        for piece in pieces:
            hasher.update(piece)
        return hasher.result()


def dumps_json(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode()


class JobStore:
    """Read and write job records below one storage URL.

    Parameters
    ----------
    url : str
        An fsspec URL (``s3://bucket/jobs``, ``/data/jobs``, ``memory://jobs``).
    storage_options : dict, optional
        Passed to the fsspec filesystem.
    retry_for : float
        Seconds for which writes and reads that fail for any reason other than
        a missing or existing object are retried, with back-off (the job
        runner rides out storage outages; clients fail fast).
    """

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None = None,
        *,
        retry_for: float = 0,
    ):
        self.url = url
        self.retry_for = retry_for
        self.storage_options = dict(storage_options or {})
        options = dict(self.storage_options)
        # Records change under our feet (runner, other clients): a cached
        # listing would hide new objects, e.g. a result written after it.
        options.setdefault("use_listings_cache", False)
        if get_protocol(url) in ("file", "local"):
            options.setdefault("auto_mkdir", True)  # object-store semantics
        try:
            fs, root = url_to_fs(url, **options)
        except (ImportError, ValueError) as exc:
            raise StorageError(
                f"Cannot use job storage {url!r}: {exc}. Install the fsspec "
                "implementation for this protocol (for S3: pip install "
                "'dask-batch[s3]') or fix `batch.storage`."
            ) from exc
        self.fs: fsspec.AbstractFileSystem = fs
        self.root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"JobStore<{self.url}>"

    # -- paths -----------------------------------------------------------------
    def user_path(self, user: str) -> str:
        return posixpath.join(self.root, user)

    def job_path(self, user: str, job_id: str, name: str = "") -> str:
        base = posixpath.join(self.root, user, job_id)
        return posixpath.join(base, name) if name else base

    def job_url(self, user: str, job_id: str) -> str:
        """The job's prefix as a URL that fsspec understands."""
        return self.fs.unstrip_protocol(self.job_path(user, job_id))

    # -- raw objects -------------------------------------------------------------
    def _retrying(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.retry_for
        delay = 0.25
        while True:
            try:
                return func(*args, **kwargs)
            except (FileNotFoundError, FileExistsError):
                raise
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning(
                    "storage call failed, retrying in %.1f s: %s", delay, exc
                )
                time.sleep(delay)
                delay = min(delay * 2, 8.0)

    def put(self, user: str, job_id: str, name: str, data: bytes) -> None:
        path = self.job_path(user, job_id, name)
        try:
            self._retrying(self._put_whole, path, data)
        except Exception as exc:
            raise self._write_error(name, job_id, exc) from exc

    def _write_error(self, name: str, job_id: str, exc: Exception) -> StorageError:
        return StorageError(
            f"Could not write {name} of job {job_id!r} to {self.url!r}: "
            f"{type(exc).__name__}: {exc}. Check the storage URL, "
            "credentials and permissions."
        )

    def _put_whole(self, path: str, data: bytes) -> None:
        if isinstance(self.fs, LocalFileSystem):
            # A local write is visible while in progress: write aside, then
            # rename, which is atomic (a single PUT is, on object stores).
            tmp = f"{path}.{os.getpid()}-{os.urandom(4).hex()}.tmp"
            try:
                self.fs.pipe_file(tmp, data)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            self.fs.pipe_file(path, data)

    def get(self, user: str, job_id: str, name: str) -> bytes:
        """Read one object; FileNotFoundError if it does not exist."""
        path = self.job_path(user, job_id, name)
        try:
            return bytes(self._retrying(self.fs.cat_file, path))
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise StorageError(
                f"Could not read {name} of job {job_id!r} from {self.url!r}: "
                f"{type(exc).__name__}: {exc}."
            ) from exc

    def get_many(self, paths: list[str]) -> dict[str, bytes]:
        """Read many objects at once (concurrently on async filesystems).

        Missing objects are left out of the result.
        """
        if not paths:
            return {}
        try:
            out = self._retrying(self.fs.cat, paths, on_error="return")
        except Exception as exc:
            raise StorageError(
                f"Could not read job records from {self.url!r}: {exc}"
            ) from exc
        if not isinstance(out, dict):  # one path: fsspec returns the bytes
            out = {paths[0]: out}
        found = {}
        for path, value in out.items():
            if isinstance(value, FileNotFoundError):
                continue
            if isinstance(value, Exception):
                raise StorageError(
                    f"Could not read {path!r} from {self.url!r}: {value}"
                ) from value
            found[self.fs._strip_protocol(path)] = value
        return found

    # -- large objects: streamed, hashed while they move ------------------------
    def put_pieces(
        self,
        user: str,
        job_id: str,
        name: str,
        pieces: list[memoryview],
        hmac_key: str | None = None,
    ) -> tuple[str, str]:
        """Write ``pieces`` as one object without joining them in memory.

        Returns the object's digest and its HMAC with ``hmac_key`` (or "").
        Nobody sees a partial object: locally it is written aside and renamed;
        on object stores an upload that fails is aborted (and a result is
        only believed once the final state records its digest).
        """
        path = self.job_path(user, job_id, name)
        try:
            return self._retrying(self._put_pieces, path, pieces, hmac_key)
        except Exception as exc:
            raise self._write_error(name, job_id, exc) from exc

    def _put_pieces(
        self, path: str, pieces: list[memoryview], hmac_key: str | None
    ) -> tuple[str, str]:
        if "memory" in _protocols(self.fs):  # tests: no partial writes to abort
            self._put_whole(path, b"".join(pieces))
            return _StreamHasher.of(pieces, hmac_key)
        hasher = _StreamHasher(hmac_key)
        local = isinstance(self.fs, LocalFileSystem)
        target = f"{path}.{os.getpid()}-{os.urandom(4).hex()}.tmp" if local else path
        f = self.fs.open(target, "wb")
        try:
            for piece in pieces:
                hasher.update(piece)  # hashed in threads while it is written
                for chunk in _chunks(piece):
                    f.write(chunk)
            sums = hasher.result()
            f.close()
            if local:
                os.replace(target, path)
        except BaseException:
            hasher.result()
            if local:
                f.close()
                with contextlib.suppress(FileNotFoundError):
                    os.remove(target)
            else:
                f.discard()  # aborts an S3 multipart upload
                f.closed = True  # else closing at exit would commit the part
            raise
        return sums

    def get_result(
        self, user: str, job_id: str, hmac_key: str | None = None
    ) -> tuple[bytes, list[ResultBuffer] | None, str, str]:
        """Read a stored result into fresh buffers, hashing it on the way.

        Returns the pickle, its out-of-band buffers (None for a result stored
        as one plain pickle), the digest and the HMAC with ``hmac_key``.
        """
        path = self.job_path(user, job_id, RESULT)
        try:
            return self._retrying(self._get_result, path, hmac_key)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise StorageError(
                f"Could not read the result of job {job_id!r} from {self.url!r}: "
                f"{type(exc).__name__}: {exc}."
            ) from exc

    def _get_result(
        self, path: str, hmac_key: str | None
    ) -> tuple[bytes, list[ResultBuffer] | None, str, str]:
        with self.fs.open(path, "rb") as f:
            head = f.read(len(RESULT_MAGIC))
            if head != RESULT_MAGIC:  # stored before frames: one plain pickle
                stream = head + f.read()
                signature = result_hmac(hmac_key, stream) if hmac_key else ""
                return stream, None, digest(stream), signature

            def read(size: int) -> bytes:
                data = f.read(size)
                if len(data) != size:
                    raise EOFError("the stored result is truncated")
                return data

            frame, length, sizes = read_result_frame(read)
            hasher = _StreamHasher(hmac_key)
            try:
                hasher.update(frame)
                stream = read(length)
                hasher.update(stream)
                buffers = [_fresh_buffer(size) for size in sizes]
                for buffer in buffers:
                    for chunk in _chunks(memoryview(buffer)):
                        if f.readinto(chunk) != chunk.nbytes:
                            raise EOFError("the stored result is truncated")
                        hasher.update(chunk)
            finally:
                sums = hasher.result()
        return stream, buffers, *sums

    def put_json(self, user: str, job_id: str, name: str, obj: Any) -> None:
        self.put(user, job_id, name, dumps_json(obj))

    def get_json(self, user: str, job_id: str, name: str) -> Any:
        return self._parse(job_id, name, self.get(user, job_id, name))

    @staticmethod
    def _parse(job_id: str, name: str, data: bytes) -> Any:
        try:
            return json.loads(data)
        except ValueError as exc:
            raise CorruptRecordError(
                f"The {name} of job {job_id!r} is not valid JSON ({exc}). "
                "The record was damaged outside dask-batch; delete the job's "
                "prefix if it is not needed."
            ) from exc

    def exists(self, user: str, job_id: str, name: str) -> bool:
        try:
            return bool(self.fs.exists(self.job_path(user, job_id, name)))
        except Exception as exc:
            raise StorageError(
                f"Could not reach job storage {self.url!r} for job {job_id!r}: {exc}"
            ) from exc

    # -- logs, in chunks -------------------------------------------------------------
    def put_log_chunk(
        self, user: str, job_id: str, attempt: int, index: int, data: bytes
    ) -> None:
        # Names sort as numbers do: by cluster attempt, then by chunk.
        self.put(user, job_id, f"{LOGS}/{attempt:04d}{index:08d}", data)

    def log_chunks(self, user: str, job_id: str) -> list[str]:
        """Paths of the stored log chunks, in order."""
        try:
            found = self.fs.ls(
                self.job_path(user, job_id, LOGS), detail=False, refresh=True
            )
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise StorageError(
                f"Could not list the log of job {job_id!r} in {self.url!r}: {exc}"
            ) from exc
        chunks = [p for p in found if posixpath.basename(p).isdigit()]
        return sorted(self.fs._strip_protocol(p) for p in chunks)

    def read_logs(self, user: str, job_id: str, start: int = 0) -> tuple[bytes, int]:
        """Log bytes from chunk ``start`` on, and the index of the next chunk."""
        chunks = self.log_chunks(user, job_id)[start:]
        blobs = self.get_many(chunks)
        return b"".join(blobs.get(p, b"") for p in chunks), start + len(chunks)

    def log_tail(self, user: str, job_id: str, lines: int) -> str:
        """The last ``lines`` lines of the log, reading only its last chunks."""
        chunks = self.log_chunks(user, job_id)
        text = b""
        while chunks and text.count(b"\n") <= lines:
            text = self.get_many([chunks[-1]]).get(chunks[-1], b"") + text
            chunks.pop()
        return "\n".join(text.decode(errors="replace").splitlines()[-lines:])

    # -- artifacts ---------------------------------------------------------------------
    def artifacts(self, user: str, job_id: str) -> dict[str, int]:
        """Artifact paths (relative to the job's artifacts prefix) and sizes."""
        root = self.job_path(user, job_id, ARTIFACTS)
        try:
            found = self.fs.find(root, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as exc:
            raise StorageError(
                f"Could not list the artifacts of job {job_id!r}: {exc}"
            ) from exc
        out = {}
        for path, info in found.items():
            path = self.fs._strip_protocol(path)
            if info.get("type") == "file":
                out[posixpath.relpath(path, root)] = int(info.get("size") or 0)
        return dict(sorted(out.items()))

    # -- records -----------------------------------------------------------------
    def _names(self, path: str) -> list[str]:
        """What is directly below ``path`` (nothing if it does not exist)."""
        try:
            if isinstance(self.fs, LocalFileSystem):
                # fsspec's ls stats every entry: ~35 ms for 10,000 jobs.
                return [posixpath.join(path, n) for n in os.listdir(path)]
            return list(self.fs.ls(path, detail=False, refresh=True))
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise StorageError(f"Could not list jobs in {self.url!r}: {exc}") from exc

    def job_ids(self, user: str) -> list[str]:
        """Ids of the user's jobs, newest first."""
        entries = self._names(self.user_path(user))
        ids = [posixpath.basename(e.rstrip("/")) for e in entries]
        return sorted((i for i in ids if not i.startswith(".")), reverse=True)

    def read_records(
        self, user: str, job_ids: Iterable[str]
    ) -> dict[str, JobRecord | Exception]:
        """Read many records at once; a broken record maps to its exception."""
        job_ids = list(job_ids)
        paths = [
            self.job_path(user, j, n)
            for j in job_ids
            for n in (SPEC, STATE, FINAL, CLUSTER, PROGRESS, HEARTBEAT)
        ]
        blobs = self.get_many(paths)
        out: dict[str, JobRecord | Exception] = {}
        for job_id in job_ids:
            docs: dict[str, Any] = {}
            try:
                for name in (SPEC, STATE, FINAL, CLUSTER, PROGRESS, HEARTBEAT):
                    data = blobs.get(self.job_path(user, job_id, name))
                    docs[name] = (
                        None if data is None else self._parse(job_id, name, data)
                    )
                if docs[SPEC] is None:
                    raise JobNotFoundError(job_id, self.url)
                out[job_id] = JobRecord.from_documents(
                    docs[SPEC],
                    docs[FINAL] or docs[STATE],
                    docs[CLUSTER],
                    docs[PROGRESS],
                    docs[HEARTBEAT],
                )
            except (KeyError, ValueError, TypeError) as exc:
                if isinstance(exc, (JobNotFoundError, CorruptRecordError)):
                    out[job_id] = exc
                else:
                    out[job_id] = CorruptRecordError(
                        f"The record of job {job_id!r} is incomplete or invalid "
                        f"({type(exc).__name__}: {exc})."
                    )
        return out

    # -- listing index -------------------------------------------------------------
    def index_path(self, user: str) -> str:
        return posixpath.join(self.root, user, INDEX)

    def index_packs(self, user: str) -> list[str]:
        """Paths of the user's index packs, oldest first."""
        names = self._names(self.index_path(user))
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
        if ordered:
            newest = ordered[-1]["id"]
            name = f"{newest}-{len(ordered)}-{os.urandom(4).hex()}{INDEX_SUFFIX}"
            path = posixpath.join(self.index_path(user), name)
            document = json.dumps({"version": 1, "jobs": ordered}).encode()
            data = gzip.compress(document, 6)
            try:
                self._put_whole(path, data)
            except Exception as exc:
                raise StorageError(
                    f"Could not write the job index pack {path!r} to {self.url!r}: "
                    f"{exc}"
                ) from exc
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
        base = small[-1:]
        entries, read = self.read_index(user, base)
        entries[record.id] = index_entry(record)
        self.write_index(user, entries.values(), replaces=read)

    def read_record(self, user: str, job_id: str) -> JobRecord:
        record = self.read_records(user, [job_id])[job_id]
        if isinstance(record, Exception):
            raise record
        return record

    def put_create(self, user: str, job_id: str, name: str, data: bytes) -> bool:
        """Write an object only if it does not exist; False if it already did.

        The compare-and-set under terminal states and idempotency keys: on S3
        a conditional PUT (``If-None-Match: *``), locally an atomic hard link.
        """
        path = self.job_path(user, job_id, name)
        try:
            self._retrying(self._put_create, path, data)
        except FileExistsError:
            return False
        except Exception as exc:
            raise self._write_error(name, job_id, exc) from exc
        return True

    def _put_create(self, path: str, data: bytes) -> None:
        if isinstance(self.fs, LocalFileSystem):
            tmp = f"{path}.{os.getpid()}-{os.urandom(4).hex()}.tmp"
            self.fs.pipe_file(tmp, data)
            try:
                os.link(tmp, path)
            finally:
                os.remove(tmp)
        elif "memory" in _protocols(self.fs):
            if self.fs.exists(path):
                raise FileExistsError(path)
            self.fs.pipe_file(path, data)
        else:
            self.fs.pipe_file(path, data, mode="create")

    def read_state(self, user: str, job_id: str) -> dict[str, Any]:
        """The current state document: the terminal one if there is one."""
        names = (FINAL, STATE)
        blobs = self.get_many([self.job_path(user, job_id, n) for n in names])
        for name in names:
            data = blobs.get(self.job_path(user, job_id, name))
            if data is not None:
                return dict(self._parse(job_id, name, data))
        return {}

    def transition(
        self, user: str, job_id: str, state: JobState, **fields: Any
    ) -> dict[str, Any]:
        """Move a job to ``state`` unless it is already terminal.

        Exactly one terminal state wins, even when writers race (a cancel and
        the runner's own result): it is created with a create-only write of
        ``final.json``, and losers get the winner back. Returns the state
        document now in force.
        """
        current = self.read_state(user, job_id)
        if current and JobState(current["state"]).is_terminal:
            return current
        doc = dict(current)
        doc.update(fields)
        doc["state"] = state.value
        doc["updated"] = to_iso(utcnow())
        if state.is_terminal:
            doc.setdefault("finished", doc["updated"])
            if not self.put_create(user, job_id, FINAL, dumps_json(doc)):
                return self.read_state(user, job_id)
        # state.json is the fast path for readers; final.json overrides it.
        self.put_json(user, job_id, STATE, doc)
        if state.is_terminal:
            try:
                self.add_to_index(user, self.read_record(user, job_id))
            except Exception as exc:
                # Only a saving: the next listing reads this record and packs it.
                logger.warning("Job %s not added to the listing index: %s", job_id, exc)
        return doc
