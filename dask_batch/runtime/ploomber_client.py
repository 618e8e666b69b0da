"""Ploomber's storage client over the job storage: a project's products, signed.

Ploomber keeps a task's products incremental through a storage client
(``dag.clients[File]``): after a task runs, its product and its
``.NAME.metadata`` sidecar are uploaded; when rendering, a product whose
stored copy is up to date turns its task to "download" instead of "run".
This client keeps them below ``{storage}/{user}/.ploomber/{project}/``,
under their paths in the project, so a later job of the same project (from a
fresh checkout, on another machine) finds them by the project's name, the
user and the storage, never by an absolute path.

Each object is stored with a signature (``NAME.sig``): an HMAC of its path
in the project and its content with the project's key, derived from the
user's secret and the project's name (it reaches the job sealed, as an env
value). A product or a metadata file changed, planted or moved in storage
does not verify, and is refused before Ploomber reads it or a task
unpickles it.

Runs in main's process and in the tasks' processes; imports Ploomber.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import posixpath
from pathlib import Path, PurePosixPath
from typing import Any

from ploomber.clients.storage.abc import AbstractStorageClient
from ploomber.exceptions import RemoteFileNotFound

from dask_batch.core.names import check_relative_path
from dask_batch.core.secrets import PLOOMBER_KEY_ENV

__all__: list[str] = []

SIGNATURE_SUFFIX = ".sig"


def signature(key: str, relative: str, data: bytes) -> str:
    message = relative.encode() + b"\0" + hashlib.sha256(data).digest()
    return hmac.new(bytes.fromhex(key), message, hashlib.sha256).hexdigest()


class ProjectStorageClient(AbstractStorageClient):
    """A project's products in the job storage, each object signed.

    Parameters
    ----------
    url : str
        The project's prefix (an fsspec URL).
    storage_options : dict
        For the fsspec filesystem.
    project_root : str
        The project's folder: products are stored under their paths in it.
    """

    def __init__(
        self, url: str, storage_options: dict[str, Any], project_root: str
    ) -> None:
        self._url = url.rstrip("/")
        self._options = dict(storage_options)
        self._path_to_project_root = Path(project_root).resolve()
        self._fs: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_fs"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _fs=None)

    @property
    def fs(self) -> Any:
        if self._fs is None:
            from fsspec.core import url_to_fs

            self._fs, self._root = url_to_fs(self._url, **self._options)
        return self._fs

    @property
    def parent(self) -> str:
        return self._url

    def _relative(self, local: Any) -> str:
        path = Path(os.path.abspath(str(local)))
        try:
            parts = path.relative_to(self._path_to_project_root).parts
        except ValueError:
            raise ValueError(
                f"{str(local)!r} is outside the project's folder: only products "
                "inside it are kept in storage"
            ) from None
        return check_relative_path(str(PurePosixPath(*parts)), what="product")

    def _remote_path(self, local: Any) -> str:
        self.fs  # noqa: B018 - resolves the root
        return posixpath.join(self._root, self._relative(local))

    def _remote_exists(self, local: Any) -> bool:
        remote = self._remote_path(local)
        signed = remote + SIGNATURE_SUFFIX
        return bool(self.fs.isfile(remote) and self.fs.isfile(signed))

    def _is_file(self, remote: str) -> bool:
        return bool(self.fs.isfile(remote))

    def _is_dir(self, remote: str) -> bool:
        return False  # products are stored file by file

    @staticmethod
    def _key() -> str:
        key = os.environ.get(PLOOMBER_KEY_ENV, "")
        if not key:
            raise RuntimeError(
                f"{PLOOMBER_KEY_ENV} is not set: the project's products cannot be "
                "signed or checked"
            )
        return key

    def upload(self, local: Any) -> None:
        if Path(str(local)).is_dir():
            super().upload(local)  # file by file, through _upload
        else:
            self._upload(local)

    def _upload(self, local: Any) -> None:
        relative = self._relative(local)
        with open(str(local), "rb") as f:
            data = f.read()
        remote = self._remote_path(local)
        # A local folder needs its parents; an object store, nothing.
        self.fs.makedirs(posixpath.dirname(remote), exist_ok=True)
        self.fs.pipe_file(remote, data)
        mark = signature(self._key(), relative, data).encode()
        self.fs.pipe_file(remote + SIGNATURE_SUFFIX, mark)

    def download(self, local: Any, destination: Any = None) -> None:
        self._download(local, destination or local)

    def _download(self, local: Any, destination: Any) -> None:
        relative = self._relative(local)
        remote = self._remote_path(local)
        try:
            data = self.fs.cat_file(remote)
            mark = self.fs.cat_file(remote + SIGNATURE_SUFFIX).decode()
        except FileNotFoundError:
            raise RemoteFileNotFound(
                f"Could not download {relative!r} from {self._url}: not stored"
            ) from None
        if not hmac.compare_digest(mark, signature(self._key(), relative, data)):
            raise RemoteFileNotFound(
                f"{relative!r} in {self._url} is not signed with this project's "
                "key: it was changed or planted in storage, and is not used. "
                "Build again with --force, or remove it."
            )
        target = Path(str(destination))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._url!r})"
