"""Pipelines and arrays: declare the tasks of one job, or refuse them.

A pipeline is a DAG of steps (functions, scripts, notebooks, or
``package.module:function`` targets), read from Python (:class:`Step`) or from
a YAML file shaped like Ploomber's; an array is one function or script per
element of a list. Both become one job whose payload is a table of mains, one
per task, and whose signed spec declares the tasks (see
:mod:`dask_batch.core.tasks`). Each task gets a content digest of its code, its
parameters and its upstream tasks' digests, which ``resume=`` compares.

Client side: reads the user's local files, touches neither the gateway nor
the job storage.
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
from dask.base import tokenize

from dask_batch.client import submission as _submission
from dask_batch.core.elements import ArrayShape
from dask_batch.core.exceptions import SubmitError
from dask_batch.core.names import InvalidNameError
from dask_batch.core.options import SubmitOptions
from dask_batch.core.tasks import (
    MAX_ARRAY_ELEMENTS,
    TaskSpec,
    check_task_name,
    order_tasks,
    parse_array_spans,
)
from dask_batch.runtime import targets as _targets
from dask_batch.runtime.arrays import ArrayWork, drive_array
from dask_batch.workflows.ploomber_specs import is_ploomber_spec, ploomber_target

__all__ = ["Pipeline", "Step"]


@dataclass(frozen=True)
class Step:
    """One step of a pipeline.

    Parameters
    ----------
    source : callable or str
        What runs: a Python function, a script (``clean.py``), a notebook
        (``report.ipynb``, run with papermill) or ``package.module:function``.
    name : str, optional
        Default: the function's name, or the file's name without suffix.
    params : dict, optional
        A function's keyword arguments; a notebook's papermill parameters; a
        script's ``dask_batch.current_job().params``.
    upstream : list of str
        Steps that must succeed first. A function step that takes an
        ``upstream`` argument gets their return values as a dict by name.
    args : list, optional
        A function's positional arguments, or a script's command line.

    Examples
    --------
    >>> from dask_batch import Step
    >>> steps = [
    ...     Step(load, params={"day": "2026-11-26"}),
    ...     Step("clean.py", upstream=["load"]),
    ...     Step("report.ipynb", upstream=["clean"]),
    ... ]
    """

    source: Callable[..., Any] | str | os.PathLike[str]
    name: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    upstream: Sequence[str] = ()
    args: Sequence[Any] = ()


@dataclass(frozen=True)
class Pipeline:
    """A pipeline read from YAML: its steps and how they run.

    Attributes
    ----------
    steps : list of Step
    name : str or None
    max_parallel : int or None
    fail_fast : bool
    options : dict
        Submit options from the file's ``options:`` (arguments win).
    """

    steps: list[Step]
    name: str | None = None
    max_parallel: int | None = None
    fail_fast: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def _bad(job_id: str, reason: str) -> SubmitError:
    return SubmitError.not_submitted(job_id, reason)


#: The largest pipeline YAML file read (a file of steps, not of data).
MAX_PIPELINE_BYTES = 1024 * 1024


def load_pipeline(path: str | os.PathLike[str], job_id: str) -> Pipeline:
    """Read a pipeline YAML file; sources are relative to its folder.

    The format::

        name: nightly            # optional: the job's name
        max_parallel: 2          # optional: steps at once
        fail_fast: false         # optional: stop everything at a failure
        options: {workers: 2}    # optional: submit options
        steps:
          - source: load.py      # a script, notebook or module:function
            name: load           # optional: default the file's stem
            params: {day: 1}     # optional
            args: [--fast]       # optional: a script's command line
          - source: clean.ipynb
            upstream: [load]
    """
    import yaml

    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_PIPELINE_BYTES + 1)
        if len(text) > MAX_PIPELINE_BYTES:
            raise _bad(
                job_id,
                f"the pipeline {path!r} is over {MAX_PIPELINE_BYTES // 1024} KiB: "
                "a pipeline file declares steps; keep data in files its steps read.",
            )
        doc = yaml.safe_load(text.decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise _bad(job_id, f"cannot read the pipeline {path!r}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("steps"), list):
        raise _bad(job_id, f"{path!r} is not a pipeline: it needs a list of steps.")
    unknown = sorted(
        set(doc) - {"name", "max_parallel", "fail_fast", "options", "steps"}
    )
    if unknown:
        raise _bad(
            job_id,
            f"{path!r} has unknown keys {unknown}; a pipeline has name, "
            "max_parallel, fail_fast, options and steps.",
        )
    folder = os.path.dirname(os.path.abspath(path))
    steps = []
    for number, entry in enumerate(doc["steps"], 1):
        steps.append(_step(job_id, f"step {number} of {path!r}", folder, entry))
    options = doc.get("options") or {}
    if not isinstance(options, dict):
        raise _bad(job_id, f"options of {path!r} must be a mapping.")
    return Pipeline(
        steps,
        name=doc.get("name"),
        max_parallel=doc.get("max_parallel"),
        fail_fast=bool(doc.get("fail_fast", False)),
        options=options,
    )


def _step(job_id: str, where: str, folder: str, entry: Any) -> Step:
    """One step of a pipeline file, or a SubmitError saying what is wrong."""
    if not isinstance(entry, dict) or not isinstance(entry.get("source"), str):
        raise _bad(job_id, f"{where} has no source.")
    extra = sorted(set(entry) - {"source", "name", "params", "upstream", "args"})
    if extra:
        raise _bad(
            job_id,
            f"{where} has unknown keys {extra}; a step has "
            "source, name, params, upstream and args.",
        )
    source = entry["source"]
    if source.endswith((".py", ".ipynb")) and not os.path.isabs(source):
        source = os.path.join(folder, source)
    upstream = entry.get("upstream") or []
    if isinstance(upstream, str):
        upstream = [upstream]
    params, args, name = (
        entry.get("params") or {},
        entry.get("args") or [],
        entry.get("name"),
    )
    if not isinstance(upstream, list) or not all(isinstance(u, str) for u in upstream):
        raise _bad(job_id, f"{where}: upstream must be a step name or a list of them.")
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise _bad(job_id, f"{where}: params must be a mapping of names to values.")
    if not isinstance(args, list):
        raise _bad(job_id, f"{where}: args must be a list.")
    if name is not None and not isinstance(name, str):
        raise _bad(job_id, f"{where}: name must be text.")
    return Step(source, name=name, params=params, upstream=upstream, args=args)


def _function_code(func: Callable[..., Any]) -> bytes:
    """What identifies a function's code: its source, or its pickle."""
    try:
        return inspect.getsource(func).encode()
    except (OSError, TypeError):
        return cloudpickle.dumps(func)


def _takes_upstream(func: Callable[..., Any]) -> bool:
    try:
        return "upstream" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def _step_main(
    job_id: str, step: Step
) -> tuple[str, str, str, tuple[Any, Any, Any], bytes, bool]:
    """``(name, kind, target, (func, args, kwargs), code, pass_upstream)``."""
    source = step.source
    params = dict(step.params)
    if callable(source):
        target = _submission.function_target(job_id, source, tuple(step.args), params)
        main = (target.func, target.args, target.kwargs)
        return (
            step.name or target.default_name,
            "function",
            target.target,
            main,
            _function_code(source),
            _takes_upstream(source),
        )
    path = os.fspath(source)
    if path.endswith(".ipynb"):
        target = _submission.notebook_target(job_id, path, params)
        code = target.args[1]
    else:
        target = _submission.script_target(job_id, path, list(step.args))
        code = target.args[1] if target.kind == "script" else path.encode()
        if target.kind == "module":
            # A module:function step takes its params as keyword arguments.
            target_name, args, _ = target.args
            target = _submission.Target(
                "module",
                target.target,
                target.default_name,
                _targets.run_function,
                (target_name, args, params),
                {},
            )
    stem = os.path.basename(target.default_name).rsplit(".", 1)[0]
    main = (target.func, target.args, target.kwargs)
    return step.name or stem, target.kind, target.target, main, bytes(code), False


def _digest(*parts: Any) -> str:
    return "sha256:" + hashlib.sha256(tokenize(*parts).encode()).hexdigest()


def build_pipeline(
    job_id: str, steps: Iterable[Step]
) -> tuple[dict[str, tuple[Any, Any, Any]], list[TaskSpec]]:
    """The table of mains and the declared tasks, upstream tasks first."""
    table: dict[str, tuple[Any, Any, Any]] = {}
    declared: list[TaskSpec] = []
    steps = list(steps)
    if not steps:
        raise _bad(job_id, "a pipeline needs at least one step.")
    for step in steps:
        if not isinstance(step, Step):
            raise _bad(job_id, f"{step!r} is not a dask_batch.Step.")
        name, kind, target, main, code, pass_upstream = _step_main(job_id, step)
        try:
            name = check_task_name(name, job_id=job_id)
            upstream = tuple(check_task_name(u, job_id=job_id) for u in step.upstream)
        except InvalidNameError as exc:
            raise _bad(job_id, str(exc)) from None
        if name in table:
            raise _bad(job_id, f"two steps are named {name!r}: name one of them.")
        table[name] = main
        params = {k: v for k, v in dict(step.params).items()}
        declared.append(
            TaskSpec(
                name,
                upstream,
                kind,
                target,
                digest=_digest(kind, target, code, params, list(step.args)),
                pass_upstream=pass_upstream,
                params=_json_params(params),
            )
        )
    try:
        ordered = order_tasks(declared, job_id)
    except InvalidNameError as exc:
        raise _bad(job_id, str(exc)) from None
    # A step's digest covers its upstream steps' digests: a change re-runs
    # everything below it.
    digests: dict[str, str] = {}
    final = []
    for task in ordered:
        digest = _digest(task.digest, [digests[u] for u in task.upstream])
        digests[task.name] = digest
        final.append(TaskSpec(**{**task.__dict__, "digest": digest}))
    return table, final


def _json_params(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as the spec shows them: JSON values kept, others described."""
    import json

    out = {}
    for key, value in params.items():
        try:
            json.dumps(value)
            out[str(key)] = value
        except (TypeError, ValueError):
            out[str(key)] = repr(value)[:200]
    return out


def check_max_parallel(job_id: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(job_id, f"max_parallel must be a whole number >= 1, got {value!r}.")
    return value


# -- what BatchClient's submit methods hand to the job service ---------------------
def script_array_target(
    job_id: str, script: _submission.Target, array: str
) -> _submission.Target:
    """An array job that runs ``script`` once per index of ``array``
    (Slurm's syntax), each element on the workers."""
    if script.kind != "script":
        raise _bad(job_id, "--array runs a script (a path ending in .py).")
    spans, limit = parse_array_spans(array, job_id)
    filename, source, argv = script.args
    work = ArrayWork("script", script=(filename, source, list(argv)))
    return _submission.Target(
        "array",
        script.target,
        script.default_name,
        drive_array,
        (work,),
        {},
        max_parallel=limit,
        array=ArrayShape(tuple(spans)),
        element_kind="script",
    )


def function_array_target(
    job_id: str,
    func: Callable[..., Any],
    items: Iterable[Any],
    kwargs: dict[str, Any],
    max_parallel: int | None,
) -> _submission.Target:
    """An array job that runs ``func(item, **kwargs)`` once per item, each
    element on the workers."""
    limit = check_max_parallel(job_id, max_parallel)
    target = _submission.function_target(job_id, func, (), kwargs)
    items = list(items)
    if not items:
        raise _bad(job_id, "an array needs at least one element.")
    if len(items) > MAX_ARRAY_ELEMENTS:
        raise _bad(
            job_id,
            f"an array has at most {MAX_ARRAY_ELEMENTS} elements, got "
            f"{len(items)}: split it into several jobs.",
        )
    work = ArrayWork("function", func=func, items=items, kwargs=dict(kwargs))
    return _submission.Target(
        "array",
        target.target,
        str(getattr(func, "__name__", "array")),
        drive_array,
        (work,),
        {},
        params=dict(kwargs),
        max_parallel=limit,
        array=ArrayShape.of_count(len(items)),
        element_kind="function",
    )


def pipeline_target(
    job_id: str,
    steps: Iterable[Step] | str | os.PathLike[str],
    max_parallel: int | None,
    fail_fast: bool | None,
    submit_options: SubmitOptions | None,
    ploomber_options: Iterable[str] = (),
) -> tuple[_submission.Target, SubmitOptions | None]:
    """A pipeline job of ``steps`` (or of a pipeline YAML file, ours or a
    Ploomber spec, which takes ``ploomber build``'s ``ploomber_options``).

    Returns the target and the submit options, the file's own merged under
    ``submit_options`` (arguments win over the file).
    """
    name = None
    if isinstance(steps, (str, os.PathLike)) and is_ploomber_spec(steps):
        target, folder, env = ploomber_target(job_id, steps, list(ploomber_options))
        own = _submission.resolve_env(job_id, (submit_options or SubmitOptions()).env)
        # The project's folder is the job's files: main builds it there.
        extra = {"files": folder, "env": {**own, **env}}
        return target, SubmitOptions.merge(submit_options, extra)
    if ploomber_options:
        raise SubmitError.not_submitted(
            job_id, "Ploomber's options are for Ploomber specs (top-level tasks:)."
        )
    if isinstance(steps, (str, os.PathLike)):
        pipeline = load_pipeline(steps, job_id)
        try:
            submit_options = SubmitOptions.merge(submit_options, pipeline.options)
        except TypeError as exc:
            raise SubmitError.not_submitted(job_id, str(exc)) from None
        steps, name = pipeline.steps, pipeline.name
        max_parallel = pipeline.max_parallel if max_parallel is None else max_parallel
        fail_fast = pipeline.fail_fast if fail_fast is None else fail_fast
    limit = check_max_parallel(job_id, max_parallel)
    table, tasks = build_pipeline(job_id, steps)
    target = _submission.Target(
        "pipeline",
        ", ".join(t.name for t in tasks),
        name or "pipeline",
        None,
        (table,),
        {},
        tasks=tasks,
        max_parallel=limit,
        fail_fast=bool(fail_fast),
    )
    return target, submit_options
