"""JupyterLab's Notebook Jobs on dask-batch: a real `jupyter server` with
jupyter-scheduler and the backend, a real gateway and storage, driven through
the REST API exactly as the Jobs UI calls it."""

from __future__ import annotations

import json
import os
import pathlib

import pytest
from lab_server import JupyterServer, notebook

from dask_batch import BatchClient, JobState
from dask_batch.testing import wait_for

SHOW = (
    "print(f'n={n!r} {type(n).__name__}')\n"
    "print(f'greeting={greeting!r} {type(greeting).__name__}')"
)
WAIT_FOR_FILE = (
    "import os, time\nwhile not os.path.exists(go):\n    time.sleep(0.1)\nprint('went')"
)


def job_body(name, input_uri, **extra):
    """`POST /scheduler/jobs` as the UI sends it."""
    body = {
        "name": name,
        "input_uri": input_uri,
        "runtime_environment_name": "dask-gateway",
        "output_formats": ["ipynb"],
        "compute_type": "1 worker",
        "idempotency_token": None,
        "tags": [],
        "runtime_environment_parameters": {},
        "package_input_folder": False,
    }
    body.update(extra)
    return body


@pytest.fixture
def lab(batch_gateway, tmp_path):
    storage = str(tmp_path / "jobs")
    # The storage given as a flag on the server's command line, not in dask
    # config: the flag wins, as arguments do.
    flag = f"--DaskBatchScheduler.storage={storage}"
    server = JupyterServer(
        tmp_path / "home", tmp_path / "root", batch_gateway, None, args=[flag]
    )
    batch = BatchClient(gateway=batch_gateway.gateway(), storage=storage)
    server.batch = batch
    try:
        yield server
    finally:
        server.stop()
        batch.gateway.close()


def until_status(lab, job_id, status, timeout=180):
    def seen():
        code, job = lab.request("GET", f"/scheduler/jobs/{job_id}")
        assert code == 200, job
        return job if job["status"] == status else None

    return wait_for(seen, timeout, f"job {job_id} to be {status}")


def test_a_notebook_job_from_the_rest_api_is_a_dask_batch_job(lab):
    root = pathlib.Path(lab.root)
    notebook(str(root / "work" / "show.ipynb"), SHOW, "n = 1\ngreeting = 'x'")
    code, config = lab.request("GET", "/scheduler/config")
    assert code == 200 and config["supported_features"]["job_definition"] is True
    code, environments = lab.request("GET", "/scheduler/runtime_environments")
    assert code == 200
    assert [e["name"] for e in environments] == ["dask-gateway"]
    assert "2 workers" in environments[0]["compute_types"]
    code, made = lab.request(
        "POST",
        "/scheduler/jobs",
        job_body(
            "show",
            "work/show.ipynb",
            output_formats=["ipynb", "html"],
            parameters={"n": "3", "greeting": "'hi'"},
            tags=["nightly"],
        ),
    )
    assert code == 200, made
    job_id = made["job_id"]
    # The same job, seen by dask-batch: a notebook job with its labels.
    record = lab.batch.status(job_id)
    assert record.kind == "notebook" and record.name == "show"
    assert record.labels["jupyter/input_uri"] == "work/show.ipynb"
    assert [r.id for r in lab.batch.jobs(kind="notebook")] == [job_id]
    job = until_status(lab, job_id, "COMPLETED")
    assert job["job_id"] == job_id and job["tags"] == ["nightly"]
    assert job["parameters"] == {"n": "3", "greeting": "'hi'"}
    assert job["start_time"] and job["end_time"] >= job["start_time"]
    assert lab.batch.status(job_id).state is JobState.SUCCEEDED
    code, listed = lab.request("GET", "/scheduler/jobs?max_items=25")
    assert code == 200 and [j["job_id"] for j in listed["jobs"]] == [job_id]
    assert not job["downloaded"]
    # Download: the files are under the root when the request answers.
    code, _ = lab.request("GET", f"/scheduler/jobs/{job_id}/download_files")
    assert code == 204
    code, job = lab.request("GET", f"/scheduler/jobs/{job_id}")
    assert job["downloaded"], job["job_files"]
    files = {f["file_format"]: root / f["file_path"] for f in job["job_files"]}
    executed = json.loads(files["ipynb"].read_text())
    text = json.dumps(executed["cells"])
    # "3" arrives as an int, "'hi'" as a str, injected after `parameters`.
    assert "n=3 int" in text and "greeting='hi' str" in text
    assert "injected-parameters" in text
    assert "n=3 int" in files["html"].read_text()
    assert "greeting = 'x'" in files["input"].read_text()
    for path in files.values():
        assert path.is_file() and path.stat().st_size > 0
        assert str(path).startswith(lab.root + os.sep)


def test_stop_delete_and_bad_input(lab, tmp_path):
    root = pathlib.Path(lab.root)
    go = tmp_path / "go"
    notebook(str(root / "wait.ipynb"), WAIT_FOR_FILE, f"go = {str(go)!r}")
    code, made = lab.request("POST", "/scheduler/jobs", job_body("wait", "wait.ipynb"))
    assert code == 200, made
    job_id = made["job_id"]
    until_status(lab, job_id, "IN_PROGRESS")
    code, _ = lab.request("PATCH", f"/scheduler/jobs/{job_id}", {"status": "STOPPED"})
    assert code == 204
    assert until_status(lab, job_id, "STOPPED")["status_message"]
    assert lab.batch.status(job_id).state is JobState.CANCELLED
    code, _ = lab.request("DELETE", f"/scheduler/jobs/{job_id}")
    assert code == 204
    code, listed = lab.request("GET", "/scheduler/jobs?max_items=25")
    assert listed["jobs"] == []
    assert lab.batch.jobs() == []
    code, answer = lab.request("GET", f"/scheduler/jobs/{job_id}")
    assert code == 500 and job_id in answer["message"]
    # Bad input: a clear message, nothing submitted.
    for body, expected in [
        (job_body("x", "missing.ipynb"), "missing.ipynb"),
        (job_body("x", "../outside.ipynb"), "outside.ipynb"),
        (job_body("x", "wait.ipynb", compute_type="99 workers"), "compute type"),
        (
            job_body("x", "wait.ipynb", runtime_environment_name="gpu"),
            "runtime environment",
        ),
    ]:
        code, answer = lab.request("POST", "/scheduler/jobs", body)
        assert code == 500 and expected in answer["message"], answer
    for schedule, zone, expected in [
        ("0 3 * * * 10", "UTC", "five-field"),
        ("0 3 * * *", "Mars/Olympus", "Mars/Olympus"),
        ("61 3 * * *", "UTC", "61 3"),
    ]:
        body = job_body("x", "wait.ipynb", schedule=schedule, timezone=zone)
        code, answer = lab.request("POST", "/scheduler/job_definitions", body)
        assert code == 500 and expected in answer["message"], answer
    assert lab.batch.jobs() == [] and lab.batch.schedules() == []


def test_job_definitions_are_dask_batch_schedules(lab):
    import datetime

    notebook(str(pathlib.Path(lab.root) / "daily.ipynb"), SHOW, "n = 1\ngreeting = 'x'")
    body = job_body(
        "daily",
        "daily.ipynb",
        schedule="0 3 * * MON-FRI",
        timezone="Europe/Paris",
        parameters={"n": "5", "greeting": "'day'"},
    )
    code, made = lab.request("POST", "/scheduler/job_definitions", body)
    assert code == 200, made
    definition_id = made["job_definition_id"]
    (schedule,) = lab.batch.schedules()
    assert schedule.id == definition_id
    assert (schedule.cron, schedule.timezone) == ("0 3 * * MON-FRI", "Europe/Paris")
    path = f"/scheduler/job_definitions/{definition_id}"
    # Pause, edit in place (same id, still paused), resume.
    assert lab.request("PATCH", path, {"active": False})[0] == 204
    assert lab.batch.schedules()[0].paused
    code, _ = lab.request(
        "PATCH", path, {"schedule": "30 4 * * *", "timezone": "UTC", "name": "early"}
    )
    assert code == 204
    (schedule,) = lab.batch.schedules()
    assert (schedule.id, schedule.cron, schedule.timezone) == (
        definition_id,
        "30 4 * * *",
        "UTC",
    )
    assert schedule.paused and schedule.name == "early"
    code, described = lab.request("GET", path)
    assert described["schedule"] == "30 4 * * *" and described["active"] is False
    assert lab.request("PATCH", path, {"active": True})[0] == 204
    assert not lab.batch.schedules()[0].paused
    code, listed = lab.request("GET", "/scheduler/job_definitions?max_items=25")
    assert [d["job_definition_id"] for d in listed["job_definitions"]] == [
        definition_id
    ]
    # Run now, with a parameter of its own.
    code, made = lab.request("POST", f"{path}/jobs", {"parameters": {"n": "7"}})
    assert code == 200, made
    now_id = made["job_id"]
    # A run that dask-batch fires itself, with no Jupyter server involved:
    # the next due time, as any firer (hub service, local keeper) sees it.
    firer = BatchClient(gateway=lab.batch.gateway, storage=lab.batch.store.url)
    due = lab.batch.schedules()[0].next_run + datetime.timedelta(seconds=1)
    firer.service.clock = lambda: due
    (fired,) = firer.fire_schedules()
    runs = f"/scheduler/jobs?job_definition_id={definition_id}&max_items=25"
    code, listed = lab.request("GET", runs)
    ids = {j["job_id"] for j in listed["jobs"]}
    assert ids == {now_id, fired.job_id}
    assert all(j["job_definition_id"] == definition_id for j in listed["jobs"])
    done = {i: until_status(lab, i, "COMPLETED") for i in ids}
    assert done[now_id]["parameters"] == {"n": "7", "greeting": "'day'"}
    assert done[fired.job_id]["name"] == "early"
    # Deleting the definition deletes the schedule; its runs stay.
    assert lab.request("DELETE", path)[0] == 204
    assert lab.batch.schedules() == []
    assert {r.id for r in lab.batch.jobs()} == ids


def test_a_job_outlives_the_server_that_made_it(lab, tmp_path):
    """The server's whole process group is killed while the job runs (a
    culled pod); the job still finishes, and the restarted server shows it
    COMPLETED with its outputs."""
    go = tmp_path / "go"
    notebook(
        str(pathlib.Path(lab.root) / "long.ipynb"), WAIT_FOR_FILE, f"go = {str(go)!r}"
    )
    code, made = lab.request("POST", "/scheduler/jobs", job_body("long", "long.ipynb"))
    assert code == 200, made
    job_id = made["job_id"]
    until_status(lab, job_id, "IN_PROGRESS")
    lab.kill()
    go.touch()
    assert lab.batch.wait(job_id, timeout=180).state is JobState.SUCCEEDED
    lab.start()
    job = until_status(lab, job_id, "COMPLETED")
    assert job["end_time"] and not job["downloaded"]
    code, _ = lab.request("GET", f"/scheduler/jobs/{job_id}/download_files")
    assert code == 204
    code, job = lab.request("GET", f"/scheduler/jobs/{job_id}")
    assert job["downloaded"]
    executed = pathlib.Path(lab.root) / job["job_files"][0]["file_path"]
    assert "went" in executed.read_text()


def test_the_jobs_list_pages_as_the_ui_pages_it(batch_gateway, tmp_path):
    """60 notebook jobs among 20 others in the history: pages of 25
    with a next token, newest first, each job once; a status filter."""
    from dask_batch.storage.store import JobStore
    from dask_batch.testing import write_job_records

    storage = str(tmp_path / "jobs")
    store = JobStore(storage)
    batch = BatchClient(gateway=batch_gateway.gateway(), storage=storage)
    try:
        others = write_job_records(store, batch.user, 20, days=2, indexed=True)
        ids = write_job_records(
            store, batch.user, 60, days=1, indexed=True, kind="notebook"
        )
        notebook_ids = set(ids)
        assert not notebook_ids & set(others)
    finally:
        batch.gateway.close()
    # The storage given as a flag on the server's command line, not in dask
    # config: the flag wins, as arguments do.
    flag = f"--DaskBatchScheduler.storage={storage}"
    server = JupyterServer(
        tmp_path / "home", tmp_path / "root", batch_gateway, None, args=[flag]
    )
    try:
        seen, token, pages = [], None, 0
        while True:
            query = "/scheduler/jobs?sort_by=desc(create_time)&max_items=25"
            code, page = server.request(
                "GET", query + (f"&next_token={token}" if token else "")
            )
            assert code == 200, page
            seen += [j["job_id"] for j in page["jobs"]]
            pages += 1
            token = page.get("next_token")
            if not token:
                assert page["total_count"] == len(notebook_ids)
                break
            assert page["total_count"] == -1
        assert pages == 3
        assert seen == sorted(notebook_ids, reverse=True)
        code, failed = server.request(
            "GET", "/scheduler/jobs?status=FAILED&max_items=25"
        )
        assert {j["job_id"] for j in failed["jobs"]} == {
            i for i in notebook_ids if ids.index(i) % 10 == 0
        }
        code, answer = server.request("GET", "/scheduler/jobs?next_token=../../x")
        assert code == 500 and "page token" in answer["message"]
    finally:
        server.stop()


DOCS = pathlib.Path(__file__).parent.parent / "docs" / "_static"


def test_a_notebook_job_made_in_jupyterlab_completes_in_the_jobs_panel(lab, browser):
    """JupyterLab for real: "Create Job" from the file browser's menu, the
    form as a user fills it, and the job COMPLETED in the Jobs panel."""
    import re

    notebook(str(pathlib.Path(lab.root) / "show.ipynb"), SHOW, "n = 1\ngreeting = 'x'")
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(f"{lab.url}/lab?token=jupyter-test-token")
        item = page.locator(
            '.jp-DirListing-item[data-file-type="notebook"]', has_text="show.ipynb"
        )
        item.wait_for(timeout=60000)
        item.click(button="right")
        page.get_by_text(re.compile(r"^Create (Notebook )?Job$")).click()
        name = page.locator("input[name=jobName]")
        name.wait_for(timeout=30000)
        # The form sets its environment once the list arrives, from the model
        # as it was when the form opened: a name typed before that is reset.
        page.wait_for_selector("text=Loading …", state="hidden", timeout=30000)
        name.fill("from-lab")
        assert name.input_value() == "from-lab"
        page.screenshot(path=str(DOCS / "jupyterlab-create-job.png"))
        page.get_by_role("button", name="Create").click()
        # The Jobs panel lists the job; it reloads when asked.
        row = page.locator("tr", has_text="from-lab")
        row.wait_for(timeout=30000)
        (job,) = lab.batch.jobs(kind="notebook")
        assert job.name == "from-lab"
        assert lab.batch.wait(job.id, timeout=180).state is JobState.SUCCEEDED

        def completed():
            page.get_by_role("button", name="Reload").click()
            return "Completed" in row.inner_text(timeout=5000)

        wait_for(completed, 60, "the Jobs panel to show the job Completed", 1.0)
        # "Download" from the row: the outputs land under the root.
        row.locator("button").first.click()
        outputs = pathlib.Path(lab.root) / "jobs"
        wait_for(
            lambda: list(outputs.glob("show-*/show-*.ipynb")),
            60,
            "the downloaded output notebook under the Jupyter root",
        )

        def linked():
            page.get_by_role("button", name="Reload").click()
            return row.get_by_role("link", name="Notebook").count() == 1

        wait_for(linked, 60, "the Jobs panel to link the downloaded files", 1.0)
        page.screenshot(path=str(DOCS / "jupyterlab-jobs.png"))
    finally:
        page.close()


FAILS_AFTER_READING = (
    "import dask_batch\n"
    "rows = open('data/rows.csv').read().split()\n"
    "with open(dask_batch.artifacts_dir('summary.txt'), 'w') as f:\n"
    "    f.write(f'{len(rows)} rows')\n"
    "raise ValueError(f'{len(rows)} rows is too few')"
)


def test_a_failing_notebook_with_its_folder(lab):
    """ "Run job with input folder": the notebook reads a file beside it; its
    failing cell fails the job with the reason shown, and its outputs (the
    executed notebook, what it kept) download all the same. A download
    before the job ended is refused with a message."""
    root = pathlib.Path(lab.root) / "project"
    (root / "data").mkdir(parents=True)
    (root / "data" / "rows.csv").write_text("a\nb\nc\n")
    notebook(str(root / "report.ipynb"), FAILS_AFTER_READING)
    body = job_body("report", "project/report.ipynb", package_input_folder=True)
    code, made = lab.request("POST", "/scheduler/jobs", body)
    assert code == 200, made
    job_id = made["job_id"]
    code, answer = lab.request("GET", f"/scheduler/jobs/{job_id}/download_files")
    if code != 204:  # it had not ended yet: said so, with the job named
        assert code == 500 and job_id in answer["message"], answer
    job = until_status(lab, job_id, "FAILED")
    assert "3 rows is too few" in job["status_message"]
    assert job["package_input_folder"] is True
    code, _ = lab.request("GET", f"/scheduler/jobs/{job_id}/download_files")
    assert code == 204
    code, job = lab.request("GET", f"/scheduler/jobs/{job_id}")
    files = {f["file_format"]: f["file_path"] for f in job["job_files"]}
    executed = pathlib.Path(lab.root) / files["ipynb"]
    assert "3 rows is too few" in executed.read_text()
    assert (executed.parent / "summary.txt").read_text() == "3 rows"
