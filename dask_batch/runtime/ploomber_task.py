"""One Ploomber task, built in a process of its own on a worker.

    python -m dask_batch.runtime.ploomber_task OUTCOME_FILE WORKER_PID < pickled task

Started by :func:`dask_batch.runtime.ploomber_build.run_on_worker`, which
pickled the task itself (from the DAG that main's process loaded) and reads
``OUTCOME_FILE`` back: ``{"ok": true, "metadata": ...}`` or ``{"ok": false,
"error": traceback}``. Ploomber's ``Task._build`` runs the task's hooks,
saves its metadata and checks its products, as in ``ploomber build``; the
task's output is this process's output.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback

from dask_batch.runtime.forking import exit_with_parent


def main() -> None:
    import cloudpickle

    outcome_path, worker = sys.argv[1], int(sys.argv[2])
    # A worker killed with its cluster must not leave the task (or the
    # notebook kernel it started) running.
    threading.Thread(target=exit_with_parent, args=(worker,), daemon=True).start()
    # The project's modules, as the DAG in main's process imported them.
    sys.path.insert(0, os.getcwd())
    # Bytes from the worker process that started this one, over a pipe.
    task = cloudpickle.loads(sys.stdin.buffer.read())
    try:
        _, metadata = task._build(catch_exceptions=True)  # noqa: SLF001
        outcome = {"ok": True, "metadata": metadata}
    except Exception:
        text = traceback.format_exc()
        print(text, file=sys.stderr, flush=True)
        outcome = {"ok": False, "error": text}
    with open(outcome_path, "w") as f:
        json.dump(outcome, f, default=str)


if __name__ == "__main__":
    main()
