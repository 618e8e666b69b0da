"""The package as users install it: the sdist and the wheel built with
``python -m build`` (the wheel from the sdist), checked with ``twine check``,
the wheel installed into a fresh venv (not editable, not this checkout), and
from there the quickstart, every command's ``--help`` and the jobs page with
its static files."""

from __future__ import annotations

import http.cookiejar
import json
import os
import pathlib
import re
import subprocess
import sys
import urllib.request
import zipfile

import pytest
from commands import run

from dask_batch.testing import stop_process

pytestmark = pytest.mark.xdist_group("wheel")

ROOT = pathlib.Path(__file__).parent.parent


# Session-scoped: built once, however the suite's workers order these tests.
@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    """``(venv, dist)``: a fresh venv with the built wheel and its ``local``
    extra, and the folder of the sdist and the wheel."""
    import uv

    dist = tmp_path_factory.mktemp("dist")
    # uv fills build's isolated environment and the fresh venv from its
    # cache: the same packages pip would install (measured: these tests take
    # 30 CPU-s, against 52 with pip).
    run(sys.executable, "-m", "build", "--installer", "uv", "--outdir", dist, ROOT)
    built = sorted(dist.iterdir())
    print(run(sys.executable, "-m", "twine", "check", "--strict", *built))
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path_factory.mktemp("venv")
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(
        uv.find_uv_bin(),
        "pip",
        "install",
        "--quiet",
        "--compile-bytecode",  # as pip does: each command below starts warm
        "--python",
        python,
        f"{wheel}[local]",
    )
    return venv, dist


def test_the_sdist_and_wheel_are_built_checked_and_hold_the_package_data(installed):
    venv, dist = installed
    names = [path.name for path in dist.iterdir()]
    from dask_batch import __version__

    assert sorted(names) == [
        f"dask_batch-{__version__}-py3-none-any.whl",
        f"dask_batch-{__version__}.tar.gz",
    ]
    with zipfile.ZipFile(next(dist.glob("*.whl"))) as wheel:
        inside = set(wheel.namelist())
    for data in (
        "dask_batch/batch.yaml",
        "dask_batch/preload.py",
        "dask_batch/gateway_config.py",
        "dask_batch/ui/static/ui.js",
        "dask_batch/ui/static/ui.css",
    ):
        assert data in inside, f"{data} is not in the wheel"
    assert any(name.startswith("dask_batch/ui/templates/") for name in inside)
    assert not any(name.startswith("tests/") for name in inside)
    # Installed, not this checkout; its configuration defaults loaded.
    where = run(
        venv / "bin" / "python",
        "-c",
        "import dask, dask_batch, json; print(json.dumps([dask_batch.__file__, "
        "dask_batch.__version__, dask.config.get('batch.upload-limit')]))",
        cwd=venv,
    )
    path, version, limit = json.loads(where)
    assert path.startswith(str(venv)) and version == __version__ and limit
    assert (
        run(venv / "bin" / "dask", "batch", "--version", cwd=venv)
        .strip()
        .endswith(__version__)
    )
    # What a gateway's configuration and its schedulers load.
    run(
        venv / "bin" / "python",
        "-c",
        "import dask_batch.gateway_config, dask_batch.preload",
        cwd=venv,
    )


def command_paths(venv):
    """Every command and subcommand of ``dask batch``, from the installed CLI."""
    listing = (
        "import click, json\n"
        "from dask_batch.cli import main\n"
        "def walk(command, path):\n"
        "    yield path\n"
        "    for name, sub in getattr(command, 'commands', {}).items():\n"
        "        yield from walk(sub, [*path, name])\n"
        "print(json.dumps(list(walk(main, []))))\n"
    )
    return json.loads(run(venv / "bin" / "python", "-c", listing, cwd=venv))


def test_every_command_of_the_installed_cli_has_help(installed):
    venv, _ = installed
    paths = command_paths(venv)
    assert ["submit"] in paths and ["schedule", "add"] in paths and len(paths) > 20
    for path in paths:
        shown = run(venv / "bin" / "dask", "batch", *path, "--help", cwd=venv)
        assert shown.startswith(f"Usage: dask batch {' '.join(path)}".rstrip())
    assert run(venv / "bin" / "dask-batch", "--help", cwd=venv).startswith("Usage:")


def test_the_quickstart_and_the_jobs_page_run_from_the_wheel(installed, tmp_path):
    venv, _ = installed
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DASK_", "PYTHONPATH", "VIRTUAL_ENV"))
    }
    env["DASK_BATCH__LOCAL__DIRECTORY"] = str(tmp_path / "local")
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    python = venv / "bin" / "python"
    quickstart = ROOT / "examples" / "quickstart.py"
    try:
        job_id = run(python, quickstart, cwd=tmp_path, env=env).strip()
        shown = run(python, quickstart, job_id, cwd=tmp_path, env=env)
        assert "result: 332833500" in shown and "SUCCEEDED" in shown, shown
        # The jobs page, its static files from the installed package.
        page = subprocess.Popen(
            [venv / "bin" / "dask", "batch", "ui", "--no-browser"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            shown = page.stdout.readline()
            found = re.search(r"http://127\.0\.0\.1:\d+/\?token=\S+", shown)
            assert found, shown
            url = found.group(0)
            # The token becomes a cookie, as in a browser.
            browser = urllib.request.build_opener(
                urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
            )
            with browser.open(url, timeout=30) as answer:
                html = answer.read().decode()
            assert "<html" in html.lower()
            base = url.split("/?")[0]
            static = sorted(set(re.findall(r"static/[\w./-]+\.(?:js|css)", html)))
            assert {"static/ui.js", "static/ui.css"} <= {
                name.split("?")[0] for name in static
            }, static
            for name in static:
                with browser.open(f"{base}/{name}", timeout=30) as answer:
                    served = answer.read()
                assert served == (ROOT / "dask_batch" / "ui" / name).read_bytes()
        finally:
            stop_process(page)
            page.stdout.close()
    finally:
        run(venv / "bin" / "dask", "batch", "local", "stop", env=env)
    status = subprocess.run(
        [venv / "bin" / "dask", "batch", "local", "status"], env=env, timeout=60
    )
    assert status.returncode == 1, "the wheel's local gateway still runs"
