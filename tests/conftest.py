from __future__ import annotations

import os
import shutil
import tempfile

import dask
import dask_gateway  # noqa: F401  (see _fresh_config)
import fsspec
import pytest

from dask_batch.testing import gateway_clusters, main_processes, wait_for


def pytest_configure(config):
    # pytest 9.2 keeps node ids where pytest-xdist 3.8 cannot add a test's
    # group to them, so `--dist loadgroup` would silently not group (every
    # worker would start its own hub, Slurm and MLflow): refuse to run so.
    if config.getoption("dist", "no") == "loadgroup":
        from importlib.metadata import version

        from packaging.version import Version

        if Version(pytest.__version__) >= Version("9.2") and Version(
            version("pytest-xdist")
        ) <= Version("3.8.0"):
            raise pytest.UsageError(
                f"pytest {pytest.__version__} with pytest-xdist "
                f"{version('pytest-xdist')} does not group tests under "
                "--dist loadgroup (pytest-xdist issue 1386): install the "
                "versions of pyproject.toml's test extra (pytest<9.2)."
            )
    # One user secret per test process (and the processes it starts), made
    # for this run: the developer's own ~/.config/dask-batch is never used.
    directory = tempfile.mkdtemp(prefix="dask-batch-config-")
    os.environ["XDG_CONFIG_HOME"] = directory
    config.add_cleanup(lambda: shutil.rmtree(directory, ignore_errors=True))


#: The suite's longest parts, longest first. pytest-xdist hands tests out in
#: collection order, so these start first and the workers end together,
#: instead of one running a long group alone at the end.
LONGEST_FIRST = (
    "test_benchmarks.py",
    "test_mlflow.py",
    "test_hub.py",
    "test_ploomber.py",
    "test_slurm.py",
    "test_wheel.py",
    "test_reliability.py",
    "test_jupyter.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable


def first_attempt_hangs(marker):
    """Main whose first attempt hangs (its cluster is then killed); the next
    one returns."""
    import pathlib
    import time

    path = pathlib.Path(marker)
    if not path.exists():
        path.write_text("first attempt")
        time.sleep(120)
    return "second attempt"


def child_processes(batch):
    """Live main processes of the clusters of ``batch``'s gateway."""
    return main_processes(gateway_clusters(batch.gateway))


def cluster_status(batch, name):
    """The gateway's status of a cluster, None once it forgot it."""
    try:
        return batch.gateway.get_cluster(name).status
    except ValueError:
        return None


def wait_for_skip_then_second_run(history, release, firer):
    """A schedule's history (newest first) once ``firer`` skipped a due time
    while the first run went, and, after ``release()`` let that run end,
    submitted a second run."""
    wait_for(
        lambda: (h := history()) and h[0].outcome == "skipped",
        60,
        f"{firer} to skip a due time while the first run goes",
    )
    release()
    return wait_for(
        lambda: (
            (h := history()) and [r.outcome for r in h].count("submitted") >= 2 and h
        ),
        60,
        f"{firer} to submit a second run",
    )


def wait_until_nothing_left(gateway, what, clusters_timeout=30, mains_timeout=15):
    """Wait until ``gateway`` (one user's view) lists no live cluster, and no
    main process of any of its clusters is alive; ``what`` names them."""
    wait_for(
        lambda: not gateway.list_clusters(),
        clusters_timeout,
        f"every cluster of {what} to stop",
    )
    names = gateway_clusters(gateway)
    wait_for(
        lambda: not main_processes(names),
        mains_timeout,
        f"every main process of {what} to exit",
    )


GATEWAY_FIXTURES = (
    "batch_gateway",
    "batch_plain_gateway",
    "idle_gateway",
    "notebook_gateway",
    "strict_gateway",
    "impatient_gateway",
    "crowded_gateway",
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, show the gateway's verdicts: CI keeps no gateway log."""
    report = yield
    if report.failed and call.when == "call":
        for fixture in GATEWAY_FIXTURES:
            info = item.funcargs.get(fixture)
            log = os.path.join(getattr(info, "directory", ""), "gateway.log")
            if info is not None and os.path.exists(log):
                with open(log, errors="replace") as f:
                    verdicts = [
                        line.rstrip()
                        for line in f
                        if any(w in line for w in ("timed out", "failed", "[W ", "[E "))
                    ]
                report.sections.append(
                    (f"{fixture} log: warnings and failures", "\n".join(verdicts[-40:]))
                )
    return report


@pytest.fixture(autouse=True)
def _nothing_left_behind(request):
    """Every test ends with no running cluster and no main process.

    Scoped to the gateways the test used: their clusters, and the main
    processes of those clusters, so that other test runs on the same
    machine (``pytest -n 4``, a second suite) are neither seen nor blamed.
    """
    yield
    for fixture in GATEWAY_FIXTURES:
        if fixture in request.fixturenames:
            info = request.getfixturevalue(fixture)
            with info.gateway() as gateway:
                wait_until_nothing_left(gateway, f"{fixture} after {request.node.name}")


@pytest.fixture(autouse=True)
def _clean_memory_filesystem():
    yield
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")


@pytest.fixture(autouse=True)
def _fresh_config(monkeypatch):
    # dask_gateway's gateway.* defaults are loaded at import (above): had the
    # first import happened inside this set() block, leaving the block would
    # delete the whole gateway section, defaults included.
    for key in list(os.environ):
        if key.startswith(("DASK_BATCH__", "DASK_GATEWAY__")):
            monkeypatch.delenv(key)
    with dask.config.set({"batch.storage": None, "gateway.address": None}):
        yield


@pytest.fixture
def configured_cli(batch_gateway, monkeypatch):
    """``configured_cli(**env)``: the ``dask batch`` command, invoked in-process,
    with the fixture gateway and ``env`` in the environment and dask's config
    (undone after the test). Returns ``invoke(*args)``."""
    from click.testing import CliRunner

    from dask_batch.cli import main

    def configure(**env):
        for key, value in {**batch_gateway.environment(), **env}.items():
            monkeypatch.setenv(key, value)
        dask.config.refresh()

        def invoke(*args):
            return CliRunner().invoke(main, list(args), catch_exceptions=False)

        return invoke

    yield configure
    monkeypatch.undo()
    dask.config.refresh()


CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def browser():
    """Debian's headless Chromium, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            yield chromium
        finally:
            chromium.close()
