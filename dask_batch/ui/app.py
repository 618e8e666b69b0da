"""The jobs web page and its JSON API: a tornado application over a JobService.

Every request needs the token (``Authorization: token ...``, or the cookie that
``?token=...`` sets); state-changing requests made with the cookie also need
tornado's XSRF token. Pages are rendered on the server with escaping on, and a
small script (served from here, no CDN) updates them from the same API.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import hmac
import json
import os
import posixpath
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import dask.config
import tornado.web
from dask.utils import parse_timedelta

from dask_batch.client.display import (
    STATE_COLOURS,
    format_duration,
    format_progress,
    format_time,
)
from dask_batch.core.audit import audit
from dask_batch.core.exceptions import DaskBatchError, JobNotFoundError
from dask_batch.core.names import (
    InvalidNameError,
    check_job_id,
    check_relative_path,
    safe_link,
)
from dask_batch.core.records import JobRecord, JobState
from dask_batch.core.tasks import check_task_name
from dask_batch.storage.store import SPEC

HERE = os.path.dirname(__file__)
COOKIE = "dask-batch-ui"
PAGE_SIZE = 50
ELEMENTS_PER_PAGE = 100
MAX_PAGE = 500
_ERRORS = ((JobNotFoundError, 404), (InvalidNameError, 400), (ValueError, 400))
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _status_of(exc: BaseException | None) -> int | None:
    """The HTTP status of an error the API expects (None: a server error)."""
    for kind, status in _ERRORS:
        if isinstance(exc, kind):
            return status
    return 502 if isinstance(exc, DaskBatchError) else None


class ListingCache:
    """Listings shared by the requests that ask the same within ``ttl`` seconds.

    A page polled by many browsers, or an API under load, costs one listing
    per query and user per ``ttl`` (``batch.ui.listing-ttl``), not one per
    request; requests that arrive while it is being made wait for it rather
    than making their own. A cancel drops its user's listings at once.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[tuple[Any, ...], tuple[float, asyncio.Future[Any]]] = {}

    async def get(
        self, key: tuple[Any, ...], make: Callable[[], Awaitable[Any]]
    ) -> Any:
        now = time.monotonic()
        self._prune(now)  # what is left is fresh, or still being made
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = (now + self.ttl, asyncio.ensure_future(make()))
        future = entry[1]
        try:
            return await asyncio.shield(future)
        except BaseException:
            if self._entries.get(key) is entry and future.done():
                del self._entries[key]  # an error is not kept
            raise

    def forget(self, owner: Any) -> None:
        """Drop the listings of ``owner`` (the first part of their keys)."""
        for key in [k for k in self._entries if k[0] == owner]:
            del self._entries[key]

    def _prune(self, now: float) -> None:
        for key, (expires, future) in list(self._entries.items()):
            if future.done() and expires <= now:
                del self._entries[key]


def record_json(record: JobRecord) -> dict[str, Any]:
    """A record as the API returns it: its fields, plus what pages show."""
    out = record.to_dict()
    duration = record.duration
    out["duration_seconds"] = None if duration is None else duration.total_seconds()
    out["dashboard_link"] = safe_link(record.dashboard_link)
    out["fetch"] = f"BatchClient().result({record.id!r})"
    return out


class Handler(tornado.web.RequestHandler):
    """Authentication, security headers and error mapping for every request."""

    @property
    def base(self) -> str:
        """The URL prefix the app is served under ("/" or a hub service's)."""
        return str(self.settings["base"])

    @property
    def user_label(self) -> str:
        return str(self.current_user)

    async def client(self, job_id: str | None = None) -> Any:
        """The JobService acting for this request (for ``job_id``'s owner)."""
        return self.settings["batch"]

    async def listing_clients(self) -> list[Any]:
        """The clients whose jobs this request lists."""
        return [await self.client()]

    def get_template_namespace(self) -> dict[str, Any]:
        return {**super().get_template_namespace(), "base": self.base}

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")

    def _header_token_ok(self) -> bool:
        scheme, _, value = self.request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "token" and hmac.compare_digest(
            value.encode(), self.settings["token"].encode()
        )

    async def element_page(self, batch: Any, record: JobRecord) -> dict[str, Any]:
        """For an array job, the page of elements the query names, put in
        ``record.tasks``; what the page's links need."""
        offset = max(0, self.whole_number("offset", 0))
        state = self.get_query_argument("state", "") or None
        if state is not None and state not in JobState.__members__:
            raise tornado.web.HTTPError(400, f"no state {state[:20]!r}")
        if record.elements:
            record.tasks = await batch.tasks(
                record.id, offset=offset, limit=ELEMENTS_PER_PAGE, state=state
            )
        shown = len(record.tasks or [])
        return {
            "offset": offset,
            "state": state or "",
            "shown": shown,
            "size": ELEMENTS_PER_PAGE,
        }

    def get_current_user(self) -> str | None:
        if self._header_token_ok() or self.get_signed_cookie(COOKIE):
            return str(self.settings["batch"].user)
        return None

    def prepare(self) -> None:
        offered = self.get_query_argument("token", None)
        if offered is not None and self.request.method == "GET":
            if not hmac.compare_digest(
                offered.encode(), self.settings["token"].encode()
            ):
                raise tornado.web.HTTPError(403, "wrong token")
            self.set_signed_cookie(COOKIE, "1", httponly=True, samesite="Strict")
            query = {k: v[-1] for k, v in self.request.query_arguments.items()}
            query.pop("token")
            rest = f"?{urlencode(query)}" if query else ""
            self.redirect(self.request.path + rest)
            return
        if self.current_user is None:
            raise tornado.web.HTTPError(
                401, "open the URL that `dask batch ui` printed"
            )

    def check_xsrf_cookie(self) -> None:
        # A token in a header cannot be sent by another site's page.
        if not self._header_token_ok():
            super().check_xsrf_cookie()

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        known = _status_of(exc)
        if status_code == 500 and known is not None:
            status_code = known
            self.set_status(status_code)
        message = getattr(exc, "log_message", None) or self._reason
        if isinstance(exc, (DaskBatchError, ValueError)):
            message = str(exc)
        if self.request.path.startswith(self.base + "api/"):
            job_id = getattr(exc, "job_id", None)
            self.finish({"error": message, "status": status_code, "job_id": job_id})
        else:
            self.render("error.html", status=status_code, message=message)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        # An unknown job or a bad argument is the client's error, not ours.
        if _status_of(value) is None:
            super().log_exception(typ, value, tb)

    async def job_client(self, raw: str) -> tuple[str, Any]:
        """The job id of the URL, checked, and the client acting for its owner."""
        job_id = check_job_id(raw)
        return job_id, await self.client(job_id)

    def audit(self, batch: Any, act: str, subject: str) -> None:
        """An audit line for an act done through the page, in its owner's
        name, by the signed-in user (an admin may act for others)."""
        audit(str(batch.user), act, subject, f"{self.current_user} (page)")

    def whole_number(self, name: str, default: int) -> int:
        text = self.get_query_argument(name, str(default))
        try:
            return int(text)
        except ValueError:
            raise tornado.web.HTTPError(
                400, f"{name} must be a whole number, got {text[:40]!r}"
            ) from None

    def listing_args(self) -> dict[str, Any]:
        limit = self.whole_number("limit", PAGE_SIZE)
        return {
            "state": [s.upper() for s in self.get_query_arguments("state") if s]
            or None,
            "name": self.get_query_argument("name", "") or None,
            "since": self.get_query_argument("since", "") or None,
            "limit": max(1, min(limit, MAX_PAGE)),
            "offset": max(0, self.whole_number("offset", 0)),
        }

    async def page_of_jobs(self) -> dict[str, Any]:
        args = self.listing_args()
        offset, limit = args.pop("offset"), args.pop("limit")
        records = []
        cache: ListingCache = self.settings["listings"]
        for batch in await self.listing_clients():
            query = {**args, "limit": offset + limit + 1}
            # The user too: a client's id may be reused by another user's.
            key = (id(batch), batch.user, json.dumps(query, sort_keys=True))
            records += await cache.get(key, functools.partial(batch.jobs, **query))
        if len(records) > offset + limit + 1:  # several users' jobs, merged
            records.sort(key=lambda r: r.submitted, reverse=True)
        page = records[offset : offset + limit]
        return {
            "jobs": [record_json(r) for r in page],
            "offset": offset,
            "limit": limit,
            "more": len(records) > offset + limit,
        }


class JobsAPI(Handler):
    async def get(self) -> None:
        self.finish(await self.page_of_jobs())


class JobAPI(Handler):
    """A job's record; an array's with the page of elements that
    ``?offset=N&state=S`` names (100 at most)."""

    async def get(self, job_id: str) -> None:
        job_id, batch = await self.job_client(job_id)
        record = await batch.status(job_id)
        await self.element_page(batch, record)
        self.finish(record_json(record))


class LogsAPI(Handler):
    """The log: from chunk ``?chunk=N`` on (``X-Next-Chunk``), streamed with
    ``?follow=1`` until the job ends, or whole as a download."""

    async def get(self, job_id: str) -> None:
        job_id, batch = await self.job_client(job_id)
        task = self.get_query_argument("task", "")
        if task:
            task = check_task_name(task, job_id=job_id)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        if self.get_query_argument("follow", ""):
            async for text in batch.follow_logs(job_id, task):
                self.write(text)
                await self.flush()
            self.finish()
            return
        if self.get_query_argument("download", ""):
            filename = f"{job_id}-{task}.log" if task else f"{job_id}.log"
            self.set_header("Content-Disposition", f'attachment; filename="{filename}"')
            self.finish(await batch.logs(job_id, task=task))
            return
        await batch.status(job_id)  # JobNotFoundError for an unknown job
        chunk = max(0, self.whole_number("chunk", 0))
        store, user = batch.store, batch.user
        data, next_chunk = await asyncio.to_thread(
            functools.partial(store.read_logs, user, job_id, chunk, task=task)
        )
        self.set_header("X-Next-Chunk", str(next_chunk))
        self.finish(data.decode(errors="replace"))


class ArtifactsAPI(Handler):
    async def get(self, job_id: str) -> None:
        job_id, batch = await self.job_client(job_id)
        self.finish({"artifacts": await batch.artifacts(job_id)})


class ArtifactAPI(Handler):
    """One artifact, by a name the job's own listing holds."""

    async def get(self, job_id: str, name: str) -> None:
        job_id, batch = await self.job_client(job_id)
        name = check_relative_path(name, what="artifact", job_id=job_id)
        if name not in await batch.artifacts(job_id):
            raise tornado.web.HTTPError(404, f"job {job_id} has no artifact {name!r}")
        store = batch.store
        path = store.job_path(batch.user, job_id, f"artifacts/{name}")
        self.set_header("Content-Type", "application/octet-stream")
        filename = posixpath.basename(name).replace('"', "")
        self.set_header("Content-Disposition", f'attachment; filename="{filename}"')
        with await asyncio.to_thread(store.fs.open, path, "rb") as f:
            while data := await asyncio.to_thread(f.read, 2**20):
                self.write(data)
                await self.flush()
        self.finish()


class CancelAPI(Handler):
    async def post(self, job_id: str) -> None:
        job_id, batch = await self.job_client(job_id)
        record = await batch.cancel(job_id)
        self.audit(batch, "cancel-job", job_id)
        self.settings["listings"].forget(id(batch))
        self.finish(record_json(record))


def schedule_json(schedule: Any) -> dict[str, Any]:
    return dict(schedule.to_dict())


class SchedulesAPI(Handler):
    async def get(self) -> None:
        batch = await self.client()
        self.finish({"schedules": [schedule_json(s) for s in await batch.schedules()]})


class ScheduleActionAPI(Handler):
    """Pause or resume a schedule (``POST .../pause``, ``.../resume``)."""

    async def post(self, schedule_id: str, action: str) -> None:
        schedule_id = check_job_id(schedule_id)
        batch = await self.client()
        if action == "pause":
            schedule = await batch.pause_schedule(schedule_id)
        else:
            schedule = await batch.resume_schedule(schedule_id)
        self.audit(batch, f"{action}-schedule", schedule_id)
        self.finish(schedule_json(schedule))


class DelegateAPI(Handler):
    """Take a schedule, or a waiting job, its owner hands to this service
    (``POST .../schedules/{id}/delegate``, ``.../jobs/{id}/delegate``; hub
    service only)."""

    ACTS = {"schedules": "fire schedules", "jobs": "start jobs"}

    async def post(self, what: str, item_id: str) -> None:
        item_id = check_job_id(item_id)
        batch = await self.client()
        if batch.delegation is None:
            raise tornado.web.HTTPError(
                404, f"this server does not {self.ACTS[what]} for others"
            )
        try:
            body = json.loads(self.request.body or b"{}")
            env_key = str(body["env_key"])
            job_key = body.get("job_key")
            if job_key is not None and not isinstance(job_key, str):
                raise TypeError("job_key")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise tornado.web.HTTPError(
                400, 'send {"env_key": ...} (and "job_key" with a sealed env key)'
            ) from None
        if what == "jobs":
            await batch.accept_job(item_id, env_key)
        else:
            await batch.accept_schedule(item_id, env_key, job_key)
        self.audit(batch, f"accept-{what[:-1]}", item_id)
        self.finish({what[:-1]: item_id, "delegated": True})


class SchedulesPage(Handler):
    async def get(self) -> None:
        batch = await self.client()
        self.render("schedules.html", schedules=await batch.schedules(), **_helpers())


class JobsPage(Handler):
    def page_href(self, offset: int) -> str:
        """This listing's URL at another offset (filters kept)."""
        names = ("state", "name", "since", "limit")
        query = {k: self.get_query_arguments(k) for k in names}
        query = {k: v for k, v in query.items() if v}
        query["offset"] = [str(offset)]
        return self.base + "?" + urlencode(query, doseq=True)

    async def get(self) -> None:
        page = await self.page_of_jobs()
        self.render("jobs.html", page=page, args=self.listing_args(), **_helpers())


class JobPage(Handler):
    async def get(self, job_id: str) -> None:
        job_id, batch = await self.job_client(job_id)
        record = await batch.status(job_id)
        page = await self.element_page(batch, record)
        store, user = batch.store, batch.user
        self.render(
            "job.html",
            job=record_json(record),
            record=record,
            # The record was just read: list the artifacts without reading it again.
            artifacts=await asyncio.to_thread(store.artifacts, user, record.id),
            spec=await asyncio.to_thread(_spec_summary, batch, record.id),
            page=page,
            **_helpers(),
        )


def _spec_summary(batch: Any, job_id: str) -> dict[str, Any]:
    """What the job page shows of the spec: never env values, never keys."""
    spec = batch.store.get_json(batch.user, job_id, SPEC)
    shown = ("cluster_options", "payload_bytes", "files_bytes", "memory_limit")
    return {k: spec.get(k) for k in shown if isinstance(spec, dict)}


def _dag_levels(tasks: list[Any]) -> list[list[Any]]:
    """A pipeline's steps in columns: each after every step it needs."""
    depth: dict[str, int] = {}
    for task in tasks:  # upstream steps come first
        depth[task.name] = 1 + max(
            (depth.get(u, -1) for u in task.upstream), default=-1
        )
    levels: list[list[Any]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for task in tasks:
        levels[depth[task.name]].append(task)
    return levels


def _helpers() -> dict[str, Any]:
    return {
        "dag_levels": _dag_levels,
        "colours": {s.value: c for s, c in STATE_COLOURS.items()},
        "states": [s.value for s in JobState],
        "format_time": format_time,
        "format_duration": format_duration,
        "format_seconds": lambda s: (
            "" if s is None else format_duration(datetime.timedelta(seconds=s))
        ),
        "format_progress": format_progress,
        "json": json,
    }


#: The app's pages and API, relative to its base URL.
ROUTES: list[tuple[str, type[Handler]]] = [
    (r"", JobsPage),
    (r"jobs/([^/]+)", JobPage),
    (r"api/v1/jobs", JobsAPI),
    (r"api/v1/jobs/([^/]+)", JobAPI),
    (r"api/v1/jobs/([^/]+)/logs", LogsAPI),
    (r"api/v1/jobs/([^/]+)/artifacts", ArtifactsAPI),
    (r"api/v1/jobs/([^/]+)/artifacts/(.+)", ArtifactAPI),
    (r"api/v1/jobs/([^/]+)/cancel", CancelAPI),
    (r"schedules", SchedulesPage),
    (r"api/v1/schedules", SchedulesAPI),
    (r"api/v1/schedules/([^/]+)/(pause|resume)", ScheduleActionAPI),
    (r"api/v1/(schedules|jobs)/([^/]+)/delegate", DelegateAPI),
]


def application(
    base: str, access: type | None = None, **settings: Any
) -> tornado.web.Application:
    """The app under ``base``, its handlers authenticated by ``access`` (a mixin
    placed before :class:`Handler`), else by the app's own token."""
    handlers: list[Any] = [
        (
            re.escape(base) + pattern,
            type(cls.__name__, (access, cls), {}) if access else cls,
        )
        for pattern, cls in ROUTES
    ]
    return tornado.web.Application(
        handlers + settings.pop("extra_handlers", []),
        base=base,
        listings=ListingCache(parse_timedelta(dask.config.get("batch.ui.listing-ttl"))),
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"httponly": False, "samesite": "Strict", "path": base},
        template_path=os.path.join(HERE, "templates"),
        static_path=os.path.join(HERE, "static"),
        static_url_prefix=base + "static/",
        autoescape="xhtml_escape",
        **settings,
    )


def make_app(batch: Any, token: str | None = None) -> tornado.web.Application:
    """The UI over a :class:`~dask_batch.JobService`.

    Parameters
    ----------
    batch : JobService
        Identified, on the loop that serves the app (an asynchronous
        BatchClient's ``service``).
    token : str, optional
        The access token; default: a new random one (``app.settings["token"]``).
    """
    return application(
        "/",
        batch=batch,
        token=token or secrets.token_urlsafe(32),
        cookie_secret=secrets.token_bytes(32),
    )
