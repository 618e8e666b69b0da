"""What the parts of :class:`~dask_batch.storage.store.JobStore` use of each other.

The store is assembled from mixins that each own one kind of object (the
listing index, the log); they read and write through the store's own paths,
objects, errors and listings, declared here for type checkers only.

Shared by client and scheduler side: imports neither.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

T = TypeVar("T")

if TYPE_CHECKING:
    import fsspec

    from dask_batch.storage.backends import ObjectStoreBackend


class StoreParts:
    """Base of the JobStore mixins; no behaviour of its own."""

    if TYPE_CHECKING:
        fs: fsspec.AbstractFileSystem
        backend: ObjectStoreBackend
        root: str

        def user_path(self, user: str) -> str: ...

        def job_path(self, user: str, job_id: str, name: str = "") -> str: ...

        def strip_protocol(self, path: str) -> str: ...

        def _retrying(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

        def put(self, user: str, job_id: str, name: str, data: bytes) -> None: ...

        def list_names(
            self, path: str, action: str, job_id: str | None = None
        ) -> list[str]: ...

        def get_many(
            self, paths: list[str], job_id: str | None = None
        ) -> dict[str, bytes]: ...

        def storage_errors(
            self,
            action: str,
            job_id: str | None = None,
            *,
            answers: tuple[type[Exception], ...] = (),
        ) -> contextlib.AbstractContextManager[None]: ...
