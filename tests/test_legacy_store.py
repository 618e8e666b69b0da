"""Jobs stored by the first release (flat layout) stay readable.

``tests/data/legacy_store`` was written by ``tests/data/make_legacy_store.py``
with that release, on a real local gateway: its pickles name that release's
modules (``dask_batch._deps.JobResult``, ``dask_batch._targets.run_script``).
Every job in it is listed, read, loaded and, where it can go on, taken on.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import shutil

import dask.config
import pytest
from dask_gateway import BasicAuth

from dask_batch import BatchClient, JobFailedError, JobState, Step
from dask_batch.client.gateway import BatchGateway

DATA = pathlib.Path(__file__).parent / "data"
IDS = dict(line.split() for line in (DATA / "legacy_ids.txt").read_text().splitlines())


def load():
    return [1, 2, 3]


def total(upstream):
    return sum(upstream["load"])


@pytest.fixture
def legacy(batch_gateway, tmp_path):
    """A client of the user who wrote the legacy store, over a copy of it."""
    storage = tmp_path / "jobs"
    shutil.copytree(DATA / "legacy_store", storage)
    secret = tmp_path / "secret"
    shutil.copy(DATA / "legacy_secret", secret)
    os.chmod(secret, 0o600)  # git keeps no file modes
    gateway = BatchGateway(
        address=batch_gateway.address,
        proxy_address=batch_gateway.proxy_address,
        auth=BasicAuth("root", batch_gateway.password),
    )
    with (
        dask.config.set({"batch.secret-file": str(secret)}),
        BatchClient(gateway=gateway, storage=str(storage)) as batch,
    ):
        try:
            yield batch
        finally:
            gateway.close()


def test_every_legacy_job_is_listed_with_its_state(legacy):
    listed = {record.id: record for record in legacy.jobs()}
    assert set(IDS.values()) <= set(listed)
    assert listed[IDS["finished"]].state is JobState.SUCCEEDED
    assert listed[IDS["failed"]].state is JobState.FAILED
    assert listed[IDS["waiting"]].state is JobState.PENDING


def test_a_legacy_result_log_and_artifacts_load(legacy, tmp_path):
    job_id = IDS["finished"]
    assert legacy.result(job_id) == {"n": 4, "squares": [0, 1, 4, 9]}
    assert "finished with 4" in legacy.logs(job_id)
    assert legacy.status(job_id).progress == 0.5
    assert "model.txt" in legacy.artifacts(job_id)
    legacy.download_artifacts(job_id, str(tmp_path / "out"))
    assert (tmp_path / "out" / "model.txt").read_text() == "weights for 4\n"
    assert legacy.result(IDS["script"]) is None
    assert "hello world" in legacy.logs(IDS["script"])


def test_a_legacy_failure_still_says_why(legacy):
    job_id = IDS["failed"]
    with pytest.raises(JobFailedError, match="legacy failure") as info:
        legacy.result(job_id)
    assert info.value.job_id == job_id
    assert "about to fail" in legacy.logs(job_id)


def test_a_legacy_pipeline_and_array_load_and_resume(legacy):
    assert legacy.result(IDS["pipeline"]) == {"load": [1, 2, 3], "total": 6}
    assert [t.name for t in legacy.tasks(IDS["pipeline"])] == ["load", "total"]
    assert legacy.result(IDS["array"]) == [1, 4, 9]
    resumed = legacy.submit_pipeline(
        [Step(load), Step(total, upstream=["load"])],
        resume=IDS["pipeline"],
        workers=0,
    )
    assert resumed.result(timeout=120) == {"load": [1, 2, 3], "total": 6}


def test_a_legacy_waiting_job_starts_and_gets_its_upstream_value(legacy):
    # Stored while its upstream job ran; that job has succeeded since.
    assert legacy.result(IDS["waiting"], timeout=120) == 42


def test_a_legacy_schedule_is_listed_and_fires(legacy):
    (schedule,) = legacy.schedules()
    assert schedule.name == "nightly" and schedule.cron == "0 2 * * *"
    day_after = schedule.created + datetime.timedelta(days=1, hours=1)
    legacy.service.clock = lambda: day_after
    (run,) = legacy.fire_schedules()
    assert run.outcome == "submitted"
    assert legacy.result(run.job_id, timeout=120) == "nightly"
