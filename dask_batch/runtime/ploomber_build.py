"""A Ploomber project's build: the DAG in main's process, each task on a worker.

Main's process loads the project exactly as ``ploomber build`` does (its own
command-line parser and ``DAGSpec``, in the uploaded project's folder), then
builds it with :class:`DaskExecutor`, a Ploomber executor that hands each
ready task to the job's Dask workers and feeds the outcome back to the DAG,
as Ploomber's own ``Parallel`` executor does with its process pool. So
Ploomber decides what is outdated, what runs, and what a failure aborts;
dask-batch decides where.

How a task is built on a worker: :mod:`dask_batch.runtime.ploomber_worker`.

Runs in main's process (and, to load a project the same way, on the
submitting machine); imports nothing from the client.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import math
import os
import posixpath
import sys
import time
from collections.abc import Iterator
from typing import Any

from dask_batch.core.records import JobState, to_iso, utcnow
from dask_batch.core.secrets import PLOOMBER_KEY_ENV
from dask_batch.core.tasks import TASKS_DOC, TaskRecord
from dask_batch.runtime.arrays import ElementsFailed, _pack_cwd
from dask_batch.runtime.ploomber_worker import (
    ProjectFiles,
    ProjectPlugin,
    _read,
    _write_inside,
    quiet_ploomber,
    run_on_worker,
    task_signature,
)
from dask_batch.runtime.taskstates import PUBLISH_INTERVAL

__all__: list[str] = []

#: How long a worker keeps a ready task's outcome before main looks again.
POLL_SECONDS = 1.0
#: The folder below a user's where each project's products are kept.
PROJECTS = ".ploomber"


def build_parser() -> Any:
    """The command line of ``ploomber build``, declared as Ploomber declares it."""
    quiet_ploomber()
    from ploomber.cli.parsers import CustomParser

    parser = CustomParser(description="Build pipeline", prog="ploomber build")
    with parser:
        parser.add_argument("--force", "-f", action="store_true", default=False)
        parser.add_argument(
            "--skip-upstream", "-su", action="store_true", default=False
        )
        parser.add_argument("--partially", "-p", default=None)
    return parser


@contextlib.contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    # Ploomber's parser reads sys.argv itself (the entry point first, to
    # learn which --env-- options the project has).
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def load_dag(spec: str, options: list[str]) -> tuple[Any, Any]:
    """The DAG and parsed options, as ``ploomber build -e SPEC *options`` has them.

    Raises ValueError with Ploomber's own message for a bad option (an
    unknown ``--env--`` key); Ploomber's spec errors pass through.
    """
    parser = build_parser()
    errors = io.StringIO()
    with _argv(["ploomber build", "--entry-point", spec, *options]):
        try:
            with contextlib.redirect_stderr(errors):
                return parser.load_from_entry_point_arg()
        except SystemExit:
            lines = [line for line in errors.getvalue().splitlines() if line]
            raise ValueError(lines[-1] if lines else "bad options") from None


#: Placeholders that say where and when a build was asked for: taken on the
#: submitting machine, where the project is a git work tree and the user is
#: the submitter, not in the job's folder on the cluster.
CAPTURED = ("git", "git_hash", "now", "user")


def capture_placeholders(folder: str) -> dict[str, str]:
    """``{{git}}``, ``{{git_hash}}``, ``{{now}}`` and ``{{user}}`` as Ploomber
    resolves them here, for ``folder``."""
    import datetime
    import getpass

    from ploomber import repo

    values = {"now": datetime.datetime.now().isoformat(), "user": getpass.getuser()}
    if repo.is_repo(folder):
        values["git"] = str(repo.git_location(folder))
        values["git_hash"] = str(repo.git_hash(folder))
    return values


@contextlib.contextmanager
def captured_placeholders(values: dict[str, str]) -> Iterator[None]:
    """Ploomber resolves the captured placeholders to ``values``.

    Ploomber's placeholder machinery stays in charge (which placeholders a
    spec may use, where they expand); only the lookups it makes of the git
    work tree, the clock and the user answer with what the submitter saw.
    """
    import shutil
    import types

    from ploomber import repo
    from ploomber.env import expand

    patches: list[tuple[Any, str, Any]] = [
        (expand.EnvironmentExpander, "get_now", lambda self: values["now"]),
        (expand.EnvironmentExpander, "get_user", lambda self: values["user"]),
    ]
    if "git" in values:
        # Ploomber also asks for a git program before it expands {{git}};
        # the job's image need not have one.
        with_git = types.SimpleNamespace(
            which=lambda name, *a, **k: name if name == "git" else shutil.which(name)
        )
        patches += [
            (repo, "is_repo", lambda path: True),
            (repo, "git_location", lambda path: values["git"]),
            (repo, "git_hash", lambda path: values["git_hash"]),
            (expand, "shutil", with_git),
        ]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)


def product_paths(task: Any) -> list[str]:
    """Every file a task's product names, its metadata sidecars included."""
    product = task.product
    parts = list(product) if hasattr(product, "products") else [product]
    paths = []
    for part in parts:
        path = getattr(part, "_path_to_file", None)
        if path is None:
            continue
        paths.append(str(path))
        sidecar = getattr(part, "_path_to_metadata", None)
        if sidecar is not None:
            paths.append(str(sidecar))
    return paths


class TaskStates:
    """The Ploomber tasks' records, written to ``tasks.json`` as they change:
    at most once per :data:`PUBLISH_INTERVAL` while the build runs (a grid of
    thousands of tasks would otherwise rewrite it per task), and always once
    at its end (:meth:`flush`)."""

    def __init__(self, runtime: Any, names: list[str]) -> None:
        self.runtime = runtime
        self.records = {name: TaskRecord(name=name) for name in names}
        self._dirty = False
        self._published = -math.inf

    def set(self, name: str, state: JobState, **fields: Any) -> None:
        record = self.records.setdefault(name, TaskRecord(name=name))
        record.state = state
        for key, value in fields.items():
            setattr(record, key, value)
        self._dirty = True
        self.publish_if_due()

    def publish_if_due(self) -> None:
        if self._dirty and time.monotonic() - self._published >= PUBLISH_INTERVAL:
            self.flush()

    def flush(self) -> None:
        """``tasks.json`` and the job's progress (counts per state), now."""
        from dask_batch.core.tasks import count_states, describe_counts
        from dask_batch.storage.store import PROGRESS

        rt = self.runtime
        records = list(self.records.values())
        counts = count_states(records)
        done = sum(n for s, n in counts.items() if JobState(s).is_terminal)
        progress = {
            "progress": done / len(records) if records else 1.0,
            "message": describe_counts(counts),
            "tasks": counts,
            "updated": to_iso(utcnow()),
        }
        doc = {"tasks": [r.to_dict() for r in records]}
        rt.store.put_json(rt.user, rt.job_id, TASKS_DOC, doc)
        rt.store.put_json(rt.user, rt.job_id, PROGRESS, progress)
        self._dirty = False
        self._published = time.monotonic()

    def log(self, name: str, text: str) -> None:
        if text:
            rt = self.runtime
            rt.store.put_log_chunk(rt.user, rt.job_id, 1, 0, text.encode(), task=name)


class TaskDispatcher:
    """The work of Ploomber's ``Parallel`` executor, with the job's Dask
    workers as its pool: hand out ready tasks, feed outcomes back."""

    def __init__(self, runtime: Any, project: ProjectFiles, states: TaskStates):
        self.runtime, self.project, self.states = runtime, project, states
        self.failures: list[Any] = []

    def run(self, dag: Any) -> None:
        import cloudpickle
        import distributed
        from ploomber.constants import TaskStatus

        client = self.runtime.client
        client.register_plugin(ProjectPlugin(self.project))
        key = self.project.env[PLOOMBER_KEY_ENV]
        running: dict[Any, Any] = {}
        started: set[str] = set()
        while True:
            self._settle_waiting(dag)
            for task in list(dag.values()):
                if task.exec_status == TaskStatus.WaitingDownload:
                    self._download(task)
            ready = [
                t
                for t in dag.values()
                if t.exec_status == TaskStatus.WaitingExecution
                and t.name not in started
            ]
            for task in ready[: max(0, self._slots(client) - len(running))]:
                pickled = cloudpickle.dumps(task)
                future = client.submit(
                    run_on_worker,
                    pickled,
                    task_signature(key, pickled),
                    product_paths(task),
                    self.project.folder,
                    self._upstream_files(task),
                    pure=False,
                )
                running[future] = task
                started.add(task.name)
                self.states.set(task.name, JobState.RUNNING, started=utcnow())
            if not running:
                return
            try:
                done = distributed.wait(
                    list(running), timeout=POLL_SECONDS, return_when="FIRST_COMPLETED"
                ).done
            except distributed.TimeoutError:
                self.states.publish_if_due()
                continue  # the workers may have grown: look again
            for future in done:
                task = running.pop(future)
                self._record(task, self._outcome(future))

    def _download(self, task: Any) -> None:
        """A task whose stored products are up to date: they are fetched (and
        checked), not made. Ploomber's own decision; the download is main's,
        so no task process starts for it."""
        from ploomber.constants import TaskStatus

        try:
            task.product.download()
        except Exception as exc:
            # A stored copy that is gone or does not verify is never used:
            # the task is made again, which replaces it.
            note = f"stored products not taken ({exc}); making them again\n"
            print(f"dask-batch: task {task.name}: {note}", file=sys.stderr, end="")
            self.states.log(task.name, note)
            task.exec_status = TaskStatus.WaitingExecution
            return
        task.product.metadata.clear()  # read again from the downloaded copy
        task.exec_status = TaskStatus.Executed
        self.states.set(
            task.name,
            JobState.SUCCEEDED,
            reused_from="storage",
            message="up to date in storage: its products were taken, not made",
            finished=utcnow(),
        )

    @staticmethod
    def _slots(client: Any) -> int:
        info = client.scheduler_info()
        return max(1, sum(w["nthreads"] for w in info["workers"].values()))

    @staticmethod
    def _upstream_files(task: Any) -> dict[str, bytes]:
        return {
            path: _read(path)
            for up in task.upstream.values()
            for path in product_paths(up)
            if os.path.isfile(path)
        }

    @staticmethod
    def _outcome(future: Any) -> dict[str, Any]:
        try:
            return dict(future.result())
        except Exception as exc:  # the worker died, the task was lost
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def _settle_waiting(self, dag: Any) -> None:
        """Tasks Ploomber found up to date, or aborted below a failure."""
        from ploomber.constants import TaskStatus

        for task in dag.values():
            record = self.states.records.get(task.name)
            if record is None or record.state.is_terminal:
                continue
            if task.exec_status == TaskStatus.Skipped:
                self.states.set(
                    task.name,
                    JobState.SUCCEEDED,
                    reused_from="up to date",
                    message="up to date: not run",
                )
            elif task.exec_status == TaskStatus.Aborted:
                self.states.set(
                    task.name,
                    JobState.CANCELLED,
                    message="not run: a task it depends on failed",
                )

    def _record(self, task: Any, outcome: dict[str, Any]) -> None:
        from ploomber.constants import TaskStatus
        from ploomber.messagecollector import Message

        fields: dict[str, Any] = {"finished": utcnow()}
        fields["worker"] = str(outcome.get("worker") or "")
        for name in ("started", "finished"):  # the worker's own times
            if isinstance(outcome.get(name), (int, float)):
                fields[name] = datetime.datetime.fromtimestamp(
                    outcome[name], datetime.timezone.utc
                )
        self.states.log(task.name, str(outcome.get("log") or ""))
        if outcome.get("ok"):
            for path, data in (outcome.get("products") or {}).items():
                _write_inside(self.project.folder, path, data)
            task.product.metadata.update_locally(outcome.get("metadata") or {})
            # As Parallel does: Executed unblocks what depends on the task,
            # Errored aborts it.
            task.exec_status = TaskStatus.Executed
            self.states.set(task.name, JobState.SUCCEEDED, **fields)
            return
        error = str(outcome.get("error") or "failed")
        task.exec_status = TaskStatus.Errored
        self.states.set(
            task.name,
            JobState.FAILED,
            message=str(outcome.get("cause") or error.strip().splitlines()[-1])[:1000],
            error={"type": "TaskBuildError", "message": error[-20000:]},
            **fields,
        )
        self.failures.append(Message(task=task, message=error, obj=None))


def make_executor(dispatcher: TaskDispatcher) -> Any:
    """A Ploomber executor (``ploomber.executors.abc.Executor``) over ``dispatcher``."""
    from ploomber.exceptions import DAGBuildError
    from ploomber.executors import Serial
    from ploomber.executors.abc import Executor
    from ploomber.messagecollector import BuildExceptionsCollector

    class DaskExecutor(Executor):
        def __call__(self, dag: Any, show_progress: bool = False) -> list[Any]:
            super().__call__(dag)  # Ploomber's checks of the tasks' states
            dispatcher.run(dag)
            if dispatcher.failures:
                raise DAGBuildError(str(BuildExceptionsCollector(dispatcher.failures)))
            return []

        def __deepcopy__(self, memo: dict[int, Any]) -> Any:
            # build_partially copies the DAG: the copy runs on the workers too.
            return self

        def __reduce__(self) -> tuple[Any, tuple[()]]:
            # A task drags its DAG, executor included, to the worker; there
            # it builds itself alone, so Ploomber's Serial stands in.
            return Serial, ()

    return DaskExecutor()


def build_project(
    spec: str,
    options: list[str],
    task_names: list[str],
    placeholders: dict[str, str] | None = None,
    project_name: str = "",
    *,
    runtime: Any,
) -> dict[str, str]:
    """Main of a Ploomber job: build the project in this folder on the workers.

    ``placeholders``: those of :data:`CAPTURED` as the submitter's machine
    resolved them. ``project_name``: where the project's products are kept
    in storage, for later jobs of the same project. Returns each task's
    final state by name.
    """
    quiet_ploomber()
    from ploomber.exceptions import DAGBuildError
    from ploomber.products import File

    from dask_batch.runtime.ploomber_client import ProjectStorageClient

    folder = os.getcwd()
    sys.path.insert(0, folder)  # the project's modules, as `ploomber build` has them
    with captured_placeholders(placeholders or capture_placeholders(folder)):
        dag, args = load_dag(spec, options)
    if project_name:
        store = runtime.store
        prefix = posixpath.join(store.user_path(runtime.user), PROJECTS, project_name)
        url = store.fs.unstrip_protocol(prefix)
        dag.clients[File] = ProjectStorageClient(url, store.storage_options, folder)
    states = TaskStates(runtime, task_names)
    # The files main's process checked and unpacked, before any task adds
    # products to the folder.
    archive = _pack_cwd()
    project = ProjectFiles(folder=folder, spec=spec, archive=archive, env=runtime.env)
    dag.executor = make_executor(TaskDispatcher(runtime, project, states))
    try:
        if args.partially:
            dag.build_partially(
                args.partially,
                force=args.force,
                skip_upstream=args.skip_upstream,
                show_progress=False,
            )
        else:
            dag.build(force=args.force, show_progress=False)
    except DAGBuildError as exc:
        print(str(exc), file=sys.stderr)
        raise ElementsFailed(_failure_message(runtime.job_id, states)) from None
    finally:
        states.flush()
        _keep_products(dag, folder)
    return {name: r.state.value for name, r in states.records.items()}


#: Main's process passes it what it knows beyond the payload (see child).
build_project.__dask_batch_runtime__ = True  # type: ignore[attr-defined]


def _keep_products(dag: Any, folder: str) -> None:
    """Copy every product and its metadata into the job's artifacts, under
    its path in the project."""
    import shutil

    from dask_batch.runtime.context import artifacts_dir

    target = artifacts_dir()
    for task in dag.values():
        for path in product_paths(task):
            if not os.path.isfile(path):
                continue
            relative = os.path.relpath(path, folder)
            if relative.startswith(".."):
                continue  # a product outside the project: not ours to keep
            destination = os.path.join(target, relative)
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            shutil.copy2(path, destination)
            if path.endswith(".ipynb"):
                _keep_as_html(path, destination[: -len(".ipynb")] + ".html")


def _keep_as_html(notebook: str, destination: str) -> None:
    """An executed notebook, as HTML beside it in the artifacts (for
    reading it on the jobs page or in a browser); not one of its products."""
    if os.path.exists(destination):
        return  # the spec makes one itself
    try:
        import nbconvert
        import nbformat

        html, _ = nbconvert.HTMLExporter().from_notebook_node(
            nbformat.read(notebook, as_version=4)
        )
    except Exception as exc:  # a notebook nbconvert cannot render
        print(f"dask-batch: no HTML of {notebook}: {exc}", file=sys.stderr)
        return
    with open(destination, "w", encoding="utf-8") as f:
        f.write(html)


def _failure_message(job_id: str, states: TaskStates) -> str:
    """Which tasks failed, the first one's error, and where its log is."""
    failed = [r for r in states.records.values() if r.state is JobState.FAILED]
    if not failed:  # Ploomber failed outside a task (a DAG-level hook)
        return (
            f"the Ploomber build of job {job_id} failed outside its tasks; "
            f"see its log: dask batch logs {job_id}"
        )
    first = failed[0]
    detail = first.message  # the task's own error, without Ploomber's wrapping
    names = ", ".join(repr(r.name) for r in failed[:10])
    more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
    return (
        f"{len(failed)} of {len(states.records)} Ploomber tasks of job {job_id} "
        f"failed ({names}{more}); task {first.name!r}: {detail}. See its log: "
        f"dask batch logs {job_id} --task {first.name}"
    )
