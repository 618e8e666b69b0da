"""Live logs, progress, artifacts, env secrets, scripts, notebooks, display."""

from __future__ import annotations

import os
import pathlib
import sys
import textwrap

import nbformat
import pytest
from conftest import cluster_status
from dask_gateway.client import ClusterStatus

import dask_batch
from dask_batch import JobFailedError, JobState
from dask_batch.testing import wait_for


def talk_then_wait_for(marker):
    import pathlib
    import time

    print("first line", flush=True)
    deadline = time.monotonic() + 60
    while not pathlib.Path(marker).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never created the marker")
        time.sleep(0.05)
    print("second line", flush=True)
    return "done"


def test_follow_streams_log_lines_while_the_job_runs(batch_client, tmp_path):
    marker = tmp_path / "go"
    job = batch_client.submit(talk_then_wait_for, str(marker), workers=0)
    received = []
    for text in job.logs(follow=True):
        received.append(text)
        if "first line" in "".join(received) and not marker.exists():
            # main is blocked until we answer: the line came while it ran.
            assert job.status().state is JobState.RUNNING
            marker.write_text("go")
    text = "".join(received)
    assert text.index("first line") < text.index("second line")
    assert job.result(timeout=30) == "done"


def logs_a_lot(megabytes):
    import logging

    logging.getLogger("mylib").info("starting the noisy job")
    line = "x" * 1023
    for _ in range(megabytes * 1024):
        print(line)
    print("the end")
    raise RuntimeError("noisy failure")


def test_big_logs_are_appended_in_bounded_chunks_and_tail_shown(batch_client):
    job = batch_client.submit(logs_a_lot, 12, workers=0)
    with pytest.raises(JobFailedError) as info:
        job.result(timeout=120)
    chunks = batch_client.store.log_chunks(batch_client.user, job.id)
    sizes = [len(batch_client.store.fs.cat_file(c)) for c in chunks]
    assert len(chunks) >= 3
    assert max(sizes) <= 4 * 2**20  # batch.runner.log-chunk-size
    logs = job.logs()
    assert len(logs) >= 12 * 2**20
    assert "INFO mylib: starting the noisy job" in logs
    # The failure shows the end of the log, read from the last chunk only.
    assert "the end" in info.value.log_tail
    assert "the end" in str(info.value)


def reports_progress():
    import dask_batch

    job = dask_batch.current_job()
    dask_batch.report(0.25, "quarter")
    dask_batch.report(0.5, "half")  # within the rate limit: kept and flushed
    return {"id": job.id, "name": job.name, "artifacts": job.artifacts_url}


def test_report_updates_the_record_and_current_job_names_the_job(batch_client):
    job = batch_client.submit(reports_progress, name="reporter", workers=0)
    out = job.result(timeout=60)
    assert out["id"] == job.id
    assert out["name"] == "reporter"
    record = job.status()
    assert (record.progress, record.progress_message) == (0.5, "half")
    assert out["artifacts"] == record.artifacts_url


def test_report_outside_a_job_does_nothing_and_artifacts_path_explains():
    assert dask_batch.current_job() is None
    dask_batch.report(0.5, "local run")
    with pytest.raises(dask_batch.DaskBatchError, match="inside a batch job"):
        dask_batch.artifacts_path("x")
    with pytest.raises(ValueError, match="between 0 and 1"):
        dask_batch.report(2)


def writes_artifacts():
    import fsspec

    import dask_batch

    with fsspec.open(dask_batch.artifacts_path("model", "weights.bin"), "wb") as f:
        f.write(b"\x00" * 100)
    with fsspec.open(dask_batch.artifacts_path("metrics.json"), "w") as f:
        f.write('{"loss": 0.1}')


def test_artifacts_round_trip_on_s3(batch_gateway, batch_s3_storage, tmp_path):
    from dask_batch import BatchClient

    url, options = batch_s3_storage
    gateway = batch_gateway.gateway()
    with BatchClient(gateway=gateway, storage=url, storage_options=options) as batch:
        job = batch.submit(writes_artifacts, workers=0)
        job.result(timeout=60)
        assert job.artifacts() == {"metrics.json": 13, "model/weights.bin": 100}
        written = job.download_artifacts(tmp_path / "out")
        assert sorted(written) == sorted(
            [
                str(tmp_path / "out" / "metrics.json"),
                str(tmp_path / "out" / "model" / "weights.bin"),
            ]
        )
        assert (tmp_path / "out" / "metrics.json").read_text() == '{"loss": 0.1}'
    gateway.close()


def writes_local_artifacts():
    import os

    import dask_batch

    with open(dask_batch.artifacts_dir("model.txt"), "w") as f:
        f.write("weights")
    with open(dask_batch.artifacts_dir("plots", "loss.csv"), "w") as f:
        f.write("1,0.5\n")
    os.symlink("/etc/hostname", dask_batch.artifacts_dir("hostname"))
    return dask_batch.artifacts_dir()


def test_artifacts_dir_files_are_stored_when_main_ends_and_links_are_not(
    batch_client,
):
    job = batch_client.submit(writes_local_artifacts, workers=0)
    folder = job.result(timeout=60)
    assert folder.startswith("/") and "://" not in folder
    assert job.artifacts() == {"model.txt": 7, "plots/loss.csv": 6}
    assert "'hostname' is a link: not stored" in job.logs()


def checkpoints_then_hangs():
    import time

    import fsspec

    import dask_batch

    with open(dask_batch.artifacts_dir("checkpoint.txt"), "w") as f:
        f.write("epoch 1")
    # The runner copies the folder while main runs: wait to see it in storage.
    stored = dask_batch.artifacts_path("checkpoint.txt")
    fs, path = fsspec.core.url_to_fs(stored)
    deadline = time.monotonic() + 60
    while not fs.exists(path):
        assert time.monotonic() < deadline, "checkpoint not synced while running"
        time.sleep(0.2)
    print("checkpoint synced", flush=True)
    with open(dask_batch.artifacts_dir("checkpoint.txt"), "w") as f:
        f.write("epoch 2, written just before the timeout")
    time.sleep(3600)


def test_artifacts_dir_is_synced_while_running_and_after_a_timeout(batch_client):
    job = batch_client.submit(checkpoints_then_hangs, workers=0, timeout=8)
    with pytest.raises(dask_batch.JobFailedError, match="timed out"):
        job.result(timeout=90)
    assert "checkpoint synced" in job.logs()
    assert job.artifacts() == {"checkpoint.txt": 40}


def test_artifacts_dir_outside_a_job_explains():
    with pytest.raises(dask_batch.DaskBatchError, match="inside a batch job"):
        dask_batch.artifacts_dir("x")


def digest(value):
    import hashlib

    return None if value is None else hashlib.sha256(value.encode()).hexdigest()


def reads_env(*names):
    # Digests, not values: the result is stored too.
    import os

    return {name: digest(os.environ.get(name)) for name in names}


def test_env_values_reach_main_and_never_storage_or_listings(batch_client, monkeypatch):
    secret = "s3cr3t-" + os.urandom(8).hex()
    copied = "copied-" + os.urandom(8).hex()
    monkeypatch.setenv("COPIED_VAR", copied)
    job = batch_client.submit(
        reads_env,
        "API_TOKEN",
        "COPIED_VAR",
        "DASK_BATCH_SECRET_KEY",
        env={"API_TOKEN": secret} | {"COPIED_VAR": copied},
        workers=0,
    )
    assert job.result(timeout=60) == {
        "API_TOKEN": digest(secret),
        "COPIED_VAR": digest(copied),
        "DASK_BATCH_SECRET_KEY": None,
    }
    job2 = batch_client.submit(reads_env, "COPIED_VAR", env=["COPIED_VAR"], workers=0)
    assert job2.result(timeout=60) == {"COPIED_VAR": digest(copied)}
    assert job.status().env_names == ["API_TOKEN", "COPIED_VAR"]
    # The runners' last writes (the job catalog: packs replaced, live markers
    # removed) come before their clusters stop: read a settled store.
    for name in (job.status().cluster_name, job2.status().cluster_name):
        wait_for(
            lambda name=name: (
                cluster_status(batch_client, name) in (ClusterStatus.STOPPED, None)
            ),
            60,
            f"cluster {name} to stop",
        )

    root = pathlib.Path(batch_client.store.root)
    stored = [p for p in root.rglob("*") if p.is_file()]
    assert len(stored) > 10
    for path in stored:
        data = path.read_bytes()
        assert secret.encode() not in data, path
        assert copied.encode() not in data, path
    for report in batch_client.gateway.list_clusters(status=["running", "stopped"]):
        assert secret not in repr(report.options)
    assert secret not in job.logs()


def test_env_name_missing_here_is_a_submit_error(batch_client):
    with pytest.raises(dask_batch.SubmitError, match="NO_SUCH_VARIABLE_X"):
        batch_client.submit(len, [], env=["NO_SUCH_VARIABLE_X"])
    assert batch_client.jobs() == []


SCRIPT = textwrap.dedent(
    """
    import sys
    import helper

    print("argv", sys.argv)
    print("data", open("inputs/data.csv").read().strip())
    print("helper", helper.VALUE)
    sys.exit(int(sys.argv[2]))
    """
)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "train.py").write_text(SCRIPT)
    (tmp_path / "upload").mkdir()
    (tmp_path / "upload" / "helper.py").write_text(
        "VALUE = 7\n\ndef double(x):\n    return 2 * int(x)\n"
    )
    (tmp_path / "upload" / "inputs").mkdir()
    (tmp_path / "upload" / "inputs" / "data.csv").write_text("a,b\n")
    return tmp_path


def test_script_job_gets_args_and_uploaded_files(batch_client, project):
    job = batch_client.submit_script(
        project / "train.py", ["--code", "0"], files=[project / "upload"], workers=0
    )
    job.result(timeout=60)
    logs = job.logs()
    assert "argv ['train.py', '--code', '0']" in logs
    assert "data a,b" in logs
    assert "helper 7" in logs
    assert job.status().kind == "script"


def test_script_exit_status_fails_the_job_with_it(batch_client, project):
    job = batch_client.submit_script(
        project / "train.py", ["--code", "4"], files=[project / "upload"], workers=0
    )
    with pytest.raises(JobFailedError, match="status 4"):
        job.result(timeout=60)
    assert job.status().error["returncode"] == 4


def test_module_function_job(batch_client, project):
    job = batch_client.submit_script(
        "helper:double", ["21"], files=[project / "upload"], workers=0
    )
    assert job.result(timeout=60) == 42
    assert job.status().target == "helper:double"


def test_upload_limit_is_enforced_before_anything_is_created(batch_client, project):
    import dask

    with (
        dask.config.set({"batch.upload-limit": "10 B"}),
        pytest.raises(dask_batch.SubmitError, match="upload-limit"),
    ):
        batch_client.submit_script(project / "train.py", files=[project / "upload"])
    assert batch_client.jobs() == []


def make_notebook(path):
    params = nbformat.v4.new_code_cell("x = 1\nfail = False")
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "language": "python",
        "display_name": "Python 3",
    }
    nb.cells = [
        params,
        nbformat.v4.new_code_cell("y = x * 2\nprint('y is', y)"),
        nbformat.v4.new_code_cell(
            "if fail:\n    raise ValueError(f'failing with y={y}')"
        ),
    ]
    nbformat.write(nb, path)
    return path


def test_notebook_job_runs_with_parameters_and_keeps_output(batch_client, tmp_path):
    path = make_notebook(tmp_path / "analysis.ipynb")
    job = batch_client.submit_notebook(path, {"x": 21}, workers=0)
    url = job.result(timeout=120)
    assert url.endswith("analysis.output.ipynb")
    assert "analysis.output.ipynb" in job.artifacts()
    job.download_artifacts(tmp_path / "out")
    executed = nbformat.read(tmp_path / "out" / "analysis.output.ipynb", as_version=4)
    outputs = [o.get("text", "") for c in executed.cells for o in c.get("outputs", [])]
    assert "y is 42\n" in outputs


def test_failing_notebook_cell_fails_the_job_and_output_is_kept(batch_client, tmp_path):
    path = make_notebook(tmp_path / "analysis.ipynb")
    job = batch_client.submit_notebook(path, {"fail": True}, workers=0)
    with pytest.raises(JobFailedError, match="failing with y=2") as info:
        job.result(timeout=120)
    assert info.value.remote_type == "dask_batch.runtime.targets.NotebookCellError"
    assert "analysis.output.ipynb" in job.artifacts()


def test_html_and_text_display(batch_client, tmp_path):
    marker = tmp_path / "go"
    running = batch_client.submit(
        talk_then_wait_for, str(marker), name="runner", workers=0
    )
    failed = batch_client.submit(logs_a_lot, 0, name="noisy", workers=0)
    with pytest.raises(JobFailedError):
        failed.result(timeout=60)
    wait_for(lambda: running.status().state is JobState.RUNNING, 30, "the job to run")
    # The gateway learns the dashboard address from the scheduler's heartbeat.
    wait_for(lambda: running.status().dashboard_link, 30, "the dashboard link")
    table = batch_client.jobs()._repr_html_()
    assert table.count("<tr>") == 3  # header and two jobs
    assert "RUNNING" in table and "FAILED" in table
    assert "noisy failure" in table  # the error summary of the failed job
    assert 'href="http' in table  # the running job's dashboard
    assert "runner" in running._repr_html_()
    text = repr(batch_client.jobs())
    assert text.splitlines()[0].split() == [
        "ID",
        "NAME",
        "STATE",
        "SUBMITTED",
        "DURATION",
        "PROGRESS",
    ]
    marker.write_text("go")
    running.result(timeout=60)


def test_wait_with_progress_draws_a_bar(batch_client, capsys):
    job = batch_client.submit(reports_progress, workers=0)
    record = job.wait(timeout=60, progress=True)
    assert record.state is JobState.SUCCEEDED
    err = capsys.readouterr().err
    assert f"{job.id} [##########----------] SUCCEEDED" in err
    assert err.endswith("half\n")


def test_python_executable_is_the_same_on_the_cluster(batch_client):
    # Guards the assumption the tests make about the local gateway's clusters.
    assert batch_client.submit(lambda: sys.executable, workers=0).result(
        timeout=60
    ) == (sys.executable)
