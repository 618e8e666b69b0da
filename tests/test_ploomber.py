"""Ploomber projects, unchanged, as dask-batch jobs: each task on the workers."""

from __future__ import annotations

import pathlib
import re
import shutil

import pytest
from jobs_page import UI

from dask_batch import JobState, SubmitError

PROJECTS = pathlib.Path(__file__).parent / "data" / "ploomber"
DOCS = pathlib.Path(__file__).parent.parent / "docs" / "_static"


@pytest.fixture
def project(tmp_path):
    """A copy of the basic project (function tasks, a script run as a notebook)."""
    folder = tmp_path / "basic"
    shutil.copytree(PROJECTS / "basic", folder)
    return folder


def test_a_ploomber_project_runs_unchanged_with_each_task_on_a_worker(
    batch_client, project, tmp_path
):
    job = batch_client.submit_pipeline(project / "pipeline.yaml", workers=1)
    record = job.wait(timeout=240)
    tasks = {t.name: t for t in batch_client.tasks(job.id)}
    assert record.state is JobState.SUCCEEDED, [
        (t.name, t.message, batch_client.logs(job.id, task=t.name)[-3000:])
        for t in tasks.values()
    ]
    assert set(tasks) == {"numbers", "total", "report"}
    assert tasks["total"].upstream == ["numbers"]
    assert tasks["report"].upstream == ["total"]
    for task in tasks.values():
        assert task.state is JobState.SUCCEEDED
        assert re.match(r"(tcp|tls)://127\.0\.0\.1:\d+$", task.worker)
        assert task.started and task.finished
    # The products, with Ploomber's metadata sidecars, are the job's artifacts.
    got = tmp_path / "got"
    batch_client.download_artifacts(job.id, got)
    assert (got / "output" / "total.txt").read_text() == "45"
    assert (got / "output" / "summary.txt").read_text() == "total=45"
    assert (got / "output" / "report.ipynb").is_file()
    assert "the total is 45" in (got / "output" / "report.html").read_text()
    for name in ("numbers.txt", "total.txt", "summary.txt", "report.ipynb"):
        assert (got / "output" / f".{name}.metadata").is_file()
    # The executed notebook holds its output; the task's log, papermill's.
    assert "the total is 45" in (got / "output" / "report.ipynb").read_text()
    assert "Executing" in batch_client.logs(job.id, task="report")
    # Nothing was written into the submitter's folder.
    assert not (project / "output").exists()


def test_a_failing_task_fails_the_job_and_the_page_shows_the_build(
    batch_gateway, browser, tmp_path
):
    """A build, then a fresh checkout whose middle task fails: what is up to
    date is reused, what fails fails the job, what depends on it never runs,
    and the jobs page draws it as Ploomber's DAG."""
    page_server = UI(batch_gateway, str(tmp_path / "jobs"))
    batch = page_server.batch
    page = browser.new_page()
    try:
        built(batch, copy_of_basic(tmp_path, "a"))
        project = copy_of_basic(tmp_path, "b")
        tasks = project / "tasks.py"
        tasks.write_text(
            tasks.read_text().replace(
                "    values = [",
                "    raise ValueError('no total today')\n    values = [",
            )
        )
        job = batch.submit_pipeline(project / "pipeline.yaml", workers=1)
        record = job.wait(timeout=240)
        assert record.state is JobState.FAILED
        assert "total" in record.message and job.id in record.message
        states = {t.name: t for t in batch.tasks(job.id)}
        assert states["numbers"].state is JobState.SUCCEEDED
        assert states["numbers"].reused_from == "storage"
        assert states["total"].state is JobState.FAILED
        assert "no total today" in states["total"].message + str(states["total"].error)
        assert states["report"].state is JobState.CANCELLED
        assert "no total today" in batch.logs(job.id, task="total")
        page.goto(page_server.url)
        page.goto(f"{page_server.base}/jobs/{job.id}")
        levels = page.locator(".dag-level")
        assert levels.count() == 3
        for level, name in enumerate(["numbers", "total", "report"]):
            node = levels.nth(level).locator(f'.dag-node[data-task="{name}"]')
            assert node.count() == 1, name
        reused = page.locator('.dag-node[data-task="numbers"]')
        assert "node-SUCCEEDED" in reused.get_attribute("class")
        assert "node-reused" in reused.get_attribute("class")
        assert "reused" in reused.inner_text()
        failed = page.locator('.dag-node[data-task="total"]')
        assert "node-FAILED" in failed.get_attribute("class")
        assert "node-reused" not in failed.get_attribute("class")
        report = page.locator('.dag-node[data-task="report"]')
        assert "node-CANCELLED" in report.get_attribute("class")
        assert "no total today" in page.inner_text('#tasks tr[data-task="total"]')
        assert "1 FAILED" in page.inner_text("#task-counts")
        page.screenshot(path=str(DOCS / "ui-ploomber.png"), full_page=True)
    finally:
        page.close()
        page_server.close()


@pytest.mark.parametrize(
    ("change", "options", "expected"),
    [
        (("source: tasks.total", "source: tasks.nowhere"), [], "nowhere"),
        (("tasks:", "tasks: 3\nnot_tasks:"), [], "pipeline.yaml"),
        (None, ["--env--nope", "1"], "--env--nope"),
    ],
)
def test_ploomber_refuses_a_bad_project_before_any_cluster_starts(
    batch_client, project, change, options, expected
):
    spec = project / "pipeline.yaml"
    if change is not None:
        spec.write_text(spec.read_text().replace(*change))
    with pytest.raises(SubmitError, match=expected.replace("-", r"\-")) as info:
        batch_client.submit_pipeline(spec, ploomber_args=options, workers=1)
    assert "no cluster was requested" in str(info.value) or "not submitted" in str(
        info.value
    )
    assert batch_client.jobs() == [] and batch_client.gateway.list_clusters() == []


def test_the_command_line_passes_ploomber_options_through(
    batch_gateway, project, tmp_path, monkeypatch
):
    import json

    import dask
    from click.testing import CliRunner

    from dask_batch.cli import main

    environment = {
        **batch_gateway.environment(),
        "DASK_BATCH__STORAGE": str(tmp_path / "jobs"),
    }
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    dask.config.refresh()
    monkeypatch.chdir(project)
    try:
        runner = CliRunner()
        ploomber_options = ["--env--count", "5"]
        done = runner.invoke(
            main,
            ["submit", "pipeline.yaml", *ploomber_options, "--workers", "1", "--wait"],
        )
        assert done.exit_code == 0, done.output
        job_id = done.stdout.split()[0]
        shown = runner.invoke(main, ["status", job_id, "--json"])
        assert shown.exit_code == 0, shown.output
        status = json.loads(shown.output)
        assert status["state"] == "SUCCEEDED"
        assert [t["name"] for t in status["tasks"]] == ["numbers", "total", "report"]
        assert all(t["worker"] and t["started"] for t in status["tasks"])
        got = tmp_path / "got"
        runner.invoke(main, ["artifacts", job_id, "--download", str(got)])
        assert (got / "output" / "total.txt").read_text() == "10"  # 0 + ... + 4
        bad = runner.invoke(main, ["submit", "pipeline.yaml", "--env--nope", "1"])
        assert bad.exit_code != 0 and "--env--nope" in bad.output
        assert "Traceback" not in bad.output
    finally:
        monkeypatch.undo()
        dask.config.refresh()


def test_git_and_user_placeholders_are_the_submitting_machines(
    batch_client, project, tmp_path
):
    import getpass
    import subprocess

    with open(project / "tasks.py", "a") as f:
        f.write(
            "\n\ndef stamp(product, branch, who):\n"
            '    Path(str(product)).write_text(f"{branch} {who}")\n'
        )
    with open(project / "pipeline.yaml", "a") as f:
        f.write(
            "\n  - source: tasks.stamp\n"
            "    product: output/stamp.txt\n"
            "    params:\n"
            '      branch: "{{git}}"\n'
            '      who: "{{user}}"\n'
        )
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "feature-x"], cwd=project, check=True)
    subprocess.run([*git, "add", "."], cwd=project, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], cwd=project, check=True)
    job = batch_client.submit_pipeline(project / "pipeline.yaml", workers=1)
    record = job.wait(timeout=240)
    assert record.state is JobState.SUCCEEDED, record.message
    got = tmp_path / "got"
    batch_client.download_artifacts(job.id, got)
    # The job's folder is no git work tree (.git is never uploaded).
    stamp = (got / "output" / "stamp.txt").read_text()
    assert stamp == f"feature-x {getpass.getuser()}"


def copy_of_basic(tmp_path, where):
    """A fresh checkout of the project: same folder name, another place."""
    folder = tmp_path / where / "basic"
    shutil.copytree(PROJECTS / "basic", folder)
    return folder


def built(batch_client, folder):
    job = batch_client.submit_pipeline(folder / "pipeline.yaml", workers=1)
    record = job.wait(timeout=240)
    tasks = {t.name: t for t in batch_client.tasks(job.id)}
    assert record.state is JobState.SUCCEEDED, [
        (t.name, t.message) for t in tasks.values()
    ]
    return job, {name: t.reused_from for name, t in tasks.items()}


def test_later_jobs_of_a_project_make_only_what_ploomber_finds_outdated(
    batch_client, tmp_path
):
    _, first = built(batch_client, copy_of_basic(tmp_path, "a"))
    assert first == {"numbers": "", "total": "", "report": ""}  # all made
    # From a fresh checkout elsewhere: everything is up to date in storage.
    job, again = built(batch_client, copy_of_basic(tmp_path, "b"))
    assert again == {"numbers": "storage", "total": "storage", "report": "storage"}
    got = tmp_path / "got"
    batch_client.download_artifacts(job.id, got)
    assert (got / "output" / "total.txt").read_text() == "45"
    assert (got / "output" / ".total.txt.metadata").is_file()
    # A trailing comment and a docstring are no change to Ploomber (it
    # compares code without them): nothing is made.
    commented = copy_of_basic(tmp_path, "c")
    tasks = commented / "tasks.py"
    code = tasks.read_text().replace(
        "def total(upstream, product):",
        'def total(upstream, product):\n    """Add them up."""',
    )
    tasks.write_text(code.replace("str(sum(values)))", "str(sum(values)))  # all"))
    _, after_comment = built(batch_client, commented)
    assert set(after_comment.values()) == {"storage"}
    # A real change makes that task and what depends on it, nothing else.
    changed = copy_of_basic(tmp_path, "d")
    tasks = changed / "tasks.py"
    tasks.write_text(tasks.read_text().replace("sum(values)", "sum(sorted(values))"))
    _, after_change = built(batch_client, changed)
    assert after_change == {"numbers": "storage", "total": "", "report": ""}


def test_on_s3_a_project_is_built_then_reused_from_a_fresh_checkout(
    batch_gateway, batch_s3_storage, tmp_path
):
    from dask_batch import BatchClient

    storage, options = batch_s3_storage
    gateway = batch_gateway.gateway()
    with BatchClient(gateway=gateway, storage=storage, storage_options=options) as b:
        _, first = built(b, copy_of_basic(tmp_path, "a"))
        assert set(first.values()) == {""}
        job, again = built(b, copy_of_basic(tmp_path, "b"))
        assert set(again.values()) == {"storage"}
        got = tmp_path / "got"
        b.download_artifacts(job.id, got)
        assert (got / "output" / "summary.txt").read_text() == "total=45"
        # Each stored product is signed; one planted over it is not taken.
        stored = f"{storage}/{b.user}/.ploomber/basic/output/total.txt"
        b.store.fs.pipe_file(b.store.strip_protocol(stored), b"999")
        job, planted = built(b, copy_of_basic(tmp_path, "c"))
        assert planted["total"] == "" and planted["numbers"] == "storage"
        got = tmp_path / "got-c"
        b.download_artifacts(job.id, got)
        assert (got / "output" / "total.txt").read_text() == "45"
    gateway.close()


def test_grids_serializers_hooks_and_build_options_behave_as_in_ploomber(
    batch_client, tmp_path
):
    import json

    folder = tmp_path / "features"
    shutil.copytree(PROJECTS / "features", folder)
    spec = folder / "pipeline.yaml"
    # `executor: parallel` in the spec: the tasks still go to the workers.
    job = batch_client.submit_pipeline(
        spec, ploomber_args=["--env--size", "3"], workers=2
    )
    record = job.wait(timeout=300)
    tasks = {t.name: t for t in batch_client.tasks(job.id)}
    assert record.state is JobState.SUCCEEDED, [
        (t.name, t.message) for t in tasks.values()
    ]
    assert set(tasks) == {"make", "fit-0", "fit-1", "fit-2", "fit-3", "combine"}
    assert all(t.worker for t in tasks.values())
    got = tmp_path / "got"
    batch_client.download_artifacts(job.id, got)
    combined = json.loads((got / "output" / "combined.json").read_text())
    assert combined == [3, 6, 9, 12]  # (0 + 1 + 2) times each alpha
    # --partially builds a task and what it needs; with --force, even what
    # is stored up to date.
    partial = batch_client.submit_pipeline(
        spec,
        ploomber_args=["--env--size", "3", "--partially", "fit-1", "--force"],
        workers=1,
    )
    assert partial.wait(timeout=300).state is JobState.SUCCEEDED
    states = {t.name: (t.state, t.reused_from) for t in batch_client.tasks(partial.id)}
    assert states["make"] == (JobState.SUCCEEDED, "")
    assert states["fit-1"] == (JobState.SUCCEEDED, "")
    # A failing hook fails its task, and its message is in the task's status.
    (folder / "hooks.py").write_text(
        "def fit_done(product):\n    raise RuntimeError('hook says no')\n"
    )
    failing = batch_client.submit_pipeline(
        spec, ploomber_args=["--env--size", "4"], workers=1
    )
    assert failing.wait(timeout=300).state is JobState.FAILED
    failed = [t for t in batch_client.tasks(failing.id) if t.state is JobState.FAILED]
    assert failed and all("hook says no" in str(t.error) for t in failed)
    combine = next(t for t in batch_client.tasks(failing.id) if t.name == "combine")
    assert combine.state is JobState.CANCELLED


class Planted:
    """Unpickling it leaves a mark: what a forged task would do."""

    def __init__(self, mark):
        self.mark = mark

    def __reduce__(self):
        return (open, (self.mark, "w"))


def test_a_task_not_signed_with_the_projects_key_is_never_unpickled(tmp_path):
    import cloudpickle

    from dask_batch.runtime import ploomber_worker as worker

    folder, key = str(tmp_path / "project"), "ab" * 32
    mark = tmp_path / "unpickled"
    forged = cloudpickle.dumps(Planted(str(mark)))
    worker._keys[folder] = key
    try:
        for signature in ("", worker.task_signature("cd" * 32, forged)):
            with pytest.raises(PermissionError, match="not signed with its key"):
                worker.run_on_worker(forged, signature, [], folder, {})
        # A project no plugin prepared on this worker has no key at all.
        with pytest.raises(PermissionError):
            worker.run_on_worker(
                forged, worker.task_signature(key, forged), [], "/elsewhere", {}
            )
    finally:
        del worker._keys[folder]
    assert not mark.exists()
