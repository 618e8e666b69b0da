"""Checks of names that become storage paths, at every entry point.

Job ids, user names and artifact paths end up inside storage paths and local
paths; anything that could leave the folder it belongs in (``..``, ``/``, a
leading ``.``, control characters) is refused here. Shared by client and
scheduler side: imports neither.
"""

from __future__ import annotations

import keyword
import posixpath
import re

from dask_batch.core.exceptions import DaskBatchError, JobNotFoundError

JOB_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9]{3}-[0-9a-f]{8}$")
# Gateway and hub user names: letters, digits and a few separators.
_USER = re.compile(r"^[A-Za-z0-9_@+=,-][A-Za-z0-9_.@+=,-]{0,127}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class InvalidNameError(DaskBatchError, ValueError):
    """A user name, artifact path or parameter name that is not allowed."""


def check_job_id(job_id: object) -> str:
    """``job_id`` if it is a dask-batch job id; JobNotFoundError otherwise.

    Examples
    --------
    >>> check_job_id("20261126-081530-123-3f9a1c2b")
    '20261126-081530-123-3f9a1c2b'
    """
    if isinstance(job_id, str) and JOB_ID.match(job_id):
        return job_id
    raise JobNotFoundError(
        str(job_id)[:80],
        reason="it is not a dask-batch job id (YYYYmmdd-HHMMSS-mmm-xxxxxxxx)",
    )


def is_user_name(name: object) -> bool:
    """Whether ``name`` is safe as a storage folder name."""
    return isinstance(name, str) and bool(_USER.match(name)) and ".." not in name


def check_user(user: object) -> str:
    """``user`` if it is safe as a storage folder name."""
    if is_user_name(user):
        return str(user)
    raise InvalidNameError(
        f"User name {str(user)[:80]!r} cannot name a storage folder: use letters, "
        "digits and _ . @ + = , - (no '/', '..' or leading '.'). Set `batch.user` "
        "or fix the gateway's user name."
    )


def check_relative_path(path: str, *, what: str, job_id: str | None = None) -> str:
    """``path`` if it stays inside the folder it is relative to.

    Refuses absolute paths, ``..`` and empty segments, backslashes and control
    characters; returns the path with ``.`` segments removed.
    """
    parts = path.split("/")
    bad = (
        not path
        or path.startswith("/")
        or "\\" in path
        or _CONTROL.search(path)
        or any(part in ("", "..") for part in parts if part != ".")
        or all(part == "." for part in parts)
    )
    if bad:
        raise InvalidNameError(
            f"{what} {path[:200]!r}"
            + (f" of job {job_id!r}" if job_id else "")
            + " would leave its folder: paths are relative, without '..', "
            "backslashes or control characters.",
            job_id=job_id,
        )
    return posixpath.normpath(path)


def check_parameter_name(name: object, *, job_id: str | None = None) -> str:
    """``name`` if papermill can inject it as a variable (an identifier)."""
    if isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name):
        return name
    raise InvalidNameError(
        f"Notebook parameter name {str(name)[:80]!r}"
        + (f" of job {job_id!r}" if job_id else "")
        + " is not a Python identifier; papermill pastes names into code.",
        job_id=job_id,
    )


def safe_link(url: object) -> str | None:
    """``url`` if it is an http(s) link, else None (never ``javascript:``)."""
    if isinstance(url, str) and re.match(r"^https?://[^\s\"'<>]+$", url):
        return url
    return None


def strip_control(text: str) -> str:
    """``text`` without terminal control sequences (colours, cursor moves, OSC).

    Newlines and tabs stay; a carriage return becomes a newline, so that a
    progress bar's redraws read as lines.
    """
    text = re.sub(r"\x1b\][^\x07\x1b]*(\x07|\x1b\\)?", "", text)  # OSC
    text = re.sub(r"\x1b\[[0-?]*[ -/]*[@-~]", "", text)  # CSI
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", "", text)
