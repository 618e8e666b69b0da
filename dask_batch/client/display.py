"""Text, HTML and progress display of job records (client side)."""

from __future__ import annotations

import datetime
import html
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from dask_batch.core.names import safe_link
from dask_batch.core.records import JobRecord, JobState

STATE_COLOURS = {
    JobState.PENDING: "#6c757d",
    JobState.RUNNING: "#0d6efd",
    JobState.SUCCEEDED: "#198754",
    JobState.FAILED: "#dc3545",
    JobState.CANCELLED: "#fd7e14",
    JobState.LOST: "#6f42c1",
}
COLUMNS = ("id", "name", "state", "submitted", "duration", "progress")


def format_duration(delta: datetime.timedelta | None) -> str:
    if delta is None:
        return ""
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return (
        f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"
    )


def format_time(when: datetime.datetime | None) -> str:
    # isoformat, not strftime: twice as fast, which shows in a 10,000-row list.
    return "" if when is None else when.isoformat(" ", "seconds")[:19]


def format_progress(record: JobRecord) -> str:
    parts = []
    if record.progress is not None:
        parts.append(f"{record.progress:.0%}")
    if record.progress_message:
        parts.append(record.progress_message)
    return " ".join(parts)


def error_summary(record: JobRecord) -> str:
    if record.state is JobState.FAILED and record.error:
        return f"{record.error.get('type', '')}: {record.error.get('message', '')}"
    return record.message if record.state.is_terminal else ""


def row(record: JobRecord) -> dict[str, str]:
    return {
        "id": record.id,
        "name": record.name,
        "state": record.state.value,
        "submitted": format_time(record.submitted),
        "duration": format_duration(record.duration),
        "progress": format_progress(record),
    }


def text_lines(records: Sequence[JobRecord]) -> Iterator[str]:
    """The lines of a text table of ``records``, made one at a time.

    Two passes (column widths, then lines), so that a table of 100,000 jobs
    never holds all its cells at once.
    """
    widths = {c: len(c) for c in COLUMNS}
    for record in records:
        for c, text in row(record).items():
            widths[c] = max(widths[c], len(text))
    yield "  ".join(c.upper().ljust(widths[c]) for c in COLUMNS).rstrip()
    for record in records:
        cells = row(record)
        yield "  ".join(cells[c].ljust(widths[c]) for c in COLUMNS).rstrip()


def text_table(records: Sequence[JobRecord]) -> str:
    return "\n".join(text_lines(records))


def task_lines(tasks: Sequence[Any]) -> Iterator[str]:
    """The steps of a pipeline, or the elements of an array, as a table."""
    header = ("task", "state", "upstream", "attempt", "duration", "progress/message")
    rows = []
    for task in tasks:
        progress = ""
        if task.progress is not None:
            progress = f"{task.progress:.0%} {task.progress_message}".strip()
        note = task.message or progress
        if task.state is JobState.FAILED and task.error:
            note = f"{task.error.get('type', '')}: {task.error.get('message', '')}"
        rows.append(
            (
                task.name,
                task.state.value,
                ",".join(task.upstream),
                str(task.attempt or ""),
                format_duration(task.duration),
                note.splitlines()[0][:120] if note else "",
            )
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for r in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)]
        yield "  ".join([*cells, r[-1]]).rstrip()


def _state_badge(state: JobState) -> str:
    return (
        f'<span style="color: white; background: {STATE_COLOURS[state]}; '
        f'padding: 1px 6px; border-radius: 3px;">{state.value}</span>'
    )


def html_table(records: Iterable[JobRecord]) -> str:
    head = "".join(f"<th>{c}</th>" for c in (*COLUMNS, "dashboard", "error"))
    body = []
    for record in records:
        cells = row(record)
        cells["state"] = _state_badge(record.state)
        link = ""
        dashboard = safe_link(record.dashboard_link)
        if dashboard and record.state is JobState.RUNNING:
            href = html.escape(dashboard)
            link = f'<a href="{href}" target="_blank">dashboard</a>'

        tds = "".join(
            f"<td>{cells[c] if c == 'state' else html.escape(cells[c])}</td>"
            for c in COLUMNS
        )
        body.append(
            f"<tr>{tds}<td>{link}</td>"
            f"<td>{html.escape(error_summary(record))}</td></tr>"
        )
    return (
        '<table class="dask-batch-jobs"><thead><tr>'
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


class JobList(list[JobRecord]):
    """A list of :class:`JobRecord` that renders as a table in notebooks."""

    def _repr_html_(self) -> str:
        return html_table(self)

    def __repr__(self) -> str:
        return text_table(self) if self else "JobList([])"

    def to_text(self) -> str:
        return text_table(self)

    def text_lines(self) -> Iterator[str]:
        """The text table a line at a time (for very long listings)."""
        return text_lines(self)


class ProgressDisplay:
    """A one-line progress bar: updated in place in notebooks and terminals."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.handle: Any = None
        try:
            from IPython import get_ipython

            shell = get_ipython()
            self.notebook = shell is not None and shell.has_trait("kernel")
        except ImportError:
            self.notebook = False

    def line(self, record: JobRecord) -> str:
        fraction = record.progress
        if fraction is None and record.state is JobState.SUCCEEDED:
            fraction = 1.0
        filled = round((fraction or 0) * 20)
        bar = "#" * filled + "-" * (20 - filled)
        return (
            f"{self.job_id} [{bar}] {record.state.value} "
            f"{format_duration(record.duration)} {format_progress(record)}"
        ).rstrip()

    def update(self, record: JobRecord) -> None:
        text = self.line(record)
        if self.notebook:
            from IPython.display import HTML, display

            content = HTML(f"<pre>{html.escape(text)}</pre>")
            if self.handle is None:
                self.handle = display(content, display_id=True)
            else:
                self.handle.update(content)
        else:
            end = "\n" if record.state.is_terminal else ""
            sys.stderr.write(f"\r{text}{end}")
            sys.stderr.flush()
