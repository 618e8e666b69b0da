"""MLflow: tracked jobs and `mlflow run -b dask-batch`, against a real tracking
server (SQLite store, proxied artifacts, basic auth) and the real gateway."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest
from tracking import running_mlflow

import dask_batch
from dask_batch import BatchClient, JobState, SubmitError
from dask_batch.testing import job_cluster_client, wait_for

pytestmark = pytest.mark.xdist_group("mlflow")

ROOT = pathlib.Path(__file__).parent.parent
EXAMPLE = ROOT / "examples" / "mlflow-project"
SCREENSHOT = ROOT / "docs" / "_static" / "mlflow-run.png"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    with running_mlflow(str(tmp_path_factory.mktemp("mlflow"))) as server:
        yield server


@pytest.fixture
def tracked(mlflow_server, monkeypatch):
    """This process logs to the test server, with its credentials."""
    for key, value in mlflow_server.environment().items():
        monkeypatch.setenv(key, value)
    return mlflow_server


def run_of(server, run_id):
    return server.client().get_run(run_id)


def artifact_paths(server, run_id, path=None):
    found = []
    for info in server.client().list_artifacts(run_id, path):
        if info.is_dir:
            found += artifact_paths(server, run_id, info.path)
        else:
            found.append(info.path)
    return sorted(found)


def read_artifact(server, run_id, path, tmp_path):
    local = server.client().download_artifacts(run_id, path, str(tmp_path))
    return pathlib.Path(local).read_text()


def trains(epochs, lr=0.1, label="baseline"):
    import mlflow

    import dask_batch

    for epoch in range(epochs):
        mlflow.log_metric("loss", 1.0 / (epoch + 1), step=epoch)
    dask_batch.report(1.0, "trained")
    with open(dask_batch.artifacts_dir("model.txt"), "w") as f:
        f.write(f"lr={lr}")
    print("trained", epochs, "epochs")
    return dask_batch.current_job().mlflow_run_id


def test_a_tracked_job_is_a_run_with_params_metrics_tags_log_and_artifacts(
    batch_client, tracked, tmp_path
):
    job = batch_client.submit(trains, 3, lr=0.01, mlflow=True, workers=0)
    run_id = job.result(timeout=90)
    record = job.status()
    assert record.mlflow_run_id == run_id
    assert record.mlflow_url.startswith(f"{tracked.url}/#/experiments/")
    assert record.mlflow_url.endswith(f"/runs/{run_id}")
    run = run_of(tracked, run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.01"}  # keyword arguments, as MLflow shows them
    assert run.data.metrics["loss"] == pytest.approx(1 / 3)
    assert run.data.metrics["progress"] == 1.0
    user = batch_client.user
    assert run.data.tags["mlflow.user"] == user
    assert run.data.tags["dask_batch.user"] == user
    assert run.data.tags["dask_batch.job_id"] == job.id
    assert run.data.tags["dask_batch.job_url"] == f"dask batch status {job.id}"
    assert run.data.tags["mlflow.runName"] == "trains"
    experiment = tracked.client().get_experiment(run.info.experiment_id)
    assert experiment.name == f"dask-batch-{user}"  # one experiment per user
    assert artifact_paths(tracked, run_id) == ["dask-batch/job.log", "model.txt"]
    log = read_artifact(tracked, run_id, "dask-batch/job.log", tmp_path)
    assert "trained 3 epochs" in log


def test_the_jobs_page_links_the_run(batch_gateway, tracked, tmp_path):
    from test_ui import UI

    ui = UI(batch_gateway, str(tmp_path / "jobs"))
    try:
        job = ui.batch.submit(trains, 1, mlflow=True, workers=0)
        ui.batch.wait(job.id, timeout=90)
        record = ui.batch.status(job.id)
        status, _, html = ui.request(f"/jobs/{job.id}")
        assert status == 200
        assert f'<a href="{record.mlflow_url}"'.encode() in html
        assert record.mlflow_run_id.encode() in html
        api = ui.json(f"/api/v1/jobs/{job.id}")[1]
        assert (api["mlflow_run_id"], api["mlflow_url"]) == (
            record.mlflow_run_id,
            record.mlflow_url,
        )
    finally:
        ui.close()


def test_tracking_credentials_travel_encrypted_never_in_records(batch_client, tracked):
    job = batch_client.submit(trains, 1, mlflow="shared-experiment", workers=0)
    run_id = job.result(timeout=90)
    run = run_of(tracked, run_id)
    assert tracked.client().get_experiment(run.info.experiment_id).name == (
        "shared-experiment"
    )
    record = job.status()
    assert {"MLFLOW_TRACKING_PASSWORD", "MLFLOW_RUN_ID"} <= set(record.env_names)
    stored = pathlib.Path(batch_client.store.url, batch_client.user, job.id)
    for path in stored.rglob("*"):
        if path.is_file():
            assert tracked.password.encode() not in path.read_bytes(), path
    # The server refuses requests without them: the job's writes were signed in.
    anonymous = tracked.api("experiments/search?max_results=1", authenticated=False)
    assert anonymous[0] == 401


def dies_hard():
    import os
    import signal

    print("about to die", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_main_process_fails_the_run_too(batch_client, tracked, tmp_path):
    job = batch_client.submit(dies_hard, mlflow=True, workers=0)
    with pytest.raises(dask_batch.JobFailedError, match="SIGKILL"):
        job.result(timeout=90)
    run = run_of(tracked, job.status().mlflow_run_id)
    assert run.info.status == "FAILED"
    assert "SIGKILL" in run.data.tags["dask_batch.error"]
    log = read_artifact(tracked, run.info.run_id, "dask-batch/job.log", tmp_path)
    assert "about to die" in log


def test_cancelling_a_pending_tracked_job_kills_its_run(batch_client, tracked):
    job = batch_client.submit(trains, 1, mlflow=True, workers=0)
    assert job.status().state is JobState.PENDING  # server side: no cluster yet
    job.cancel()
    run_id = job.status().mlflow_run_id
    wait_for(
        lambda: run_of(tracked, run_id).info.status == "KILLED",
        60,
        "the run of the cancelled job to be KILLED",
    )


def sleeps(seconds):
    import time

    time.sleep(seconds)


def test_a_lost_job_fails_its_run(batch_client, tracked):
    job = batch_client.submit(sleeps, 120, mlflow=True, workers=0)
    wait_for(lambda: job.status().state is JobState.RUNNING, 60, "the job to run")
    with job_cluster_client(batch_client, job.id) as client:
        scheduler_pid = client.run_on_scheduler(os.getpid)
    os.kill(scheduler_pid, signal.SIGKILL)
    wait_for(lambda: job.status().state is JobState.LOST, 60, "the job to be LOST")
    run = run_of(tracked, job.status().mlflow_run_id)
    assert run.info.status == "FAILED"
    assert job.status().cluster_name in run.data.tags["dask_batch.error"]


@pytest.fixture
def listener():
    """An HTTP server on 127.0.0.1 that records every request it gets."""
    import http.server
    import threading

    seen = []

    class Record(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(404)
            self.end_headers()

        do_POST = do_PATCH = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Record)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    thread.join()
    server.server_close()


def test_a_rewritten_spec_never_sends_mlflow_credentials_elsewhere(
    batch_client, tracked, listener, caplog
):
    from dask_batch.client import tracking as _tracking
    from dask_batch.storage.store import SPEC

    elsewhere, seen = listener
    store, user = batch_client.store, batch_client.user
    job = batch_client.submit(trains, 1, mlflow=True, workers=0)
    spec = store.get_json(user, job.id, SPEC)
    spec["mlflow"]["tracking_uri"] = elsewhere  # by whoever can write the storage
    store.put_json(user, job.id, SPEC, spec)
    job.cancel()  # a PENDING job's run is ended by the client: not this one
    assert "not signed with your key" in caplog.text
    # A signed spec naming another server gets nothing either.
    named = {"id": job.id, "mlflow": {"run_id": "r1", "tracking_uri": elsewhere}}
    _tracking.end_run(named, "FAILED", "lost")
    assert "left as it is" in caplog.text
    assert seen == []


def test_an_unreachable_tracking_server_submits_nothing(batch_client, monkeypatch):
    from dask_batch.testing import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(SubmitError, match="MLflow run could not be created") as info:
        batch_client.submit(trains, 1, mlflow=True, workers=0)
    assert info.value.job_id in str(info.value)
    assert batch_client.jobs() == []
    with pytest.raises(SubmitError, match="mlflow takes True, False or an experiment"):
        batch_client.submit(trains, 1, mlflow=1, workers=0)


def test_backend_config_keys_are_checked():
    from mlflow.exceptions import ExecutionException

    from dask_batch.mlflow_project import _split_config

    options, client, wait = _split_config(
        {"workers": 2, "adapt": None, "storage": "/tmp/x", "wait": False,
         "SYNCHRONOUS": False, "ENV_MANAGER": None}
    )  # fmt: skip
    assert (options.workers, client, wait) == (2, {"storage": "/tmp/x"}, False)
    with pytest.raises(ExecutionException, match=r"unknown backend config key.*wrkers"):
        _split_config({"wrkers": 2})
    with pytest.raises(ExecutionException, match="files"):
        _split_config({"files": ["x"]})


# -- mlflow run -b dask-batch -------------------------------------------------------
@pytest.fixture
def mlflow_run(batch_gateway, tracked, tmp_path):
    """Run the real `mlflow run` command against the test gateway and server."""
    storage = str(tmp_path / "jobs")
    env = {
        **os.environ,
        **batch_gateway.environment(),
        **tracked.environment(),
        "DASK_BATCH__STORAGE": storage,
    }

    def start(project, *args, **popen):
        command = [
            sys.executable, "-m", "mlflow", "run", str(project),
            "-b", "dask-batch", *args,
        ]  # fmt: skip
        return subprocess.Popen(
            command,
            env=env,
            cwd=str(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **popen,
        )

    def run(project, *args, timeout=150):
        proc = start(project, *args)
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output

    run.start = start
    run.env = env
    run.client = lambda: BatchClient(gateway=batch_gateway.gateway(), storage=storage)
    return run


def job_id_in(output):
    marker = "runs as job "
    assert marker in output, output
    return output.split(marker, 1)[1].split(";", 1)[0]


def test_mlflow_run_example_project_as_a_batch_job(
    mlflow_run, tracked, tmp_path, browser
):
    config = tmp_path / "batch.json"
    config.write_text(json.dumps({"workers": 1, "timeout": "10m"}))
    code, output = mlflow_run(
        EXAMPLE, "--backend-config", str(config), "-P", "alpha=5.0",
        "--experiment-name", "wine",
    )  # fmt: skip
    assert code == 0, output
    job_id = job_id_in(output)
    with mlflow_run.client() as batch:
        record = batch.status(job_id)
        assert (record.state, record.kind) == (JobState.SUCCEEDED, "command")
        assert record.target == "python train.py 5.0 0.1"
        assert set(batch.artifacts(job_id)) == {"model.pkl"}
        assert "RMSE" in batch.logs(job_id)
        gateway_user = batch.user
        batch.gateway.close()
    run = run_of(tracked, record.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"alpha": "5.0", "l1_ratio": "0.1"}
    assert {"rmse", "r2", "mae", "cv_r2", "progress"} <= set(run.data.metrics)
    assert run.data.metrics["progress"] == 1.0  # the project's last report
    assert run.data.tags["mlflow.user"] == gateway_user
    assert run.data.tags["dask_batch.job_id"] == job_id
    assert run.data.tags["mlflow.project.backend"] == "dask-batch"
    assert run.data.tags["mlflow.project.entryPoint"] == "main"
    assert artifact_paths(tracked, run.info.run_id) == [
        "dask-batch/job.log",
        "model.pkl",
    ]

    # The run in MLflow's own UI, for the how-to.
    context = browser.new_context(
        http_credentials={"username": tracked.username, "password": tracked.password},
        viewport={"width": 1280, "height": 1000},
    )
    page = context.new_page()
    page.goto(record.mlflow_url)
    page.get_by_text(job_id).first.wait_for(timeout=30_000)
    page.get_by_text("rmse").first.wait_for(timeout=30_000)
    assistant = page.get_by_role("button", name="Close", exact=True)
    if assistant.count():  # MLflow's chat panel hides half the run
        assistant.first.click()
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    context.close()


FAILING = textwrap.dedent(
    """
    name: failing
    entry_points:
      main:
        parameters:
          alpha: {type: float, default: -1}
        command: "python check.py {alpha}"
    """
)
CHECK = textwrap.dedent(
    """
    import sys
    print("python:", sys.executable, flush=True)
    alpha = float(sys.argv[1])
    if alpha < 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    """
)


def test_a_failing_project_fails_its_run_and_its_job(mlflow_run, tracked, tmp_path):
    project = tmp_path / "failing"
    project.mkdir()
    (project / "MLproject").write_text(FAILING)
    (project / "check.py").write_text(CHECK)
    # A PATH without this Python: `python` in the command is still the job's.
    config = {"workers": 0, "env": {"PATH": "/usr/bin:/bin"}}
    code, output = mlflow_run(project, "--backend-config", json.dumps(config))
    assert code == 1, output
    job_id = job_id_in(output)
    assert f"Job {job_id}" in output and "ended FAILED" in output
    assert f"dask batch logs {job_id}" in output
    with mlflow_run.client() as batch:
        record = batch.status(job_id)
        assert record.state is JobState.FAILED
        assert "exited with 1" in record.message
        log = batch.logs(job_id)
        assert "ValueError: alpha must be positive, got -1.0" in log
        assert f"python: {sys.executable}" in log
        batch.gateway.close()
    run = run_of(tracked, record.mlflow_run_id)
    assert run.info.status == "FAILED"
    assert "exited with 1" in run.data.tags["dask_batch.error"]
    log = read_artifact(tracked, run.info.run_id, "dask-batch/job.log", tmp_path)
    assert "ValueError: alpha must be positive" in log


def test_a_project_run_that_does_not_wait(mlflow_run, tracked, tmp_path):
    project = tmp_path / "failing"
    project.mkdir()
    (project / "MLproject").write_text(FAILING)
    (project / "check.py").write_text(CHECK)
    config = '{"workers": 0, "wait": false}'
    code, output = mlflow_run(project, "--backend-config", config)
    assert code == 0, output  # submitted: not waited for
    job_id = job_id_in(output)
    with mlflow_run.client() as batch:
        assert batch.wait(job_id, timeout=90).state is JobState.FAILED
        run_id = batch.status(job_id).mlflow_run_id
        batch.gateway.close()
    assert run_of(tracked, run_id).info.status == "FAILED"


def test_the_cli_submits_tracked_jobs(mlflow_run, tracked, tmp_path):
    script = tmp_path / "fit.py"
    script.write_text("import mlflow\nmlflow.log_metric('score', 0.9)\n")
    proc = subprocess.run(
        [sys.executable, "-m", "dask_batch.cli", "submit", str(script),
         "--workers", "0", "--mlflow-experiment", "from-cli", "--wait"],
        env=mlflow_run.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.split()[0]
    status = subprocess.run(
        [sys.executable, "-m", "dask_batch.cli", "status", job_id],
        env=mlflow_run.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    run_id = status.stdout.split("mlflow:", 1)[1].split()[0]
    run = run_of(tracked, run_id)
    assert (run.info.status, run.data.metrics) == ("FINISHED", {"score": 0.9})
    experiment = tracked.client().get_experiment(run.info.experiment_id)
    assert experiment.name == "from-cli"


SLOW = textwrap.dedent(
    """
    name: slow
    entry_points:
      main:
        command: "python slow.py"
    """
)


def test_ctrl_c_leaves_the_job_running_and_cancel_kills_the_run(
    mlflow_run, tracked, tmp_path
):
    project = tmp_path / "slow"
    project.mkdir()
    (project / "MLproject").write_text(SLOW)
    (project / "slow.py").write_text(
        "import time\nprint('started', flush=True)\ntime.sleep(600)\n"
    )
    proc = mlflow_run.start(project, "--backend-config", '{"workers": 0}')
    with mlflow_run.client() as batch:
        try:
            job = wait_for(
                lambda: [j for j in batch.jobs() if j.state is JobState.RUNNING],
                90,
                "the project's job to run",
            )[0]
            wait_for(lambda: "started" in batch.logs(job.id), 60, "main to start")
            proc.send_signal(signal.SIGINT)
            output, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode != 0
        assert f"Job {job.id}" in output and "keeps running" in output, output
        assert f"dask batch cancel {job.id}" in output
        assert batch.status(job.id).state is JobState.RUNNING
        assert run_of(tracked, job.mlflow_run_id).info.status == "RUNNING"

        batch.cancel(job.id)
        assert batch.wait(job.id, timeout=60).state is JobState.CANCELLED
        wait_for(
            lambda: run_of(tracked, job.mlflow_run_id).info.status == "KILLED",
            60,
            "the run to be KILLED",
        )
        batch.gateway.close()


def test_projects_that_dask_batch_cannot_run_are_refused(mlflow_run, tmp_path):
    project = tmp_path / "docker"
    project.mkdir()
    (project / "MLproject").write_text(
        "name: d\ndocker_env:\n  image: python:3.11\nentry_points:\n"
        "  main:\n    command: python -V\n"
    )
    code, output = mlflow_run(project)
    assert code == 1 and "does not run docker_env projects" in output, output
    code, output = mlflow_run(EXAMPLE, "--env-manager", "virtualenv")
    assert code == 1 and "--env-manager virtualenv is not supported" in output
