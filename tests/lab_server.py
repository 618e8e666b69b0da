"""A real `jupyter server` with jupyter-scheduler and the dask-batch backend,
on 127.0.0.1, for tests: its own config, data and runtime folders, a root
folder of notebooks, and the REST calls the Notebook Jobs UI makes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import nbformat

TOKEN = "jupyter-test-token"

CONFIG = """
c.ServerApp.ip = "127.0.0.1"
c.ServerApp.port = 0
c.ServerApp.open_browser = False
c.ServerApp.allow_root = True
c.IdentityProvider.token = {token!r}
c.ServerApp.root_dir = {root!r}
# Extensions of other packages in the test environment, not of a Notebook
# Jobs deployment (Ploomber's replaces the contents manager).
c.ServerApp.jpserver_extensions = {{
    "ploomber": False, "ploomber_extension": False,
    "jupyterlab_jupytext": False, "nbclassic": False,
}}
c.SchedulerApp.db_url = "sqlite:///{home}/scheduler.sqlite"
"""
BACKEND = """
c.SchedulerApp.scheduler_class = "dask_batch.jupyter.DaskBatchScheduler"
c.SchedulerApp.environment_manager_class = "dask_batch.jupyter.GatewayEnvironments"
c.SchedulerApp.job_files_manager_class = "dask_batch.jupyter.ArtifactFiles"
"""


def notebook(path, source, parameters="n = 1"):
    """A notebook whose first cell, tagged ``parameters``, is ``parameters``."""
    nb = nbformat.v4.new_notebook()
    first = nbformat.v4.new_code_cell(parameters)
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first, nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nbformat.write(nb, path)
    return path


class JupyterServer:
    """`jupyter server` in a session of its own (so that a test can kill its
    whole process group, as a culled pod is), on ``gateway_info`` and
    ``storage``; with ``stock``, jupyter-scheduler's own backend instead."""

    def __init__(
        self,
        home,
        root,
        gateway_info,
        storage,
        storage_options=None,
        args=(),
        stock=False,
    ):
        self.home, self.root = str(home), str(root)
        os.makedirs(self.root, exist_ok=True)
        config_dir = os.path.join(self.home, "config")
        os.makedirs(config_dir, exist_ok=True)
        with open(os.path.join(config_dir, "jupyter_server_config.py"), "w") as f:
            f.write(CONFIG.format(token=TOKEN, root=self.root, home=self.home))
            if not stock:  # else jupyter-scheduler's own backend, for comparison
                f.write(BACKEND)
        # No "get notified about Jupyter news?" toast over the screenshots.
        settings = os.path.join(
            config_dir, "lab", "user-settings", "@jupyterlab", "apputils-extension"
        )
        os.makedirs(settings, exist_ok=True)
        with open(os.path.join(settings, "notification.jupyterlab-settings"), "w") as f:
            json.dump({"fetchNews": "false"}, f)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
        if storage:
            env["DASK_BATCH__STORAGE"] = storage
        self.args = list(args)
        env.update(
            gateway_info.environment(),
            JUPYTER_CONFIG_DIR=config_dir,
            JUPYTER_DATA_DIR=os.path.join(self.home, "data"),
            JUPYTER_RUNTIME_DIR=os.path.join(self.home, "runtime"),
        )
        if storage_options:
            env["DASK_BATCH__STORAGE_OPTIONS"] = json.dumps(storage_options)
        self.env = env
        self.url = ""
        self.proc = None
        self.starts = 0
        self.start()

    def start(self):
        self.starts += 1  # a log per start: each says its own port
        self.log_path = os.path.join(self.home, f"server-{self.starts}.log")
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", *self.args],
            env=self.env,
            cwd=self.root,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = re.search(rb"http://127\.0\.0\.1:(\d+)/", self.read_log())
            if found and self.ping():
                self.url = f"http://127.0.0.1:{int(found.group(1))}"
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(
            "jupyter server did not start:\n" + self.read_log()[-4000:].decode()
        )

    def read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read()

    def ping(self):
        found = re.findall(rb"http://127\.0\.0\.1:(\d+)/", self.read_log())
        if not found:
            return False
        try:
            url = f"http://127.0.0.1:{int(found[-1])}/api/status"
            request = urllib.request.Request(url)
            request.add_header("Authorization", f"token {TOKEN}")
            with urllib.request.urlopen(request, timeout=5):
                return True
        except OSError:
            return False

    def request(self, method, path, body=None):
        """``(status, parsed JSON or None)`` of one REST call, as the UI makes it."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"token {TOKEN}")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                return error.code, json.loads(raw)
            except ValueError:
                return error.code, raw.decode(errors="replace")

    def kill(self):
        """Kill the server's whole process group, as a culled pod's."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
            self.log.close()
