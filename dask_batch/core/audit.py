"""One audit line per act done for a user by someone other than that user's
own client: the hub service, the local keeper, the jobs page.

Each line says who the act was for, what was done to what, by whom and when,
on the ``dask_batch.audit`` logger (the service's log)::

    dask-batch audit: user=alice act=fire-schedule id=nightly by=service \
when=2026-12-05T02:00:01Z outcome=submitted job=20261205-020001-...

Values are quoted when they hold spaces and stripped of control characters,
so a name from storage cannot forge a line. Never a key or an env value.

Shared by the service and the page: no I/O beyond logging.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from dask_batch.core.names import strip_control
from dask_batch.core.records import JobRecord, JobState, to_iso, utcnow

__all__: list[str] = []

logger = logging.getLogger("dask_batch.audit")


def _value(value: Any) -> str:
    text = strip_control(str(value)).replace('"', "'")[:300]
    return f'"{text}"' if (not text or " " in text or "=" in text) else text


def audit(user: str, act: str, subject: str, by: str = "service", **detail: Any) -> str:
    """Log one audit line; returns it (for tests and callers that keep it)."""
    fields: dict[str, Any] = {"user": user, "act": act, "id": subject, "by": by}
    fields["when"] = to_iso(utcnow())
    fields.update({k: v for k, v in detail.items() if v not in (None, "")})
    line = "dask-batch audit: " + " ".join(
        f"{k}={_value(v)}" for k, v in fields.items()
    )
    logger.info("%s", line)
    return line


def audit_job_changes(
    user: str,
    before: Mapping[str, JobRecord],
    after: Iterable[JobRecord],
    by: str = "service",
) -> list[str]:
    """Audit what a sweep did to ``user``'s jobs: each retried on a new
    cluster, each waiting job started or cancelled, each judged LOST."""
    lines = []
    for record in after:
        old = before.get(record.id)
        if old is None:
            continue
        act = ""
        if record.attempt > old.attempt:
            act = "retry-job"
        elif record.released and not old.released:
            act = "start-waiting-job"
        elif record.state is not old.state and record.state is JobState.LOST:
            act = "judge-lost"
        elif record.state is not old.state and record.state is JobState.CANCELLED:
            act = "cancel-waiting-job" if old.after else "cancel-job"
        if act:
            lines.append(
                audit(
                    user,
                    act,
                    record.id,
                    by,
                    state=record.state.value,
                    attempt=record.attempt,
                    message=record.message,
                )
            )
    return lines
