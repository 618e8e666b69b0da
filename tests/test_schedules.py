"""Schedules: runs at cron times, overlaps, catch-up, pause, and planted schedules."""

from __future__ import annotations

import datetime
import json
import os

import pytest
from conftest import wait_for_skip_then_second_run

from dask_batch import BatchClient, DaskBatchError, JobState, SubmitError
from dask_batch.storage.store import JobStore
from dask_batch.testing import _start_gateway, wait_for


def wait_for_file(path):
    import time

    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "done"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = datetime.datetime(2026, 11, 27, 10, 0, 30, tzinfo=datetime.UTC)

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += datetime.timedelta(seconds=seconds)


@pytest.fixture
def clock(batch_client):
    """A clock the test moves by hand, as the client's schedules' clock."""
    clock = Clock()
    batch_client.service.clock = clock
    return clock


def test_a_schedule_every_minute_fires_skips_an_overlap_and_catches_up_once(
    batch_client, clock, tmp_path
):
    gate = tmp_path / "gate"
    schedule = batch_client.schedule(
        wait_for_file, str(gate), cron="* * * * *", name="minutely", workers=0
    )
    assert schedule.next_run == datetime.datetime(
        2026, 11, 27, 10, 1, tzinfo=datetime.UTC
    )
    assert batch_client.fire_schedules() == []  # nothing due yet
    clock.advance(60)
    (first,) = batch_client.fire_schedules()
    assert first.outcome == "submitted" and first.job_id
    assert batch_client.fire_schedules() == []  # fired once per due time
    clock.advance(60)
    (skipped,) = batch_client.fire_schedules()
    assert skipped.outcome == "skipped"
    assert f"the run {first.job_id} is still" in skipped.message
    gate.touch()
    assert batch_client.result(first.job_id, timeout=120) == "done"
    clock.advance(60)
    (second,) = batch_client.fire_schedules()
    assert second.outcome == "submitted"
    batch_client.wait(second.job_id, timeout=120)
    runs = batch_client.schedule_history(schedule.id)
    assert [r.outcome for r in runs] == ["submitted", "skipped", "submitted"]
    record = batch_client.status(second.job_id)
    assert record.schedule == schedule.id and record.name == "minutely"
    # Seven due times passed with nobody firing: one run, not seven.
    clock.advance(7 * 60)
    (caught_up,) = batch_client.fire_schedules()
    assert "caught up once for 7 due times" in caught_up.message
    batch_client.wait(caught_up.job_id, timeout=120)
    # Paused: nothing; resumed: the times paused are not caught up.
    batch_client.pause_schedule(schedule.id)
    clock.advance(120)
    assert batch_client.fire_schedules() == []
    resumed = batch_client.resume_schedule(schedule.id)
    assert resumed.next_run > clock.now
    assert batch_client.fire_schedules() == []
    (listed,) = batch_client.schedules()
    assert listed.id == schedule.id and not listed.paused
    batch_client.delete_schedule(schedule.id)
    assert batch_client.schedules() == []
    assert batch_client.status(first.job_id).state is JobState.SUCCEEDED


def test_a_bad_cron_or_overlap_is_refused(batch_client):
    with pytest.raises(SubmitError, match="is not a cron expression"):
        batch_client.schedule(wait_for_file, "x", cron="every day")
    with pytest.raises(SubmitError, match="unknown time zone"):
        batch_client.schedule(
            wait_for_file, "x", cron="0 2 * * *", timezone="Mars/Olympus"
        )
    assert batch_client.schedules() == []


def test_a_planted_schedule_never_runs(batch_client, clock):
    real = batch_client.schedule(wait_for_file, "x", cron="0 2 * * *", workers=0)
    store = batch_client.store
    folder = os.path.join(store.user_path(batch_client.user), ".schedules")
    # Someone with write access copies it under a new id and changes the cron.
    planted_id = "20261127-000000-000-deadbeef"
    os.makedirs(os.path.join(folder, planted_id))
    with open(os.path.join(folder, real.id, "schedule.json")) as f:
        doc = json.load(f)
    doc.update(id=planted_id, cron="* * * * *")
    with open(os.path.join(folder, planted_id, "schedule.json"), "w") as f:
        json.dump(doc, f)
    # And tampers with the real one's payload.
    with open(os.path.join(folder, real.id, "payload.pkl"), "ab") as f:
        f.write(b"\0")
    clock.advance(3 * 86400)
    (refused,) = batch_client.fire_schedules()
    assert refused.outcome == "failed" and "payload" in refused.message
    assert [s.id for s in batch_client.schedules()] == [real.id]
    with pytest.raises(DaskBatchError, match="not signed with your key"):
        batch_client.service._schedules.read(planted_id)
    assert batch_client.jobs() == []


def test_the_local_gateway_fires_schedules_with_nobody_looking(tmp_path, monkeypatch):
    import dask_batch.local

    monkeypatch.setenv("DASK_BATCH__LOCAL__KEEPER_INTERVAL", "0.2s")
    directory = str(tmp_path / "local")
    info = _start_gateway(directory)
    gate = tmp_path / "gate"
    try:
        with BatchClient(gateway=info.gateway(), storage=info.storage) as batch:
            # Every two seconds; the first run holds until the test sees a
            # due time skipped.
            schedule = batch.schedule(
                wait_for_file, str(gate), cron="* * * * * */2", workers=0
            )
            batch.gateway.close()
        with BatchClient(gateway=info.gateway(), storage=info.storage) as batch:
            history = wait_for_skip_then_second_run(
                lambda: batch.schedule_history(schedule.id), gate.touch, "the keeper"
            )
            batch.pause_schedule(schedule.id)
            runs = [r.job_id for r in history if r.job_id]
            for job_id in runs:
                assert batch.wait(job_id, timeout=120).state is JobState.SUCCEEDED
            assert {batch.status(j).schedule for j in runs} == {schedule.id}
            # A job that waits for another: started by the keeper, with
            # nobody waiting for it.
            second_gate = tmp_path / "second-gate"
            upstream = batch.submit(wait_for_file, str(second_gate), workers=0)
            waiting = batch.submit(len, [upstream, upstream], workers=0)
            batch.gateway.close()
        second_gate.touch()
        store = JobStore(info.storage)
        record = wait_for(
            lambda: (
                (r := store.read_record(batch.user, waiting.id)).state.is_terminal and r
            ),
            120,
            "the local gateway's keeper to start the waiting job",
        )
        assert record.state is JobState.SUCCEEDED and record.released is not None
    finally:
        dask_batch.local.stop(directory)


def test_dask_batch_schedule_add_list_pause_resume_history_delete(
    configured_cli, tmp_path
):
    invoke = configured_cli(DASK_BATCH__STORAGE=str(tmp_path / "jobs"))
    script = tmp_path / "nightly.py"
    script.write_text("print('nightly')\n")

    def run(*args):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        return result.output

    added = run(
        "schedule", "add", str(script), "--cron", "0 2 * * *", "--name", "nightly",
        "--workers", "0",
    )  # fmt: skip
    schedule_id = added.split()[0]
    assert "next run: " in added
    listing = run("schedule", "list")
    assert schedule_id in listing and "0 2 * * *" in listing and "active" in listing
    assert "paused" in run("schedule", "pause", schedule_id)
    assert "paused" in run("schedule", "list")
    assert "next run" in run("schedule", "resume", schedule_id)
    assert "resumed" in run("schedule", "history", schedule_id)
    (item,) = json.loads(run("schedule", "list", "--json"))
    assert item["name"] == "nightly" and item["kind"] == "script"
    assert run("schedule", "fire") == ""  # nothing due before 02:00 tomorrow
    run("schedule", "delete", schedule_id)
    assert schedule_id not in run("schedule", "list")
    bad = invoke("schedule", "add", str(script), "--cron", "nope")
    assert bad.exit_code == 1 and "is not a cron expression" in bad.output


def test_a_delegation_opens_only_its_own_schedule(
    batch_client, clock, tmp_path, monkeypatch
):
    from cryptography.fernet import Fernet

    from dask_batch.workflows.schedules import Delegation, Schedules

    mine = batch_client.schedule(wait_for_file, "x", cron="0 2 * * *", workers=0)
    other = batch_client.schedule(wait_for_file, "y", cron="0 3 * * *", workers=0)
    owner = batch_client.service._schedules
    service = Schedules(batch_client.store, None, batch_client.user)
    service.delegation = Delegation(Fernet.generate_key().decode())
    with pytest.raises(DaskBatchError, match="was not handed to this service"):
        service.read(mine.id)
    # A key that is not the schedule's own is refused.
    with pytest.raises(DaskBatchError, match="does not open its secrets"):
        service.delegation.accept(service, mine.id, owner.keys(other.id).env_key)
    service.delegation.accept(service, mine.id, owner.keys(mine.id).env_key)
    assert service.read(mine.id).cron == "0 2 * * *"
    # Copied beside another schedule in storage, it opens nothing there.
    folder = os.path.join(batch_client.store.user_path(batch_client.user), ".schedules")
    with open(os.path.join(folder, mine.id, "service.bin"), "rb") as f:
        sealed = f.read()
    with open(os.path.join(folder, other.id, "service.bin"), "wb") as f:
        f.write(sealed)
    with pytest.raises(DaskBatchError, match="copied from another schedule"):
        service.read(other.id)
    # Another service's key opens nothing.
    stranger = Schedules(batch_client.store, None, batch_client.user)
    stranger.delegation = Delegation(Fernet.generate_key().decode())
    with pytest.raises(DaskBatchError, match="cannot be opened"):
        stranger.read(mine.id)


def test_a_queued_overlap_runs_when_the_last_run_ends(batch_client, clock, tmp_path):
    gate = tmp_path / "gate"
    schedule = batch_client.schedule(
        wait_for_file, str(gate), cron="* * * * *", overlap="queue", workers=0
    )
    clock.advance(60)
    (first,) = batch_client.fire_schedules()
    clock.advance(60)
    (queued,) = batch_client.fire_schedules()
    assert queued.outcome == "queued" and not queued.job_id
    assert batch_client.fire_schedules() == []  # still going: still queued
    gate.touch()
    batch_client.wait(first.job_id, timeout=120)
    (started,) = batch_client.fire_schedules()
    assert started.outcome == "submitted" and started.time == queued.time
    assert batch_client.result(started.job_id, timeout=120) == "done"
    history = batch_client.schedule_history(schedule.id)
    assert [r.outcome for r in history] == ["submitted", "submitted"]
    batch_client.delete_schedule(schedule.id)


def test_concurrency_allow_starts_a_run_beside_the_one_still_going(
    batch_client, clock, tmp_path
):
    gate = tmp_path / "gate"
    schedule = batch_client.schedule(
        wait_for_file, str(gate), cron="* * * * *", concurrency="allow", workers=0
    )
    clock.advance(60)
    (first,) = batch_client.fire_schedules()
    clock.advance(60)
    (second,) = batch_client.fire_schedules()
    assert second.outcome == "submitted" and second.job_id != first.job_id
    gate.touch()
    for run in (first, second):
        assert batch_client.result(run.job_id, timeout=120) == "done"
    batch_client.delete_schedule(schedule.id)


def test_concurrency_replace_cancels_the_run_still_going(batch_client, clock, tmp_path):
    gate = tmp_path / "gate"
    schedule = batch_client.schedule(
        wait_for_file, str(gate), cron="* * * * *", concurrency="replace", workers=0
    )
    clock.advance(60)
    (first,) = batch_client.fire_schedules()
    wait_for(
        lambda: batch_client.status(first.job_id).state is JobState.RUNNING,
        120,
        "the first run to start",
    )
    clock.advance(60)
    (second,) = batch_client.fire_schedules()
    assert second.outcome == "submitted"
    assert f"replaced the run {first.job_id}" in second.message
    assert batch_client.status(first.job_id).state is JobState.CANCELLED
    gate.touch()
    assert batch_client.result(second.job_id, timeout=120) == "done"
    batch_client.delete_schedule(schedule.id)


def test_a_starting_deadline_records_an_old_missed_time_instead_of_running_it(
    batch_client, clock, tmp_path
):
    gate = tmp_path / "gate"
    gate.touch()
    schedule = batch_client.schedule(
        wait_for_file, str(gate), cron="0 * * * *", starting_deadline="10m", workers=0
    )
    # An outage of three hours and a half: the latest due time is 30 min old.
    clock.advance(3.5 * 3600)
    (missed,) = batch_client.fire_schedules()
    assert missed.outcome == "missed" and not missed.job_id
    assert "past the starting deadline of 600 s" in missed.message
    assert batch_client.fire_schedules() == []  # recorded once, not again
    assert batch_client.jobs() == []
    # Within the deadline, the due time runs once.
    clock.advance(35 * 60)
    (late,) = batch_client.fire_schedules()
    assert late.outcome == "submitted" and late.job_id
    assert batch_client.result(late.job_id, timeout=120) == "done"
    history = batch_client.schedule_history(schedule.id)
    assert [r.outcome for r in history] == ["submitted", "missed"]
    batch_client.delete_schedule(schedule.id)


def test_a_clock_that_jumps_back_fires_no_due_time_twice(batch_client, clock, tmp_path):
    gate = tmp_path / "gate"
    gate.touch()
    schedule = batch_client.schedule(
        wait_for_file, str(gate), cron="* * * * *", workers=0
    )
    clock.advance(60)
    (first,) = batch_client.fire_schedules()
    batch_client.wait(first.job_id, timeout=120)
    clock.advance(-120)  # back before the due time that ran
    assert batch_client.fire_schedules() == []
    clock.advance(60)  # the same due time again
    assert batch_client.fire_schedules() == []
    assert [r.job_id for r in batch_client.schedule_history(schedule.id)] == [
        first.job_id
    ]
    batch_client.delete_schedule(schedule.id)


@pytest.mark.parametrize(
    "policy, why",
    [
        ({"concurrency": "sometimes"}, "concurrency must be"),
        ({"starting_deadline": -5}, "starting deadline"),
        ({"starting_deadline": "soon"}, "starting deadline"),
    ],
)
def test_a_bad_policy_is_refused_before_it_is_stored(batch_client, policy, why):
    with pytest.raises(SubmitError, match=why):
        batch_client.schedule(wait_for_file, "x", cron="* * * * *", **policy)
    assert batch_client.schedules() == []


def test_a_due_time_claimed_by_a_firer_that_died_is_submitted_once_by_another(
    batch_client, clock, tmp_path
):
    import dask

    from dask_batch.workflows.schedules import ScheduleRun

    gate = tmp_path / "gate"
    gate.touch()
    schedule = batch_client.schedule(
        wait_for_file, str(gate), cron="0 * * * *", workers=0
    )
    clock.advance(3600)
    due = schedule.following(schedule.created)
    # What a firer leaves when it dies between its claim and its submit.
    dead = ScheduleRun(due, outcome="starting")
    batch_client.service._schedules._record(schedule.id, dead, create=True)
    with dask.config.set({"batch.schedules.claim-timeout": "30s"}):
        assert batch_client.fire_schedules() == []  # maybe still submitting
        clock.advance(31)
        (run,) = batch_client.fire_schedules()
    assert run.outcome == "submitted" and run.time == due
    assert "taken over" in run.message
    assert batch_client.fire_schedules() == []  # once
    assert batch_client.result(run.job_id, timeout=120) == "done"
    assert [r.job_id for r in batch_client.schedule_history(schedule.id)] == [
        run.job_id
    ]
    batch_client.delete_schedule(schedule.id)


def test_four_firers_at_once_submit_one_run_per_due_time(
    batch_client, batch_gateway, clock, tmp_path
):
    import concurrent.futures

    gate = tmp_path / "gate"
    gate.touch()
    schedule = batch_client.schedule(
        wait_for_file, str(gate), cron="* * * * *", concurrency="allow", workers=0
    )
    firers = [
        BatchClient(gateway=batch_gateway.gateway(), storage=batch_client.store.url)
        for _ in range(3)
    ]
    try:
        for firer in firers:
            firer.service.clock = clock  # one clock: the same due times
        everyone = [batch_client, *firers]
        with concurrent.futures.ThreadPoolExecutor(len(everyone)) as pool:
            for _ in range(3):
                clock.advance(60)
                fired = [
                    run
                    for runs in pool.map(lambda b: b.fire_schedules(), everyone)
                    for run in runs
                ]
                assert [r.outcome for r in fired] == ["submitted"], fired
        history = batch_client.schedule_history(schedule.id)
        assert [r.outcome for r in history] == ["submitted"] * 3
        assert len({r.job_id for r in history}) == 3
        for run in history:
            assert batch_client.result(run.job_id, timeout=120) == "done"
    finally:
        for firer in firers:
            firer.gateway.close()
        batch_client.delete_schedule(schedule.id)


def test_a_sealed_handover_gives_the_service_no_env_value(
    batch_client, batch_gateway, clock
):
    import pathlib

    from cryptography.fernet import Fernet

    from dask_batch.core.runner_key import public_key_text
    from dask_batch.core.secrets import unseal
    from dask_batch.workflows.schedules import SECRETS, Delegation, Schedules, handover

    pem = pathlib.Path(batch_gateway.directory, "runner-key.pem").read_bytes()
    runner_key = public_key_text(pem)
    mine = batch_client.schedule(
        wait_for_file, "x", cron="0 2 * * *", workers=0, env={"TOKEN": "s3cr3t"}
    )
    other = batch_client.schedule(wait_for_file, "y", cron="0 3 * * *", workers=0)
    owner = batch_client.service._schedules
    service = Schedules(batch_client.store, None, batch_client.user)
    service.delegation = Delegation(Fernet.generate_key().decode())
    sealed = handover(owner.keys(mine.id), runner_key)
    assert set(sealed) == {"env_key", "job_key"}
    # The sealed env key comes with the schedule's own job key, or not at all.
    with pytest.raises(DaskBatchError, match="comes with the schedule's job key"):
        service.delegation.accept(service, mine.id, sealed["env_key"])
    with pytest.raises(DaskBatchError, match="is not signed with the key sent"):
        service.delegation.accept(
            service, mine.id, sealed["env_key"], owner.keys(other.id).job_key
        )
    service.delegation.accept(service, mine.id, sealed["env_key"], sealed["job_key"])
    assert service.read(mine.id).cron == "0 2 * * *"  # it can check and fire it
    keys = service.keys(mine.id)
    secrets = service.read_part(mine.id, SECRETS)
    for key in (keys.env_key, keys.job_key):
        with pytest.raises(ValueError):  # neither is a key that opens them
            unseal(key, secrets)
    assert unseal(owner.keys(mine.id).env_key, secrets).env == {"TOKEN": "s3cr3t"}


@pytest.mark.parametrize(
    ("cron", "start", "end", "expected"),
    [
        # Weekdays at midnight across the spring change: no Sunday run.
        (
            "0 0 * * MON-FRI",
            "2026-03-26T12:00",
            "2026-04-01T12:00",
            ["03-27 00:00", "03-30 00:00", "03-31 00:00", "04-01 00:00"],
        ),
        # 02:30 does not exist on 29 March: it runs once, at 03:00.
        (
            "30 2 * * *",
            "2026-03-28T12:00",
            "2026-03-30T12:00",
            ["03-29 03:00", "03-30 02:30"],
        ),
        # 02:30 happens twice on 25 October: it runs once.
        (
            "30 2 * * *",
            "2026-10-24T12:00",
            "2026-10-26T12:00",
            ["10-25 02:30", "10-26 02:30"],
        ),
        # Seconds: a sixth field at the end, as stored schedules have it.
        (
            "* * * * * */20",
            "2026-03-26T12:00",
            "2026-03-26T12:01",
            ["03-26 12:00", "03-26 12:00", "03-26 12:01"],
        ),
    ],
)
def test_due_times_keep_crons_rules_across_daylight_saving_changes(
    cron, start, end, expected
):
    import zoneinfo

    from dask_batch.workflows.schedules import Schedule

    paris = zoneinfo.ZoneInfo("Europe/Paris")
    after = datetime.datetime.fromisoformat(start).replace(tzinfo=paris)
    until = datetime.datetime.fromisoformat(end).replace(tzinfo=paris)
    schedule = Schedule(
        "20260101-000000-000-00000000",
        "alice",
        "s",
        cron,
        "Europe/Paris",
        "skip",
        False,
        after,
        "f",
        {},
        "",
        "",
    )
    times = schedule.due_times(after, until)
    assert [t.astimezone(paris).strftime("%m-%d %H:%M") for t in times] == expected
    assert len(set(times)) == len(times)
