"""Running a command from a test: its output, or a failure that shows it."""

from __future__ import annotations

import subprocess
from typing import Any


def run(*args: Any, timeout: float = 600, **kwargs: Any) -> str:
    """Run a command and return its stdout; fail with the command and the
    tails of its stdout and stderr if it exits non-zero."""
    done = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )
    assert done.returncode == 0, (
        f"{' '.join(map(str, args))} exited {done.returncode}:\n"
        f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    )
    return done.stdout
