"""The `dask batch` command line, end to end on the real gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import dask
import pytest
from click.testing import CliRunner

from dask_batch.cli import main

SCRIPT = textwrap.dedent(
    """
    import sys, time
    print("hello from", sys.argv[1:], flush=True)
    time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)
    sys.exit(int(sys.argv[1]))
    """
)


@pytest.fixture
def cli_env(batch_gateway, tmp_path):
    """Configuration for a CLI process: gateway, credentials and storage."""
    return {
        **batch_gateway.environment(),
        "DASK_BATCH__STORAGE": str(tmp_path / "jobs"),
    }


@pytest.fixture
def run(configured_cli, cli_env):
    """Invoke the CLI in-process with the fixture gateway configured."""
    return configured_cli(**cli_env)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "job.py"
    path.write_text(SCRIPT)
    return str(path)


def test_submit_wait_exits_with_the_jobs_status(run, script):
    ok = run("submit", script, "0", "--workers", "0", "--wait")
    assert ok.exit_code == 0, ok.output
    failed = run("submit", script, "3", "--workers", "0", "--wait")
    assert failed.exit_code == 3
    assert "FAILED" in failed.stderr


def test_submit_follow_streams_the_log(run, script):
    out = run("submit", script, "0", "0.5", "--workers", "0", "--follow")
    assert out.exit_code == 0
    assert "hello from ['0', '0.5']" in out.stdout


def test_list_status_logs_result_and_json(run, script, tmp_path):
    job_id = run(
        "submit", script, "0", "--name", "cli-job", "--workers", "0"
    ).stdout.strip()
    assert run("result", job_id).stdout.strip() == "None"
    listing = run("list")
    assert listing.stdout.splitlines()[0].split()[:3] == ["ID", "NAME", "STATE"]
    assert job_id in listing.stdout and "SUCCEEDED" in listing.stdout
    records = json.loads(run("list", "--json", "--state", "succeeded").stdout)
    assert [r["id"] for r in records] == [job_id]
    assert records[0]["name"] == "cli-job"
    assert json.loads(run("list", "--json", "--state", "failed").stdout) == []
    status = run("status", job_id).stdout
    assert "state:     SUCCEEDED" in status
    assert json.loads(run("status", job_id, "--json").stdout)["id"] == job_id
    assert "hello from ['0']" in run("logs", job_id).stdout
    out_file = tmp_path / "result.txt"
    assert run("result", job_id, "--output", str(out_file)).exit_code == 0
    assert out_file.exists()


def test_cancel_and_artifacts(run, tmp_path):
    (tmp_path / "art.py").write_text(
        "import fsspec, time, dask_batch\n"
        "with fsspec.open(dask_batch.artifacts_path('a.txt'), 'w') as f:\n"
        "    f.write('hi')\n"
    )
    job_id = run("submit", str(tmp_path / "art.py"), "--workers", "0", "--wait")
    job_id = job_id.stdout.strip()
    listing = run("artifacts", job_id)
    assert "a.txt" in listing.stdout
    download = run("artifacts", job_id, "--download", str(tmp_path / "dl"))
    assert download.exit_code == 0
    assert (tmp_path / "dl" / "a.txt").read_text() == "hi"

    (tmp_path / "slow.py").write_text("import time\ntime.sleep(120)\n")
    slow = run("submit", str(tmp_path / "slow.py"), "--workers", "0").stdout.strip()
    out = run("cancel", slow)
    assert out.stdout.strip() == f"{slow} CANCELLED"


def test_errors_are_one_line_without_traceback(run, script):
    missing = run("status", "20990101-000000-000-deadbeef")
    assert missing.exit_code == 1
    assert missing.stderr.startswith("Error: No job '20990101-000000-000-deadbeef'")
    assert len(missing.stderr.strip().splitlines()) == 1
    assert "Traceback" not in missing.output
    failed = run("submit", script, "5", "--workers", "0")
    job_id = failed.stdout.strip()
    result = run("result", job_id)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: Job {job_id!r} failed: dask_batch.runtime.targets.ScriptExit: "
        "the script exited with status 5"
    ]
    bad = run("submit", script, "--adapt", "1")
    assert bad.exit_code == 2  # usage error
    unknown_target = run("submit", "not-a-target", "--workers", "0")
    assert unknown_target.exit_code == 1
    assert "neither a script" in unknown_target.stderr


def test_unreachable_gateway_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DASK_GATEWAY__ADDRESS", "http://127.0.0.1:9")
    monkeypatch.setenv("DASK_BATCH__STORAGE", str(tmp_path))
    dask.config.refresh()
    try:
        out = CliRunner().invoke(main, ["submit", "x:y"], catch_exceptions=False)
    finally:
        monkeypatch.undo()
        dask.config.refresh()
    assert out.exit_code == 1
    assert out.stderr.startswith("Error: ")
    assert len(out.stderr.strip().splitlines()) == 1


def test_local_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("DASK_BATCH__LOCAL__DIRECTORY", str(tmp_path / "local"))
    dask.config.refresh()
    runner = CliRunner()
    try:
        assert runner.invoke(main, ["local", "status"]).exit_code == 1
        started = runner.invoke(main, ["local", "start"], catch_exceptions=False)
        assert started.stdout.startswith("running  http://127.0.0.1:")
        assert runner.invoke(main, ["local", "status"]).exit_code == 0
        assert runner.invoke(main, ["local", "stop"]).stdout.strip() == "stopped"
        assert runner.invoke(main, ["local", "stop"]).stdout.strip() == "not running"
    finally:
        from dask_batch import local

        local.stop(str(tmp_path / "local"))
        monkeypatch.undo()
        dask.config.refresh()


def test_real_dask_batch_subprocess(cli_env, script):
    env = dict(os.environ, **cli_env)
    bindir = os.path.dirname(sys.executable)
    submit = subprocess.run(
        [
            os.path.join(bindir, "dask"),
            "batch",
            "submit",
            script,
            "0",
            "--workers",
            "0",
            "--wait",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert submit.returncode == 0, submit.stderr
    job_id = submit.stdout.strip()
    listing = subprocess.run(
        [os.path.join(bindir, "dask-batch"), "list", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert [r["id"] for r in json.loads(listing.stdout)] == [job_id]


def test_dask_commands_and_the_runner_do_not_import_the_client_nor_mlflow():
    # dask loads our entry point for every `dask` command (`dask worker` too),
    # and the scheduler imports the runner: dask_gateway and aiohttp are the
    # client's, and would slow the start-up of both.
    code = textwrap.dedent(
        """
        import sys
        import dask_batch.cli, dask_batch.runtime.plugin, dask_batch.preload
        heavy = sorted(
            {
                "dask_batch.batch_client",
                "dask_batch.client.launcher",
                "dask_batch.client.reconcile",
                "dask_gateway",
                "aiohttp",
                "mlflow",
            }
            & set(sys.modules)
        )
        assert not heavy, heavy
        from dask_batch import BatchClient
        assert "dask_gateway" in sys.modules
        # MLflow is imported only by a job that is tracked.
        import dask_batch.runtime.child, dask_batch.client.tracking, dask_batch.ui
        assert "mlflow" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    # Nor does the client import the scheduler side (client mode only needs it).
    client_only = (
        "import sys, dask_batch.batch_client; "
        "assert 'dask_batch.runtime.plugin' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", client_only], check=True)


def test_reconcile_marks_jobs_whose_submitter_died_lost(run, cli_env):
    from dask_batch.core.records import new_job_id, utcnow
    from dask_batch.storage.store import SPEC, STATE, JobStore

    store = JobStore(cli_env["DASK_BATCH__STORAGE"])
    user = cli_env["DASK_GATEWAY__AUTH__KWARGS__USERNAME"]
    job_id = new_job_id()
    spec = {
        "id": job_id,
        "user": user,
        "name": "orphan",
        "submitted": utcnow().isoformat(),
    }
    store.put_json(user, job_id, SPEC, spec)
    store.put_json(user, job_id, STATE, {"state": "PENDING"})
    with dask.config.set({"batch.lost-after": 0}):
        result = run("reconcile", "--json")
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.output)
    assert (record["id"], record["state"]) == (job_id, "LOST")
    assert "submitting process stopped" in record["message"]
