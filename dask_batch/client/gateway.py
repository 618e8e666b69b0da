"""A ``dask_gateway.Gateway`` that is safe to close more than once."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from dask_gateway import Gateway


class BatchGateway(Gateway):
    """``Gateway`` whose ``close()`` is idempotent and never deadlocks.

    dask-gateway 2026.3's ``Gateway.__del__`` calls ``close()`` again after an
    explicit close, which then raises from the stopped loop runner ("Accessing
    the loop property while the loop is not running"); and a close that runs on
    the gateway's own loop thread (garbage collection there) would block on
    that same loop for ever.
    """

    _closed = False

    def close(self) -> Any:
        if self._closed:
            return None
        self._closed = True
        if not self.asynchronous and self._on_own_loop():
            self._cleanup_task = asyncio.ensure_future(self._cleanup())
            return None
        return super().close()

    def _on_own_loop(self) -> bool:
        with contextlib.suppress(RuntimeError):
            return asyncio.get_running_loop() is self.loop.asyncio_loop
        return False
