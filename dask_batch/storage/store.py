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
    {root}/{user}/.index/...               the job catalog: live markers and
                                          packs of terminal records, for listing
    {root}/{user}/.idempotency/{sha256 of the key}.json
                                          which job an idempotency key started

The job catalog is described in :mod:`dask_batch.storage.catalog`.

Every object is serialised in memory and written whole (see
:mod:`dask_batch.storage.backends`), so no reader ever sees half a record. A terminal
state is never overwritten. Every storage failure reaches callers as a
:class:`StorageError` naming the job and the action; only transient failures
(connections, timeouts, 5xx, throttling) are retried, and only for
``retry_for`` seconds. Shared by client and scheduler side: imports neither.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import posixpath
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import fsspec
from fsspec.core import url_to_fs
from fsspec.utils import get_protocol

from dask_batch.core.exceptions import (
    CorruptRecordError,
    DaskBatchError,
    JobNotFoundError,
    StorageError,
)
from dask_batch.core.names import (
    InvalidNameError,
    check_job_id,
    check_user,
    is_user_name,
)
from dask_batch.core.records import JobRecord, JobState, to_iso, utcnow
from dask_batch.core.tasks import TASKS_DOC, TaskRecord, read_task_records, task_specs
from dask_batch.storage.backends import backend_for
from dask_batch.storage.catalog import ListingIndex
from dask_batch.storage.logs import JobLogs

# Object names that callers import from the store, as they did before.
from dask_batch.storage.outputs import ARTIFACTS as ARTIFACTS
from dask_batch.storage.outputs import RESULT as RESULT
from dask_batch.storage.outputs import StoredOutputs

logger = logging.getLogger("dask_batch.store")

T = TypeVar("T")

SPEC = "spec.json"
STATE = "state.json"
FINAL = "final.json"
HEARTBEAT = "heartbeat.json"
CLUSTER = "cluster.json"
PAYLOAD = "payload.pkl"
ERROR = "error.json"
PROGRESS = "progress.json"
IDEMPOTENCY = ".idempotency"
SECRETS = "secrets.bin"
FILES = "files.tar.gz"
_RECORD_PARTS = (SPEC, STATE, FINAL, CLUSTER, PROGRESS, HEARTBEAT)

# Failures worth another try: the network, the server, or its rate limits.
# Matched by class name along the exception's MRO and causes, so that the
# optional storage libraries (botocore, aiohttp) need not be imported here.
_TRANSIENT_CLASSES = frozenset(
    {
        "ConnectionError",  # builtins, and botocore's connection errors
        "TimeoutError",
        "HTTPClientError",
        "ClientConnectionError",
        "ClientPayloadError",
        "ServerTimeoutError",
        "IncompleteRead",
        "ResponseParserError",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestLimitExceeded",
        "InternalError",
        "ServiceUnavailable",
    }
)
_TRANSIENT_ERRNOS = frozenset(
    {
        errno.EAGAIN,
        errno.ETIMEDOUT,
        errno.ECONNRESET,
        errno.ECONNREFUSED,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EREMOTEIO,
    }
)
_NEVER_TRANSIENT = (
    PermissionError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether a storage failure may go away if the call is made again.

    Connection errors, timeouts, 5xx answers and throttling are; a missing
    or existing object, a permission error, a bad argument or a bug are not.
    """
    seen: BaseException | None = exc
    for _ in range(5):  # the exception and a few of its causes
        if seen is None or isinstance(seen, _NEVER_TRANSIENT):
            return False
        names = {cls.__name__ for cls in type(seen).__mro__}
        if names & _TRANSIENT_CLASSES:
            return True
        if isinstance(seen, OSError) and seen.errno in _TRANSIENT_ERRNOS:
            return True
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = response.get("Error", {}).get("Code")
            if (isinstance(status, int) and status >= 500) or code in _TRANSIENT_CODES:
                return True
        seen = seen.__cause__ or seen.__context__
    return False


def digest(data: bytes) -> str:
    """SHA-256 of a small object (the payload), as stored in the spec."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def dumps_json(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode()


def _check_identity(spec: Any, user: str, job_id: str) -> None:
    """The spec in a job's folder must describe that job, of that user."""
    if not isinstance(spec, dict):
        raise TypeError(f"spec.json holds a {type(spec).__name__}, not an object")
    if spec.get("id") != job_id or spec.get("user") != user:
        raise CorruptRecordError(
            f"The record in the folder of job {job_id!r} describes job "
            f"{spec.get('id')!r} of user {spec.get('user')!r}: it was copied or "
            "changed in storage. Not using it.",
            job_id=job_id,
        )


class JobStore(ListingIndex, JobLogs, StoredOutputs):
    """Read and write job records below one storage URL.

    Parameters
    ----------
    url : str
        An fsspec URL (``s3://bucket/jobs``, ``/data/jobs``, ``memory://jobs``).
    storage_options : dict, optional
        Passed to the fsspec filesystem.
    retry_for : float
        Seconds for which transient failures (connections, timeouts, 5xx,
        throttling) are retried with back-off: the job runner rides out
        storage outages; clients fail fast (0).
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
        self.backend = backend_for(fs)
        self.root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"JobStore<{self.url}>"

    # -- paths -----------------------------------------------------------------
    def user_path(self, user: str) -> str:
        return posixpath.join(self.root, check_user(user))

    def job_path(self, user: str, job_id: str, name: str = "") -> str:
        """The path of a job's folder, or of ``name`` in it; ids are checked."""
        base = posixpath.join(self.user_path(user), check_job_id(job_id))
        return posixpath.join(base, name) if name else base

    def job_url(self, user: str, job_id: str) -> str:
        """The job's prefix as a URL that fsspec understands."""
        return str(self.fs.unstrip_protocol(self.job_path(user, job_id)))

    def artifacts_url(self, user: str, job_id: str) -> str:
        """The job's artifacts prefix as a URL that fsspec understands."""
        return str(self.fs.unstrip_protocol(self.job_path(user, job_id, ARTIFACTS)))

    # -- errors and retries: the one place storage exceptions are mapped --------
    @contextlib.contextmanager
    def storage_errors(
        self,
        action: str,
        job_id: str | None = None,
        *,
        answers: tuple[type[Exception], ...] = (),
    ) -> Iterator[None]:
        """Turn any storage failure into a StorageError naming job and action.

        Exceptions of the types in ``answers`` pass through, for callers that
        treat them as an answer (a missing object, an object that exists
        already). dask-batch's own errors (a corrupt record, an unknown job)
        pass through unchanged.
        """
        passing: tuple[type[Exception], ...] = (DaskBatchError, *answers)
        try:
            yield
        except passing:
            raise
        except FileNotFoundError:
            raise self._error(action, job_id) from None
        except Exception as exc:
            raise self._error(action, job_id, exc) from exc

    def _error(
        self, action: str, job_id: str | None, exc: BaseException | None = None
    ) -> StorageError:
        what = f" of job {job_id!r}" if job_id else ""
        cause = f"{type(exc).__name__}: {exc}" if exc is not None else "not found"
        return StorageError(
            f"Could not {action}{what} in {self.url!r}: {cause}. Check the storage "
            "URL, credentials and permissions.",
            job_id=job_id,
        )

    def _retrying(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        deadline = time.monotonic() + self.retry_for
        delay = 0.25
        while True:
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() + delay > deadline:
                    raise
                logger.warning(
                    "storage call failed, retrying in %.1f s: %s", delay, exc
                )
                time.sleep(delay)
                delay = min(delay * 2, 8.0)

    # -- objects -------------------------------------------------------------------
    def put(self, user: str, job_id: str, name: str, data: bytes) -> None:
        """Write one object whole."""
        path = self.job_path(user, job_id, name)
        with self.storage_errors(f"write {name}", job_id):
            self._retrying(self.backend.put_whole, path, data)

    def put_create(self, user: str, job_id: str, name: str, data: bytes) -> bool:
        """Write an object only if it does not exist; False if it already did.

        The compare-and-set under terminal states, retries and idempotency
        keys.
        """
        path = self.job_path(user, job_id, name)
        return self.create_at(path, data, f"create {name}", job_id)

    def create_at(self, path: str, data: bytes, action: str, job_id: str) -> bool:
        """A create-only write of ``path``; False if the object existed."""
        try:
            with self.storage_errors(action, job_id, answers=(FileExistsError,)):
                self._retrying(self.backend.put_create, path, data)
        except FileExistsError:
            return False
        return True

    def get(self, user: str, job_id: str, name: str) -> bytes:
        """Read one object; FileNotFoundError if it does not exist."""
        path = self.job_path(user, job_id, name)
        with self.storage_errors(f"read {name}", job_id, answers=(FileNotFoundError,)):
            return bytes(
                self._retrying(self.fs.cat_file, path, **self.backend.small_reads)
            )

    def get_many(self, paths: list[str], job_id: str | None = None) -> dict[str, bytes]:
        """Read many objects at once (concurrently on async filesystems).

        Missing objects are left out of the result.
        """
        if not paths:
            return {}
        with self.storage_errors("read records", job_id):
            out = self._retrying(
                self.fs.cat, paths, on_error="return", **self.backend.small_reads
            )
            if not isinstance(out, dict):  # one path: fsspec returns the bytes
                out = {paths[0]: out}
            found = {}
            for path, value in out.items():
                if isinstance(value, FileNotFoundError):
                    continue
                if isinstance(value, Exception):
                    raise value
                found[self.strip_protocol(path)] = value
            return found

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
                "prefix if it is not needed.",
                job_id=job_id,
            ) from exc

    def exists(self, user: str, job_id: str, name: str) -> bool:
        with self.storage_errors(f"look for {name}", job_id):
            return bool(self.fs.exists(self.job_path(user, job_id, name)))

    def strip_protocol(self, path: str) -> str:
        """``path`` as this store's filesystem names it, without a protocol."""
        # fsspec's own normaliser; its public twin guesses the filesystem from
        # the protocol, which a listed path no longer carries.
        return str(self.fs._strip_protocol(path))  # noqa: SLF001

    def list_names(
        self, path: str, action: str, job_id: str | None = None
    ) -> list[str]:
        """What is directly below ``path`` (nothing if it does not exist)."""
        try:
            with self.storage_errors(action, job_id, answers=(FileNotFoundError,)):
                return self._retrying(self.backend.names, path)
        except FileNotFoundError:
            return []

    def delete_job(self, user: str, job_id: str) -> None:
        """Remove everything stored for a job, then its live marker."""
        with self.storage_errors("delete the records", job_id):
            self.fs.rm(self.job_path(user, job_id), recursive=True)
        self.forget_live(user, [job_id])

    # -- records -----------------------------------------------------------------
    def user_names(self) -> list[str]:
        """The users with a folder here (names that are not valid are skipped)."""
        entries = self.list_names(self.root, "list the users")
        names = (posixpath.basename(e.rstrip("/")) for e in entries)
        return sorted(n for n in names if is_user_name(n))

    def job_ids(self, user: str) -> list[str]:
        """Ids of the user's jobs, newest first."""
        entries = self.list_names(self.user_path(user), "list the jobs")
        ids = [posixpath.basename(e.rstrip("/")) for e in entries]
        return sorted((i for i in ids if not i.startswith(".")), reverse=True)

    def read_records(
        self, user: str, job_ids: Iterable[str]
    ) -> dict[str, JobRecord | Exception]:
        """Read many records at once; a broken record maps to its exception."""
        job_ids = list(job_ids)
        paths = [self.job_path(user, j, n) for j in job_ids for n in _RECORD_PARTS]
        blobs = self.get_many(paths, job_ids[0] if len(job_ids) == 1 else None)
        out: dict[str, JobRecord | Exception] = {}
        for job_id in job_ids:
            try:
                docs: dict[str, Any] = {}
                for name in _RECORD_PARTS:
                    data = blobs.get(self.job_path(user, job_id, name))
                    docs[name] = (
                        None if data is None else self._parse(job_id, name, data)
                    )
                if docs[SPEC] is None:
                    raise JobNotFoundError(job_id, self.url)
                _check_identity(docs[SPEC], user, job_id)
                out[job_id] = JobRecord.from_documents(
                    docs[SPEC],
                    docs[FINAL] or docs[STATE],
                    docs[CLUSTER],
                    docs[PROGRESS],
                    docs[HEARTBEAT],
                )
            except (JobNotFoundError, CorruptRecordError) as exc:
                out[job_id] = exc
            except (KeyError, ValueError, TypeError) as exc:
                out[job_id] = CorruptRecordError(
                    f"The record of job {job_id!r} is incomplete or invalid "
                    f"({type(exc).__name__}: {exc}).",
                    job_id=job_id,
                )
        return out

    def read_tasks(self, user: str, job_id: str) -> list[TaskRecord]:
        """The tasks of a pipeline or array job as they went ([] for a plain job).

        The tasks shown are those the job's spec declares; ``tasks.json``
        (written by the runner) says how each went.
        """
        try:
            spec = self.get_json(user, job_id, SPEC)
        except FileNotFoundError:
            raise JobNotFoundError(job_id, self.url) from None
        _check_identity(spec, user, job_id)
        try:
            declared = task_specs(spec, job_id)
        except (InvalidNameError, KeyError, TypeError, ValueError) as exc:
            raise CorruptRecordError(
                f"The steps in the record of job {job_id!r} cannot be read "
                f"({exc}): it was changed in storage.",
                job_id=job_id,
            ) from None
        if not declared:
            return []
        try:
            doc = self.get_json(user, job_id, TASKS_DOC)
        except (FileNotFoundError, CorruptRecordError):
            doc = None  # not written yet, or damaged: every task as declared
        return read_task_records(declared, doc)

    def read_record(self, user: str, job_id: str) -> JobRecord:
        record = self.read_records(user, [job_id])[job_id]
        if isinstance(record, Exception):
            raise record
        return record

    # -- idempotency keys ------------------------------------------------------------
    def claim_idempotency_key(self, user: str, key: str, job_id: str) -> str:
        """The job that owns ``key``: ``job_id``, or the one that claimed it first.

        The claim is a create-only write, so of two racing submissions exactly
        one wins; the loser's records are removed (it has no cluster yet).
        """
        name = hashlib.sha256(key.encode()).hexdigest() + ".json"
        path = posixpath.join(self.user_path(user), IDEMPOTENCY, name)
        claim = dumps_json({"key": key, "job_id": job_id})
        if self.create_at(path, claim, "claim the idempotency key", job_id):
            return job_id
        with self.storage_errors("read the idempotency key", job_id):
            owner = str(self._parse(job_id, name, self.fs.cat_file(path))["job_id"])
        self.delete_job(user, job_id)
        return owner

    # -- states ------------------------------------------------------------------------
    def read_state(self, user: str, job_id: str) -> dict[str, Any]:
        """The current state document: the terminal one if there is one."""
        names = (FINAL, STATE)
        blobs = self.get_many([self.job_path(user, job_id, n) for n in names], job_id)
        for name in names:
            data = blobs.get(self.job_path(user, job_id, name))
            if data is not None:
                return dict(self._parse(job_id, name, data))
        return {}

    def begin_attempt(
        self,
        user: str,
        job_id: str,
        attempt: int,
        history: list[dict[str, Any]],
        message: str,
        *,
        new_cluster: bool,
    ) -> dict[str, Any]:
        """Record that ``attempt`` begins, after the earlier ones in ``history``.

        On a ``new_cluster`` the job is PENDING and its old cluster is
        forgotten first, so that nobody judges the job by it again; in the
        same cluster it stays RUNNING.
        """
        fields: dict[str, Any] = {
            "attempt": attempt,
            "attempts": history,
            "message": message,
        }
        state = JobState.RUNNING
        if new_cluster:
            cluster = {"cluster_name": None, "attempt": attempt}
            self.put_json(user, job_id, CLUSTER, cluster)
            state, fields["cluster_name"] = JobState.PENDING, None
        return self.transition(user, job_id, state, **fields)

    def _live_documents(
        self, user: str, job_id: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The spec, and what the documents that keep changing say now.

        Heartbeats and progress reports can race with a cancel; kept in the
        terminal state, they make a terminal record one that never changes.
        The spec comes with them, in the same read, for the listing index.
        """
        names = (SPEC, HEARTBEAT, PROGRESS, CLUSTER)
        paths = [self.job_path(user, job_id, n) for n in names]
        blobs = self.get_many(paths, job_id)
        docs: dict[str, Any] = {}
        for name, path in zip(names, paths, strict=True):
            try:
                doc = json.loads(blobs[path]) if path in blobs else {}
            except ValueError:
                doc = {}
            # A damaged document is left out, as a reader would leave it out.
            docs[name] = doc if isinstance(doc, dict) else {}
        return docs[SPEC], {
            "last_seen": docs[HEARTBEAT].get("time"),
            "progress": docs[PROGRESS],
            "cluster_name": docs[CLUSTER].get("cluster_name"),
        }

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
        if not state.is_terminal:
            self.put_json(user, job_id, STATE, doc)
            return doc
        doc.setdefault("finished", doc["updated"])
        spec, doc["frozen"] = self._live_documents(user, job_id)
        if not self.put_create(user, job_id, FINAL, dumps_json(doc)):
            return self.read_state(user, job_id)
        # state.json is the fast path for readers; final.json overrides it.
        self.put_json(user, job_id, STATE, doc)
        try:
            # The record as a reader now builds it, from documents in hand.
            _check_identity(spec, user, job_id)
            self.add_to_index(user, JobRecord.from_documents(spec, doc, None))
        except (DaskBatchError, KeyError, TypeError, ValueError) as exc:
            # Only a saving: the next listing reads this record and packs it.
            logger.warning("Job %s not added to the listing index: %s", job_id, exc)
        return doc
