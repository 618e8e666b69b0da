"""Make a job an MLflow run: created when the job is submitted.

The run is created (or, for ``mlflow run -b dask-batch``, tagged) here, on
the client. Main's process gets ``MLFLOW_RUN_ID``, ``MLFLOW_EXPERIMENT_ID``
and the tracking server's address and credentials as encrypted env values,
so ``mlflow.log_*`` in main logs to the job's run. The job runner ends the
run from the job's final state (:mod:`dask_batch.runtime.mlflow_finish`).

Client side; MLflow is imported only when a job is tracked.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dask.config

from dask_batch.client.submission import Submission
from dask_batch.core.exceptions import SubmitError

logger = logging.getLogger("dask_batch")

#: Variables of the submitting process that carry the tracking server's
#: credentials to the job (as encrypted env values, like ``env=``).
CREDENTIAL_NAMES = (
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_AUTH",
    "MLFLOW_TRACKING_AWS_SIGV4",
    "MLFLOW_TRACKING_INSECURE_TLS",
)

# MLflow keeps parameter values up to 6000 characters; a job's keyword
# arguments are shown, not replayed, so long ones are shortened.
_PARAM_CHARS = 500


@dataclass(frozen=True)
class Tracking:
    """How a job is tracked in MLflow.

    Attributes
    ----------
    experiment : str
        Experiment name (created when missing) for a new run.
    run_id : str
        An existing run to attach the job to (MLflow projects); "" creates one.
    tracking_uri : str
        "" : ``batch.mlflow.tracking-uri``, else MLflow's own setting.
    params : dict of str to str
        Parameters logged on a new run.
    """

    experiment: str = ""
    run_id: str = ""
    tracking_uri: str = ""
    params: dict[str, str] = field(default_factory=dict)


def requested(
    job_id: str, option: bool | str | None, params: Mapping[str, Any]
) -> Tracking | None:
    """The tracking a submit asked for: ``mlflow=`` wins over ``batch.mlflow.enabled``.

    ``option`` is True, False, None (the configuration decides) or an
    experiment name.
    """
    if option is None:
        option = bool(dask.config.get("batch.mlflow.enabled"))
    if not isinstance(option, (bool, str)) or option == "":
        raise SubmitError.not_submitted(
            job_id, f"mlflow takes True, False or an experiment name, got {option!r}."
        )
    if option is False:
        return None
    experiment = option if isinstance(option, str) else ""
    shown = {str(k): _shown(v) for k, v in params.items()}
    return Tracking(experiment=experiment, params=shown)


def _shown(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _PARAM_CHARS else text[: _PARAM_CHARS - 3] + "..."


def tracking_uri(explicit: str = "") -> str:
    """The tracking server jobs log to, made usable from another process.

    A local store (``sqlite:///mlflow.db``, a folder) works only where the
    job's scheduler shares this file system (the embedded local gateway);
    relative paths are made absolute for that case.
    """
    import mlflow

    uri = explicit or dask.config.get("batch.mlflow.tracking-uri") or ""
    uri = uri or mlflow.get_tracking_uri()
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme == "":
        return os.path.abspath(uri)
    if scheme == "file":
        return "file://" + os.path.abspath(uri[len("file://") :])
    return str(uri)


def redacted(uri: str) -> str:
    """``uri`` without user name and password, for records and tags."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=host))


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI, for an http(s) tracking server; else ""."""
    if urllib.parse.urlsplit(uri).scheme not in ("http", "https"):
        return ""
    return f"{redacted(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def job_link(job_id: str) -> str:
    """Where a user finds the job: ``batch.mlflow.job-url``, else the CLI command."""
    template = dask.config.get("batch.mlflow.job-url") or ""
    if template:
        return str(template).format(job_id=job_id)
    return f"dask batch status {job_id}"


def job_tags(job_id: str, user: str, gateway_address: str) -> dict[str, str]:
    """Tags that tie a run to its job and its user."""
    return {
        # MLflow's own user tag: the run's "User" in the UI and in searches.
        "mlflow.user": user,
        "dask_batch.job_id": job_id,
        "dask_batch.user": user,
        "dask_batch.job_url": job_link(job_id),
        "dask_batch.gateway": gateway_address,
    }


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def begin(
    submission: Submission, user: str, tracking: Tracking, gateway_address: str
) -> Submission:
    """Create (or tag) the job's run; the submission with the run's env values.

    Raises SubmitError, naming the job, when MLflow is missing or its
    tracking server refuses; nothing of the job exists yet then.
    """
    job_id = submission.job_id
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise SubmitError.not_submitted(
            job_id,
            "tracking it in MLflow needs MLflow: pip install 'dask-batch[mlflow]'.",
        ) from None
    uri = tracking_uri(tracking.tracking_uri)
    try:
        client = _client(uri)
        tags = job_tags(job_id, user, gateway_address)
        run_id = tracking.run_id
        if run_id:
            experiment_id = client.get_run(run_id).info.experiment_id
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
        else:
            experiment_id = _experiment_id(client, tracking.experiment, user)
            run = client.create_run(
                experiment_id,
                tags={
                    **tags,
                    "mlflow.source.name": str(submission.spec.get("function") or ""),
                    "mlflow.source.type": "JOB",
                },
                run_name=str(submission.spec.get("name") or job_id),
            )
            run_id = run.info.run_id
            _log_params(client, run_id, tracking.params)
    except Exception as exc:
        raise SubmitError.not_submitted(
            job_id,
            f"its MLflow run could not be created at {redacted(uri)!r} "
            f"({type(exc).__name__}: {exc}). Check the tracking URI "
            "(batch.mlflow.tracking-uri or MLFLOW_TRACKING_URI) and credentials.",
        ) from exc
    env = {name: os.environ[name] for name in CREDENTIAL_NAMES if name in os.environ}
    env.update(submission.env_values)  # the job's own env= wins
    env.update(
        MLFLOW_TRACKING_URI=uri,
        MLFLOW_RUN_ID=run_id,
        MLFLOW_EXPERIMENT_ID=str(experiment_id),
    )
    spec = dict(submission.spec)
    spec["env_names"] = sorted(env)
    spec["mlflow"] = {
        "run_id": run_id,
        "experiment_id": str(experiment_id),
        "tracking_uri": redacted(uri),
        "run_url": run_url(uri, str(experiment_id), run_id),
    }
    return dataclasses.replace(submission, spec=spec, env_values=env)


def _experiment_id(client: Any, name: str, user: str) -> str:
    name = name or str(dask.config.get("batch.mlflow.experiment")).format(user=user)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name))
    except Exception:
        # Created meanwhile by another submit of the same user.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def _log_params(client: Any, run_id: str, params: Mapping[str, str]) -> None:
    if not params:
        return
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])


def terminate(client: Any, run_id: str, status: str, message: str) -> None:
    """End a run that is still running with ``status``, and why in a tag.

    A run that has ended already is left as it is.
    """
    from mlflow.entities import RunStatus

    if RunStatus.is_terminated(client.get_run(run_id).info.status):
        return
    client.set_tag(run_id, "dask_batch.error", message[:5000])
    client.set_terminated(run_id, status)


def end_unsubmitted(submission: Submission, message: str) -> None:
    """Mark the run of a job that could not be launched FAILED, with why."""
    run_id = (submission.spec.get("mlflow") or {}).get("run_id")
    if not run_id:
        return
    try:
        client = _client(submission.env_values["MLFLOW_TRACKING_URI"])
        terminate(client, run_id, "FAILED", message)
    except Exception as exc:
        logger.warning(
            "The MLflow run %s of job %s, which was not submitted, could not be "
            "marked FAILED: %s",
            run_id,
            submission.job_id,
            exc,
        )


def end_run(spec: Mapping[str, Any], status: str, message: str) -> None:
    """End the run of a job that ended where no runner could (LOST, cancelled
    before its cluster ran), with this process's own MLflow settings.

    ``spec`` must be the job's spec as its submitter signed it. The run is
    ended only on this process's own tracking server: a spec naming another
    server gets nothing, so that no credentials of this process ever go to
    an address read from storage.
    """
    tracked = spec.get("mlflow")
    if not isinstance(tracked, Mapping) or not tracked.get("run_id"):
        return
    job_id = str(spec.get("id") or "")
    run_id = str(tracked["run_id"])
    try:
        mine = tracking_uri()
        if redacted(mine) != str(tracked.get("tracking_uri") or ""):
            logger.warning(
                "The MLflow run %s of job %s is on %s, not on this process's "
                "tracking server %s: it is left as it is.",
                run_id,
                job_id,
                tracked.get("tracking_uri"),
                redacted(mine),
            )
            return
        terminate(_client(mine), run_id, status, message)
    except Exception as exc:
        logger.warning(
            "The MLflow run of job %s could not be marked %s (set "
            "MLFLOW_TRACKING_URI and its credentials here): %s",
            job_id,
            status,
            exc,
        )


def discard(submission: Submission) -> None:
    """Delete the run made for a submit that found its job already started.

    With an idempotency key that an earlier submit claimed, the earlier job
    (and its run) is the one that runs.
    """
    run_id = (submission.spec.get("mlflow") or {}).get("run_id")
    if run_id:
        _client(submission.env_values["MLFLOW_TRACKING_URI"]).delete_run(run_id)
