"""Main's process: ``python -m dask_batch._child``, started by the job runner.

Reads its configuration (pickled, from stdin), loads and checks the payload,
connects a default Dask client to its own scheduler over the cluster's TLS,
runs main, stores the result or the error, and reports the outcome in a small
file for the runner. Its stdout and stderr are the job's log.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import sys
import tarfile
import threading
import time
import traceback
from typing import Any, NoReturn

import cloudpickle
import fsspec

from . import _context
from ._pickling import dumps_result
from ._store import (
    ERROR,
    FILES,
    PAYLOAD,
    RESULT,
    SECRETS,
    JobStore,
    digest,
)


def _exit_with_parent(parent: int) -> None:
    # The gateway signals the scheduler only; if the scheduler dies without
    # closing its plugins (SIGKILL), main must not live on as an orphan. The
    # runner passes its pid: it may have died before this process got here.
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(70)


def _write_outcome(path: str, outcome: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(outcome, f)
    os.replace(tmp, path)


def _error_doc(exc: BaseException, *, type_name: str | None = None) -> dict[str, Any]:
    cls = type(exc)
    doc: dict[str, Any] = {
        "type": type_name or f"{cls.__module__}.{cls.__qualname__}",
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    code = getattr(exc, "code", None)  # SystemExit, and ScriptExit of scripts
    if isinstance(code, int):
        doc["returncode"] = code
    return doc


def _fail(store: JobStore, cfg: dict[str, Any], error: dict[str, Any]) -> NoReturn:
    print(
        f"dask-batch: job {cfg['job_id']} failed: {error['type']}: {error['message']}",
        file=sys.stderr,
    )
    try:
        store.put_json(cfg["user"], cfg["job_id"], ERROR, error)
    finally:
        _write_outcome(cfg["outcome_path"], {"status": "failed", "error": error})
    sys.exit(1)


def _load_main(store: JobStore, cfg: dict[str, Any]) -> tuple[Any, tuple, dict]:
    job_id = cfg["job_id"]
    data = store.get(cfg["user"], job_id, PAYLOAD)
    expected = cfg.get("payload_digest")
    if expected and digest(data) != expected:
        _fail(
            store,
            cfg,
            {
                "type": "IntegrityError",
                "message": (
                    f"the payload of job {job_id!r} in storage does not match the "
                    "digest recorded at submission; it was changed after submit. "
                    "Submit the job again."
                ),
                "traceback": "",
            },
        )
    try:
        func, args, kwargs = cloudpickle.loads(data)
    except ImportError as exc:
        module = getattr(exc, "name", None) or str(exc)
        _fail(
            store,
            cfg,
            _error_doc(exc, type_name="ModuleNotFoundError")
            | {
                "message": (
                    f"main of job {job_id!r} cannot be loaded on the cluster: module "
                    f"{module!r} is not importable there ({exc}). Install it in the "
                    "cluster's environment, or call "
                    "cloudpickle.register_pickle_by_value(module) before submit."
                )
            },
        )
    except Exception as exc:
        _fail(
            store,
            cfg,
            _error_doc(exc)
            | {
                "message": f"main of job {job_id!r} cannot be unpickled on the "
                f"cluster: {exc}. Check that client and cluster run the same "
                "Python and library versions.",
            },
        )
    return func, args, kwargs


def _connect(cfg: dict[str, Any]) -> Any:
    from distributed import Client
    from distributed.security import Security

    ca, cert, key = cfg["tls"]
    if ca:
        security = Security(
            tls_ca_file=ca,
            tls_client_cert=cert,
            tls_client_key=key,
            require_encryption=True,
        )
        return Client(cfg["scheduler_address"], security=security, set_as_default=True)
    return Client(cfg["scheduler_address"], set_as_default=True)


def _prepare(store: JobStore, cfg: dict[str, Any]) -> Any:
    """Storage access, working directory, files, secrets and logging for main."""
    job_id, user = cfg["job_id"], cfg["user"]
    # fsspec.open(artifacts_path(...)) in main gets the job's storage options.
    protocol = store.fs.protocol
    for name in [protocol] if isinstance(protocol, str) else protocol:
        fsspec.config.conf.setdefault(name, {}).update(store.storage_options)
        try:
            # main's subprocesses (a notebook's kernel) read fsspec's config
            # from the environment: same process tree, same credentials.
            os.environ[f"FSSPEC_{name.upper()}"] = json.dumps(fsspec.config.conf[name])
        except TypeError:
            print(
                f"dask-batch: storage options of job {job_id} are not JSON; "
                "subprocesses of main get no storage credentials",
                file=sys.stderr,
            )
    reporter = _context._activate(
        store,
        _context.CurrentJob(
            id=job_id,
            user=user,
            name=cfg.get("name", ""),
            artifacts_url=_context.artifacts_url(store, user, job_id),
            storage_url=store.url,
        ),
    )
    workdir = cfg.get("workdir")
    if workdir:
        os.makedirs(workdir, exist_ok=True)
        os.chdir(workdir)
    if cfg.get("has_files"):
        archive = store.get(user, job_id, FILES)
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            # Refuse absolute paths, "..", devices (Python >= 3.10.12).
            if hasattr(tarfile, "data_filter"):
                tar.extractall(".", filter="data")
            else:  # pragma: no cover
                tar.extractall(".")
    if cfg.get("secret_key"):
        from cryptography.fernet import Fernet

        token = store.get(user, job_id, SECRETS)
        secrets = json.loads(Fernet(cfg["secret_key"]).decrypt(token))
        os.environ.update(secrets["env"])
        cfg["result_key"] = secrets.get("result_key")
    os.environ["DASK_BATCH_JOB_ID"] = job_id
    # main's logging.info(...) goes to the job's log like its prints.
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return reporter


def main() -> None:
    cfg = pickle.load(sys.stdin.buffer)
    threading.Thread(
        target=_exit_with_parent, args=(cfg["runner_pid"],), daemon=True
    ).start()
    store = JobStore(
        cfg["storage_url"],
        cfg["storage_options"],
        retry_for=cfg.get("storage_retry_for", 0),
    )
    func, args, kwargs = _load_main(store, cfg)
    reporter = _prepare(store, cfg)

    client = _connect(cfg)
    if cfg.get("memory_limit"):
        import resource

        # After start-up, so that only main's own allocations meet it.
        limit = int(cfg["memory_limit"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        result = func(*args, **kwargs)
    except BaseException as exc:  # SystemExit and KeyboardInterrupt included
        traceback.print_exc()
        _fail(store, cfg, _error_doc(exc))
    finally:
        try:
            reporter.flush()
            client.close()
        except Exception:
            traceback.print_exc()

    try:
        pieces = dumps_result(result)
    except Exception as exc:
        _fail(
            store,
            cfg,
            _error_doc(exc)
            | {
                "message": f"the value returned by main of job {cfg['job_id']!r} "
                f"cannot be pickled: {exc}. Return plain data, or write it to "
                "storage yourself and return its path.",
            },
        )
    del result  # the pieces hold what is needed of it
    result_digest, signature = store.put_pieces(
        cfg["user"], cfg["job_id"], RESULT, pieces, cfg.get("result_key")
    )
    outcome = {"status": "succeeded", "result_digest": result_digest}
    if signature:
        outcome["result_hmac"] = signature
    _write_outcome(cfg["outcome_path"], outcome)


if __name__ == "__main__":
    main()
