"""A moto S3 server in its own process that can be filled with job records fast.

    python benchmarks/filled_moto.py          # prints its URL, then serves

Each JSON line on stdin, ``{"storage", "options", "user", "count", "days",
"indexed"}``, fills ``storage`` with finished jobs as
:func:`dask_batch.testing.write_job_records` writes them, and is answered on
stdout with ``{"seconds": ...}``. The job objects go straight into moto's
in-memory backend: 100,000 jobs through HTTP PUTs would take longer than the
benchmark. Listings and reads still go over HTTP, as against any endpoint.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import moto.backends
from moto.server import ThreadedMotoServer

from dask_batch.storage.store import JobStore
from dask_batch.testing import write_job_records


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    print(json.dumps({"url": f"http://{host}:{port}"}), flush=True)
    backend = moto.backends.get_backend("s3")["123456789012"]["global"]

    def put(objects: dict[str, bytes]) -> None:
        for path, data in objects.items():
            bucket, key = path.split("/", 1)
            backend.put_object(bucket, key, data)

    for line in sys.stdin:
        if not line.strip():
            continue
        order = json.loads(line)
        store = JobStore(order["storage"], order["options"])

        t0 = time.perf_counter()
        write_job_records(
            store,
            order["user"],
            order["count"],
            days=order["days"],
            indexed=order["indexed"],
            put=put,
            kind=order.get("kind", "function"),
        )
        print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
    server.stop()


if __name__ == "__main__":
    main()
