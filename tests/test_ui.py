"""The jobs web page and its JSON API: `python -m dask_batch.ui` for real,
over HTTP, and in a real headless Chromium driven by Playwright."""

from __future__ import annotations

import os
import pathlib
import re

import pytest
from jobs_page import UI

from dask_batch import BatchClient, JobState
from dask_batch.testing import wait_for

DOCS = pathlib.Path(__file__).parent.parent / "docs" / "_static"


def double(n):
    print("doubling", n, flush=True)
    return 2 * n


def fails():
    raise ValueError("bad <b>input</b>")


def talks_until(path):
    import time

    import dask_batch

    for i in range(600):
        print(f"tick {i}", flush=True)
        if os.path.exists(path):
            break
        dask_batch.report(min(i / 100, 1), f"tick {i}")
        time.sleep(0.1)
    import fsspec

    with fsspec.open(dask_batch.artifacts_path("model.txt"), "w") as f:
        f.write("weights")
    return "done"


def keeps_artifact():
    import fsspec

    import dask_batch

    with fsspec.open(dask_batch.artifacts_path("out/model.txt"), "w") as f:
        f.write("weights")
    return 1


@pytest.fixture
def ui(batch_gateway, tmp_path):
    server = UI(batch_gateway, str(tmp_path / "jobs"))
    yield server
    server.close()


@pytest.fixture(params=["local", "s3"])
def any_ui(request, batch_gateway, tmp_path):
    """The UI on local storage, and on the moto S3 endpoint."""
    if request.param == "s3":
        storage, options = request.getfixturevalue("batch_s3_storage")
    else:
        storage, options = str(tmp_path / "jobs"), None
    server = UI(batch_gateway, storage, options)
    yield server
    server.close()


def test_every_api_endpoint(any_ui):
    ui = any_ui
    ok = ui.batch.submit(double, 21, name="ok", workers=0)
    bad = ui.batch.submit(fails, name="bad", workers=0)
    art = ui.batch.submit(keeps_artifact, name="art", workers=0)
    for job in (ok, bad, art):
        ui.batch.wait(job.id, timeout=60)
    status, page = ui.json("/api/v1/jobs")
    assert status == 200
    assert [j["name"] for j in page["jobs"]] == ["art", "bad", "ok"]
    assert ui.json("/api/v1/jobs?state=failed")[1]["jobs"][0]["id"] == bad.id
    assert [j["name"] for j in ui.json("/api/v1/jobs?name=ok")[1]["jobs"]] == ["ok"]
    first = ui.json("/api/v1/jobs?limit=2")[1]
    second = ui.json("/api/v1/jobs?limit=2&offset=2")[1]
    assert (first["more"], second["more"]) == (True, False)
    assert [j["name"] for j in second["jobs"]] == ["ok"]
    job = ui.json(f"/api/v1/jobs/{ok.id}")[1]
    assert (job["state"], job["result_type"]) == ("SUCCEEDED", "builtins.int")
    assert job["fetch"] == f"BatchClient().result({ok.id!r})"
    assert (
        ui.json(f"/api/v1/jobs/{bad.id}")[1]["error"]["message"] == "bad <b>input</b>"
    )
    status, headers, body = ui.request(f"/api/v1/jobs/{ok.id}/logs?chunk=0")
    assert b"doubling 21" in body and int(headers["X-Next-Chunk"]) >= 1
    assert b"doubling 21" in ui.request(f"/api/v1/jobs/{ok.id}/logs?follow=1")[2]
    status, headers, body = ui.request(f"/api/v1/jobs/{ok.id}/logs?download=1")
    assert "attachment" in headers["Content-Disposition"]
    assert ui.json(f"/api/v1/jobs/{art.id}/artifacts")[1] == {
        "artifacts": {"out/model.txt": 7}
    }
    status, headers, body = ui.request(f"/api/v1/jobs/{art.id}/artifacts/out/model.txt")
    assert (status, body) == (200, b"weights")
    assert "Content-Security-Policy" in headers
    status, record = ui.json(f"/api/v1/jobs/{ok.id}/cancel", method="POST")
    assert (status, record["state"]) == (200, "SUCCEEDED")  # already ended
    # The page itself, rendered on the server (durations included).
    status, _, html = ui.request("/?name=ok")
    assert status == 200 and ok.id.encode() in html
    assert re.search(rb'<td class="duration">\d+:\d\d</td>', html)


def test_bad_ids_other_users_jobs_and_missing_tokens_are_refused(
    ui, batch_gateway, tmp_path
):
    from dask_gateway import BasicAuth

    from dask_batch.client.gateway import BatchGateway

    other_gateway = BatchGateway(
        address=batch_gateway.address,
        proxy_address=batch_gateway.proxy_address,
        auth=BasicAuth("mallory", batch_gateway.password),
    )
    with BatchClient(gateway=other_gateway, storage=ui.batch.store.url) as mallory:
        theirs = mallory.submit(double, 1, workers=0)
        mallory.wait(theirs.id, timeout=60)
    other_gateway.close()
    assert ui.json(f"/api/v1/jobs/{theirs.id}")[0] == 404
    assert ui.json(f"/api/v1/jobs/{theirs.id}/logs")[0] == 404
    assert ui.json("/api/v1/jobs/..%2F..%2Fetc")[0] == 404
    assert ui.json("/api/v1/jobs/not-an-id/artifacts")[0] == 404
    for query, message in (
        ("since=foo", "neither an ISO 8601 time nor a duration"),
        ("limit=abc", "limit must be a whole number"),
        ("state=nonsense", "not a valid JobState"),
    ):
        status, answer = ui.json(f"/api/v1/jobs?{query}")
        assert (status, message in answer["error"]) == (400, True), answer
    assert ui.request("/api/v1/jobs", token=False)[0] == 401
    assert ui.request("/", token=False)[0] == 401
    assert ui.request("/?token=wrong", token=False)[0] == 403
    # A cookie alone does not make a POST: it also needs the XSRF token.
    cookie = "dask-batch-ui=forged"
    status, _, _ = ui.request(
        f"/api/v1/jobs/{theirs.id}/cancel",
        method="POST",
        token=False,
        headers={"Cookie": cookie},
    )
    assert status in (401, 403)


def test_the_pages_in_a_browser(ui, browser, tmp_path):
    go = tmp_path / "go"
    ok = ui.batch.submit(double, 21, name="<b>bold</b> & co", workers=0)
    bad = ui.batch.submit(fails, name="bad", workers=0)
    ui.batch.wait(ok.id, timeout=60)
    ui.batch.wait(bad.id, timeout=60)
    live = ui.batch.submit(talks_until, str(go), name="live", workers=0)
    doomed = ui.batch.submit(talks_until, str(tmp_path / "never"), name="doomed")
    page = browser.new_page(accept_downloads=True)
    try:
        page.goto(ui.url)  # the token becomes a cookie, and leaves the URL
        assert "token" not in page.url
        page.wait_for_selector(f'tr[data-id="{live.id}"] .state-RUNNING', timeout=60000)
        names = page.locator("td.name").all_inner_texts()
        assert "<b>bold</b> & co" in names  # HTML in a name is shown as text
        assert page.locator("td.name b").count() == 0
        assert page.locator(f'tr[data-id="{bad.id}"] .state-FAILED').count() == 1
        DOCS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(DOCS / "ui-jobs.png"), full_page=True)
        # What a notebook shows for batch.jobs(): the same HTML, in a browser.
        table = browser.new_page(viewport={"width": 1300, "height": 120})
        try:
            table.set_content(
                '<body style="font: 13px sans-serif; margin: 12px">'
                f"{ui.batch.jobs()._repr_html_()}</body>"
            )
            assert "<b>bold</b> & co" in table.inner_text("table")  # as text
            assert table.locator("td", has_text="FAILED").count() == 1
            table.screenshot(path=str(DOCS / "notebook-jobs.png"), full_page=True)
        finally:
            table.close()
        page.select_option("select[name=state]", "FAILED")
        page.click("button[type=submit]")
        page.wait_for_url("**state=FAILED**")
        assert page.locator("td.name").all_inner_texts() == ["bad"]
        page.goto(f"{ui.base}/jobs/{bad.id}")
        assert "bad <b>input</b>" in page.inner_text("#error-text")
        assert "ValueError" in page.inner_text("#traceback")
        # The log grows without a reload while the job runs.
        page.goto(f"{ui.base}/jobs/{live.id}")
        # (The page's CSP forbids evaluated strings, so poll from here.)
        wait_for(lambda: "tick 3" in page.inner_text("#log"), 30, "the first lines")
        seen = page.inner_text("#log").count("tick")
        wait_for(
            lambda: page.inner_text("#log").count("tick") > seen + 3,
            30,
            "the log to grow without a reload",
        )
        go.touch()
        page.wait_for_selector("#state.state-SUCCEEDED", timeout=60000)
        page.wait_for_selector("#artifacts a", timeout=30000)
        page.screenshot(path=str(DOCS / "ui-job.png"), full_page=True)
        with page.expect_download() as download:
            page.click("#artifacts a")
        assert pathlib.Path(download.value.path()).read_text() == "weights"
        # Cancel from the page, confirming the dialog.
        page.goto(f"{ui.base}/jobs/{doomed.id}")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#cancel")
        page.wait_for_selector("#state.state-CANCELLED", timeout=30000)
        wait_for(
            lambda: ui.batch.status(doomed.id).state is JobState.CANCELLED,
            30,
            "the cancel to be recorded",
        )
    finally:
        page.close()
        for job in (live, doomed):
            ui.batch.cancel(job.id)
    # Without the token, the browser gets nothing.
    stranger = browser.new_page()
    try:
        response = stranger.goto(ui.base + "/")
        assert response.status == 401
        assert "dask batch ui" in stranger.inner_text("body")
    finally:
        stranger.close()


def hold(path):
    import time

    deadline = time.monotonic() + 120
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "held"


def odd_one_out(n):
    if n == 3:
        raise ValueError("three")
    return n


def test_pipelines_arrays_and_schedules_in_a_browser(ui, browser, tmp_path):
    from dask_batch import Step

    go = tmp_path / "go"
    pipeline = ui.batch.submit_pipeline(
        [
            Step(double, name="first", args=[1]),
            Step(hold, name="held", args=[str(go)], upstream=["first"]),
            Step(double, name="beside", args=[2], upstream=["first"]),
        ],
        workers=0,
        name="flow",
    )
    array = ui.batch.map(odd_one_out, range(5), workers=1, name="sweep")
    schedule = ui.batch.schedule(double, 4, cron="0 3 * * *", name="nightly")
    page = browser.new_page(accept_downloads=True)
    try:
        page.goto(ui.url)
        page.goto(f"{ui.base}/jobs/{pipeline.id}")
        # The DAG: "first" in the first column, the two after it in the next.
        levels = page.locator(".dag-level")
        assert levels.count() == 2
        assert (
            levels.nth(0).locator(".dag-node").all_inner_texts()[0].startswith("first")
        )
        page.wait_for_selector(
            '.dag-node[data-task="held"].node-RUNNING', timeout=60000
        )
        page.wait_for_selector(
            '.dag-node[data-task="beside"].node-SUCCEEDED', timeout=60000
        )
        go.touch()
        # Each step's state changes on the page without a reload.
        page.wait_for_selector(
            '.dag-node[data-task="held"].node-SUCCEEDED', timeout=60000
        )
        page.wait_for_selector("#state.state-SUCCEEDED", timeout=60000)
        assert "3 SUCCEEDED" in page.inner_text("#task-counts")
        page.screenshot(path=str(DOCS / "ui-pipeline.png"), full_page=True)
        with page.expect_download() as download:
            page.click('#tasks tr[data-task="first"] a')
        assert "doubling 1" in pathlib.Path(download.value.path()).read_text()
        # An array: counts per state, and one row per element.
        ui.batch.wait(array.id, timeout=120)
        page.goto(f"{ui.base}/jobs/{array.id}")
        assert page.locator("#tasks tbody tr").count() == 5
        counts = page.inner_text("#task-counts")
        assert "4 SUCCEEDED" in counts and "1 FAILED" in counts
        assert "three" in page.inner_text('#tasks tr[data-task="3"]')
        # A page of elements at a time; the failed ones a click away, each
        # with its log.
        assert "1\u20135 of 5" in page.inner_text("#element-pages")
        page.click("#failed-elements")
        page.wait_for_selector("#tasks tbody tr >> nth=0")
        assert page.locator("#tasks tbody tr").count() == 1
        with page.expect_download() as download:
            page.click('#tasks tr[data-task="3"] a')
        assert "three" in pathlib.Path(download.value.path()).read_text()
        # The listing shows the array as one job with its counts.
        page.goto(ui.base + "/")
        row = page.locator(f'tr[data-id="{array.id}"]')
        assert "4/5 succeeded, 1 failed" in row.inner_text()
        # Schedules: next run and history; pause and resume from the page.
        page.click("#nav-schedules")
        row = page.locator(f'tr[data-id="{schedule.id}"]')
        assert "0 3 * * *" in row.inner_text() and "active" in row.inner_text()
        row.locator("button.toggle").click()
        page.wait_for_selector(f'tr[data-id="{schedule.id}"][data-paused="1"]')
        assert ui.batch.schedules()[0].paused
        page.screenshot(path=str(DOCS / "ui-schedules.png"), full_page=True)
        row.locator("button.toggle").click()
        page.wait_for_selector(f'tr[data-id="{schedule.id}"][data-paused="0"]')
        assert not ui.batch.schedules()[0].paused
    finally:
        page.close()
        ui.batch.delete_schedule(schedule.id)
        for job in (pipeline, array):
            ui.batch.cancel(job.id)
