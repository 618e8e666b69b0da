"""Schedules: submit a job at each time of a cron expression.

A schedule lives beside its owner's jobs, in ``{root}/{user}/.schedules/{id}/``:

- ``schedule.json``: the cron expression, how overlaps are handled, whether it
  is paused, and the template of its runs' spec, signed with the schedule's
  key (derived, as a job's, from the owner's secret and the schedule id);
- ``payload.pkl``, ``files.tar.gz``, ``secrets.bin``: what each run gets,
  the payload signed and the env values sealed with the schedule's keys;
- ``runs/{time}.json``: one per due time, created once (whoever fires first
  wins): the run's job id, or why it was skipped or is queued; a queued
  run's start is claimed once in ``claims/{time}.json``.

Whoever fires a schedule checks its signature with the owner's secret: a
schedule planted by someone who can write the storage never runs. Each run
is an ordinary job (its own id and keys), whose record names its schedule.
Times missed while nobody was firing are caught up once, not once each.

Client side: the local gateway's keeper and any client of the owner fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dask.utils import parse_timedelta

from dask_batch.client.job_delegation import JobDelegation
from dask_batch.client.reconcile import Reconciler
from dask_batch.client.submission import Submission
from dask_batch.core import secrets as _secrets
from dask_batch.core import signing as _signing
from dask_batch.core.audit import audit
from dask_batch.core.exceptions import DaskBatchError, JobNotFoundError, SubmitError
from dask_batch.core.names import check_job_id
from dask_batch.core.records import from_iso, new_job_id, to_iso, utcnow
from dask_batch.core.runner_key import is_sealed, seal_env_key
from dask_batch.storage.store import (
    FILES,
    PAYLOAD,
    SECRETS,
    JobStore,
    digest,
    dumps_json,
)

__all__ = ["Schedule", "ScheduleRun"]

logger = logging.getLogger("dask_batch")

SCHEDULES = ".schedules"
SCHEDULE_DOC = "schedule.json"
RUNS = "runs"
#: What a due time does while the last run still goes: ``skip`` it (and say
#: so in the history), ``queue`` it until that run ends, ``allow`` both to
#: run, or ``replace`` the last run (cancelled) with the new one.
OVERLAPS = ("skip", "queue", "allow", "replace")
#: Seconds after a due time when a firer's claim that never became a run is
#: taken to be a dead firer's, and the due time is submitted by another.
CLAIM_TIMEOUT = 300.0  # the default of batch.schedules.claim-timeout
_HEX_KEY = re.compile(r"^[0-9a-f]{64}$")  # a job key: 32 bytes, hex
#: Kubernetes' names (a CronJob's ``concurrencyPolicy``) for the same choices.
CONCURRENCY = {"allow": "allow", "forbid": "skip", "replace": "replace"}


def check_cron(schedule_id: str, cron: Any, timezone: Any = "UTC") -> None:
    """Refuse what is not a cron expression, one that never comes, and
    unknown time zones."""
    zone = _zone(schedule_id, timezone)
    _next_time(schedule_id, cron, datetime.datetime.now(zone))


def check_policy(
    schedule_id: str, overlap: str, starting_deadline: float | str | None
) -> float | None:
    """The starting deadline in seconds; refuses an unknown overlap policy or
    a deadline that is not a duration of zero or more."""
    if overlap not in OVERLAPS:
        raise SubmitError.not_submitted(
            schedule_id,
            f"concurrency must be 'allow', 'forbid' or 'replace' (overlap: "
            f"{', '.join(OVERLAPS)}), got {overlap!r}.",
        )
    try:
        if isinstance(starting_deadline, str):
            starting_deadline = parse_timedelta(starting_deadline)
        return _deadline(starting_deadline)
    except (ValueError, KeyError, TypeError):
        raise SubmitError.not_submitted(
            schedule_id,
            f"a starting deadline of {starting_deadline!r} is not allowed: give "
            "a duration such as 600 (seconds) or '10m'.",
        ) from None


def _never_comes(schedule_id: str, cron: str) -> SubmitError:
    return SubmitError.not_submitted(
        schedule_id,
        f"{cron!r} never comes: no date matches it (such as February 30). "
        "Check its day-of-month and month fields.",
    )


def _cron_fields(cron: str) -> str:
    """``cron`` as cronsim reads it. dask-batch's sixth field is seconds at
    the end (as schedules stored by earlier releases have it); cronsim's
    comes first."""
    parts = cron.split()
    if len(parts) == 6:
        parts = [parts[5], *parts[:5]]
    return " ".join(parts)


def _next_time(schedule_id: str, cron: Any, after: datetime.datetime) -> Any:
    """The due times after ``after`` (an iterator), and the first of them.

    Read by cronsim, which keeps cron's own rules across daylight-saving
    changes (a time skipped runs once just after, a time repeated runs
    once), in ``after``'s time zone.
    """
    from cronsim import CronSim, CronSimError

    if not isinstance(cron, str) or len(cron.split()) not in (5, 6):
        raise _not_cron(schedule_id, cron)
    fields = _cron_fields(cron)
    try:
        it = CronSim(fields, after)
    except (CronSimError, ValueError, LookupError):
        # Readable with every month, it names a day no month of it has.
        any_month = fields.split()
        any_month[-2] = "*"  # the month: second to last, as cronsim orders them
        try:
            CronSim(" ".join(any_month), after)
        except (CronSimError, ValueError, LookupError):
            raise _not_cron(schedule_id, cron) from None
        raise _never_comes(schedule_id, cron) from None
    try:
        return it, next(it)
    except (StopIteration, CronSimError):
        raise _never_comes(schedule_id, cron) from None


def _not_cron(schedule_id: str, cron: Any) -> SubmitError:
    return SubmitError.not_submitted(
        schedule_id,
        f"{cron!r} is not a cron expression (five fields: minute hour "
        "day-of-month month day-of-week, such as '0 2 * * *'; a sixth "
        "field gives seconds).",
    )


def _deadline(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"a starting deadline of {value!r} seconds")
    return float(value)


def _zone(schedule_id: str, name: Any) -> datetime.tzinfo:
    import zoneinfo

    try:
        return zoneinfo.ZoneInfo(str(name))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise SubmitError.not_submitted(
            schedule_id, f"unknown time zone {name!r} (use names such as 'UTC')."
        ) from None


@dataclass(frozen=True)
class ScheduleRun:
    """One due time of a schedule.

    Attributes
    ----------
    time : datetime
        The due time.
    job_id : str
        The job submitted for it ("" if skipped or queued).
    outcome : str
        ``"submitted"``, ``"skipped"``, ``"queued"`` or ``"failed"``.
    message : str
        Why it was skipped, or times missed before it.
    """

    time: datetime.datetime
    job_id: str = ""
    outcome: str = "submitted"
    message: str = ""

    @classmethod
    def from_dict(cls, doc: Any) -> ScheduleRun:
        if not isinstance(doc, dict):
            raise TypeError("a run entry is not a JSON object")
        when = from_iso(doc.get("time"))
        if when is None:
            raise ValueError("a run entry has no time")
        job_id = doc.get("job_id") or ""
        return cls(
            time=when,
            job_id=check_job_id(job_id) if job_id else "",
            outcome=str(doc.get("outcome") or "submitted"),
            message=str(doc.get("message") or "")[:1000],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": to_iso(self.time),
            "job_id": self.job_id,
            "outcome": self.outcome,
            "message": self.message,
        }


@dataclass(frozen=True)
class Schedule:
    """A schedule, as its owner signed it.

    Attributes
    ----------
    id, user, name : str
    cron : str
        When runs are due (cron syntax, in ``timezone``; a sixth field at
        the end gives seconds).
    timezone : str
    overlap : str
        ``"skip"``: a due time while the last run is still going is skipped
        (and recorded); ``"queue"``: it runs when the last run ends.
    paused : bool
    created : datetime
    target : str
        What each run runs.
    spec : dict
        The template of each run's spec.
    history : list of ScheduleRun
        Due times so far, newest first (filled by ``schedules()``).
    next_run : datetime or None
        The next due time (None while paused).
    """

    id: str
    user: str
    name: str
    cron: str
    timezone: str
    overlap: str
    paused: bool
    created: datetime.datetime
    target: str
    spec: dict[str, Any]
    payload_signature: str
    files_digest: str
    history: tuple[ScheduleRun, ...] = ()
    next_run: datetime.datetime | None = None
    starting_deadline: float | None = None

    def to_document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "name": self.name,
            "cron": self.cron,
            "timezone": self.timezone,
            "overlap": self.overlap,
            "paused": self.paused,
            "created": to_iso(self.created),
            "target": self.target,
            "spec": self.spec,
            "payload_signature": self.payload_signature,
            "files_digest": self.files_digest,
            **(
                {"starting_deadline": self.starting_deadline}
                if self.starting_deadline is not None
                else {}
            ),
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly, with history and next run."""
        return {
            **{k: v for k, v in self.to_document().items() if k != "spec"},
            "kind": self.spec.get("kind", ""),
            "history": [r.to_dict() for r in self.history],
            "next_run": to_iso(self.next_run),
        }

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Schedule:
        created = from_iso(doc.get("created"))
        if created is None:
            raise ValueError("a schedule has no creation time")
        spec = doc.get("spec")
        if not isinstance(spec, dict):
            raise TypeError("a schedule has no run template")
        return cls(
            id=check_job_id(doc.get("id")),
            user=str(doc["user"]),
            name=str(doc.get("name") or ""),
            cron=str(doc["cron"]),
            timezone=str(doc.get("timezone") or "UTC"),
            overlap=str(doc.get("overlap") or "skip"),
            paused=doc.get("paused") is True,
            created=created,
            target=str(doc.get("target") or ""),
            spec=spec,
            payload_signature=str(doc.get("payload_signature") or ""),
            files_digest=str(doc.get("files_digest") or ""),
            starting_deadline=_deadline(doc.get("starting_deadline")),
        )

    def due_times(
        self, after: datetime.datetime, until: datetime.datetime
    ) -> list[datetime.datetime]:
        """Due times in ``(after, until]``, at most 1000 (the newest)."""
        zone = _zone(self.id, self.timezone)
        times: list[datetime.datetime] = []
        it, when = _next_time(self.id, self.cron, after.astimezone(zone))
        while when <= until:
            times.append(when.astimezone(datetime.timezone.utc))
            if len(times) > 1000:
                times.pop(0)
            when = next(it)
        return times

    def following(self, after: datetime.datetime) -> datetime.datetime:
        zone = _zone(self.id, self.timezone)
        _, when = _next_time(self.id, self.cron, after.astimezone(zone))
        return when.astimezone(datetime.timezone.utc)


def _run_name(when: datetime.datetime) -> str:
    return when.astimezone(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.json")


class Schedules:
    """One user's schedules in a store: add, list, pause, resume, delete, fire.

    Parameters
    ----------
    store : JobStore
    launcher : ClusterLauncher
        Submits each run as an ordinary job (``start_job``).
    user : str
    clock : callable, optional
        The current time (UTC); tests drive it.

    Attributes
    ----------
    delegation : Delegation or None
        Set by a service that holds no secret: the schedules' keys come from
        what their owners delegated to it, and runs are signed with keys
        derived from them (``keys_from``).
    """

    def __init__(
        self,
        store: JobStore,
        launcher: Any,
        user: str,
        clock: Callable[[], datetime.datetime] = utcnow,
    ) -> None:
        self.store = store
        self.launcher = launcher
        self.user = user
        self.clock = clock
        self.delegation: Delegation | None = None
        self._said: set[tuple[str, str]] = set()  # (schedule, why) logged once

    # -- storage -----------------------------------------------------------------
    def _path(self, schedule_id: str, name: str = "") -> str:
        base = posixpath.join(
            self.store.user_path(self.user), SCHEDULES, check_job_id(schedule_id)
        )
        return posixpath.join(base, name) if name else base

    def write_part(self, schedule_id: str, name: str, data: bytes) -> None:
        with self.store.storage_errors(f"write schedule {name}", schedule_id):
            self.store.backend.put_whole(self._path(schedule_id, name), data)

    def read_part(self, schedule_id: str, name: str) -> bytes:
        path = self._path(schedule_id, name)
        with self.store.storage_errors(
            f"read schedule {name}", schedule_id, answers=(FileNotFoundError,)
        ):
            return bytes(self.store.fs.cat_file(path))

    def ids(self) -> list[str]:
        folder = posixpath.join(self.store.user_path(self.user), SCHEDULES)
        names = self.store.list_names(folder, "list the schedules")
        found = []
        for name in names:
            base = posixpath.basename(name.rstrip("/"))
            try:
                found.append(check_job_id(base))
            except JobNotFoundError:
                continue  # not a schedule's folder: planted, or left over
        return sorted(found, reverse=True)

    # -- the owner's side ----------------------------------------------------------
    def keys(self, schedule_id: str) -> _signing.JobKeys:
        if self.delegation is not None:
            return self.delegation.keys(self, schedule_id)
        secret = _signing.user_secret(create=True, job_id=schedule_id)
        return _signing.job_keys(secret, schedule_id)

    def add(
        self,
        submission: Submission,
        cron: str,
        *,
        timezone: str = "UTC",
        overlap: str = "skip",
        starting_deadline: float | None = None,
        paused: bool = False,
    ) -> Schedule:
        """Store a schedule whose runs are ``submission`` (its id the schedule's).

        Storing it again under the same id edits it in place: its history
        stays, and it runs as it now says from the next due time.
        """
        schedule_id = submission.job_id
        check_cron(schedule_id, cron, timezone)
        check_policy(schedule_id, overlap, starting_deadline)
        keys = self.keys(schedule_id)
        spec = dict(submission.spec)
        schedule = Schedule(
            id=schedule_id,
            user=self.user,
            name=str(spec.get("name") or ""),
            cron=cron,
            timezone=timezone,
            overlap=overlap,
            paused=paused,
            created=self.clock(),
            target=str(spec.get("function") or ""),
            spec=spec,
            payload_signature=_signing.sign(keys.job_key, submission.payload),
            files_digest=digest(submission.archive) if submission.archive else "",
            starting_deadline=starting_deadline,
        )
        sealed = _secrets.seal(
            _secrets.JobSecrets(
                submission.env_values, keys.job_key, schedule=schedule_id
            ),
            keys.env_key,
        )
        self.write_part(schedule_id, PAYLOAD, submission.payload)
        if submission.archive:
            self.write_part(schedule_id, FILES, submission.archive)
        self.write_part(schedule_id, SECRETS, sealed)
        self._write(schedule, keys)
        return dataclasses.replace(schedule, next_run=schedule.following(self.clock()))

    def _write(self, schedule: Schedule, keys: _signing.JobKeys) -> None:
        signed = _signing.sign_spec(keys.job_key, schedule.to_document())
        self.write_part(schedule.id, SCHEDULE_DOC, dumps_json(signed))

    def read(self, schedule_id: str) -> Schedule:
        """The schedule, if its owner's key signed it; else an error naming it."""
        return self._verified(schedule_id)[0]

    def _verified(self, schedule_id: str) -> tuple[Schedule, _signing.JobKeys]:
        """The schedule its owner's key signed, and that key (derived once:
        through a delegation, that is two reads)."""
        try:
            doc = json.loads(self.read_part(schedule_id, SCHEDULE_DOC))
        except FileNotFoundError:
            raise JobNotFoundError(
                schedule_id, self.store.url, reason="no such schedule"
            ) from None
        except ValueError:
            doc = None
        keys = self.keys(schedule_id)
        if not isinstance(doc, dict) or not _signing.spec_is_signed(keys.job_key, doc):
            raise DaskBatchError(
                f"Schedule {schedule_id!r} is not signed with your key: it was "
                "written or changed in storage by someone else, and never runs. "
                "Delete it (`dask batch schedule delete`) and add it again.",
                job_id=schedule_id,
            )
        schedule = Schedule.from_document(doc)
        if schedule.id != schedule_id or schedule.user != self.user:
            raise DaskBatchError(
                f"Schedule {schedule_id!r} describes another schedule or user: it "
                "was copied in storage. It never runs.",
                job_id=schedule_id,
            )
        return schedule, keys

    def history(self, schedule_id: str, limit: int = 100) -> list[ScheduleRun]:
        """The schedule's due times so far, newest first."""
        names = self.store.list_names(self._path(schedule_id, RUNS), "list the runs")
        names = sorted((posixpath.basename(n) for n in names), reverse=True)[:limit]
        paths = [self._path(schedule_id, f"{RUNS}/{n}") for n in names]
        blobs = self.store.get_many(paths, schedule_id)
        runs = []
        for path in paths:
            try:
                runs.append(ScheduleRun.from_dict(json.loads(blobs[path])))
            except (KeyError, TypeError, ValueError, JobNotFoundError):
                continue  # damaged or planted: not part of the history
        return runs

    def describe(self, schedule_id: str) -> Schedule:
        """The schedule with its history and next due time."""
        schedule = self.read(schedule_id)
        history = tuple(self.history(schedule_id))
        last = history[0].time if history else schedule.created
        return dataclasses.replace(
            schedule,
            history=history,
            next_run=None if schedule.paused else schedule.following(last),
        )

    def set_paused(self, schedule_id: str, paused: bool) -> Schedule:
        schedule, keys = self._verified(schedule_id)
        schedule = dataclasses.replace(schedule, paused=paused)
        if not paused:
            # Times that passed while paused are not caught up.
            marker = ScheduleRun(self.clock(), outcome="resumed", message="resumed")
            self._record(schedule_id, marker, create=False)
        self._write(schedule, keys)
        return self.describe(schedule_id)

    def delete(self, schedule_id: str) -> None:
        """Remove the schedule; its runs, ordinary jobs, stay."""
        path = self._path(schedule_id)
        with self.store.storage_errors("delete the schedule", schedule_id):
            if not self.store.fs.exists(path):
                raise JobNotFoundError(
                    schedule_id, self.store.url, reason="no such schedule"
                )
            self.store.fs.rm(path, recursive=True)

    # -- firing --------------------------------------------------------------------
    def _record(self, schedule_id: str, run: ScheduleRun, *, create: bool) -> bool:
        path = self._path(schedule_id, f"{RUNS}/{_run_name(run.time)}")
        data = json.dumps(run.to_dict()).encode()
        if create:
            return self.store.create_at(path, data, "record a run", schedule_id)
        with self.store.storage_errors("record a run", schedule_id):
            self.store.backend.put_whole(path, data)
        return True

    async def fire_due(self, by: str = "") -> list[ScheduleRun]:
        """Submit the runs now due for every schedule of the user.

        ``by`` names a firer acting for the user (a service): each run it
        records gets an audit line.
        """
        fired = []
        for schedule_id in await asyncio.to_thread(self.ids):
            try:
                runs = await self.fire(schedule_id)
                fired.extend(runs)
                if by:
                    _audit_runs(self.user, schedule_id, runs, by)
            except DaskBatchError as exc:
                # One broken or planted schedule does not stop the others.
                # Said once per reason: firers sweep every few seconds.
                if (schedule_id, str(exc)) not in self._said:
                    self._said.add((schedule_id, str(exc)))
                    logger.warning("Schedule %s not fired: %s", schedule_id, exc)
        return fired

    async def fire(self, schedule_id: str) -> list[ScheduleRun]:
        """Submit the run now due for one schedule (at most one per call)."""
        schedule, keys = await asyncio.to_thread(self._verified, schedule_id)
        history = await asyncio.to_thread(self.history, schedule_id, 20)
        done: list[ScheduleRun] = []
        if schedule.paused:
            return []
        now = self.clock()
        stale = next((r for r in history if r.outcome == "starting"), None)
        if stale is not None and (now - stale.time).total_seconds() > claim_timeout():
            run = await self._take_over(schedule, keys, stale)
            return [run] if run else []
        queued = [r for r in history if r.outcome == "queued"]
        if queued:
            run = await self._start_queued(schedule, keys, queued[-1], history)
            return [run] if run else []
        last = history[0].time if history else schedule.created
        due = schedule.due_times(last, now)
        if not due:
            return []
        when = due[-1]
        missed = len(due) - 1
        message = (
            f"caught up once for {missed + 1} due times since {to_iso(due[0])}"
            if missed
            else ""
        )
        late = (now - when).total_seconds()
        if schedule.starting_deadline is not None and late > schedule.starting_deadline:
            why = (
                f"missed: due {late:.0f} s ago, past the starting deadline of "
                f"{schedule.starting_deadline:g} s. {message}"
            )
            return await self._record_skip(schedule_id, when, "missed", why)
        previous = next((r for r in history if r.job_id), None)
        going = await self._still_going(previous)
        if going and schedule.overlap in ("skip", "queue"):
            outcome = "queued" if schedule.overlap == "queue" else "skipped"
            note = f"the run {previous.job_id} is still {going}"  # type: ignore[union-attr]
            return await self._record_skip(
                schedule_id, when, outcome, f"{note}. {message}"
            )
        if going and schedule.overlap == "replace":
            assert previous is not None
            await self._replace(schedule, previous.job_id, going)
            replaced = f"replaced the run {previous.job_id}, which was still {going}"
            message = f"{replaced}. {message}".strip()
        claim = ScheduleRun(when, outcome="starting", message=message)
        if not await asyncio.to_thread(self._record, schedule_id, claim, create=True):
            return done  # someone else fired it
        done.append(await self._submit_run(schedule, keys, when, message))
        return done

    async def _take_over(
        self, schedule: Schedule, keys: _signing.JobKeys, claim: ScheduleRun
    ) -> ScheduleRun | None:
        """Submit a due time that a firer claimed and never recorded: it died
        between its claim and its submit (or while submitting)."""
        takeover = self._path(schedule.id, f"claims/{_run_name(claim.time)}-takeover")
        if not await asyncio.to_thread(
            self.store.create_at, takeover, b"{}", "take over a claim", schedule.id
        ):
            return None  # another firer took it over
        why = "taken over from a firer that stopped before recording its run"
        return await self._submit_run(
            schedule, keys, claim.time, f"{why}. {claim.message}".strip()
        )

    async def _record_skip(
        self, schedule_id: str, when: datetime.datetime, outcome: str, why: str
    ) -> list[ScheduleRun]:
        """A due time that starts no run: recorded once, with its reason."""
        run = ScheduleRun(when, outcome=outcome, message=why.strip())
        if await asyncio.to_thread(self._record, schedule_id, run, create=True):
            return [run]
        return []  # another firer recorded this due time

    async def _replace(self, schedule: Schedule, job_id: str, state: str) -> None:
        """Cancel the run still going, for the new one (``replace``)."""
        logger.info(
            "Schedule %s: cancelling its run %s (%s) to start the next",
            schedule.id,
            job_id,
            state,
        )
        with contextlib.suppress(DaskBatchError):  # ended meanwhile, or gone
            await Reconciler(self.store, self.launcher, self.user).cancel(job_id)

    async def _still_going(self, run: ScheduleRun | None) -> str:
        if run is None:
            return ""
        try:
            record = await asyncio.to_thread(
                self.store.read_record, self.user, run.job_id
            )
        except DaskBatchError:
            return ""
        return "" if record.state.is_terminal else record.state.value

    async def _start_queued(
        self,
        schedule: Schedule,
        keys: _signing.JobKeys,
        run: ScheduleRun,
        history: list[ScheduleRun],
    ) -> ScheduleRun | None:
        previous = next((r for r in history if r.job_id), None)
        if await self._still_going(previous):
            return None
        # Claimed once: two firers never both submit the queued run.
        claim = self._path(schedule.id, f"claims/{_run_name(run.time)}")
        if not await asyncio.to_thread(
            self.store.create_at, claim, b"{}", "claim a queued run", schedule.id
        ):
            return None
        return await self._submit_run(schedule, keys, run.time, run.message)

    async def _submit_run(
        self,
        schedule: Schedule,
        keys: _signing.JobKeys,
        when: datetime.datetime,
        message: str,
    ) -> ScheduleRun:
        """Submit the run due at ``when`` as a new job, and record it."""
        try:
            submission, run_keys = await asyncio.to_thread(
                run_submission, self, schedule, keys, when
            )
            job_id = await self.launcher.start_job(submission, run_keys)
            run = ScheduleRun(when, job_id=job_id, message=message)
        except Exception as exc:
            # Recorded as this due time's outcome (and logged): the claim
            # must not stay "starting" for ever.
            logger.warning("Schedule %s: run due %s failed: %s", schedule.id, when, exc)
            run = ScheduleRun(when, outcome="failed", message=str(exc)[:1000])
        await asyncio.to_thread(self._record, schedule.id, run, create=False)
        return run


def claim_timeout() -> float:
    """Seconds after which a due time claimed by a firer that died is taken over."""
    import dask.config

    value = dask.config.get("batch.schedules.claim-timeout", CLAIM_TIMEOUT)
    return float(parse_timedelta(value) or 0)


def run_submission(
    schedules: Schedules,
    schedule: Schedule,
    keys: _signing.JobKeys,
    when: datetime.datetime,
) -> tuple[Submission, _signing.JobKeys | None]:
    """The run's submission, from what the schedule's key vouches for, and
    its keys when they derive from the schedule's (delegated) keys."""
    payload = schedules.read_part(schedule.id, PAYLOAD)
    if _signing.sign(keys.job_key, payload) != schedule.payload_signature:
        raise DaskBatchError(
            f"the payload of schedule {schedule.id!r} was changed in storage; "
            "no run submitted. Add the schedule again.",
            job_id=schedule.id,
        )
    archive = b""
    if schedule.files_digest:
        archive = schedules.read_part(schedule.id, FILES)
        if digest(archive) != schedule.files_digest:
            raise DaskBatchError(
                f"the files of schedule {schedule.id!r} were changed in "
                "storage; no run submitted. Add the schedule again.",
                job_id=schedule.id,
            )
    sealed = schedules.read_part(schedule.id, SECRETS)
    if is_sealed(keys.env_key):
        # A service that cannot open the schedule's secrets: the run gets
        # them as they are, and derives its own key from them.
        env, copied = {}, sealed
    else:
        env, copied = _secrets.unseal(keys.env_key, sealed).env, b""
    run_id = new_job_id()
    spec = dict(schedule.spec)
    spec.update(
        id=run_id,
        user=schedules.user,
        artifacts_url=schedules.store.artifacts_url(schedules.user, run_id),
        schedule=schedule.id,
        scheduled_for=to_iso(when),
        # One job per due time, whichever firers submit it (a firer that
        # takes over a dead one's claim finds the job it had started).
        idempotency_key=f"schedule {schedule.id} {_run_name(when)}",
    )
    run_keys = None
    if schedules.delegation is not None:
        run_keys = _signing.run_keys(keys, run_id)
        spec["keys_from"] = schedule.id
    submission = Submission(run_id, spec, payload, env, archive, copied)
    return submission, run_keys


def default_service_key_path() -> str:
    """Where the service keeps its key: beside a user's secret, in its config dir."""
    return os.path.join(os.path.dirname(_signing.secret_path()), "service-key")


class Delegation:
    """Schedules their owners handed to a service that holds no user's secret.

    The owner sends the schedule's env key to the service over its
    authenticated API; the service keeps it sealed with its own key (a
    Fernet key in ``batch.service.key-file``, made on first use), beside the
    schedule (``service.bin``). With it the service opens the schedule's job
    key, checks the schedule's signature, fires its runs and pauses or
    resumes it: the schedule's authority, nothing more of the user's.

    Parameters
    ----------
    key : str
        The service's Fernet key.
    """

    SEALED = "service.bin"

    def __init__(self, key: str) -> None:
        from cryptography.fernet import Fernet

        self._fernet = Fernet(key)
        #: The same key's hold on waiting jobs handed over.
        self.jobs = JobDelegation(key)

    @classmethod
    def from_config(cls) -> Delegation:
        """The service's key from ``batch.service.key-file`` (made if missing)."""
        import dask.config
        from cryptography.fernet import Fernet

        path = dask.config.get("batch.service.key-file", None) or (
            default_service_key_path()
        )
        path = os.path.abspath(os.path.expanduser(str(path)))
        try:
            with open(path) as f:
                return cls(f.read().strip())
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            key = Fernet.generate_key().decode()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(key + "\n")
            return cls(key)

    def accept(
        self,
        schedules: Schedules,
        schedule_id: str,
        env_key: str,
        job_key: str | None = None,
    ) -> None:
        """Keep what the owner hands over for a schedule, once it proves to be
        that schedule's.

        Either the schedule's env key, which must open the schedule's sealed
        secrets, the job key inside verifying the schedule's signature; or,
        where the gateway has a runner key, the env key sealed to it (which
        this service cannot open) and the schedule's job key, which must
        verify the schedule's signature. A key for anything else is refused.
        """
        if is_sealed(env_key):
            if not isinstance(job_key, str) or not _HEX_KEY.match(job_key):
                raise DaskBatchError(
                    f"schedule {schedule_id!r}: a sealed env key comes with the "
                    "schedule's job key",
                    job_id=schedule_id,
                )
            keys = _signing.JobKeys(job_key=job_key, env_key=env_key)
        else:
            keys = self._open_schedule(schedules, schedule_id, env_key)
        doc = json.loads(schedules.read_part(schedule_id, SCHEDULE_DOC))
        if not isinstance(doc, dict) or not _signing.spec_is_signed(keys.job_key, doc):
            raise DaskBatchError(
                f"schedule {schedule_id!r} is not signed with the key sent for it",
                job_id=schedule_id,
            )
        document = {"user": schedules.user, "schedule": schedule_id, "env_key": env_key}
        if is_sealed(env_key):
            document["job_key"] = keys.job_key
        sealed = self._fernet.encrypt(json.dumps(document).encode())
        schedules.write_part(schedule_id, self.SEALED, sealed)

    def keys(self, schedules: Schedules, schedule_id: str) -> _signing.JobKeys:
        """The schedule's keys, from what its owner delegated (else an error)."""
        try:
            token = schedules.read_part(schedule_id, self.SEALED)
            document = json.loads(self._fernet.decrypt(token))
        except FileNotFoundError:
            raise DaskBatchError(
                f"schedule {schedule_id!r} was not handed to this service (no "
                "batch.service.url where it was added); its owner's clients "
                "fire it (`dask batch schedule fire`).",
                job_id=schedule_id,
            ) from None
        except Exception as exc:
            raise DaskBatchError(
                f"the delegation of schedule {schedule_id!r} cannot be opened "
                f"({type(exc).__name__}): it was not made by this service.",
                job_id=schedule_id,
            ) from None
        if (
            not isinstance(document, dict)
            or document.get("user") != schedules.user
            or document.get("schedule") != schedule_id
        ):
            raise DaskBatchError(
                f"the delegation of schedule {schedule_id!r} was copied from "
                "another schedule or user in storage.",
                job_id=schedule_id,
            )
        env_key = str(document["env_key"])
        if is_sealed(env_key):  # the schedule's secrets stay closed to us
            return _signing.JobKeys(job_key=str(document["job_key"]), env_key=env_key)
        return self._open_schedule(schedules, schedule_id, env_key)

    @staticmethod
    def _open_schedule(
        schedules: Schedules, schedule_id: str, env_key: str
    ) -> _signing.JobKeys:
        try:
            secrets = _secrets.unseal(
                env_key, schedules.read_part(schedule_id, SECRETS)
            )
        except Exception as exc:
            raise DaskBatchError(
                f"the key sent for schedule {schedule_id!r} does not open its "
                f"secrets ({type(exc).__name__})",
                job_id=schedule_id,
            ) from None
        return _signing.JobKeys(job_key=secrets.job_key, env_key=env_key)


def handover(keys: _signing.JobKeys, runner_key: Any = None) -> dict[str, str]:
    """What a schedule's owner hands the service: where the gateway offers a
    runner key, what firing needs (the job key, to sign runs) and the env key
    sealed to the runner key, so that only a run's scheduler opens the
    schedule's secrets; else the env key."""
    if not runner_key:
        return {"env_key": keys.env_key}
    sealed = seal_env_key(str(runner_key), keys.env_key)
    return {"env_key": sealed, "job_key": keys.job_key}


def delegate_to_service(
    url: str,
    token: str,
    schedule_id: str,
    handover: dict[str, str],
    what: str = "schedules",
) -> None:
    """Hand a schedule's (or, ``what="jobs"``, a waiting job's) keys to the
    hub service at ``url`` (its API): ``{"env_key"}``, or ``{"env_key",
    "job_key"}`` with the env key sealed to the gateway's runner key."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{url.rstrip('/')}/api/v1/{what}/{check_job_id(schedule_id)}/delegate",
        data=json.dumps(handover).encode(),
        headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            answer.read()
    except (urllib.error.URLError, OSError) as exc:
        if what == "jobs":
            why = (
                f"job {schedule_id!r} waits, but the service at {url} did not take "
                f"it ({exc}); it starts when a client of yours waits for it or "
                "reconciles. Check batch.service.url and your token."
            )
        else:
            why = (
                f"schedule {schedule_id!r} was added, but the service at {url} did "
                f"not take it ({exc}); it runs only when your clients fire it. "
                "Check batch.service.url and your token, then delete and add it "
                "again."
            )
        raise DaskBatchError(why, job_id=schedule_id) from None


def _audit_runs(user: str, schedule_id: str, runs: list[ScheduleRun], by: str) -> None:
    """An audit line for each due time a firer acting for ``user`` recorded."""
    for run in runs:
        audit(
            user,
            "fire-schedule",
            schedule_id,
            by,
            due=run.time.isoformat(),
            outcome=run.outcome,
            job=run.job_id,
            message=run.message,
        )
