"""Write the legacy job store that ``test_legacy_store.py`` reads.

Run once with the release whose stored data must stay readable (0.x, the flat
layout), then commit ``legacy_store/`` and ``legacy_secret``::

    python tests/data/make_legacy_store.py

It runs real jobs on the embedded local gateway: a finished job with a result,
log and artifacts, a failed job, a script job, a pipeline, an array, a
schedule with its payload, and a job still waiting on another. The files are
copied as the release left them; only the timestamps say when.
"""

import os
import pathlib
import shutil
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
STORE = HERE / "legacy_store"
SECRET = HERE / "legacy_secret"


def finished(n):
    import dask_batch

    dask_batch.report(0.5, "half way")
    with open(dask_batch.artifacts_dir("model.txt"), "w") as f:
        f.write(f"weights for {n}\n")
    print(f"finished with {n}")
    return {"n": n, "squares": [i * i for i in range(n)]}


def broken():
    print("about to fail")
    raise ValueError("legacy failure")


def load():
    return [1, 2, 3]


def total(upstream):
    return sum(upstream["load"])


def square(x):
    return x * x


def slow_upstream(path):
    import time as _time

    deadline = _time.monotonic() + 120
    while not os.path.exists(path) and _time.monotonic() < deadline:
        _time.sleep(0.1)
    return 41


def plus_one(value):
    return value + 1


def nightly():
    return "nightly"


def wait_for(predicate, what, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.2)


def main():
    if STORE.exists():
        shutil.rmtree(STORE)
    work = pathlib.Path(tempfile.mkdtemp(prefix="legacy-"))
    storage = work / "store"
    # Before dask-batch's import: dask reads its config from the environment.
    os.environ["DASK_BATCH__LOCAL__DIRECTORY"] = str(work / "gateway")
    os.environ["DASK_BATCH__SECRET_FILE"] = str(SECRET)
    from dask_batch import BatchClient, Step

    script = work / "hello.py"
    script.write_text("import sys\nprint('hello', *sys.argv[1:])\n")
    release = work / "release"
    try:
        with BatchClient(storage=str(storage)) as batch:
            done = batch.submit(finished, 4, name="finished", workers=1)
            failed = batch.submit(broken, name="failed")
            scripted = batch.submit_script(str(script), ["world"], name="script")
            pipeline = batch.submit_pipeline(
                [Step(load), Step(total, upstream=["load"])], name="pipeline"
            )
            array = batch.map(square, [1, 2, 3], name="array")
            for job in (done, failed, scripted, pipeline, array):
                batch.wait(job.id, timeout=180)
            batch.schedule(nightly, cron="0 2 * * *", name="nightly")
            upstream = batch.submit(slow_upstream, str(release), name="upstream")
            wait_for(lambda: batch.status(upstream.id).state.value == "RUNNING", "A")
            waiting = batch.submit(plus_one, upstream, name="waiting")
            # The waiting job as stored while its upstream job still ran ...
            snapshot = work / "snapshot"
            shutil.copytree(storage, snapshot)
            release.write_text("go")
            batch.wait(upstream.id, timeout=180)
            batch.cancel(waiting.id)
        # ... with the upstream job's final files: it succeeded while nobody
        # came by to start the waiting job.
        user_dir = pathlib.Path(batch.user)
        for path in (storage / user_dir).rglob("*"):
            if path.is_file() and upstream.id in path.parts:
                target = snapshot / path.relative_to(storage)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
        shutil.copytree(snapshot, STORE)
        print("wrote", STORE)
        ids = {
            "finished": done.id,
            "failed": failed.id,
            "script": scripted.id,
            "pipeline": pipeline.id,
            "array": array.id,
            "upstream": upstream.id,
            "waiting": waiting.id,
        }
        (HERE / "legacy_ids.txt").write_text(
            "".join(f"{k} {v}\n" for k, v in ids.items())
        )
    finally:
        import dask_batch.local as local

        local.stop(str(work / "gateway"))


if __name__ == "__main__":
    main()
