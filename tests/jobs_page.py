"""The jobs page as tests run it: `python -m dask_batch.ui` for real, on one
gateway and storage, with a client on the same storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

from dask_batch import BatchClient


class UI:
    """A running `python -m dask_batch.ui` and a client on the same storage."""

    def __init__(self, gateway_info, storage, storage_options=None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
        env.update(gateway_info.environment(), DASK_BATCH__STORAGE=storage)
        if storage_options:
            env["DASK_BATCH__STORAGE_OPTIONS"] = json.dumps(storage_options)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dask_batch.ui", "--no-browser"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        assert line.startswith("Jobs page: "), line + self.proc.stderr.read()
        self.url = line.split(" ", 2)[2].strip()
        self.base, _, self.token = self.url.partition("/?token=")
        self.batch = BatchClient(
            gateway=gateway_info.gateway(),
            storage=storage,
            storage_options=storage_options,
        )

    def request(self, path, *, method="GET", token=True, headers=None):
        request = urllib.request.Request(self.base + path, method=method)
        if token:
            request.add_header("Authorization", f"token {self.token}")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def json(self, path, **kwargs):
        status, _, body = self.request(path, **kwargs)
        return status, json.loads(body)

    def close(self):
        self.batch.gateway.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self.proc.stderr.close()
