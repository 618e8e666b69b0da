"""A ``dask_gateway.Gateway`` that can be closed more than once."""

from __future__ import annotations

from typing import Any

from dask_gateway import Gateway


class BatchGateway(Gateway):
    """``Gateway`` whose ``close()`` is idempotent.

    dask-gateway 2026.3's ``Gateway.__del__`` calls ``close()`` again after an
    explicit close, which then raises from the stopped loop runner ("Accessing
    the loop property while the loop is not running") as an unraisable
    exception at garbage collection.
    """

    _closed = False

    def close(self) -> Any:
        if self._closed:
            return None
        self._closed = True
        return super().close()
