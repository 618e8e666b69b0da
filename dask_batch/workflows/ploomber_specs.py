"""Ploomber projects as dask-batch jobs: recognise a spec, check it, pack it.

A YAML file whose top level has ``tasks:`` (or ``meta:``) and no ``steps:``
is a Ploomber spec, whatever its name. It is loaded here, in its project's
folder, exactly as ``ploomber build`` would load it (Ploomber's own parser
for its options, ``DAGSpec``, ``DAG.render``), so a bad spec, a missing
source or an unknown ``--env--`` key is refused with Ploomber's message
before any cluster starts. The job uploads the project's folder; its main
(:func:`dask_batch.runtime.ploomber_build.build_project`) loads the project
again there and builds it with each task on the workers.

Client side; Ploomber is imported only for a Ploomber spec.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import yaml

from dask_batch.client import submission as _submission
from dask_batch.core import signing as _signing
from dask_batch.core.exceptions import SubmitError
from dask_batch.core.names import InvalidNameError
from dask_batch.core.secrets import PLOOMBER_KEY_ENV
from dask_batch.core.tasks import TaskSpec, check_task_name

__all__ = ["is_ploomber_spec"]

#: The largest spec file read to tell whether it is Ploomber's.
SPEC_LIMIT = 1 << 20
INSTALL = "pip install 'dask-batch[ploomber]'"


def is_ploomber_spec(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a Ploomber spec (top-level ``tasks:`` or ``meta:``)."""
    try:
        if os.path.getsize(path) > SPEC_LIMIT:
            return False
        with open(path, "rb") as f:
            document = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return False
    return (
        isinstance(document, dict)
        and "steps" not in document
        and ("tasks" in document or "meta" in document)
    )


@contextlib.contextmanager
def _in_folder(folder: str) -> Iterator[None]:
    """The project's folder as working directory, and its modules fresh.

    Ploomber resolves a project's paths from the working directory, as in
    `cd project && ploomber build`, and imports the project's modules
    (``tasks``, ``hooks``...) to find its functions: modules of the same
    name imported before (another project, an older version of this one)
    must not answer for them, and this project's must not stay behind.
    """
    saved = os.getcwd()
    own = _top_level_modules(folder)
    _forget_modules(lambda name, path: name.split(".")[0] in own)
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(saved)
        inside = os.path.realpath(folder) + os.sep
        _forget_modules(
            lambda name, path: (
                name.split(".")[0] in own or os.path.realpath(path).startswith(inside)
            )
        )


def _top_level_modules(folder: str) -> set[str]:
    names = set()
    for entry in os.listdir(folder):
        stem, ext = os.path.splitext(entry)
        if ext == ".py" or os.path.isfile(os.path.join(folder, entry, "__init__.py")):
            names.add(stem)
    return names


def _forget_modules(match: Any) -> None:
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if path and match(name, path):
            del sys.modules[name]


def ploomber_target(
    job_id: str, path: str | os.PathLike[str], options: list[str]
) -> tuple[_submission.Target, str, dict[str, str]]:
    """The job that builds the Ploomber project of spec ``path``, the
    project's folder (its files are the job's) and the env values it needs
    (the key of the project's stored products, sealed like any env value).

    Raises SubmitError, naming the file, for anything ``ploomber build``
    would refuse, and when Ploomber is not installed.
    """
    from dask_batch.runtime import ploomber_build as _build

    spec_path = os.path.abspath(os.fspath(path))
    folder, spec = os.path.split(spec_path)
    try:
        _build.quiet_ploomber()
    except ImportError:
        raise SubmitError.not_submitted(
            job_id,
            f"{os.fspath(path)!r} is a Ploomber spec, and Ploomber is not "
            f"installed here: {INSTALL}.",
        ) from None
    with _in_folder(folder):
        placeholders = _build.capture_placeholders(folder)
        try:
            with _build.captured_placeholders(placeholders):
                dag, _ = _build.load_dag(spec, list(options))
            dag.render(show_progress=False)
        except Exception as exc:  # Ploomber's own errors say what is wrong
            raise SubmitError.not_submitted(
                job_id, f"Ploomber refuses {os.fspath(path)!r}: {_one_line(exc)}"
            ) from None
        tasks = [_task_spec(job_id, task) for task in dag.values()]
    project = project_name(job_id, folder)
    secret = _signing.user_secret(create=True, job_id=job_id)
    env = {PLOOMBER_KEY_ENV: _signing.project_key(secret, project)}
    target = _submission.Target(
        "ploomber",
        spec,
        project,
        _build.build_project,
        (spec, list(options), [t.name for t in tasks], placeholders, project),
        {},
        tasks=tasks,
    )
    return target, folder, env


def project_name(job_id: str, folder: str) -> str:
    """The name a project's stored products are found by: its folder's."""
    name = os.path.basename(os.path.normpath(folder))
    try:
        return check_task_name(name, job_id=job_id)
    except InvalidNameError:
        raise SubmitError.not_submitted(
            job_id,
            f"a Ploomber project's folder names it in storage, and {name!r} "
            "cannot: use letters, digits and _ . - (at most 64).",
        ) from None


def _task_spec(job_id: str, task: Any) -> TaskSpec:
    try:
        name = check_task_name(task.name, job_id=job_id)
    except InvalidNameError as exc:
        raise SubmitError.not_submitted(job_id, f"Ploomber task: {exc}") from None
    return TaskSpec(
        name=name,
        upstream=tuple(str(u) for u in task.upstream),
        kind="ploomber",
        target=str(getattr(task.source, "loc", "") or type(task).__name__),
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines)[:2000]
