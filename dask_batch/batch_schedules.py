"""BatchClient's schedule methods: cron schedules that submit jobs.

A part of :class:`~dask_batch.BatchClient` (which inherits it), kept in a
room of its own; see ``BatchClient.schedule``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from dask_batch.client import submission as _submission
from dask_batch.core.options import SubmitOptions
from dask_batch.core.records import new_job_id

__all__: list[str] = []


class ScheduleMethods:
    """Schedules: add, list, read the history of, pause, resume, delete and
    fire them. Needs ``sync`` and ``service``, as BatchClient has them."""

    service: Any

    def sync(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError  # BatchClient's

    def schedule(
        self,
        target: Callable[..., Any] | str | os.PathLike[str],
        /,
        *args: Any,
        cron: str,
        timezone: str = "UTC",
        concurrency: str | None = None,
        overlap: str = "skip",
        starting_deadline: float | str | None = None,
        submit_options: SubmitOptions | None = None,
        **kwargs: Any,
    ) -> Any:
        """Submit ``target`` as a job at each time of ``cron``.

        Runs are ordinary jobs (listed, waited for, fetched as any other),
        each naming its schedule (``JobRecord.schedule``). They are submitted
        by the JupyterHub service (when ``batch.service.url`` is set, the
        schedule is handed to it) or, on the embedded local default, by the
        local gateway's own background process; ``fire_schedules()`` (or
        ``dask batch schedule fire``) submits what is due from any client.

        Parameters
        ----------
        target : callable or str
            A function (called with ``*args`` and the keywords that are not
            submit options), a script (``nightly.py``, with ``*args`` as its
            command line), a notebook or ``package.module:function``.
        cron : str
            When, in cron syntax (``"0 2 * * *"``: 02:00 every day); a sixth
            field gives seconds.
        timezone : str
            The time zone of ``cron`` (``"Europe/Paris"``). Default UTC.
        concurrency : {"allow", "forbid", "replace"}, optional
            A due time while the last run still goes, as a Kubernetes CronJob's
            ``concurrencyPolicy``: start another run beside it (``allow``),
            skip the due time and record why in the history (``forbid``, the
            default), or cancel the last run and start the new one
            (``replace``).
        overlap : {"skip", "queue", "allow", "replace"}
            The same choice by its older names, where ``concurrency`` is not
            given; ``"queue"`` starts the due time's run when the last one ends.
        starting_deadline : float or str, optional
            Seconds (or ``"10m"``) after a due time within which its run may
            still start, as a CronJob's ``startingDeadlineSeconds``: after an
            outage, the latest missed time runs once if it is that recent, and
            is recorded as missed otherwise. Default: no deadline (the latest
            missed time always runs once).
        submit_options, **kwargs
            How each run runs, as for :meth:`submit`.

        Returns
        -------
        Schedule
            With its id and next due time.

        Examples
        --------
        >>> s = batch.schedule(refresh, "s3://bucket/raw", cron="0 2 * * *",
        ...                    name="nightly", workers=4)
        >>> batch.schedule("report.ipynb", cron="0 8 * * 1-5")
        """
        options, main_kwargs = SubmitOptions.split(submit_options, kwargs)
        schedule_id = new_job_id()
        what = _submission.target_for(schedule_id, target, args, main_kwargs)
        return self.sync(
            self.service.add_schedule,
            schedule_id,
            what,
            options,
            cron=cron,
            timezone=timezone,
            concurrency=concurrency,
            overlap=overlap,
            starting_deadline=starting_deadline,
        )

    def schedules(self) -> Any:
        """Your schedules, newest first, each with its history and next run.

        A schedule that your key did not sign (planted, or changed in
        storage) is left out: it never runs.

        Returns
        -------
        list of Schedule
        """

        return self.sync(self.service.schedules)

    def schedule_history(self, schedule_id: str) -> Any:
        """A schedule's due times so far, newest first (list of ScheduleRun)."""

        async def read() -> Any:
            return (await self.service.schedule(schedule_id)).history

        return self.sync(read)

    def pause_schedule(self, schedule_id: str) -> Any:
        """Stop submitting runs until :meth:`resume_schedule`; returns the Schedule."""
        return self.sync(self.service.pause_schedule, schedule_id)

    def resume_schedule(self, schedule_id: str) -> Any:
        """Submit runs again from the next due time (paused times are not caught up)."""
        return self.sync(self.service.resume_schedule, schedule_id)

    def delete_schedule(self, schedule_id: str) -> Any:
        """Remove a schedule; the jobs it submitted stay."""
        return self.sync(self.service.delete_schedule, schedule_id)

    def fire_schedules(self) -> Any:
        """Submit the runs of your schedules that are due now.

        The hub service and the local gateway do this on their own; call it
        (or ``dask batch schedule fire``, say from cron) where neither runs.

        Returns
        -------
        list of ScheduleRun
        """
        return self.sync(self.service.fire_schedules)
